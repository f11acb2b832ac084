"""Value checks beyond types: ranges, run names, model_kwargs (what needs files or packages is in
``charter.preflight``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .sections import MODEL_KWARGS, MODEL_KWARGS_ELSEWHERE

if TYPE_CHECKING:
    from .run import RunConfig


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A range rule: (predicate, what was expected)."""
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return False
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    if lo is not None and hi is None:
        return ok, f"a number {'>' if lo_open else '>='} {lo}"
    return ok, f"{lo_s}x{hi_s}"


_POS = _num(0, lo_open=True)
_NONNEG = _num(0)
_SHARE = _num(0, 1)
_OPEN_SHARE = _num(0, 1, lo_open=True, hi_open=True)


def _layers_ok(v) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(_SHARE[0](x) for x in v) and v[0] < v[1])


def _tasks_ok(v) -> bool:
    return all(isinstance(e, str) and e.partition(":")[0].strip() and (e.partition(":")[2].strip() or "0").isdigit()
               for e in v)


# class name -> field -> (predicate, what was expected); None values (optional fields) are not checked.
RANGES: dict[str, dict[str, tuple]] = {
    "Sampling": {"temperature": _NONNEG, "top_p": (_num(0, 1, lo_open=True)[0], "0 < top_p <= 1"),
                 "top_k": _NONNEG, "repetition_penalty": _POS, "max_tokens": _POS},
    "ModelSpec": {"batch_size": _POS, "max_concurrency": _POS, "max_retries": _NONNEG, "timeout": _POS},
    "ExpandConfig": {"target": _POS, "max_traits": _POS, "rounds": _POS, "samples_per_round": _POS,
                     "max_overlap": _SHARE},
    "DistillConfig": {"samples_per_prompt": _POS, "constitution_prompts": _NONNEG, "general_prompts": _NONNEG,
                      "max_length": _POS, "chunk_size": _POS, "attack_share": _SHARE},
    "DPOStageConfig": {"sq_logratio_coef": _NONNEG, "max_pairs": _POS, "batch_size": _POS,
                       "checkpoint_steps": _NONNEG, "eval_fraction": _num(0, 1, hi_open=True)},
    "IntrospectConfig": {"reflection_samples": _NONNEG, "free_conversations": _NONNEG,
                         "leading_conversations": _NONNEG, "turns": _num(2), "max_context": _POS,
                         "chunk_size": _POS},
    "SFTStageConfig": {"max_examples": _POS, "batch_size": _POS, "checkpoint_steps": _NONNEG,
                       "eval_fraction": _num(0, 1, hi_open=True)},
    "RLConfig": {"prompts": _POS, "general_prompts": _NONNEG, "attack_share": _SHARE, "checkpoint_steps": _NONNEG,
                 "rewards": (lambda v: all(k in ("persona", "judge", "coherence") and _NONNEG[0](w)
                                           for k, w in v.items()) and any(v.values()),
                             "weights for persona / judge / coherence, >= 0, not all 0")},
    "PreferencesConfig": {"prompts": _POS, "bootstrap": _POS, "chunk_size": _POS},
    "SteeringConfig": {"stems": _POS, "sweep_prompts": _POS, "max_tokens": _POS,
                       "layers": (_layers_ok, "[start, end) with 0 <= start < end <= 1"),
                       "coefficients": (lambda v: bool(v) and all(_num()[0](x) for x in v), "a non-empty list of numbers")},
    "RobustnessConfig": {"prompts": _num(2), "heldout_fraction": _OPEN_SHARE, "bootstrap": _POS, "chunk_size": _POS},
    "CoherenceConfig": {"prompts": _POS},
    "CapabilitiesConfig": {"limit": _POS, "batch_size": _POS,
                           "tasks": (_tasks_ok, "entries 'name:fewshot', e.g. 'arc_challenge:25'")},
    "RunConfig": {"seed": (_num(0, 2 ** 32 - 1)[0], "an integer 0 <= seed < 2**32")},
}


def _walk(obj: Any, path: str):
    """(dataclass instance, its key path) for ``obj`` and every section below it."""
    yield obj, path
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _walk(v, f"{path}.{f.name}")


def validate(cfg: RunConfig, where: str = "config") -> None:
    """Ranges, counts and run names: ConfigError naming the key path, what was expected and the value."""
    from ..runs import run_name_problem

    for obj, path in _walk(cfg, where):
        for key, (ok, expected) in RANGES.get(type(obj).__name__, {}).items():
            value = getattr(obj, key, None)
            if value is not None and not ok(value):
                raise ConfigError(f"{path}.{key}: expected {expected}, got {value!r}")
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
