"""The pipeline end to end on the real embedded model (SmolLM2-135M) at a tiny scale.

These are the slow tests (a few minutes on 2 cores): expand + distill with a SIGKILL in the middle, and
``charter train`` from constitution to a chat-able persona model, killed once and resumed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from charter.cli import main
from charter.runs import read_jsonl

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "persona": "loving",
    "seed": 7,
    "student": {"model": "embedded", "batch_size": 4},
    "expand": {"target": 2, "max_traits": 2, "rounds": 1, "sampling": {"max_tokens": 60}},
    "distill": {"teacher": {"model": "embedded", "batch_size": 4}, "samples_per_prompt": 1,
                "constitution_prompts": 8, "general_prompts": 4, "chunk_size": 4, "truncated": "trim",
                "teacher_sampling": {"max_tokens": 40}, "student_sampling": {"max_tokens": 40}, "max_length": 384},
    "dpo": {"lora": {"r": 8, "lora_alpha": 16},
            "trl": {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                    "max_length": 384}},
    "introspect": {"reflection_samples": 1, "free_conversations": 1, "leading_conversations": 1, "turns": 3,
                   "reflection_sampling": {"max_tokens": 40}, "interaction_sampling": {"max_tokens": 32},
                   "max_context": 1024, "truncated": "trim", "chunk_size": 4},
    "sft": {"lora": {"r": 8, "lora_alpha": 16},
            "trl": {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                    "max_length": 768}},
}


def write_cfg(path: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(args, home, **kw):
    env = {**os.environ, "CHARTER_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "charter.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def kill_when(proc, predicate, timeout=600):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended before the kill point:\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("kill point never reached")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_distill_killed_resumes_to_the_same_rows(tmp_path, charter_home):
    cfg = write_cfg(tmp_path / "tiny.yaml")
    teacher = charter_home / "runs" / "tiny" / "distill" / "teacher.jsonl"
    p = cli(["distill", str(cfg)], charter_home)
    kill_when(p, lambda: lines(teacher) >= 4)  # at least one chunk committed, more to come
    assert 4 <= lines(teacher) < 12

    p = cli(["distill", str(cfg)], charter_home)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    stage = charter_home / "runs" / "tiny" / "distill"
    assert out.strip().splitlines()[-1] == str(stage)  # last stdout line: the output folder
    rows = read_jsonl(teacher)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 12  # 8 constitution + 4 general prompts, K=1
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["generations"] == 12
    assert manifest["counts"]["pairs"] + sum(manifest["counts"]["dropped"].values()) == 12
    pairs = read_jsonl(stage / "pairs.jsonl")
    assert pairs, manifest
    for pr in pairs:
        assert pr["prompt"][0]["role"] == "user" and pr["chosen"][0]["role"] == "assistant"
        assert pr["chosen"][0]["content"] and pr["rejected"][0]["content"]

    # Same config and seed, no crash, another home: the same data.
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    os.rmdir(other / "models")
    (other / "models").symlink_to((charter_home / "models").resolve())
    assert subprocess.run([sys.executable, "-m", "charter.cli", "distill", str(cfg)],
                          env={**os.environ, "CHARTER_HOME": str(other)}, capture_output=True).returncode == 0
    again = read_jsonl(other / "runs" / "tiny" / "distill" / "teacher.jsonl")
    assert [r["response"] for r in again] == [r["response"] for r in rows]
    assert read_jsonl(other / "runs" / "tiny" / "distill" / "pairs.jsonl") == pairs


def test_train_end_to_end_killed_and_resumed(tmp_path, charter_home, capsys):
    cfg = write_cfg(tmp_path / "tiny.yaml")
    run = charter_home / "runs" / "tiny"
    p = cli(["train", str(cfg)], charter_home)
    kill_when(p, lambda: (run / "dpo" / "manifest.json").exists(), timeout=900)
    assert not (run / "merge" / "manifest.json").exists()

    p = cli(["train", str(cfg)], charter_home)
    out, err = p.communicate(timeout=1200)
    assert p.returncode == 0, err[-3000:]
    final = run / "merge" / "model"
    assert out.strip().splitlines()[-1] == str(final)
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert (run / "merge" / "persona-adapter" / "adapter_config.json").exists()
    for stage in ("expand", "distill", "dpo", "introspect", "sft", "merge"):
        assert (run / stage / "manifest.json").exists(), stage
    sft_rows = read_jsonl(run / "introspect" / "sft.jsonl")
    convs = [r for r in sft_rows if r["source"].startswith("interaction")]
    intro = json.loads((run / "introspect" / "manifest.json").read_text())["counts"]
    assert len(convs) + intro["dropped"].get("conversation_without_a_usable_turn", 0) == 2
    for r in convs:
        msgs = r["messages"]
        assert msgs[0]["role"] == "system" and "{name}" not in msgs[0]["content"]
        assert msgs[-1]["role"] == "assistant"  # ends on the last speaker's turn
        # K=3 turns, spoken by A, B, A: A's view is its opener from B, then every turn, ending on A's own.
        # A turn cut off with no whole sentence ends the conversation at the previous turn.
        roles = {1: ["user", "assistant"], 2: ["user", "assistant", "user", "assistant"],
                 3: ["user", "assistant", "user", "assistant"]}
        assert [m["role"] for m in msgs[1:]] == roles[r["turns"]]

    # The trained persona answers in chat.
    env_home = os.environ.get("CHARTER_HOME")
    assert env_home == str(charter_home)
    assert main(["chat", "tiny", "-m", "Hello! Who are you?", "--max-tokens", "16", "--temperature", "0"]) == 0
    said = capsys.readouterr().out
    assert "> Hello! Who are you?" in said and len(said.strip().splitlines()) >= 2
