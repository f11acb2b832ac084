"""Pinned identities: every stage's and evaluation's recorded config and identity hash for the shipped configs
(and variants that set speed knobs, prefix_cache and fields that count only off their "as before" value).

A change to how identities are declared must leave these unchanged, or every finished run would be redone.
The expected values in ``tests/fixtures/identity/`` were written by this file's generator; regenerate them
only for a deliberate identity change:

    .venv/bin/python tests/test_identity_hashes.py --write
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "identity"

STAGES = ["charter.stages.expand", "charter.stages.distill", "charter.stages.dpo", "charter.stages.introspect",
          "charter.stages.sft", "charter.stages.merge", "charter.stages.rl", "charter.eval.preferences",
          "charter.eval.steering", "charter.eval.robustness", "charter.eval.coherence", "charter.eval.drift",
          "charter.eval.formats"]
LABELS = ["base", "prompted", "prompted-nonote", "steered"]  # run models need a run on disk

# Knobs that change speed only (explicit float32 dtypes: prefix_cache is a speed knob there).
SPEED = ["student.dtype=float32", "student.prefix_cache=false", "student.batch_size=4",
         "distill.teacher={model: embedded, dtype: float32, prefix_cache: false, batch_size: 2, max_concurrency: 1}",
         "distill.chunk_size=8", "introspect.chunk_size=3", "preferences.chunk_size=5", "robustness.chunk_size=7",
         "capabilities.batch_size=2", "dpo.checkpoint_steps=3", "sft.checkpoint_steps=0", "rl.checkpoint_steps=9",
         "preferences.judge={model: embedded, dtype: fp32, prefix_cache: false, timeout: 5.0}",
         "coherence.judge={model: embedded, backend: openai, base_url: 'http://x/v1', prefix_cache: false, "
         "max_retries: 1}"]
# Fields that count: prefix_cache off in bfloat16, "as before" fields off their value, evaluation settings.
COUNTED = ["student.dtype=bfloat16", "student.prefix_cache=false",
           "expand.model={model: embedded, dtype: float16, prefix_cache: false}",
           "introspect.model={model: embedded, dtype: bf16, prefix_cache: false}",
           "rl.judge={model: embedded, dtype: bfloat16, prefix_cache: false, batch_size: 3}",
           "dpo.trl={max_steps: 4, per_device_train_batch_size: 4}", "dpo.batch_size=8", "dpo.eval_fraction=0.25",
           "dpo.model_kwargs={attn_implementation: eager}",
           "sft.trl={max_steps: 2, per_device_train_batch_size: 2}", "sft.batch_size=8", "sft.eval_fraction=0.1",
           "sft.model_kwargs={revision: main}",
           "merge.sft_weight=0.5", "merge.dtype=float32",
           "robustness.conditions=[base, trained]", "robustness.bootstrap=10", "robustness.prompts=40",
           "drift.chunk_size=4", "drift.cap_level=0.25", "drift.turns=5",
           "formats.bootstrap=20", "formats.samples=2", "formats.per_format=1", "coherence.against=[base]",
           "preferences.models=[base]", "steering.stems=8"]
CASES = {"demo": ("configs/demo.yaml", []), "cpu-sarcastic": ("configs/cpu-sarcastic.yaml", []),
         "demo-speed": ("configs/demo.yaml", SPEED), "demo-counted": ("configs/demo.yaml", COUNTED)}


def compute(case: str) -> dict:
    """{stage: {"recorded": hash of the recorded config, "identity": its identity hash}} and each condition's
    identity (no run on disk: the model spec, system prompt and shots only)."""
    from charter.config import load_config
    from charter.eval import conditions
    from charter.runs import config_hash, identity_hash

    path, overrides = CASES[case]
    cfg = load_config(ROOT / path, overrides)
    out: dict = {"stages": {}, "conditions": {}}
    for name in STAGES:
        config = importlib.import_module(name).stage_config(cfg)
        out["stages"][name.rsplit(".", 1)[1]] = {"recorded": config_hash(config), "identity": identity_hash(config)}
    for label in LABELS:
        out["conditions"][label] = conditions.identity(cfg, label)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_identities_unchanged(case):
    expected = json.loads((FIXTURES / f"{case}.json").read_text())
    assert compute(case) == expected


if __name__ == "__main__" and "--write" in sys.argv:
    import os
    import tempfile

    os.environ["CHARTER_HOME"] = tempfile.mkdtemp()  # no run on disk: stage identities are absent
    sys.path.insert(0, str(ROOT))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for c in sorted(CASES):
        (FIXTURES / f"{c}.json").write_text(json.dumps(compute(c), indent=1, sort_keys=True) + "\n")
        print(c)
