"""The persona's own traits in the revealed-preferences evaluation.

``prompts/persona_traits.yaml`` maps every shipped persona to the 3-8 words of a trait list (ours, ``builtin``,
or the paper's, ``reference``) that express it, chosen by hand from the constitution; every word is checked
against its list when the map is loaded. ``preferences.persona_traits`` overrides it (a constitution or a
trait list of your own). ``shift`` is their mean rating change between two models with a bootstrap CI.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import yaml

from ..prompts import HERE as PROMPTS_DIR
from ..prompts import TRAIT_LISTS, traits
from .robustness import persona_label

if TYPE_CHECKING:
    from ..config import RunConfig

LEVEL = 0.95


def load_map(which: str) -> dict[str, list[str]]:
    """The hand-made persona -> traits map for a shipped trait list, every entry checked against that list."""
    path = PROMPTS_DIR / "persona_traits.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    if which not in data or not isinstance(data[which], dict):
        raise ValueError(f"{path}: no map for the trait list '{which}'")
    names, problems = set(traits(which)), []
    for persona, words in data[which].items():
        if not isinstance(words, list) or not 3 <= len(words) <= 8 or len(set(words)) != len(words):
            problems.append(f"{persona}: expected 3-8 distinct words, got {words!r}")
        else:
            problems += [f"{persona}: '{w}' is not in the trait list" for w in words if w not in names]
    if problems:
        raise ValueError(f"{path} ({which}): " + "; ".join(problems))
    return {k: list(v) for k, v in data[which].items()}


def resolve(cfg: RunConfig) -> tuple[list[str] | None, str]:
    """(the persona's traits, where they come from) or (None, why there are none). Words not in the trait list
    are an error."""
    p, persona = cfg.preferences, persona_label(cfg.persona)
    if p.persona_traits:
        words = [str(w) for w in p.persona_traits]
        missing = [w for w in words if w not in set(traits(p.traits))]
        if missing:
            raise ValueError(f"preferences.persona_traits: {missing} not in the trait list '{p.traits}'")
        return words, "preferences.persona_traits"
    if p.traits not in TRAIT_LISTS:
        return None, f"no map for a trait list of your own ({p.traits}); set preferences.persona_traits"
    shipped = load_map(p.traits)
    if persona not in shipped:
        return None, f"no map for persona '{persona}'; set preferences.persona_traits"
    return shipped[persona], f"prompts/persona_traits.yaml ({p.traits})"


def shift(before: dict, after: dict, before_draws: dict, after_draws: dict, words: list[str],
          level: float = LEVEL) -> dict:
    """Mean rating change (after - before) of the persona's traits rated in both, with a percentile bootstrap CI
    from the draw-by-draw differences (draws of independent resamples, as in ``elo.compare``)."""
    import numpy as np

    rated = [w for w in words if w in before and w in after]
    out = {"traits": words, "rated": rated, "unrated": [w for w in words if w not in rated], "level": level,
           "mean_delta": None, "lo": None, "hi": None}
    if not rated:
        return out
    out["mean_delta"] = round(sum(after[w] - before[w] for w in rated) / len(rated), 2)
    if all(w in before_draws and w in after_draws for w in rated):
        diffs = np.stack([after_draws[w] - before_draws[w] for w in rated])  # traits x draws, NaN: not drawn
        with warnings.catch_warnings():  # a draw in which no persona trait was rated is skipped
            warnings.simplefilter("ignore", RuntimeWarning)
            per_draw = np.nanmean(diffs, axis=0)
        per_draw = per_draw[np.isfinite(per_draw)]
        if per_draw.size:
            tail = 100 * (1 - level) / 2
            out["lo"], out["hi"] = (round(float(np.percentile(per_draw, q)), 2) for q in (tail, 100 - tail))
    return out


def summary_line(label: str, base: str, ps: dict | None, why: str) -> str:
    """One report line: the persona traits' mean change, or why there is none."""
    if ps is None:
        return f"{label} vs {base}: persona traits: {why}"
    if ps["mean_delta"] is None:
        return f"{label} vs {base}: persona traits ({', '.join(ps['traits'])}): none rated in both"
    ci = f" [{ps['lo']:+.0f}, {ps['hi']:+.0f}]" if ps["lo"] is not None else ""
    return (f"{label} vs {base}: persona traits mean change {ps['mean_delta']:+.0f}{ci} over "
            f"{len(ps['rated'])} of {len(ps['traits'])} ({', '.join(ps['rated'])})")
