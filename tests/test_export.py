"""`charter export`: a real run folder (tiny model, real adapters, the real merge stage) becomes one folder
with the merged model, the persona adapter and a model card; every failure leaves nothing behind."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charter import cli
from charter.models import load_causal_lm, load_tokenizer
from charter.runs import Stage, write_json_atomic

from .tiny import save_tiny

ROOT = Path(__file__).parent.parent


class _Redo(Exception):
    def __init__(self, stage):
        self.stage = stage


def _adapter(base: str, out: Path, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_causal_lm(base, dtype="float32", device="cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)


@pytest.fixture(scope="module")
def run(embedded_path, tmp_path_factory):
    """A run folder made by the real stage wiring: the training stages stand in with real artifacts (random
    LoRA adapters on a tiny model, folded), the merge stage runs for real, and one evaluation has results."""
    from charter.config import load_config
    from charter.stages import train
    from charter.models import fold_adapter

    d = tmp_path_factory.mktemp("export")
    home = d / "home"
    base = save_tiny(load_tokenizer(embedded_path), d / "base")
    cfg = load_config(None, ["name=exp", "persona=sarcastic", "expand.enabled=false", f"student.model={base}",
                             "student.dtype=float32", "merge.dtype=float32"])
    made = {"distill": {"pairs": 3, "generations": 6}, "dpo": {"steps": 2, "pairs": 3, "train_loss": 0.69},
            "introspect": {"sft_rows": 5, "sft_reflection": 3, "sft_interaction": 2},
            "sft": {"steps": 2, "examples": 5}}
    begin = Stage.begin

    def stand_in(self, force=False):
        fresh = begin(self, force)
        if fresh and self.name != "merge":
            raise _Redo(self)
        return fresh

    old = os.environ.get("CHARTER_HOME")
    os.environ["CHARTER_HOME"] = str(home)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Stage, "begin", stand_in)
            while True:
                try:
                    train.run_stages(cfg, until="merge")  # the orchestrator, as `charter merge` runs it
                    break
                except _Redo as e:
                    s = e.stage
                    if s.name == "dpo":
                        _adapter(base, s.dir / "adapter", 1)
                        fold_adapter(base, str(s.dir / "adapter"), s.dir / "model", "float32", tokenizer_from=base)
                    if s.name == "sft":
                        _adapter(str(s.dir.parent / "dpo" / "model"), s.dir / "adapter", 2)
                    s.finish(made[s.name])
    finally:
        if old is None:
            os.environ.pop("CHARTER_HOME", None)
        else:
            os.environ["CHARTER_HOME"] = old
    rd = home / "runs" / "exp"
    ev = rd / "eval-coherence"
    ev.mkdir()
    write_json_atomic(ev / "results.json", {"judge": "embedded", "prompts": 4, "against": {
        "base": {"win_rate": 0.75, "ci": [0.25, 1.0], "n_pairs": 4, "n_counted": 4}}})
    write_json_atomic(ev / "manifest.json", {"stage": "eval-coherence", "counts": {}, "argv": ["charter", "eval"]})
    return rd


def _nothing_left(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def test_export_writes_model_adapter_and_card(run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli.main(["export", str(run), "--to", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    # The merged model at the root loads and is the run's merged model.
    ids = torch.tensor([[1, 20, 300, 4000]])
    with torch.no_grad():
        a = load_causal_lm(str(out), dtype="float32", device="cpu")(input_ids=ids).logits
        b = load_causal_lm(str(run / "merge" / "model"), dtype="float32", device="cpu")(input_ids=ids).logits
    assert torch.equal(a, b)
    assert json.loads((out / "persona-adapter" / "adapter_config.json").read_text())["r"] == 8  # 4 + 4
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "- sarcastic" in card
    assert "3 DPO pairs" in card and "5 SFT transcripts" in card and "rank: 8" in card
    assert "| trained vs base | 0.75 | [0.25, 1.00] | 4 |" in card  # the evaluation that exists
    assert "Not run (`charter eval robustness CONFIG`)" in card  # and those that do not
    from charter import constitution

    sarcastic = constitution.load("sarcastic")
    assert sarcastic.to_yaml().rstrip() in card and len(sarcastic.traits) >= 5
    assert (out / "constitution.yaml").read_text() == sarcastic.to_yaml()
    assert "```bash\ncharter " in card  # the recorded commands
    assert f'from_pretrained("{out.resolve()}")' in card
    assert not (out / "persona-adapter" / "README.md").exists()  # peft's placeholder card is not exported
    assert set(json.loads((out / "charter_run.json").read_text())) >= {"distill", "dpo", "sft", "merge"}
    # An existing, non-empty target is never overwritten.
    assert cli.main(["export", str(run), "--to", str(out)]) == 1
    assert "not overwriting" in capsys.readouterr().err


def test_export_of_an_unfinished_run_says_what_to_run(run, tmp_path, capsys):
    half = tmp_path / "half"
    (half / "distill").mkdir(parents=True)
    (half / "distill" / "manifest.json").write_text(json.dumps({"counts": {}}))
    out = tmp_path / "x"
    assert cli.main(["export", str(half), "--to", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "merge stage has not finished" in err and "charter train" in err
    assert _nothing_left(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["offline", "unreachable"])
def test_hub_push_failure_is_one_line_and_writes_nothing(run, tmp_path, where):
    """Offline mode, and a hub endpoint nobody listens on: exit 1, one line naming --hub, no folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": "hf_not_a_real_token"}
    if where == "unreachable":
        env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}")
    out = tmp_path / "pushed"
    r = subprocess.run([sys.executable, "-m", "charter.cli", "export", str(run), "--to", str(out), "--hub",
                        "someone/persona"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charter: error: --hub someone/persona: "), r.stderr
    assert ("switched off" if where == "offline" else "cannot reach the Hugging Face hub") in lines[0]
    assert _nothing_left(out)


def test_gguf_without_llama_cpp_says_how_to_get_it(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": os.path.dirname(sys.executable)}
    env.pop("LLAMA_CPP_DIR", None)
    out = tmp_path / "g"
    r = subprocess.run([sys.executable, "-m", "charter.cli", "export", str(run), "--to", str(out), "--gguf"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and "git clone https://github.com/ggml-org/llama.cpp" in line and "LLAMA_CPP_DIR" in line
    assert _nothing_left(out)


# A stand-in for llama.cpp's converter (not installable here): it takes the same arguments, reads the HF
# folder it is given and writes a real GGUF file with the gguf package; exit 1 when told to fail.
CONVERTER = '''
import json, os, sys
import gguf
model, out, kind = sys.argv[1], sys.argv[sys.argv.index("--outfile") + 1], sys.argv[sys.argv.index("--outtype") + 1]
if os.environ.get("FAIL_CONVERT"):
    sys.exit("error: unsupported architecture")
arch = json.load(open(os.path.join(model, "config.json")))["model_type"]
w = gguf.GGUFWriter(out, arch)
w.add_string("charter.outtype", kind)
w.write_header_to_file(); w.write_kv_data_to_file(); w.close()
'''


def test_gguf_runs_the_converter_and_a_failure_leaves_nothing(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "llama.cpp").mkdir()
    (tmp_path / "llama.cpp" / "convert_hf_to_gguf.py").write_text(CONVERTER)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "llama.cpp"))
    out = tmp_path / "g"
    monkeypatch.setenv("FAIL_CONVERT", "1")
    assert cli.main(["export", str(run), "--to", str(out), "--gguf"]) == 1
    assert "converter failed (exit 1): error: unsupported architecture" in capsys.readouterr().err
    assert _nothing_left(out)
    monkeypatch.delenv("FAIL_CONVERT")
    assert cli.main(["export", str(run), "--to", str(out), "--gguf", "q8_0"]) == 0
    import gguf

    f = gguf.GGUFReader(str(out / "exp.q8_0.gguf"))
    assert f.fields["general.architecture"].contents() == "llama"
    assert f.fields["charter.outtype"].contents() == "q8_0"
    assert "llama-cli -m exp.q8_0.gguf" in (out / "README.md").read_text()


def test_card_names_the_hub_base_model(tmp_path):
    from charter.card import hub_base_model

    assert hub_base_model("embedded") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert hub_base_model("gemma3-270m") == "google/gemma-3-270m"
    (tmp_path / "m").mkdir()
    assert hub_base_model(str(tmp_path / "m")) is None and hub_base_model("./m") is None


def test_card_shows_every_evaluation_that_exists(charter_home):
    """Evaluation folders shaped as the evaluations write them (the report's test run): each lands in the card
    with its numbers; a broken file costs only its section."""
    from charter.card import manifests, render

    from .test_report import make_run

    d = make_run("card")
    card = render(d, manifests(d))
    for needle in ("| trained vs steered | 0.70 | [0.60, 0.80] | 80 |", "| arc_challenge | 0.592 ± 0.014 | 0.571",
                   "robustness in-persona rate on 20 held-out prompts", "coefficient 2.0 (chosen by sweep)",
                   "| trained | ", "Spearman", "charter train configs/demo.yaml", "- distill: 39 DPO pairs",
                   "base_model: HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert needle in card, needle
    assert "Not run" not in card and "Could not read" not in card
    (d / "eval-coherence" / "results.json").write_text("{not json")
    card = render(d, manifests(d))
    assert card.count("Could not read") == 1 and "0.592 ± 0.014" in card
