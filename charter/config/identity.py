"""Which config fields are part of a stage's identity: declared per field, by dotted config path, in one place.

A stage's identity (``charter.runs``) hashes the config it was made with. Every field counts, except those
this table names, each by its real path in the run config (``charter config show`` prints them):

- ``Speed(v)``: a knob that changes how fast a stage runs, not what it computes (beyond floating-point
  rounding and which rows a batch holds). Every identity sees it at the fixed value ``v`` (the default it
  had when identities began), so identities of configs that never set it are what they were, and tuning it
  on a live run neither errors nor redoes finished work. Manifests still record the value used;
- ``Out()``: never part of what is made (checkpoint cadence);
- ``AsBefore(v)``: a field added after runs existed; left out while it holds ``v``, the value that means
  "as before", so finished runs stay valid, and counted as soon as it says something else;
- ``PrefixCache()``: a model's ``prefix_cache``. Reusing a shared prefix's KV cache is exact in float32
  (8/8 greedy texts equal in ``benchmarks/generation.py``) but not in bfloat16/float16 (1/8: the rounding
  differs with the layout). So it is a speed knob only where the model's dtype resolves to float32 (or the
  backend does not run the model here: ``openai``), and part of the identity everywhere else.

``dpo.batch_size`` and ``sft.batch_size`` are the effective training batch: they change what is trained, so
they count (as before while unset). A model spec met outside the run config's own tree (an evaluation hashing
the model a condition runs, or its judge: a whole ``ModelSpec`` dict) is viewed by the ``student`` entries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Speed:
    fixed: Any


@dataclass(frozen=True)
class Out:
    pass


@dataclass(frozen=True)
class AsBefore:
    value: Any


@dataclass(frozen=True)
class PrefixCache:
    fixed: bool = True


IDENTITY: dict[str, Any] = {
    # the student (the model being trained, and every evaluation's base)
    "student.batch_size": Speed(32),
    "student.prefix_cache": PrefixCache(),
    "student.max_concurrency": Speed(8),
    "student.max_retries": Speed(5),
    "student.timeout": Speed(300.0),
    # the distillation teacher
    "distill.teacher.batch_size": Speed(32),
    "distill.teacher.prefix_cache": PrefixCache(),
    "distill.teacher.max_concurrency": Speed(8),
    "distill.teacher.max_retries": Speed(5),
    "distill.teacher.timeout": Speed(300.0),
    # the expansion model (a copy of the teacher unless set)
    "expand.model.batch_size": Speed(32),
    "expand.model.prefix_cache": PrefixCache(),
    "expand.model.max_concurrency": Speed(8),
    "expand.model.max_retries": Speed(5),
    "expand.model.timeout": Speed(300.0),
    # the introspection model (default: the run's distilled model)
    "introspect.model.batch_size": Speed(32),
    "introspect.model.prefix_cache": PrefixCache(),
    "introspect.model.max_concurrency": Speed(8),
    "introspect.model.max_retries": Speed(5),
    "introspect.model.timeout": Speed(300.0),
    # the RL judge reward's model
    "rl.judge.batch_size": Speed(32),
    "rl.judge.prefix_cache": PrefixCache(),
    "rl.judge.max_concurrency": Speed(8),
    "rl.judge.max_retries": Speed(5),
    "rl.judge.timeout": Speed(300.0),
    # the evaluations' judges
    "preferences.judge.batch_size": Speed(32),
    "preferences.judge.prefix_cache": PrefixCache(),
    "preferences.judge.max_concurrency": Speed(8),
    "preferences.judge.max_retries": Speed(5),
    "preferences.judge.timeout": Speed(300.0),
    "coherence.judge.batch_size": Speed(32),
    "coherence.judge.prefix_cache": PrefixCache(),
    "coherence.judge.max_concurrency": Speed(8),
    "coherence.judge.max_retries": Speed(5),
    "coherence.judge.timeout": Speed(300.0),
    # rows generated and committed together (each row's seed does not depend on its chunk)
    "distill.chunk_size": Speed(64),
    "introspect.chunk_size": Speed(64),
    "preferences.chunk_size": Speed(64),
    "robustness.chunk_size": Speed(64),
    "capabilities.batch_size": Speed(8),
    # training stages: checkpoint cadence never counts; fields added later count once they leave "as before".
    # dpo.batch_size / sft.batch_size (the effective batch) are deliberately NOT speed knobs.
    "dpo.checkpoint_steps": Out(),
    "dpo.batch_size": AsBefore(None),
    "dpo.eval_fraction": AsBefore(0.0),
    "dpo.model_kwargs": AsBefore({}),
    "sft.checkpoint_steps": Out(),
    "sft.batch_size": AsBefore(None),
    "sft.eval_fraction": AsBefore(0.0),
    "sft.model_kwargs": AsBefore({}),
    "rl.checkpoint_steps": Out(),
    "merge.sft_weight": AsBefore(1.0),
}

# Where a model spec lives in the run config; one met anywhere else is viewed as the student's.
MODEL_PATHS = ("student", "distill.teacher", "expand.model", "introspect.model", "rl.judge", "preferences.judge",
               "coherence.judge")
STANDALONE_MODEL = "student"


@lru_cache(maxsize=1)
def _model_fields() -> frozenset[str]:
    from .sections import ModelSpec

    return frozenset(f.name for f in dataclasses.fields(ModelSpec))


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


def identity_view(obj: Any, at: str = "") -> Any:
    """``obj`` (a stage's config as plain dicts and lists, its top-level keys the run config's sections) as
    its identity sees it: the table's rules applied by path. ``at``: the path of ``obj`` itself."""
    if isinstance(obj, dict):
        if at not in MODEL_PATHS and set(obj) == _model_fields():
            at = STANDALONE_MODEL
        out = {}
        for k, v in obj.items():
            path = f"{at}.{k}" if at else str(k)
            rule = IDENTITY.get(path)
            if rule is None:
                out[k] = identity_view(v, path)
            elif isinstance(rule, Speed):
                out[k] = rule.fixed
            elif isinstance(rule, Out):
                continue
            elif isinstance(rule, AsBefore):
                if v != rule.value:
                    out[k] = v
            elif isinstance(rule, PrefixCache):
                out[k] = v if _prefix_cache_counts(obj, v, rule) else rule.fixed
        return out
    if isinstance(obj, (list, tuple)):
        return [identity_view(v, at) for v in obj]
    return obj
