"""Every stage in order, constitution to final model: ``charter train configs/demo.yaml``.

Each stage skips itself when its manifest exists and resumes from its rows when it does not, so rerunning
after a crash or ``kill -9`` continues where the run stopped. A stage whose inputs changed (an upstream stage
was forced or redone since) is stale and is redone, and so is everything after it (see ``charter.runs``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from ..config import RunConfig
from ..runs import read_manifest, run_dir

ORDER = ["expand", "distill", "dpo", "introspect", "sft", "merge"]


def run(cfg: RunConfig, force: bool = False, report: Callable[[str], None] = print) -> Path:
    """Run (or resume) every stage; ``force`` redoes them all. Returns the final model's folder."""
    from . import introspect

    introspect.distilled_spec(cfg)  # a set-up introspection would refuse fails now, not after DPO
    out = None
    for name in ORDER:
        if name == "expand" and not cfg.expand.enabled:
            continue
        mod = importlib.import_module(f"charter.stages.{name}")
        out = mod.run(cfg, force=force)
        report(mod.summary(read_manifest(Path(out) / "manifest.json")))
    return run_dir(cfg.name) / "merge" / "model"
