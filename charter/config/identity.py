"""Which config fields are part of a stage's identity: read from each field's metadata (``fields.setting``).

A stage's identity (``charter.runs``) hashes the config it was made with. Every field counts except those whose
``identity`` says otherwise (``fields`` describes the rules: ``False``, ``Speed(v)``, ``AsBefore(v)``,
``PrefixCache()``). ``identity_view`` applies them to a recorded config (plain dicts and lists) by walking the
run config's dataclasses alongside it: a key that names a field gets that field's rule, and a value below it
the rules of the field's dataclass. So a model spec's speed knobs are declared once, on ``ModelSpec``, and hold
wherever a model spec appears (``student``, ``distill.teacher``, ``expand.model``, the judges...).

``dpo.batch_size`` and ``sft.batch_size`` are the effective training batch: they change what is trained, so
they count (as before while unset). A model spec met outside the run config's own tree (an evaluation hashing
the model a condition runs, or its judge: a whole ``ModelSpec`` dict) is viewed as a ``ModelSpec`` too.

``recorded(section)`` is a section as its stage config records it: the fields that do not count (``False``, or
``AsBefore`` at its value) left out, as the evaluations' own exclusion lists used to leave them out.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Any

from .fields import AsBefore, PrefixCache, Speed, dataclass_type, identity_of

__all__ = ["AsBefore", "PrefixCache", "Speed", "identity_view", "recorded"]

_DROP = object()  # a field left out of the view


@lru_cache(maxsize=None)
def _fields(cls: type) -> dict[str, tuple[Any, type | None]]:
    """Field name -> (its identity rule, the dataclass its value is, if any)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (identity_of(f), dataclass_type(hints[f.name])) for f in dataclasses.fields(cls)}


@lru_cache(maxsize=1)
def _model_fields() -> frozenset[str]:
    from .sections import ModelSpec

    return frozenset(f.name for f in dataclasses.fields(ModelSpec))


def _root() -> type:
    from .run import RunConfig

    return RunConfig


def _at(path: str) -> type | None:
    """The dataclass at dotted ``path`` of the run config ('' is the run config itself), or None."""
    cls: type | None = _root()
    for part in filter(None, path.split(".")):
        cls = _fields(cls)[part][1] if cls is not None and part in _fields(cls) else None
    return cls


def _resolves_to_float32(spec: dict) -> bool:
    """Whether a model spec's dtype is float32 where it runs (``auto`` asks the hardware, which loads torch:
    only reached when ``prefix_cache`` differs from its fixed value)."""
    from ..hardware import DTYPE_NAMES, resolve_dtype

    dtype = spec.get("dtype", "auto")
    if dtype != "auto":
        return DTYPE_NAMES.get(dtype) == "float32"
    return resolve_dtype("auto", str(spec.get("device", "auto"))) == "float32"


def _prefix_cache_counts(spec: dict, value: Any, rule: PrefixCache) -> bool:
    if value == rule.fixed or spec.get("backend") == "openai":
        return False
    return not _resolves_to_float32(spec)


def _apply(rule: Any, value: Any, owner: dict) -> Any:
    """``value`` as the identity sees it under ``rule`` (``_DROP``: left out); ``owner``: the dict holding it."""
    if rule is False:
        return _DROP
    if isinstance(rule, Speed):
        return rule.fixed
    if isinstance(rule, AsBefore):
        return _DROP if value == rule.value else value
    if isinstance(rule, PrefixCache):
        return value if _prefix_cache_counts(owner, value, rule) else rule.fixed
    return value


def _view(obj: Any, cls: type | None) -> Any:
    if isinstance(obj, dict):
        from .sections import ModelSpec

        if cls is not ModelSpec and set(obj) == _model_fields():
            cls = ModelSpec  # a standalone model spec (a condition's model, a judge)
        fields = _fields(cls) if cls is not None else {}
        out = {}
        for k, v in obj.items():
            rule, sub = fields.get(k, (True, None))
            v = _view(v, sub) if rule is True else _apply(rule, v, obj)
            if v is not _DROP:
                out[k] = v
        return out
    if isinstance(obj, (list, tuple)):
        return [_view(v, cls) for v in obj]
    return obj


def identity_view(obj: Any, at: str = "") -> Any:
    """``obj`` (a stage's config as plain dicts and lists, its top-level keys the run config's sections) as
    its identity sees it: each field's rule applied. ``at``: the dotted path of ``obj`` itself."""
    return _view(obj, _at(at))


def recorded(section: Any) -> dict:
    """A config section (a dataclass instance) as a stage config records it: its fields as plain values, less
    those that never count or hold their "as before" value. Speed knobs are kept (manifests show the value used;
    the identity sees them at their fixed value)."""
    def kept(rule: Any, value: Any) -> bool:
        return rule is not False and not (isinstance(rule, AsBefore) and value == rule.value)

    fields = _fields(type(section))
    return {k: v for k, v in dataclasses.asdict(section).items() if kept(fields[k][0], v)}
