"""The whole run's config: the run's name, persona and seed, the student, then one section per stage and per
evaluation, in the registry's order (``charter.registry``: a stage or evaluation brings its own section).

``RunConfig`` is built on first use, once the registry has loaded the built-ins and the plugins; a module
imported while the registry loads may name it only in annotations (under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from .fields import SEED, setting
from .sections import ModelSpec

# The fields before the sections: (name, type, field).
RUN_FIELDS = (
    ("name", str, field(default="run", metadata={
        "help": "the run's folder under $CHARTER_HOME/runs (letters, digits, '.', '_', '-')"})),
    ("report_to", Literal["none", "tensorboard", "wandb", "trackio"], field(default="none", metadata={
        "help": "where DPO and SFT log their metrics as they train (TensorBoard: event files under "
                "<run>/<stage>/trainer/runs/, readable offline); none = only log_history.json"})),
    ("run_name", str | None, field(default=None, metadata={
        "help": "the name tracking tools show; default the run's name (each stage adds -dpo / -sft)"})),
    ("persona", str, field(default="loving", metadata={"help": "a shipped persona name or a constitution file path"})),
    ("seed", int, setting(123456, check=SEED, help="seeds every sampled choice and generation")),
    ("student", ModelSpec, field(default_factory=ModelSpec, metadata={
        "help": "the model being trained (and the base of every comparison)"})),
)

_built: dict[str, type] = {}


def build() -> type:
    """The ``RunConfig`` dataclass: ``RUN_FIELDS``, then every registered section."""
    from .. import registry

    if "RunConfig" not in _built:
        sections = [(name, cls, field(default_factory=cls, metadata={"help": help_}))
                    for name, cls, help_ in registry.sections()]
        cls = dataclasses.make_dataclass("RunConfig", [*RUN_FIELDS, *sections])
        cls.__module__ = __name__
        cls.__doc__ = "One run: its name, persona and seed, the student, and each stage's and evaluation's section."
        _built["RunConfig"] = cls
    return _built["RunConfig"]


def __getattr__(name: str):
    if name == "RunConfig":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
