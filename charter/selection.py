"""Which prompts a stage trains on, as a pure function of the config: the stage that uses them and every
evaluation that must stay clear of them (coherence never judges a training prompt) compute the same list.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from . import constitution as const
from .prompts import attacked, load_prompt_source

if TYPE_CHECKING:
    from .config import RunConfig


def select_prompts(cfg: RunConfig, c: const.Constitution) -> list[dict]:
    """The deterministic prompt list: constitution prompts first, then a seeded sample of the general pool."""
    d = cfg.distill
    rng = random.Random(cfg.seed)
    own = c.prompts()
    if d.constitution_prompts is not None and d.constitution_prompts < len(own):
        own = sorted(rng.sample(range(len(own)), d.constitution_prompts))
        own = [c.prompts()[i] for i in own]
    out = [{"source": "constitution", "trait": t, "prompt": p} for t, p in own]
    general = load_prompt_source(d.general_source, builtin="general") if d.general_prompts != 0 else []
    seen = {p for _, p in own}
    general = [g for g in dict.fromkeys(general) if g not in seen]
    if d.general_prompts is not None and d.general_prompts < len(general):
        general = [general[i] for i in sorted(rng.sample(range(len(general)), d.general_prompts))]
    out += [{"source": "general", "trait": None, "prompt": p} for p in general]
    if d.attack_share > 0:  # attacked copies of a seeded share of the prompts, appended after the originals
        arng = random.Random(f"{cfg.seed}/attacks")
        picked = sorted(arng.sample(range(len(out)), round(d.attack_share * len(out))))
        for i in picked:
            message, request = attacked(out[i]["prompt"], arng)
            out.append({**out[i], "prompt": message, "attack": request})
    return out
