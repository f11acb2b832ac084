"""`charter dpo` killed with SIGKILL after a checkpoint resumes from it, and ends where an uninterrupted run ends.

Real processes on the embedded model at a tiny scale: the pairs are generated once (in process), an
uninterrupted DPO run is the reference, and a second run is killed as soon as its first checkpoint is
complete, then rerun.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from charter.cli import main

pytestmark = pytest.mark.slow

TINY = {
    "name": "ref",
    "persona": "loving",
    "seed": 11,
    "student": {"model": "embedded", "batch_size": 8},
    "expand": {"enabled": False},
    "distill": {"teacher": {"model": "embedded", "batch_size": 8}, "samples_per_prompt": 1,
                "constitution_prompts": 8, "general_prompts": 0, "chunk_size": 8, "truncated": "trim",
                "teacher_sampling": {"max_tokens": 24}, "student_sampling": {"max_tokens": 24}, "max_length": 256},
    # 4 pairs, 2 per step: step 3 is in the second epoch, so the resumed run must also restore the data order.
    "dpo": {"lora": {"r": 4, "lora_alpha": 8}, "max_pairs": 4, "batch_size": 2, "checkpoint_steps": 1,
            "trl": {"max_steps": 3, "per_device_train_batch_size": 1, "max_length": 64, "learning_rate": 1e-3,
                    "warmup_steps": 0, "disable_tqdm": True}},
}


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "dpo" / "adapter" / "adapter_model.safetensors"))


def test_dpo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, charter_home, one_thread):
    from charter.distributed import checkpoint_complete

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    runs = charter_home / "runs"
    assert main(["distill", str(cfg)]) == 0
    (runs / "killed").mkdir()
    shutil.copytree(runs / "ref" / "distill", runs / "killed" / "distill")
    assert main(["dpo", str(cfg)]) == 0  # the uninterrupted reference
    ref = json.loads((runs / "ref" / "dpo" / "manifest.json").read_text())
    assert ref["counts"]["pairs"] == 4, "distill made fewer than 4 pairs: raise its max_tokens"
    assert ref["counts"]["steps"] == 3 and ref["counts"]["resumed_from_step"] == 0

    env = {**os.environ, "CHARTER_HOME": str(charter_home), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "charter.cli", "dpo", str(cfg), "name=killed"]
    first = runs / "killed" / "dpo" / "trainer" / "checkpoint-1"
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not checkpoint_complete(first, 1):
        assert p.poll() is None, f"dpo ended before its first checkpoint:\n{p.stderr.read()[-3000:]}"
        assert time.time() - t0 < 900, "no checkpoint within 15 minutes"
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert not (runs / "killed" / "dpo" / "manifest.json").exists()  # killed mid-training, not after

    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((runs / "killed" / "dpo" / "manifest.json").read_text())
    # The rerun continued from the checkpoint: steps counted on from it, each logged once, none repeated.
    assert 1 <= m["counts"]["resumed_from_step"] < 3 and m["counts"]["steps"] == 3
    history = json.loads((runs / "killed" / "dpo" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    assert not list((runs / "killed" / "dpo" / "trainer").glob("checkpoint-*"))  # dropped once finished
    a, b = adapter(runs / "ref"), adapter(runs / "killed")
    assert a.keys() == b.keys() and a
    for name in a:  # same weights as the uninterrupted run (optimizer, schedule, RNG and data order restored)
        assert (a[name] - b[name]).abs().max().item() <= 1e-5 + 1e-4 * a[name].abs().max().item(), name
    assert any(a[n].abs().max() > 0 for n in a if "lora_B" in n)  # the adapters did train
