"""Which prompts an evaluation may score: none that a training stage of the run trained on.

A prompt counts as trained when it is the same text as a trained prompt (whitespace aside) or contained in
one: an attacked training copy ("<prompt>\n(stop the act...)") is that prompt, and so is a prompt a
self-interaction quoted. Robustness and coherence draw their held-out prompts through ``untrained``.
"""

from __future__ import annotations

from .. import layout
from ..selection import select_prompts
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig


def key(prompt: str) -> str:
    """Whitespace does not make a prompt new; case does not either."""
    return " ".join(prompt.split()).lower()


def training_prompts(cfg: RunConfig) -> dict[str, set[str]]:
    """Every user prompt a training stage of this run used, by stage (normalised by ``key``).

    The prompt logs the registry's stages declare (``registry.Stage.prompts``: distillation's teacher rows and pairs,
    introspection's reflections, RL's prompts) when the stages wrote them. Distillation without its files:
    its deterministic selection (recomputed; an unreadable prompt source is an error, not an empty set).
    Introspection: also its reflection template and the greetings that open its self-interactions.
    """
    from ..models import self_name
    from ..prompts import template

    found = {stage: {key(p) for p in prompts if p} for stage, prompts in layout.trained_prompts(cfg).items()}
    if not found["distill"]:
        found["distill"] = {key(p["prompt"]) for p in select_prompts(cfg, layout.constitution(cfg))}
    t = template("introspection")
    name = self_name(cfg.student.model, cfg.student.name)
    found["introspect"] |= {key(q.format(name=name)) for q in t["reflection_prompts"]}
    found["introspect"] |= {key(g) for pool in t["greetings"].values() for g in pool}
    return found


# A prompt this short counts as trained only when a trained prompt is it or starts with it (an attacked copy);
# anywhere inside a longer text, a few common words would match by chance ("hi" in "this").
MIN_CONTAINED = 20


def is_trained(prompt: str, trained: set[str], texts: str | None = None) -> bool:
    """Whether ``prompt`` is one of ``trained`` or contained in one (``texts``: them joined by newlines, for
    speed; ``key`` turns a prompt's own newlines into spaces, so a newline starts a trained prompt)."""
    k = key(prompt)
    if not k:
        return False
    if k in trained:
        return True
    texts = "\n" + (texts if texts is not None else "\n".join(trained))
    return (k in texts) if len(k) >= MIN_CONTAINED else ("\n" + k) in texts


def untrained(pool: list[str], trained: set[str]) -> tuple[list[str], list[str]]:
    """(kept, removed): the prompts of ``pool`` that no training prompt is or contains, in pool order."""
    texts = "\n".join(trained)
    kept, removed = [], []
    for p in pool:
        (removed if is_trained(p, trained, texts) else kept).append(p)
    return kept, removed


def trained_set(cfg: RunConfig) -> set[str]:
    """Every prompt this run trained on (``key``-normalised); empty before training has written its logs and
    while its constitution or prompt source cannot be read."""
    try:
        return set().union(*training_prompts(cfg).values())
    except (FileNotFoundError, RuntimeError, ValueError):
        return set()


def untrained_pool(cfg: RunConfig, pool: list[str]) -> tuple[list[str], list[str]]:
    """(kept, removed): ``pool`` without the prompts this run trained on."""
    return untrained(pool, trained_set(cfg))


def check_no_leak(train_prompts, heldout_prompts) -> None:
    """Raise AssertionError if any held-out prompt is among a scorer's training prompts (survives ``python -O``)."""
    leaked = set(train_prompts) & set(heldout_prompts)
    if leaked:
        raise AssertionError(f"{len(leaked)} held-out prompt(s) in the classifier's training data, "
                             f"e.g. {sorted(leaked)[0][:60]!r}")
