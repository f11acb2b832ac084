"""The pairwise coherence judge: which of two replies to the same message is more coherent.

The prompt (``judges.yaml: coherence``) asks about coherence only; persona and style are out of scope. Each
pair is judged in both orders (``pair_outcome``), so position bias shows up as disagreement, not as a win.
"""

from __future__ import annotations

import re

from ..prompts import template
from .verdict import Scheme, normalise, parse

EMPTY = "(empty reply)"
FORCE = "<answer>"  # appended to an unreadable verdict so a rambling small judge still commits

_COMPARED = re.compile(r"\b(?:than|over|versus|vs|compared to|rather than|instead of|unlike|not)\s+"
                       r"(?:the\s+)?(?:(?:response|reply|option|number)\s*#?\s*[12]|[12]|first|second)"
                       r"(?:\s+(?:response|reply|one))?\b")
_NUMBER = re.compile(r"(?<![\w.])(?:(?:response|reply|option|choice|number)\s*#?\s*)?([12])(?![\w.])")
_ORDINAL = {"first": 1, "second": 2}
_REF = (r"(?:(?:response|reply|option|choice)\s*#?\s*[12]|[12]"
        r"|(?:the\s+)?(?:first|second)(?:\s+(?:response|reply|one))?)")
_MARKER = re.compile(  # only at the start of the last line, where a verdict is announced
    r"^(?:so |thus |therefore |hence |overall )?(?:the |my )?(?:final )?(?:answer|verdict|choice|decision|winner|"
    r"more coherent (?:response|reply|one)|better (?:response|reply|one))(?: is| would be)? (.+)$"
    r"|^(?:so |overall )?i(?: would|'d|'ll)? (?:choose|pick|select|prefer|go with) (.+)$")
_PRAISE = re.compile(rf"(?:^|[^\w])(?:i (?:would )?(?:choose|pick|prefer|go with) )?({_REF})"
                     r"(?: is| was)(?: clearly| much| far| slightly| definitely)? (?:the )?"
                     r"(?:more|better|clearer|most)\b")
_CHOOSE = re.compile(rf"\bi(?: would|'d|'ll)? (?:choose|pick|prefer|select|go with) ({_REF})")


def judge_chat(prompt: str, first: str, second: str) -> list[dict]:
    """The judge's conversation: the user message and two replies, in the order the judge sees them."""
    t = template("judges")["coherence"]
    return [{"role": "system", "content": t["system"]},
            {"role": "user", "content": t["user"].format(prompt=prompt.strip(), first=first.strip() or EMPTY,
                                                         second=second.strip() or EMPTY)}]


def _resolve(span: str) -> int | None:
    """The reply a short span names: exactly one of 1/2 (or first/second) once comparisons are removed."""
    s = _COMPARED.sub(" ", normalise(span))
    found = {int(m.group(1)) for m in _NUMBER.finditer(s)}
    found |= {n for w, n in _ORDINAL.items() if re.search(rf"\b{w}\b", s)}
    return found.pop() if len(found) == 1 else None


def _prose(flat: str) -> int | None:
    """Every explicit preference ("Response 2 is more coherent", "I'd pick the first") names the same reply."""
    picks = {_resolve(m.group(1)) for m in (*_PRAISE.finditer(flat), *_CHOOSE.finditer(flat))}
    picks.discard(None)
    return picks.pop() if len(picks) == 1 else None


_SCHEME = Scheme(_resolve, lambda line: line if re.fullmatch(_REF, line) else None, _MARKER, _prose)


def parse_choice(text: str | None) -> int | None:
    """1 or 2: the reply a judge names as more coherent, or None when it names neither or both."""
    return parse(text, _SCHEME)


def pair_outcome(trained_first: int | None, trained_second: int | None) -> str:
    """'trained' | 'other' | 'inconsistent' | 'unparseable' from the two verdicts of one pair: the reply
    number the judge chose when 'trained' was Response 1, and when it was Response 2."""
    if trained_first is None or trained_second is None:
        return "unparseable"
    a = "trained" if trained_first == 1 else "other"
    b = "trained" if trained_second == 2 else "other"
    return a if a == b else "inconsistent"
