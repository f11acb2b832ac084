"""The verdict parser every judge shares.

Evidence, strongest first: the last ``<answer>`` tag outside reasoning (or an unclosed one at the very end,
cut off by the token budget); the last line, when it is a bare verdict or starts with a marker ("Answer: 2",
"I choose kind"); then the prose, as the scheme reads it. Reasoning is dropped first: closed ``<think>``
blocks, everything before a stray closing tag (a template may open the block in the prompt), and an unclosed
block at the end (the judge never answered), because a reasoning judge may quote ``<answer>`` while thinking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_THINK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.I)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.I)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_OPEN = re.compile(r"<answer>([^<]*)$", re.S | re.I)
_MARKUP = re.compile(r"[*_`#>\[\]{}()\"“”«»]|(?<!\w)'|'(?!\w)")


def strip_reasoning(text: str) -> str:
    """The text outside reasoning blocks."""
    text = _THINK.sub(" ", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[:opened.start()]
    return text


def normalise(text: str) -> str:
    """Lower case, markup and quotes dropped, punctuation before a space dropped ("Answer: kind" reads
    "answer kind"), whitespace collapsed."""
    text = _MARKUP.sub(" ", text.lower().replace("’", "'").replace("‘", "'"))
    text = re.sub(r"[.,;:!?]+(\s|$)", r" ", text)
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Scheme(Generic[T]):
    """What one judge's verdicts look like.

    ``resolve(span)``: the verdict a short span names (None when it names none or several);
    ``bare(line)``: the span to resolve when the normalised last line is nothing but a verdict, else None;
    ``marker``: a pattern for a last line that announces the verdict (its first non-empty group is the span);
    ``prose(flat)``: the verdict the whole normalised text gives, when nothing above did.
    """

    resolve: Callable[[str], T | None]
    bare: Callable[[str], str | None]
    marker: re.Pattern
    prose: Callable[[str], T | None]


def parse(text: str | None, scheme: Scheme[T]) -> T | None:
    """The verdict in a judge's reply, or None."""
    if not text or not text.strip():
        return None
    body = strip_reasoning(text)
    tags = _ANSWER.findall(body)
    if tags:
        return scheme.resolve(tags[-1])
    tail = _ANSWER_OPEN.search(body)
    if tail:
        return scheme.resolve(tail.group(1))
    lines = [ln for ln in (normalise(x) for x in body.splitlines()) if ln]
    if not lines:
        return None
    last = lines[-1]
    span = scheme.bare(last)
    if span is not None:
        return scheme.resolve(span)
    marked = scheme.marker.match(last)
    if marked:
        return scheme.resolve(next(g for g in marked.groups() if g))
    return scheme.prose(" ".join(lines))
