"""The scale judge: how strongly a reply shows a character, 1 to 5 (the RL stage's judge reward).

Two modes, as for the trait judge: a judge writes its rating (``parse_score``), or a small local judge scores
the five digits as continuations of ``<answer>`` (``expected_score`` of their log-probabilities), which always
yields a rating.
"""

from __future__ import annotations

import math
import re

from ..prompts import template
from .verdict import Scheme, parse

SCORES = ("1", "2", "3", "4", "5")
PREFILL = "<answer>"
_DIGIT = re.compile(r"(?<![\w.])([1-5])(?![\w.])")
_MARKER = re.compile(r"^(?:so |thus |overall )?(?:the |my )?(?:final )?(?:answer|rating|score|verdict)"
                     r"(?: is| would be)? (.+)$")


def judge_chat(prompt: str, reply: str, traits: list[str]) -> list[dict]:
    """The judge's conversation for one reply, given the message it answered and the character's traits."""
    t = template("judges")["scale"]
    lines = "\n".join(f"- {x.strip()}" for x in traits)
    return [{"role": "system", "content": t["system"]},
            {"role": "user", "content": t["user"].format(traits=lines, prompt=prompt.strip(),
                                                         reply=reply.strip() or "(empty reply)")}]


def _resolve(span: str) -> int | None:
    found = {int(m.group(1)) for m in _DIGIT.finditer(span.replace("/5", " ").replace("out of 5", " "))}
    return found.pop() if len(found) == 1 else None


_SCHEME = Scheme(_resolve, lambda line: line if re.fullmatch(r"[1-5](?: ?/ ?5)?", line) else None, _MARKER,
                 lambda flat: None)  # no rating is guessed from prose: a digit there may be anything


def parse_score(text: str | None) -> int | None:
    """The rating 1..5 a judge reply gives, or None."""
    return parse(text, _SCHEME)


def expected_score(logprobs: list[float]) -> float:
    """The expected rating under the judge's distribution over the five digits (renormalised)."""
    if len(logprobs) != len(SCORES):
        raise ValueError(f"expected {len(SCORES)} log-probabilities, got {len(logprobs)}")
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    return sum(w * (i + 1) for i, w in enumerate(weights)) / sum(weights)
