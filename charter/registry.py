"""What charter can run: one descriptor per training stage and per evaluation.

The built-ins are declared beside their modules (``charter/stages/__init__.py``, ``charter/eval/__init__.py``);
a plugin is a module named in ``$CHARTER_PLUGINS`` (comma-separated) that calls ``register(...)`` when imported.
Everything that lists stages or evaluations reads them from here: the run config's sections
(``charter.config.run``), the CLI's subcommands, the pre-run checks, ``charter train``'s order, the
conditions evaluations compare, the report and the model card.

Low level on purpose: this module imports nothing of charter's. ``load()`` imports the built-in declarations
and the plugins once, on first use; a stage or evaluation module must not read the registry while it is being
imported (read it inside functions).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGINS_ENV = "CHARTER_PLUGINS"
# The built-in declarations, loaded like plugins: by name, so that this module imports nothing of charter's
# (every module may read the registry without an import cycle through the stages it lists).
BUILTINS = ("charter.stages", "charter.eval")
EVAL_PREFIX = "eval-"
# The conditions no stage or evaluation makes: the student as it is, and prompted as the distillation teacher was
# (with and without the persistence note). The others are the registered entries' ``condition`` labels.
STUDENT_CONDITIONS = BASE, PROMPTED, NONOTE = ("base", "prompted", "prompted-nonote")
# The labels the built-in entries give their conditions, spelled here once so that the entries and the config's
# default condition lists share them (a plugin's entry spells its own).
STEERED, CAPPED, DISTILLED, TRAINED, RL = "steered", "capped", "distilled", "trained", "rl"


def eval_folder(name: str) -> str:
    """The run sub-folder evaluation ``name`` writes (``eval-<name>``)."""
    return f"{EVAL_PREFIX}{name}"


@dataclass(frozen=True)
class Trainer:
    """What a training stage's ``trl``/``lora`` dicts pass to, so they are checked before any work."""
    trl: str  # the TRL class its ``trl`` dict is read by, as preflight names it ("trl DPOConfig")
    build: Callable[[Any, Any, str], Any]  # build(cfg, section, scratch_dir): the TRL config object, or raise
    setup: bool = True  # also check its ``model_kwargs`` and the tracking package (``training.check_setup``)


@dataclass(frozen=True)
class Stage:
    """A training stage: ``charter NAME CONFIG``, the run folder ``<run>/NAME/`` and the config section NAME."""
    name: str
    help: str
    run: Callable[..., Path]  # run(cfg, force=False) -> its folder
    summary: Callable[[dict], str]  # one line from its manifest
    section: type | None = None  # the dataclass of its config section (RunConfig field NAME)
    section_help: str = ""
    needs: tuple[str, ...] = ()  # the stages it reads (upstream)
    outputs: dict[str, str] = field(default_factory=dict)  # key -> file or folder inside <run>/NAME ('' = it)
    model: str | None = None  # the output key of the model it makes: an evaluation condition
    condition: str | None = None  # that condition's label
    adapter: str | None = None  # the output key of the same model as one LoRA on the student's base
    prompts: tuple[str, ...] = ()  # output keys whose rows hold the user prompts it trained on
    trains: bool = False  # under a multi-process launch it runs on every process
    trainer: Trainer | None = None
    enabled: Callable[[Any], bool] | None = None  # False: `charter train` skips it
    check: Callable[[Any], None] | None = None  # refuses a set-up before any stage of the plan runs
    preflight: Callable[[Any, str, bool], list] | None = None  # (cfg, where, it will run) -> [(ModelSpec, where)]
    card: Callable[[dict], str] | None = None  # card(its manifest) -> the model card's training-data bullet
    color: str | None = None  # its condition's colour in the report's figures


@dataclass(frozen=True)
class Section:
    """One section of the HTML report."""
    key: str  # the anchor
    title: str
    html: Callable[[Path], str]  # html(run folder) -> the section's body


@dataclass(frozen=True)
class Evaluation:
    """An evaluation: ``charter eval NAME CONFIG``, the run folder ``<run>/eval-NAME/``, the section NAME."""
    name: str
    help: str
    run: Callable[..., Path]  # run(cfg, force=, report=) -> its folder
    section: type | None = None
    section_help: str = ""
    results: str = "results.json"  # the file in its folder whose presence means it has results
    report: tuple[Section, ...] = ()  # its sections of the HTML report
    card: Callable[[Path], list[str]] | None = None  # card(its folder) -> Markdown lines of the model card
    condition: str | None = None  # a condition its output makes (the steering vector: 'steered')
    color: str | None = None  # that condition's colour in the report's figures
    own_conditions: tuple[str, ...] = ()  # conditions only this evaluation compares (drift's 'capped')
    first: bool = False  # `charter eval all` runs it before the others (their conditions read its output)
    skip: Callable[[Any], str | None] | None = None  # why `charter eval all` leaves it out, or None
    preflight: Callable[[Any, str], list] | None = None  # (cfg, where) -> [(ModelSpec, where)]; raises ConfigError
    packages: tuple[str, ...] = ()  # what `charter eval NAME` needs installed, required up front
    prompts: Callable[[Any], list[str]] | None = None  # the prompt sources it asks from: RL never trains on them
    cli_args: Callable[[Any], None] | None = None  # adds its own options to `charter eval NAME`
    cli_overrides: Callable[[Any], list[str]] | None = None  # those options as key=value overrides

    @property
    def folder(self) -> str:
        return eval_folder(self.name)


_STAGES: dict[str, Stage] = {}
_EVALS: dict[str, Evaluation] = {}
_state = {"loaded": False, "loading": False}


def register(entry: Stage | Evaluation) -> None:
    """Add a stage or an evaluation (a plugin calls this when imported); a name already taken is an error."""
    table = _STAGES if isinstance(entry, Stage) else _EVALS
    other = _EVALS if isinstance(entry, Stage) else _STAGES
    if entry.name in table or entry.name in other or entry.name in RESERVED:
        raise ValueError(f"registry: '{entry.name}' is already a stage, an evaluation or a command")
    table[entry.name] = entry


RESERVED = frozenset({"train", "all", "name", "report_to", "run_name", "persona", "seed", "student"})


def load() -> None:
    """Import the built-in declarations, then every module named in ``$CHARTER_PLUGINS`` (once, in order)."""
    if _state["loaded"]:
        return
    if _state["loading"]:
        raise RuntimeError("registry: read while the stages and evaluations are being imported (a module that "
                           "reads it at import time must read it inside a function instead)")
    _state["loading"] = True
    try:
        plugins = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
        for name in (*BUILTINS, *plugins):
            importlib.import_module(name)
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def stages() -> tuple[Stage, ...]:
    """The training stages in pipeline order."""
    load()
    return tuple(_STAGES.values())


def evaluations() -> tuple[Evaluation, ...]:
    """The evaluations in declaration order (the run config's section order)."""
    load()
    return tuple(_EVALS.values())


def eval_order() -> tuple[Evaluation, ...]:
    """The evaluations in the order ``charter eval all`` runs them."""
    es = evaluations()
    return tuple(e for e in es if e.first) + tuple(e for e in es if not e.first)


def stage(name: str) -> Stage:
    load()
    if name not in _STAGES:
        raise ValueError(f"stage '{name}': expected one of {', '.join(_STAGES)}")
    return _STAGES[name]


def evaluation(name: str) -> Evaluation:
    load()
    if name not in _EVALS:
        raise ValueError(f"evaluation '{name}': expected one of {', '.join(_EVALS)}")
    return _EVALS[name]


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in stages())


def eval_names() -> tuple[str, ...]:
    return tuple(e.name for e in eval_order())


def sections() -> list[tuple[str, type, str]]:
    """(field name, dataclass, help) of every stage's and evaluation's config section, stages first."""
    return [(e.name, e.section, e.section_help) for e in (*stages(), *evaluations()) if e.section is not None]


def eval_prompt_sources(cfg) -> list[str]:
    """Every prompt source an evaluation asks from (its entry's ``prompts``), each once: no stage may train on
    a prompt of them (the RL stage's evaluation pools)."""
    return list(dict.fromkeys(s for e in evaluations() if e.prompts is not None for s in e.prompts(cfg)))


def outputs() -> dict[str, tuple[str, str]]:
    """Every output a stage declares: key -> (stage folder, file or folder inside it)."""
    return {key: (s.name, sub) for s in stages() for key, sub in s.outputs.items()}


def run_models() -> dict[str, Stage]:
    """Condition label -> the stage that makes that model, in pipeline order."""
    return {s.condition: s for s in stages() if s.condition is not None}


def conditions() -> tuple[str, ...]:
    """Every condition an evaluation can compare, in the order tables list them: the student's, then what each
    evaluation (the steering vector) and each stage (the run's models) makes."""
    made_by_evals = tuple(e.condition for e in evaluations() if e.condition)
    return (*STUDENT_CONDITIONS, *made_by_evals, *run_models())


def trained_prompts() -> tuple[str, ...]:
    """The output keys whose rows hold the user prompts some stage trained on."""
    return tuple(key for s in stages() for key in s.prompts)
