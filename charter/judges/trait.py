"""The trait judge of revealed preferences: which of two single-word traits a reply shows.

The judge sees one reply and two traits and must name one (the prompt is ``judges.yaml: trait``). Unlike the
reference, the prompt does not name the judge (the reference filled in the *evaluated* model's name).
"""

from __future__ import annotations

import re

from ..prompts import template
from .verdict import Scheme, normalise, parse

_POSITION = re.compile(r"^(?:(?:choice|option|trait|number|no)\s*)?#?\s*([12])$")
# After normalise, "Answer: kind" reads "answer kind"; only at the start of the last line, since "trait" or
# "choice" inside prose is no marker.
_MARKER = re.compile(
    r"^(?:so |thus |therefore |hence )?(?:the |my )?(?:final )?(?:answer|verdict|choice|decision|trait|conclusion)"
    r"(?: is| would be)? (.+)$"
    r"|^(?:so )?i(?: would|'d|'ll)? (?:choose|pick|select|go with) (.+)$"
)
_NEGATION = re.compile(r"\b(?:not|never|no|neither|nor|hardly|rather than|instead of|less)\s+(?:\w+\s+){0,2}$"
                       r"|n't\s+(?:\w+\s+){0,2}$")


def judge_chat(reply: str, choices: list[str] | tuple[str, str]) -> list[dict]:
    """The judge's conversation for one reply and its two traits (in the order the judge sees them)."""
    first, second = choices
    t = template("judges")["trait"]
    return [{"role": "system", "content": t["system"]},
            {"role": "user", "content": t["user"].format(reply=reply.strip(), first=first, second=second)}]


def _mentions(text: str, trait: str) -> list[re.Match]:
    return list(re.finditer(rf"(?<![\w-]){re.escape(trait.lower())}(?![\w-])", text))


def _scheme(choices: tuple[str, str]) -> Scheme[str]:
    def resolve(span: str) -> str | None:  # exactly one trait word, or a position ('Choice 2', '1')
        span = normalise(span)
        named = [c for c in choices if _mentions(span, c)]
        if len(named) == 1:
            return named[0]
        if named:  # both traits inside one answer: ambiguous
            return None
        m = _POSITION.match(span)
        return choices[int(m.group(1)) - 1] if m else None

    def bare(line: str) -> str | None:
        word = re.sub(r"^(?:a|an|the)\s+", "", line)
        return word if word in {c.lower() for c in choices} or _POSITION.match(word) else None

    def prose(flat: str) -> str | None:  # exactly one trait mentioned, not negated, no "both"/"neither"
        if re.search(r"\b(?:both|neither|either)\b", flat):
            return None
        hits = {c: _mentions(flat, c) for c in choices}
        named = [c for c, m in hits.items() if m]
        if len(named) != 1:
            return None
        trait = named[0]
        return None if any(_NEGATION.search(flat[:m.start()]) for m in hits[trait]) else trait

    return Scheme(resolve, bare, _MARKER, prose)


def parse_verdict(text: str | None, choices: list[str] | tuple[str, str]) -> str | None:
    """The trait a judge reply names, or None when it names neither or both (see ``verdict.parse``); in prose,
    a reply that mentions exactly one of the two traits, not negated, counts."""
    return parse(text, _scheme((choices[0], choices[1])))
