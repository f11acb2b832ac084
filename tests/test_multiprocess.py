"""`accelerate launch --num_processes 2` trains DPO and SFT for real (CPU, gloo) and gets what one process gets.

The upstream stages (distill, the single-process DPO, introspect) are generated once by a single-process
`charter sft`; their folders are copied into fresh runs that the 2-process launch then trains. With the same
effective batch (2 processes x 2 per device vs 1 process x 2 per device x 2 accumulated), the adapters must
agree within float tolerance. The pair and transcript counts are multiples of the batch: a partial last
batch is padded differently by a multi-process data loader (accelerate's even_batches) than accumulated by
one process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from charter.cli import main

pytestmark = pytest.mark.slow

TRL = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0,
       "disable_tqdm": True}
TINY = {
    "name": "one",
    "persona": "loving",
    "seed": 5,
    "student": {"model": "embedded", "batch_size": 8},
    "expand": {"enabled": False},
    "distill": {"teacher": {"model": "embedded", "batch_size": 8}, "samples_per_prompt": 1,
                "constitution_prompts": 8, "general_prompts": 0, "chunk_size": 8, "truncated": "trim",
                "teacher_sampling": {"max_tokens": 24}, "student_sampling": {"max_tokens": 24}, "max_length": 256},
    "dpo": {"lora": {"r": 4, "lora_alpha": 8}, "max_pairs": 4, "batch_size": 4, "checkpoint_steps": 0,
            "trl": {**TRL, "max_length": 64}},
    "introspect": {"reflection_samples": 1, "free_conversations": 0, "leading_conversations": 0, "turns": 2,
                   "reflection_sampling": {"max_tokens": 24}, "interaction_sampling": {"max_tokens": 16},
                   "max_context": 512, "truncated": "trim", "chunk_size": 4},
    "sft": {"lora": {"r": 4, "lora_alpha": 8}, "max_examples": 4, "batch_size": 4, "checkpoint_steps": 0,
            "trl": {**TRL, "max_length": 256}},
}


def launch(cfg: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHARTER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "charter.cli", *args, str(cfg)], env=env, capture_output=True, text=True,
                          timeout=1200)


def weights(run: Path, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / stage / "adapter" / "adapter_model.safetensors"))


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-5 + 1e-4 * a[name].abs().max().item(), name
    assert any(a[n].abs().max() > 0 for n in a if "lora_B" in n)  # trained, not two untouched adapters


def counts(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["counts"]


def test_two_processes_train_dpo_and_sft_like_one(tmp_path, charter_home, one_thread):
    runs = charter_home / "runs"
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(TINY))
    assert main(["sft", str(one)]) == 0  # distill, dpo, introspect, sft: one process
    assert counts(runs / "one", "dpo")["gradient_accumulation_steps"] == 2
    # Whole batches only (see the module doc): upstream made enough rows for max_pairs / max_examples.
    assert counts(runs / "one", "dpo")["pairs"] == 4 and counts(runs / "one", "sft")["examples"] == 4

    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({**TINY, "name": "two"}))
    shutil.copytree(runs / "one" / "distill", runs / "two" / "distill")  # pairs made once, by one process
    r = launch(two, charter_home, "dpo")
    assert r.returncode == 0, r.stderr[-4000:]
    c = counts(runs / "two", "dpo")
    assert (c["world_size"], c["effective_batch"], c["per_device_batch"]) == (2, 4, 2)
    assert c["gradient_accumulation_steps"] == 1  # one process accumulated 2 micro-batches for the same 4
    assert c["steps"] == 2 and c["pairs"] == 4
    assert_close(weights(runs / "one", "dpo"), weights(runs / "two", "dpo"))
    assert (runs / "two" / "dpo" / "model" / "config.json").exists()  # folded once, by the main process

    # SFT trains on the distilled model of the one-process run, so both compare on the same base.
    three = tmp_path / "three.yaml"
    three.write_text(yaml.safe_dump({**TINY, "name": "three"}))
    for stage in ("distill", "dpo", "introspect"):
        shutil.copytree(runs / "one" / stage, runs / "three" / stage)
    r = launch(three, charter_home, "sft")
    assert r.returncode == 0, r.stderr[-4000:]
    c = counts(runs / "three", "sft")
    assert (c["world_size"], c["effective_batch"], c["gradient_accumulation_steps"]) == (2, 4, 1)
    assert c["examples"] == 4
    assert_close(weights(runs / "one", "sft"), weights(runs / "three", "sft"))
