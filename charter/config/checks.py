"""Value checks beyond types: each field's own check (declared on the field, ``fields.setting``), run names,
model_kwargs (what needs files or packages is in ``charter.preflight``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .fields import check_of
from .sections import MODEL_KWARGS, MODEL_KWARGS_ELSEWHERE

if TYPE_CHECKING:
    from .run import RunConfig


def _walk(obj: Any, path: str):
    """(dataclass instance, its key path) for ``obj`` and every section below it."""
    yield obj, path
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _walk(v, f"{path}.{f.name}")


def check_fields(obj: Any, where: str = "config") -> None:
    """Every field check of dataclass ``obj`` and of every section below it: ConfigError naming the key path,
    what was expected and the value. Unset optional fields (None) are not checked."""
    for section, path in _walk(obj, where):
        for f in dataclasses.fields(section):
            check = check_of(f)
            value = getattr(section, f.name)
            if check is None or value is None:
                continue
            items = enumerate(value) if check.each and isinstance(value, list) else [(None, value)]
            for i, item in items:
                if not check(item):
                    at = f"{path}.{f.name}" + ("" if i is None else f"[{i}]")
                    raise ConfigError(f"{at}: expected {check.describe()}, got {item!r}")


def validate(cfg: RunConfig, where: str = "config") -> None:
    """Field checks, counts and run names: ConfigError naming the key path, what was expected and the value."""
    from ..runs import run_name_problem

    check_fields(cfg, where)
    problem = run_name_problem(cfg.name)
    if problem:
        raise ConfigError(f"{where}.name: {problem}")
    from ..distributed import batch_plan  # light: no torch

    for section in ("dpo", "sft"):
        stage = getattr(cfg, section)
        check_model_kwargs(stage.model_kwargs, f"{where}.{section}.model_kwargs")
        batch_plan(stage.trl, stage.batch_size, f"{where}.{section}")  # under a launcher: its process count
    for i, other in enumerate(cfg.robustness.personas):
        problem = run_name_problem(other)
        if problem:
            raise ConfigError(f"{where}.robustness.personas[{i}]: {problem}")


def check_model_kwargs(kwargs: dict, where: str) -> None:
    """Keys and value types of a training stage's ``model_kwargs`` (see MODEL_KWARGS_HELP)."""
    for key, value in kwargs.items():
        if key in MODEL_KWARGS_ELSEWHERE:
            raise ConfigError(f"{where}.{key}: set {MODEL_KWARGS_ELSEWHERE[key]} instead")
        if key not in MODEL_KWARGS:
            import difflib

            close = difflib.get_close_matches(str(key), MODEL_KWARGS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; expected one of {', '.join(MODEL_KWARGS)}")
        types_ = MODEL_KWARGS[key]
        if not isinstance(value, types_) or (bool not in types_ and isinstance(value, bool)):
            names = " or ".join("a mapping" if t is dict else t.__name__ for t in types_)
            raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    if kwargs.get("load_in_4bit") and kwargs.get("load_in_8bit"):
        raise ConfigError(f"{where}: load_in_4bit and load_in_8bit are exclusive; set one")
