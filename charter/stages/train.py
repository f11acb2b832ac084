"""The orchestrator: every stage in order, constitution to final model: ``charter train configs/demo.yaml``.

It is the only module that knows the stages (by name, from ``charter.layout.STAGES``); a stage reads what its
predecessors wrote through ``charter.layout`` and never calls them. ``charter dpo CONFIG`` is
``run(cfg, until="dpo")``: whatever earlier stage is missing runs first.

Each stage skips itself when its manifest exists and resumes from its rows when it does not, so rerunning
after a crash or ``kill -9`` continues where the run stopped. A stage whose inputs changed (an upstream stage
was forced or redone since) is stale and is redone, and so is everything after it (see ``charter.runs``).

A stage module provides ``run(cfg, force=False) -> Path`` (its folder), ``summary(manifest) -> str`` and
``stage_config(cfg)``; optionally ``enabled(cfg)`` (False: skipped, e.g. expand when ``expand.enabled`` is
off) and ``check(cfg)`` (raises before any stage runs, e.g. a set-up introspection would refuse after DPO).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType

from .. import layout
from ..config import RunConfig
from ..runs import read_manifest, run_dir


TRAINING = tuple(s.name for s in layout.STAGES if s.trains)  # a multi-process launch runs these on every process


def stage_module(name: str) -> ModuleType:
    if name not in layout.STAGE_NAMES:
        raise ValueError(f"stage '{name}': expected one of {', '.join(layout.STAGE_NAMES)}")
    return importlib.import_module(f"charter.stages.{name}")


def plan(cfg: RunConfig, until: str | None = None) -> list[tuple[str, ModuleType]]:
    """The enabled stages before ``until``, then ``until`` itself, which runs when asked for even if disabled
    (``charter expand`` with ``expand.enabled: false``); every enabled stage when ``until`` is None."""
    names = layout.STAGE_NAMES[: layout.STAGE_NAMES.index(until) + 1] if until else layout.STAGE_NAMES
    mods = [(n, stage_module(n)) for n in names]
    return [(n, m) for n, m in mods if n == until or getattr(m, "enabled", lambda cfg: True)(cfg)]


def run_stages(cfg: RunConfig, until: str | None = None, force: bool | Collection[str] = False,
               report: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the stages up to ``until``; returns the last one's folder.

    ``force``: True redoes every stage of the plan; a collection of stage names redoes only those (``charter
    dpo --force`` redoes DPO, not the distillation it reads). ``report`` gets each stage's summary line."""
    steps = plan(cfg, until)
    for _, mod in steps:  # a set-up a later stage would refuse fails now, not after hours of earlier ones
        if hasattr(mod, "check"):
            mod.check(cfg)
    from ..distributed import launch_problem, on_main, require_upstream, world_size

    out, launched, trained = None, world_size() > 1, False
    # Under `accelerate launch`, only the training stages run on every process: a stage that is not one and has
    # not finished is refused before anything runs (on the main process alone it would keep the other ranks
    # waiting in a collective past its timeout, e.g. introspection after DPO).
    problem = launched and launch_problem(run_dir(cfg.name), [n for n, _ in steps], TRAINING, until or "train")
    if problem:
        raise RuntimeError(problem)
    for name, mod in steps:
        redo = force if isinstance(force, bool) else name in force
        if launched and name not in TRAINING:
            # Under `accelerate launch`, only the training stages run on every process; every other stage has
            # finished (checked above): before training it is read as is, after it the main process checks it
            # is still current (a skip) while the others wait.
            if not trained:
                require_upstream(run_dir(cfg.name), name, until or "train")
                out = run_dir(cfg.name) / name
                continue
            out = on_main(lambda mod=mod, redo=redo: mod.run(cfg, force=redo))
        else:
            trained = trained or name in TRAINING
            out = mod.run(cfg, force=redo)
        if report is not None:
            report(mod.summary(read_manifest(Path(out) / "manifest.json")))
    return out


def run(cfg: RunConfig, force: bool | Collection[str] = False, report: Callable[[str], None] | None = print,
        until: str | None = None) -> Path:
    """Run (or resume) every stage; ``force`` redoes them all. Returns the final model's folder (with
    ``until``: that stage's folder)."""
    out = run_stages(cfg, until, force, report)
    return out if until is not None else layout.path(cfg, "final_model")
