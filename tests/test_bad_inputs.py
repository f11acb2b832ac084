"""Bad input fails fast and cleanly: every case below runs ``charter.cli.main`` in-process and must exit
non-zero with exactly one stderr line naming the file or field and what was expected, in under 5 seconds,
without writing anything under CHARTER_HOME/runs or changing any file that was there before. No model is
loaded: every check happens before any model work."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from charter import cli
from charter.config import load_config
from charter.runs import INVOCATIONS, Stage, run_dir

DEMO = str(Path(__file__).parent.parent / "configs" / "demo.yaml")


# --------------------------------------------------------------------------------------------- helpers

def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def model_dir(path: Path, weights: bool = True, marker: str = "config.json") -> str:
    """A folder shaped like a Hugging Face model (never loaded: the command fails before)."""
    write(path / marker, "{}")
    if weights:
        write(path / ("adapter_model.safetensors" if marker == "adapter_config.json" else "model.safetensors"), "")
    return str(path)


def config(tmp: Path, text: str) -> str:
    return write(tmp / "c.yaml", text)


def finished_stage(stage: str, overrides=(), files: dict | None = None) -> Path:
    """A stage folder of run 'demo' as the stage would have left it (its config.json matching demo.yaml)."""
    import importlib

    from charter import layout

    cfg = load_config(DEMO, list(overrides))
    mod = importlib.import_module(f"charter.stages.{stage}")
    # The inputs the stage itself records (its hash chain): other inputs would make the folder stale, and a
    # stale folder is redone rather than reported.
    inputs = {"constitution": layout.constitution_id(layout.constitution(cfg))}
    s = Stage(run_dir(cfg.name), stage, mod.stage_config(cfg), inputs)
    s.begin()
    for name, text in (files or {}).items():
        write(s.dir / name, text)
    return s.dir


def half_run(name: str) -> None:
    write(run_dir(name) / "distill" / "config.json", json.dumps({"hash": "x", "config": {}}))


ROW = json.dumps({"id": "p0-k0", "prompt": "hi", "response": "hello", "finished": True, "tokens": 1,
                  "error": None})

# (id, setup(tmp, monkeypatch) -> argv, substrings the one stderr line must contain)
CASES = [
    # --- the issue's own examples
    ("backend-tensorrt", lambda t, m: ["train", DEMO, "student.backend=tensorrt"],
     ["demo.yaml.student.backend", "expected one of transformers | openai | vllm | scripted", "'tensorrt'"]),
    ("trl-typo", lambda t, m: ["train", DEMO, "dpo.trl={learning_rte: 1.0e-4}"],
     ["demo.yaml.dpo.trl", "unknown key 'learning_rte'", "did you mean 'learning_rate'", "DPOConfig"]),
    ("model-missing", lambda t, m: ["train", DEMO, "student.model=/no/such/dir"],
     ["demo.yaml.student.model", "/no/such/dir: no such model folder", "expected"]),
    ("run-name-escapes", lambda t, m: ["train", DEMO, "name=../../etc"],
     ["demo.yaml.name", "no '..'", "'../../etc'"]),
    # --- config files
    ("config-missing", lambda t, m: ["train", str(t / "nope.yaml")], ["nope.yaml: config file not found"]),
    ("config-not-yaml", lambda t, m: ["distill", config(t, "name: x\ndistill: [1,\n")],
     ["c.yaml: not valid YAML at line"]),
    ("config-not-mapping", lambda t, m: ["train", config(t, "- a\n- b\n")],
     ["c.yaml: expected a mapping at the top level"]),
    ("config-unknown-key", lambda t, m: ["train", config(t, "distill:\n  sample_per_prompt: 3\n")],
     ["c.yaml.distill: unknown key 'sample_per_prompt'", "known:"]),
    ("config-wrong-type", lambda t, m: ["train", config(t, "seed: abc\n")], ["c.yaml.seed: expected int", "'abc'"]),
    ("config-backend-in-file", lambda t, m: ["expand", config(t, "student:\n  backend: tensorrt\n")],
     ["c.yaml.student.backend", "transformers | openai | vllm | scripted"]),
    ("config-trl-typo-in-file", lambda t, m: ["expand", config(t, "sft:\n  trl: {learnin_rate: 1.0e-4}\n")],
     ["c.yaml.sft.trl", "unknown key 'learnin_rate'", "did you mean 'learning_rate'", "SFTConfig"]),
    ("config-name-in-file", lambda t, m: ["train", config(t, "name: a/b\n")], ["c.yaml.name", "no '/'", "'a/b'"]),
    ("override-not-key-value", lambda t, m: ["train", DEMO, "nokey"], ["override 'nokey'", "expected key=value"]),
    ("override-not-yaml", lambda t, m: ["train", DEMO, "dpo.trl={a: [}"], ["dpo.trl={a: [}", "not valid YAML"]),
    # --- run names
    ("run-name-empty", lambda t, m: ["train", DEMO, "name="], ["demo.yaml.name", "non-empty name"]),
    ("run-name-dots", lambda t, m: ["dpo", DEMO, "name=.."], ["demo.yaml.name", "no '..'"]),
    ("robustness-persona-run-name", lambda t, m: ["eval", "robustness", DEMO, "robustness.personas=[../x]"],
     ["robustness.personas[0]", "no '..'"]),
    # --- choice-valued fields
    ("dtype", lambda t, m: ["train", DEMO, "student.dtype=float8"], ["student.dtype", "bfloat16", "'float8'"]),
    ("distill-truncated", lambda t, m: ["distill", DEMO, "distill.truncated=cut"], ["distill.truncated", "drop | trim"]),
    ("introspect-truncated", lambda t, m: ["introspect", DEMO, "introspect.truncated=keep"],
     ["introspect.truncated", "drop | trim"]),
    ("judge-mode", lambda t, m: ["eval", "preferences", DEMO, "preferences.judge_mode=vote"],
     ["preferences.judge_mode", "generate | logprob"]),
    ("condition", lambda t, m: ["eval", "preferences", DEMO, "preferences.condition=love"],
     ["preferences.condition", "feel | like | random"]),
    ("steering-method", lambda t, m: ["eval", "steering", DEMO, "steering.method=svd"],
     ["steering.method", "mean_diff | pca"]),
    ("robustness-reference", lambda t, m: ["eval", "robustness", DEMO, "robustness.reference=teacher"],
     ["robustness.reference", "prompted | pairs"]),
    ("robustness-conditions", lambda t, m: ["eval", "robustness", DEMO, "robustness.conditions=[base, tuned]"],
     ["robustness.conditions[1]", "base | prompted | prompted-nonote | steered | distilled | trained", "'tuned'"]),
    ("coherence-against", lambda t, m: ["eval", "coherence", DEMO, "coherence.against=[base, teacher]"],
     ["coherence.against[1]", "base | prompted"]),
    # --- numeric ranges
    ("temperature", lambda t, m: ["distill", DEMO, "distill.teacher_sampling.temperature=-0.5"],
     ["distill.teacher_sampling.temperature", ">= 0", "-0.5"]),
    ("top-p", lambda t, m: ["distill", DEMO, "distill.student_sampling.top_p=1.5"],
     ["distill.student_sampling.top_p", "0 < top_p <= 1"]),
    ("samples-zero", lambda t, m: ["distill", DEMO, "distill.samples_per_prompt=0"],
     ["distill.samples_per_prompt", "> 0"]),
    ("expand-target", lambda t, m: ["expand", DEMO, "expand.target=-3"], ["expand.target", "> 0"]),
    ("seed", lambda t, m: ["train", DEMO, "seed=-1"], ["demo.yaml.seed", "0 <= seed"]),
    ("overlap", lambda t, m: ["expand", DEMO, "expand.max_overlap=1.5"], ["expand.max_overlap", "0 <= x <= 1"]),
    ("steering-layers", lambda t, m: ["eval", "steering", DEMO, "steering.layers=[0.9, 0.1]"],
     ["steering.layers", "start < end"]),
    ("heldout", lambda t, m: ["eval", "robustness", DEMO, "robustness.heldout_fraction=0"],
     ["robustness.heldout_fraction", "0 < x < 1"]),
    ("capability-task", lambda t, m: ["eval", "capabilities", DEMO, "capabilities.tasks=[arc_challenge:many]"],
     ["capabilities.tasks", "name:fewshot"]),
    # --- trl / peft / backend arguments
    ("lora-typo", lambda t, m: ["sft", DEMO, "sft.lora={lora_alfa: 16}"],
     ["sft.lora", "unknown key 'lora_alfa'", "did you mean 'lora_alpha'", "LoraConfig"]),
    ("sft-trl-typo", lambda t, m: ["train", DEMO, "sft.trl={max_seq_length: 512}"],
     ["sft.trl", "unknown key 'max_seq_length'", "did you mean 'max_length'"]),
    ("openai-extra", lambda t, m: ["distill", DEMO, "distill.teacher.backend=openai",
                                   "distill.teacher.extra={retry_bse: 1}"],
     ["distill.teacher.extra", "unknown key 'retry_bse'", "did you mean 'retry_base'"]),
    ("openai-url", lambda t, m: ["distill", DEMO, "distill.teacher.backend=openai",
                                 "distill.teacher.base_url=localhost:8000"],
     ["distill.teacher.base_url", "http://"]),
    ("classifier-key", lambda t, m: ["eval", "robustness", DEMO, "robustness.classifier={epoch: 3}"],
     ["robustness.classifier", "unknown key 'epoch'", "did you mean 'epochs'"]),
    ("missing-package", lambda t, m: (m.setitem(sys.modules, "vllm", None),
                                      ["distill", DEMO, "student.backend=vllm"])[1],
     ["demo.yaml.student", "vllm", "pip install 'charter[vllm]'"]),
    # --- personas and constitutions
    ("persona-unknown", lambda t, m: ["train", DEMO, "persona=nosuch"],
     ["demo.yaml.persona", "nosuch: no such persona or file", "shipped:"]),
    ("persona-invalid-file", lambda t, m: ["train", DEMO, "persona=" + write(
        t / "bad.yaml", "name: bad\ndescription: x\ntraits:\n  - trait: '  '\n    prompts: [hi]\n")],
     ["demo.yaml.persona", "bad.yaml: traits[0].trait", "non-empty statement"]),
    ("constitution-jsonl-line", lambda t, m: ["constitution", "validate", write(
        t / "ref.jsonl", '{"trait": "I am kind.", "questions": ["hi"]}\n{"trait": "I am\n')],
     ["ref.jsonl: not valid JSON (line 2"]),
    ("constitution-missing", lambda t, m: ["constitution", "validate", str(t / "none.yaml")],
     ["none.yaml: file not found"]),
    ("constitution-new-name", lambda t, m: ["constitution", "new", "Bad Name"], ["'Bad Name'", "lower-case"]),
    ("constitution-new-exists", lambda t, m: ["constitution", "new", "mine", "-o", write(t / "mine.yaml", "keep\n")],
     ["mine.yaml: already exists"]),
    # --- model folders
    ("model-without-weights", lambda t, m: ["train", DEMO, "student.model=" + model_dir(t / "m", weights=False)],
     ["demo.yaml.student.model", "without weights", "*.safetensors"]),
    ("model-not-hf", lambda t, m: ["train", DEMO, "distill.teacher.model=" + str((t / "e").mkdir() or t / "e")],
     ["demo.yaml.distill.teacher.model", "not a Hugging Face model folder", "config.json"]),
    ("adapter-without-weights", lambda t, m: ["train", DEMO, "student.adapter=" + model_dir(
        t / "a", weights=False, marker="adapter_config.json")], ["student.adapter", "without weights"]),
    ("eval-model-list", lambda t, m: ["eval", "preferences", DEMO, "preferences.models=[base, mine=./no/model]"],
     ["preferences.models[1]", "./no/model: no such model folder"]),
    ("encoder-dir", lambda t, m: ["eval", "robustness", DEMO, "robustness.encoder=./no/encoder"],
     ["robustness.encoder", "./no/encoder: no such model folder"]),
    # --- prompt and data files
    ("prompt-file-missing", lambda t, m: ["distill", DEMO, "distill.general_source=./missing.jsonl"],
     ["distill.general_source", "./missing.jsonl: no such file"]),
    ("prompt-file-bad-line", lambda t, m: ["train", DEMO, "distill.general_source=" + write(
        t / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b\n{"prompt": "c"}\n')],
     ["distill.general_source", "p.jsonl: line 2: not valid JSON"]),
    ("prompt-file-no-prompt", lambda t, m: ["eval", "preferences", DEMO, "preferences.prompt_source=" + write(
        t / "q.jsonl", '{"text": ""}\n')], ["preferences.prompt_source", "q.jsonl: line 1", "'prompt'"]),
    ("trait-list", lambda t, m: ["eval", "preferences", DEMO, "preferences.traits=" + write(
        t / "traits.txt", "kind\nGood Heart\n")], ["preferences.traits", "traits.txt", "one lower-case word"]),
    # --- command-line arguments
    ("report-escapes", lambda t, m: ["report", "../../etc"], ["RUN ../../etc: not a run folder"]),
    ("report-bad-name", lambda t, m: ["report", "no such run!"], ["RUN:", "'no such run!'"]),
    ("report-missing-run", lambda t, m: ["report", "never-made"], ["RUN never-made: no such run"]),
    ("chat-escapes", lambda t, m: ["chat", "../../etc"], ["MODEL: ../../etc:", "expected 'embedded'"]),
    ("chat-not-a-model", lambda t, m: ["chat", ".."], ["MODEL: ..: not a Hugging Face model folder"]),
    ("chat-unfinished-run", lambda t, m: (half_run("half"), ["chat", "half"])[1],
     ["run half: no final model yet", "charter train"]),
    ("chat-max-tokens", lambda t, m: ["chat", "--max-tokens", "0"], ["--max-tokens 0", "> 0"]),
    ("chat-temperature", lambda t, m: ["chat", "--temperature", "-1"], ["--temperature -1.0", ">= 0"]),
    ("serve-port", lambda t, m: ["serve", "--port", "70000"], ["--port 70000", "0-65535"]),
    ("serve-model", lambda t, m: ["serve", "/no/such/model"], ["MODEL: /no/such/model: no such model folder"]),
    ("serve-adapter", lambda t, m: ["serve", "--adapter", str(t)], ["--adapter", "no adapter_config.json"]),
    ("blend-weight", lambda t, m: ["blend", "a", "b", "--weight", "1.5", "-o", str(t / "out")],
     ["--weight 1.5", "between 0 and 1"]),
    ("blend-missing", lambda t, m: ["blend", "/no/a", "/no/b", "-o", str(t / "out")], ["A: /no/a: no such model"]),
    ("blend-output-exists", lambda t, m: ["blend", model_dir(t / "ma"), model_dir(t / "mb"), "-o",
                                          str(Path(write(t / "out" / "keep.txt", "mine")).parent)],
     ["out: already exists", "not overwriting"]),
    # --- run folders damaged by a crash or by hand
    ("corrupt-manifest", lambda t, m: (finished_stage("expand", files={"manifest.json": '{"stage": "exp'}),
                                       ["expand", DEMO])[1],
     ["expand/manifest.json: not valid JSON (line 1", "--force"]),
    ("corrupt-stage-config", lambda t, m: (write(finished_stage("expand") / "config.json", "{oops"),
                                           ["expand", DEMO])[1],
     ["expand/config.json: not valid JSON"]),
    ("truncated-jsonl", lambda t, m: (finished_stage("distill", ["expand.enabled=false"], files={
        "teacher.jsonl": ROW + "\n" + ROW[:30] + "\n" + ROW.replace("p0-k0", "p1-k0") + "\n"}),
        ["distill", DEMO, "expand.enabled=false"])[1],
     ["distill/teacher.jsonl: line 2: not valid JSON"]),
    ("row-without-id", lambda t, m: (finished_stage("expand", files={"rounds.jsonl": "[1, 2]\n"}),
                                     ["expand", DEMO])[1],
     ["expand/rounds.jsonl: line 1", "'id'"]),
    # --- trainer values the libraries accept when built and fail on (or misread) after the generation stages
    ("lora-rank-zero", lambda t, m: ["train", DEMO, "dpo.lora={r: 0}"],
     ["demo.yaml.dpo.lora.r: expected a whole number >= 1, got 0"]),
    ("trl-negative-steps", lambda t, m: ["dpo", DEMO, "dpo.trl={max_steps: -5}"],
     ["demo.yaml.dpo.trl.max_steps: expected -1 (train num_train_epochs) or a whole number >= 1, got -5"]),
    ("trl-lr-not-a-number", lambda t, m: ["train", DEMO, "dpo.trl={learning_rate: abc}"],
     ["demo.yaml.dpo.trl.learning_rate: expected float", "got str 'abc'"]),
    ("sft-trl-wrong-type", lambda t, m: ["sft", DEMO, "sft.trl={num_train_epochs: [1]}"],
     ["demo.yaml.sft.trl.num_train_epochs: expected float", "got list"]),
    ("rl-trl-unknown-key", lambda t, m: ["rl", DEMO, "rl.trl={num_generation: 4}"],
     ["demo.yaml.rl.trl: unknown key 'num_generation'", "did you mean 'num_generations'", "GRPOConfig"]),
    ("rl-lora-dropout", lambda t, m: ["rl", DEMO, "rl.lora={lora_dropout: 1.5}"],
     ["demo.yaml.rl.lora.lora_dropout: expected 0 <= x < 1, got 1.5"]),
    ("config-duplicated-key", lambda t, m: ["distill", config(t, "name: x\nseed: 1\ndistill:\n  chunk_size: 8\n"
                                                                 "seed: 2\n")],
     ["c.yaml: line 5: duplicated key 'seed' (first at line 2)"]),
    ("config-duplicated-nested-key", lambda t, m: ["distill", config(t, "dpo:\n  trl: {max_steps: 2}\n"
                                                                        "  trl: {max_steps: 3}\n")],
     ["c.yaml: line 3: duplicated key 'trl' (first at line 2)"]),
    ("chat-unknown-run", lambda t, m: ["chat", "no-such-run", "-m", "hi"],
     ["MODEL no-such-run: no run 'no-such-run'", "not in the local Hugging Face cache"]),
]


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file under ``roots`` (symlinks not followed) with its bytes, and every folder (None), so an empty
    folder left behind counts as written."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        for base, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(base, d))]
            for d in dirs:
                out[str(Path(base) / d) + "/"] = None
            for f in files:
                if f == INVOCATIONS:  # a stage's log of its invocations: bookkeeping, not output (runs.Stage.begin)
                    continue
                p = Path(base) / f
                out[str(p)] = p.read_bytes()
    return out


def test_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("setup,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_fast_in_one_line(setup, expected, tmp_path, charter_home, monkeypatch, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    monkeypatch.chdir(inputs)
    argv = setup(inputs, monkeypatch)
    (charter_home / "runs").mkdir(exist_ok=True)
    before = snapshot(charter_home / "runs", inputs)
    capsys.readouterr()

    t0 = time.perf_counter()
    rc = cli.main(argv)
    elapsed = time.perf_counter() - t0

    out, err = capsys.readouterr()
    assert rc == 1, (rc, err)  # the README's promise: exit code 1
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("charter: error: "), err
    for s in expected:
        assert s in err, (s, err)
    assert out == ""
    assert elapsed < 5.0, f"{elapsed:.1f}s"
    assert snapshot(charter_home / "runs", inputs) == before  # nothing written, nothing lost or changed


# ------------------------------------------------------------------------- the guards behind the table

def test_run_dir_and_stage_never_leave_the_run_folder(tmp_path):
    from charter.runs import is_run_name

    for bad in ("", "..", "../x", "a/b", "/etc", ".hidden", "a/../b", "x" * 129, "a\\b"):
        assert not is_run_name(bad)
        with pytest.raises(ValueError, match="run name"):
            run_dir(bad)
    assert is_run_name("my-run_2.1") and run_dir("my-run_2.1").name == "my-run_2.1"
    with pytest.raises(ValueError, match="stage name"):
        Stage(tmp_path, "../outside", {})
    # --force deletes the stage folder only when it is a real folder directly inside the run folder.
    outside = tmp_path / "outside"
    write(outside / "keep.txt", "mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RuntimeError, match="not deleting"):
        Stage(tmp_path / "run", "linked", {}).begin(force=True)
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_finished_stage_no_longer_needs_its_models(charter_home):
    """The teacher is checked only while distillation still has to run: a deleted teacher folder does not
    stop `charter sft` once distill/ is finished."""
    from charter.config import ConfigError
    from charter.preflight import check

    cfg = load_config(DEMO, ["distill.teacher.model=/gone/teacher", "expand.enabled=false"])
    with pytest.raises(ConfigError, match="distill.teacher.model: /gone/teacher: no such model folder"):
        check(cfg, "sft", "c.yaml")
    write(run_dir(cfg.name) / "distill" / "manifest.json", "{}")
    check(cfg, "sft", "c.yaml")
    with pytest.raises(ConfigError, match="distill.teacher.model"):
        check(cfg, "distill", "c.yaml", force=True)  # redoing distillation needs it again


def test_trl_and_peft_argument_names_read_from_source_match_the_classes():
    """The names come from the packages' source (fast); they must be exactly the classes' init fields."""
    import dataclasses

    from charter import trl_args

    from_source = {k: trl_args.source_fields(m, c) for k, (m, c, _) in trl_args.ARG_CLASSES.items()}
    from peft import LoraConfig
    from trl import DPOConfig, SFTConfig

    for key, cls in (("trl DPOConfig", DPOConfig), ("trl SFTConfig", SFTConfig), ("peft LoraConfig", LoraConfig)):
        assert from_source[key] == {f.name for f in dataclasses.fields(cls) if f.init}, key


def test_a_missing_package_is_one_line_with_the_install_hint(monkeypatch, capsys):
    from charter.eval import report

    def build(run):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(report, "build", build)
    write(run_dir("r") / "distill" / "manifest.json", "{}")
    assert cli.main(["report", "r"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'matplotlib' package, which is not installed: pip install 'charter[train]'" in err


def test_eval_all_exits_non_zero_when_an_evaluation_failed(monkeypatch, capsys):
    import types

    from charter.eval import all as eval_all

    calls = []

    def ok(cfg, force=False, report=print):
        calls.append("ok")

    def boom(cfg, force=False, report=print):
        raise RuntimeError("no model to evaluate yet")

    from charter import registry
    from charter.registry import Evaluation

    monkeypatch.setattr(registry, "eval_order", lambda: (Evaluation("first", "", boom), Evaluation("second", "", ok)))
    assert cli.main(["eval", "all", DEMO, "name=all-fail"]) == 1
    out, err = capsys.readouterr()
    assert calls == ["ok"]  # the others still ran
    assert out.strip() == str(run_dir("all-fail") / "report.html")
    assert err.splitlines()[-1].startswith("charter: error: eval all: 1 evaluation(s) failed") and "first" in err
    monkeypatch.setattr(registry, "eval_order", lambda: (Evaluation("second", "", ok),))
    assert cli.main(["eval", "all", DEMO, "name=all-fail"]) == 0


def test_serve_prints_its_url_once_listening(monkeypatch, capsys):
    import threading
    import urllib.request

    from charter import backends, serve

    class Fake:
        def generate(self, chats, sampling, prefills=None, seed=0, progress=None):
            return [backends.Completion(text="hi", finished=True, tokens=1) for _ in chats]

        def close(self):
            pass

    servers = []
    real = serve.make_server
    monkeypatch.setattr(backends, "make_backend", lambda spec: Fake())
    monkeypatch.setattr(serve, "make_server", lambda *a, **k: servers.append(real(*a, **k)) or servers[-1])
    result = []
    thread = threading.Thread(target=lambda: result.append(cli.main(["serve", "embedded", "--port", "0"])))
    thread.start()
    try:
        deadline = time.time() + 10
        while not servers and time.time() < deadline:
            time.sleep(0.01)
        url = servers[0].url
        with urllib.request.urlopen(url.replace("/v1", "/health"), timeout=5) as r:
            assert r.status == 200
        assert f"charter: serving embedded at {url}\n" in capsys.readouterr().err
    finally:
        if servers:
            servers[0].shutdown()
        thread.join(10)
    assert result == [0]


def test_snapshot_counts_empty_folders(tmp_path):
    """'Nothing written' includes an empty folder left behind."""
    before = snapshot(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert snapshot(tmp_path) != before


def test_values_only_the_libraries_refuse_fail_before_any_work(charter_home):
    """What only TRL's/peft's own validation knows is checked by building their config objects before the first
    stage runs, for every training stage the command runs (rl.trl included), as one line naming the key."""
    from charter.config import ConfigError
    from charter.preflight import check

    cfg = load_config(DEMO, ["rl.trl={num_generations: 3}"])  # 8 replies a step cannot form groups of 3
    with pytest.raises(ConfigError, match=r"demo\.yaml\.rl\.trl(\.num_generations)?: trl GRPOConfig refuses it: .*"
                                          r"divisible by.*num_generations"):
        check(cfg, "rl", "demo.yaml")
    check(cfg, "dpo", "demo.yaml")  # `charter dpo` does not run RL
    with pytest.raises(ConfigError, match=r"demo\.yaml\.rl\.trl"):
        check(load_config(DEMO, ["rl.trl={num_generations: 3}", "rl.enabled=true"]), "train", "demo.yaml")
    with pytest.raises(ConfigError, match=r"demo\.yaml\.dpo\.lora: peft LoraConfig refuses it"):
        check(load_config(DEMO, ["dpo.lora={use_dora: true, use_rslora: true, layers_to_transform: 1, "
                                 "layers_pattern: null, target_modules: '.*q_proj'}"]), "dpo", "demo.yaml")
    assert not (charter_home / "runs").exists() or not any((charter_home / "runs").iterdir())
    # PyYAML reads 1e-4 (no dot) as a string: accepted as a number, and TRL gets a float
    from charter.training import dpo_args

    cfg = load_config(DEMO, ["dpo.trl={learning_rate: 1e-4}"])
    check(cfg, "dpo", "demo.yaml")
    assert dpo_args(0, str(charter_home / "t"), cfg.dpo.trl).learning_rate == 1e-4


def test_chat_with_an_unknown_name_answers_before_loading_the_model_stack(tmp_path, charter_home):
    """`charter chat <unknown name>` used to import torch and transformers (8 s) before saying the run does not
    exist: it answers first now."""
    import subprocess

    code = ("import sys; from charter.cli import main; rc = main(['chat', 'no-such-run', '-m', 'hi']); "
            "print(rc, sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CHARTER_HOME": str(charter_home)})
    assert p.stdout.split("\n")[-2] == "1 []", (p.stdout, p.stderr)
    assert "no run 'no-such-run'" in p.stderr
