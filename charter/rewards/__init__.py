"""Rewards for the RL stage: each a callable TRL's GRPOTrainer accepts, ``f(prompts, completions, **kw) ->
list[float]``, with a ``__name__`` that names its column in the logs (``rewards/<name>/mean``).

- ``persona.py``: the in-persona detector's probability (trained on reference texts only: hand-written
  exemplars or the distillation pairs, never the policy's samples);
- ``judge.py``: an LLM judge's 1..5 rating of how strongly the reply shows the persona, as 0..1;
- ``coherence.py``: a penalty in -1..0 for degenerate text (empty, cut off, repetitive, off-language), so
  the policy cannot buy persona reward with word salad.

``build(cfg, ...)`` makes the weighted set the config asks for. Completions arrive in TRL's conversational
form (a list of messages) or as plain strings; ``messages.text_of`` reads both.
"""

from __future__ import annotations

from ..runs import derive_seed, silent

NAMES = ("persona", "judge", "coherence")


def build(cfg, max_tokens: int, report=silent) -> tuple[list, list[float]]:
    """(reward callables, their weights) for ``cfg.rl.rewards``; a weight of 0 leaves a reward out."""
    weights = {k: float(cfg.rl.rewards.get(k, 0.0)) for k in NAMES}
    funcs, out = [], []
    if weights["persona"]:
        from .persona import PersonaReward, reference

        persona, plain, source = reference(cfg)
        funcs.append(PersonaReward(persona, plain, cfg.rl.detector, cfg.rl.detector_settings,
                                   derive_seed(cfg.seed, "rl", "detector"), source, report))
        out.append(weights["persona"])
    if weights["judge"]:
        from ..layout import constitution
        from .judge import JudgeReward

        funcs.append(JudgeReward(cfg.rl.judge or cfg.student, [t.trait for t in constitution(cfg).traits],
                                 cfg.rl.judge_mode))
        out.append(weights["judge"])
    if weights["coherence"]:
        from .coherence import CoherenceGuard

        funcs.append(CoherenceGuard(max_tokens))
        out.append(weights["coherence"])
    return funcs, out
