"""Every evaluation of a run, then the report.

    charter eval all configs/demo.yaml [key=value ...]

Order: the registry's (``registry.eval_order``: steering first, since the steered condition needs its
direction; traits is skipped, in one line, while ``traits.data`` is unset), then ``charter report``. Each evaluation is resumable on its own, so a rerun redoes only what is missing. One
that is not installed or fails is reported in one line and the rest still run: a report with one section
marked "not run" is more use than none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import registry
from ..runs import run_dir, silent

if TYPE_CHECKING:
    from ..config import RunConfig


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Run every evaluation in order, then build the report; returns the report's path."""
    return run_all(cfg, force, report)[0]


def run_all(cfg: RunConfig, force: bool = False, report=silent) -> tuple[Path, list[str]]:
    """Run every evaluation in order, then build the report; returns the report's path and the evaluations
    that failed or could not run (``charter eval all`` exits non-zero when there are any)."""
    started, failed, skipped = time.time(), [], []
    steps = registry.eval_order()
    for e in steps:
        name, t0 = e.name, time.time()
        # An evaluation that needs something only the user can supply (a local dataset) says why it is left out
        # through ``skip(cfg)``: not a failure, so `charter eval all` still exits 0.
        why_not = e.skip(cfg) if e.skip is not None else None
        if why_not:
            skipped.append(name)
            report(f"eval all: {name} skipped: {why_not}")
            continue
        try:
            e.run(cfg, force=force, report=report)
        except KeyboardInterrupt:
            raise
        except ImportError as err:  # an optional package it needs is not installed
            failed.append(name)
            report(f"eval all: {name} not available ({type(err).__name__}: {err}); skipped")
            continue
        except Exception as err:  # noqa: BLE001 - one failed evaluation must not stop the others
            failed.append(name)
            report(f"eval all: {name} FAILED after {time.time() - t0:.0f}s: {type(err).__name__}: {err}")
            continue
        report(f"eval all: {name} done in {time.time() - t0:.0f}s")
    from .report import build

    run_dir(cfg.name).mkdir(parents=True, exist_ok=True)  # a report even when every evaluation failed
    out = build(run_dir(cfg.name))
    report(f"eval all: {len(steps) - len(failed) - len(skipped)}/{len(steps)} evaluations ran"
           + (f" (failed or missing: {', '.join(failed)})" if failed else "")
           + (f" (skipped: {', '.join(skipped)})" if skipped else "")
           + f" in {time.time() - started:.0f}s; report -> {out}")
    return out, failed
