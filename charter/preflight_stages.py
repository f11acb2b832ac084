"""The pre-run checks of each built-in stage and evaluation (their registry entries' ``preflight``).

Each takes the config and the name it is reported under and raises ``ConfigError`` for what it points at that
cannot work; it returns the models it will load, as ``[(ModelSpec, where)]``, which ``preflight.check`` checks
(folder, backend packages) with every other model of the command. A stage's also gets whether it will run
(not finished, or forced): models a finished stage no longer needs are not checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConfigError
from .preflight import check_model_list, check_model_ref, check_prompt_source
from .trl_args import did_you_mean

if TYPE_CHECKING:
    from .config import RunConfig


def expand_specs(cfg: RunConfig, where: str, runs: bool) -> list:
    if not (runs and cfg.expand.enabled):
        return []
    if cfg.expand.model == cfg.distill.teacher:  # expand.model defaults to the teacher
        return [(cfg.distill.teacher, f"{where}.distill.teacher")]
    return [(cfg.expand.model, f"{where}.expand.model")]


def distill_specs(cfg: RunConfig, where: str, runs: bool) -> list:
    check_prompt_source(cfg.distill.general_source, f"{where}.distill.general_source", "general")
    return [(cfg.distill.teacher, f"{where}.distill.teacher")] if runs else []


def preferences_specs(cfg: RunConfig, where: str) -> list:
    p = cfg.preferences
    specs = [(p.judge, f"{where}.preferences.judge")] if p.judge is not None else []
    if p.judge_mode == "logprob":
        from .backends import SCORE_OPTIONS, require

        try:
            require(p.judge or cfg.student, SCORE_OPTIONS, f"{where}.preferences.judge_mode=logprob")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    check_model_list(p.models, f"{where}.preferences.models")
    check_prompt_source(p.prompt_source, f"{where}.preferences.prompt_source", "preference_prompts")
    from .prompts import PromptSourceError, traits

    try:
        traits(p.traits)
    except PromptSourceError as e:
        raise ConfigError(f"{where}.preferences.traits: {e}") from None
    return specs


def robustness_specs(cfg: RunConfig, where: str) -> list:
    r = cfg.robustness
    check_prompt_source(r.prompt_source, f"{where}.robustness.prompt_source", "general")
    if r.encoder not in ("minilm", "tfidf"):
        check_model_ref(r.encoder, f"{where}.robustness.encoder")
    from .classifier import TFIDF_DEFAULTS, TORCH_DEFAULTS

    known = TFIDF_DEFAULTS if r.encoder == "tfidf" else TORCH_DEFAULTS
    for key in r.classifier:
        if key not in known:
            raise ConfigError(f"{where}.robustness.classifier: unknown key '{key}' for encoder "
                              f"'{r.encoder}'{did_you_mean(str(key), known)} (known: {', '.join(sorted(known))})")
    return []


def coherence_specs(cfg: RunConfig, where: str) -> list:
    specs = [(cfg.coherence.judge, f"{where}.coherence.judge")] if cfg.coherence.judge is not None else []
    check_prompt_source(cfg.coherence.prompt_source, f"{where}.coherence.prompt_source", "preference_prompts")
    check_prompt_source(cfg.distill.general_source, f"{where}.distill.general_source", "general")
    return specs


def capabilities_specs(cfg: RunConfig, where: str) -> list:
    check_model_list(cfg.capabilities.models, f"{where}.capabilities.models")
    return []
