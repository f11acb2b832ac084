"""Every evaluation of a run, then the report.

    charter eval all configs/demo.yaml [key=value ...]

Order: steering (the steered condition needs its direction), preferences, robustness (with the prefill
attack), coherence, capabilities, traits (skipped, in one line, while ``traits.data`` is unset), then
``charter report``. Each evaluation is resumable on its own, so a rerun redoes only what is missing. One
that is not installed or fails is reported in one line and the rest still run: a report with one section
marked "not run" is more use than none.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from ..config import RunConfig
from ..layout import EVALUATIONS
from ..runs import run_dir, silent

# (name, module, function) in the order of ``charter.layout.EVALUATIONS``. Imported by name so that an
# evaluation whose optional packages are missing fails alone.
STEPS = [(e.name, f"charter.eval.{e.name}", e.func) for e in EVALUATIONS]


def evaluation(name: str):
    """The function that runs evaluation ``name``: ``fn(cfg, force=, report=)``."""
    _, module, func = next(s for s in STEPS if s[0] == name)
    return getattr(importlib.import_module(module), func)


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Run every evaluation in order, then build the report; returns the report's path."""
    return run_all(cfg, force, report)[0]


def run_all(cfg: RunConfig, force: bool = False, report=silent) -> tuple[Path, list[str]]:
    """Run every evaluation in order, then build the report; returns the report's path and the evaluations
    that failed or could not run (``charter eval all`` exits non-zero when there are any)."""
    started, failed, skipped = time.time(), [], []
    for name, module, func in STEPS:
        t0 = time.time()
        try:
            mod = importlib.import_module(module)
            fn = getattr(mod, func)
        except ImportError as e:
            failed.append(name)
            why = f"{module} is missing" if getattr(e, "name", None) == module else f"{type(e).__name__}: {e}"
            report(f"eval all: {name} not available ({why}); skipped")
            continue
        # An evaluation that needs something only the user can supply (a local dataset) says why it is left out
        # through ``skip(cfg)``: not a failure, so `charter eval all` still exits 0.
        why_not = getattr(mod, "skip", lambda cfg: None)(cfg)
        if why_not:
            skipped.append(name)
            report(f"eval all: {name} skipped: {why_not}")
            continue
        try:
            fn(cfg, force=force, report=report)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed evaluation must not stop the others
            failed.append(name)
            report(f"eval all: {name} FAILED after {time.time() - t0:.0f}s: {type(e).__name__}: {e}")
            continue
        report(f"eval all: {name} done in {time.time() - t0:.0f}s")
    from .report import build

    run_dir(cfg.name).mkdir(parents=True, exist_ok=True)  # a report even when every evaluation failed
    out = build(run_dir(cfg.name))
    report(f"eval all: {len(STEPS) - len(failed) - len(skipped)}/{len(STEPS)} evaluations ran"
           + (f" (failed or missing: {', '.join(failed)})" if failed else "")
           + (f" (skipped: {', '.join(skipped)})" if skipped else "")
           + f" in {time.time() - started:.0f}s; report -> {out}")
    return out, failed
