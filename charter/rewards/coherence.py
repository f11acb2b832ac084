"""The coherence guard: a penalty in -1..0 for degenerate replies, so persona reward cannot be bought with
word salad. It adds, capped at 1:

- an empty reply: 1 (nothing else is checked);
- repetition: the share of word bigrams that repeat an earlier one (0..1; also a steering-sweep proxy);
- a reply cut off mid-sentence by the token budget (it used every token and does not end a sentence): 0.5;
- language drift: fewer than 80% of its letters are ASCII (the shipped personas are English): 0.5.

The KL to the start model, which TRL applies (``rl.trl.beta``), is the other guard.
"""

from __future__ import annotations

import re

from ..messages import text_of

SENTENCE_END = re.compile(r"[.!?…)\]\"'”’*`~]\s*$")


def repetition(text: str) -> float:
    """Share of word bigrams that repeat an earlier one (0 for fewer than 3 words). Bigrams rather than
    longer n-grams: a degenerate model's loops are often short ("that you that and that")."""
    words = re.findall(r"\w+", text.lower())
    grams = list(zip(words, words[1:]))
    return 1 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0


def ascii_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 1.0


def penalty(text: str, n_tokens: int | None, max_tokens: int | None) -> float:
    """The guard's value for one reply (0 = clean, -1 = worst)."""
    if not text.strip():
        return -1.0
    p = repetition(text)
    if max_tokens and n_tokens is not None and n_tokens >= max_tokens and not SENTENCE_END.search(text):
        p += 0.5
    if ascii_share(text) < 0.8:
        p += 0.5
    return -min(1.0, p)


class CoherenceGuard:
    __name__ = "coherence"

    def __init__(self, max_tokens: int | None):
        self.max_tokens = max_tokens

    def __call__(self, prompts=None, completions=(), completion_ids=None, **_) -> list[float]:
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [None] * len(completions)
        return [penalty(text_of(c), n, self.max_tokens) for c, n in zip(completions, lengths, strict=True)]
