"""The orchestrator: every stage in order, constitution to final model: ``charter train configs/demo.yaml``.

It runs the registry's stages (``charter.registry``) in their order; a stage reads what its predecessors wrote
through ``charter.layout`` and never calls them. ``charter dpo CONFIG`` is ``run(cfg, until="dpo")``: whatever
earlier stage is missing runs first.

Each stage skips itself when its manifest exists and resumes from its rows when it does not, so rerunning
after a crash or ``kill -9`` continues where the run stopped. A stage whose inputs changed (an upstream stage
was forced or redone since) is stale and is redone, and so is everything after it (see ``charter.runs``).
A stage's entry may say it is ``enabled(cfg)`` (False: skipped, e.g. expand when ``expand.enabled`` is off)
and ``check(cfg)`` (raises before any stage runs, e.g. a set-up introspection would refuse after DPO).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout, registry
from ..registry import Stage
from ..runs import manifest_path, read_manifest, run_dir

if TYPE_CHECKING:
    from ..config import RunConfig


def training() -> tuple[str, ...]:
    """The stages a multi-process launch runs on every process."""
    return tuple(s.name for s in registry.stages() if s.trains)


def plan(cfg: RunConfig, until: str | None = None) -> list[Stage]:
    """The enabled stages before ``until``, then ``until`` itself, which runs when asked for even if disabled
    (``charter expand`` with ``expand.enabled: false``); every enabled stage when ``until`` is None."""
    stages = registry.stages()
    if until is not None:
        stages = stages[: registry.stage_names().index(registry.stage(until).name) + 1]
    return [s for s in stages if s.name == until or s.enabled is None or s.enabled(cfg)]


def run_stages(cfg: RunConfig, until: str | None = None, force: bool | Collection[str] = False,
               report: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the stages up to ``until``; returns the last one's folder.

    ``force``: True redoes every stage of the plan; a collection of stage names redoes only those (``charter
    dpo --force`` redoes DPO, not the distillation it reads). ``report`` gets each stage's summary line."""
    steps = plan(cfg, until)
    for s in steps:  # a set-up a later stage would refuse fails now, not after hours of earlier ones
        if s.check is not None:
            s.check(cfg)
    from ..distributed import launch_problem, on_main, require_upstream, world_size

    out, launched, trained, training_ = None, world_size() > 1, False, training()
    # Under `accelerate launch`, only the training stages run on every process: a stage that is not one and has
    # not finished is refused before anything runs (on the main process alone it would keep the other ranks
    # waiting in a collective past its timeout, e.g. introspection after DPO).
    problem = launched and launch_problem(run_dir(cfg.name), [s.name for s in steps], training_, until or "train")
    if problem:
        raise RuntimeError(problem)
    for s in steps:
        name = s.name
        redo = force if isinstance(force, bool) else name in force
        if launched and name not in training_:
            # Under `accelerate launch`, only the training stages run on every process; every other stage has
            # finished (checked above): before training it is read as is, after it the main process checks it
            # is still current (a skip) while the others wait.
            if not trained:
                require_upstream(run_dir(cfg.name), name, until or "train")
                out = run_dir(cfg.name) / name
                continue
            out = on_main(lambda s=s, redo=redo: s.run(cfg, force=redo))
        else:
            trained = trained or name in training_
            out = s.run(cfg, force=redo)
        if report is not None:
            report(s.summary(read_manifest(manifest_path(Path(out)))))
    return out


def run(cfg: RunConfig, force: bool | Collection[str] = False, report: Callable[[str], None] | None = None,
        until: str | None = None) -> Path:
    """Run (or resume) every stage; ``force`` redoes them all. Returns the final model's folder (with
    ``until``: that stage's folder)."""
    out = run_stages(cfg, until, force, report)
    return out if until is not None else layout.path(cfg, "final_model")
