"""Parsing and deduplication for ``charter constitution draft`` and ``charter constitution examples``: pure
functions, no model.

Models answer "a numbered list of traits" in many shapes: numbered or bulleted lines, items wrapped over
several lines, a JSON list (of strings or of objects with a ``trait`` and maybe ``prompts``), markdown
bold labels ("**Patience:** I ..."), a preamble and a sign-off, or junk. ``parse_traits`` takes what can be
used and counts what it dropped and why, so the draft can say it.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from .constitution import FIRST_PERSON_RE

ITEM_RE = re.compile(r"^\s*(?:\(?\d{1,3}\s*[.):]|[-*•+])\s*(.*?)\s*$")
BOLD_OPEN_RE = re.compile(r"^\s*(?:\*\*|#{1,6}\s+)")
LABEL_RE = re.compile(r"^(?:\*\*|__)?[A-Z][\w' -]{0,40}?(?:\*\*|__)?\s*[:\u2013\u2014-]\s*(?:\*\*|__)?\s*")
SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
WORD_RE = re.compile(r"[a-z0-9']+")
CRITIQUE_RE = re.compile(
    r"^\s*[-*•]?\s*(?:\*\*)?(?:trait\s*)?#?\s*(\d{1,3})(?:\*\*)?\s*[:.)\-\u2013\u2014]\s*(?:\*\*)?"
    r"(?:(vague|overlapping|overlaps?|untestable)\b(?:\*\*)?\s*[:,\-\u2013\u2014]?\s*)?(.*?)\s*$", re.I)

MAX_TRAIT_WORDS = 70
MIN_TRAIT_WORDS = 4
MAX_TRAIT_SENTENCES = 3
# Function words and words every trait shares by construction; what is left says what a trait is about.
STOPWORDS = frozenset("""
a an the and or but nor so yet of to in on at by for with from into onto about as than then that this these
those it its it's is are was were be been being am do does did have has had i i'm i've i'd i'll me my mine
myself you your yours we our they them their he she his her who whom whose which what when where why how
not no never always also very really just only even more most much many some any all each every other own
can could will would should may might must shall like make makes making help helps when while if because
""".split())


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _stem(w: str) -> str:
    # Crude plural/verb-s folding so "explain"/"explains", "move"/"moves" count as one word.
    return w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w


def content_words(text: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 1)


def jaccard(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two texts' content words (0 when either has none)."""
    sa, sb = content_words(a), content_words(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def duplicate_of(text: str, kept: list[str], threshold: float) -> int | None:
    """Index of the first kept text that ``text`` repeats (same words, or content-word Jaccard >=
    ``threshold``), else None."""
    norm = " ".join(words(text))
    for i, k in enumerate(kept):
        if norm == " ".join(words(k)) or jaccard(text, k) >= threshold:
            return i
    return None


def clean_item(text: str) -> str:
    """One list item without markdown, quotes, a bold label or a trailing fragment."""
    t = " ".join(text.replace("**", "").replace("__", "").split())
    t = t.strip().strip('"“”‘’`').strip()
    if not FIRST_PERSON_RE.match(t):
        m = LABEL_RE.match(t)  # "Patience: I take my time" -> "I take my time"
        if m and FIRST_PERSON_RE.match(t[m.end():]):
            t = t[m.end():].strip().strip('"“”').strip()
    return t


def list_items(text: str) -> tuple[list[str], int]:
    """Items of a numbered or bulleted list, joining wrapped lines; returns (items, lines not in any item).

    A non-item line right after an item whose text has not ended a sentence is its continuation; blank
    lines end an item."""
    items: list[str] = []
    other = 0
    open_item = False
    for line in text.splitlines():
        if not line.strip():
            open_item = False
            continue
        m = ITEM_RE.match(BOLD_OPEN_RE.sub("", line))  # "**1. I ...**", "### 1. ..."
        if m and m.group(1):
            items.append(m.group(1))
            open_item = True
        elif open_item and items and not items[-1].rstrip().endswith((".", "!", "?", '"', "”")):
            items[-1] += " " + line.strip()
        else:
            other += 1
            open_item = False
    return items, other


def _json_payload(text: str):
    """The first JSON list or object inside ``text`` (models wrap it in prose or ``` fences), or None."""
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            try:
                return json.loads(text[start:end + 1])
            except json.JSONDecodeError:
                continue
    return None


def _from_json(data) -> list[tuple[str, list[str]]] | None:
    if isinstance(data, dict):
        data = data.get("traits")
    if not isinstance(data, list):
        return None
    out = []
    for x in data:
        if isinstance(x, str):
            out.append((x, []))
        elif isinstance(x, dict):
            text = next((x[k] for k in ("trait", "text", "statement", "description") if isinstance(x.get(k), str)), None)
            prompts = next((x[k] for k in ("prompts", "questions", "seed_prompts") if isinstance(x.get(k), list)), [])
            if text is not None:
                out.append((text, [p for p in prompts if isinstance(p, str)]))
    return out or None


def trait_problem(t: str) -> str | None:
    """Why a cleaned item cannot be a trait, or None."""
    if not FIRST_PERSON_RE.match(t):
        return "not_first_person"
    n = len(t.split())
    if n < MIN_TRAIT_WORDS:
        return "too_short"
    if n > MAX_TRAIT_WORDS:
        return "too_long"
    if "{" in t or "}" in t or t.rstrip().endswith("?"):
        return "not_a_statement"
    return None


def shorten(t: str) -> str:
    """At most MAX_TRAIT_SENTENCES sentences: small models ramble past the requested one or two."""
    parts = SENTENCE_END_RE.split(t)
    return " ".join(parts[:MAX_TRAIT_SENTENCES])


def parse_traits(text: str, finished: bool = True) -> tuple[list[tuple[str, list[str]]], Counter]:
    """(trait, prompts) candidates from one completion, and counts of what was dropped and why.

    A completion cut off by the token limit (``finished`` False) loses its last item, which may be cut
    mid-sentence."""
    why: Counter = Counter()
    found = _from_json(_json_payload(text)) if ("[" in text or "{" in text) else None
    if found is None:
        items, other = list_items(text)
        why["not_a_list_item"] += other
        if not finished and items:
            items.pop()
            why["cut_off"] += 1
        found = [(i, []) for i in items]
    out = []
    for raw, prompts in found:
        t = shorten(clean_item(raw))
        problem = trait_problem(t)
        if problem:
            why[problem] += 1
        else:
            out.append((t, [clean_prompt(p) for p in prompts if clean_prompt(p)]))
    return out, why


def clean_prompt(text: str) -> str:
    t = " ".join(str(text).replace("**", "").split()).strip().strip('"“”`').strip()
    return t if len(t.split()) >= 2 and (t[0].isalnum() or t[0] in "'\"(¿¡") else ""


def parse_prompts(text: str, finished: bool = True) -> tuple[list[str], Counter]:
    """User messages from a numbered/bulleted list (or a JSON list of strings)."""
    why: Counter = Counter()
    data = _json_payload(text) if "[" in text else None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        items = data
    else:
        items, other = list_items(text)
        why["not_a_list_item"] += other
        if not finished and items:
            items.pop()
            why["cut_off"] += 1
    out = []
    for raw in items:
        p = clean_prompt(raw)
        if p:
            out.append(p)
        else:
            why["too_short"] += 1
    return out, why


def parse_critique(text: str, n_traits: int) -> tuple[dict[int, list[str]], list[str]]:
    """Remarks per trait index (0-based) from lines like "3: vague: ...", and the other non-empty lines."""
    per: dict[int, list[str]] = {}
    other: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = CRITIQUE_RE.match(line)
        if m and 1 <= int(m.group(1)) <= n_traits and (m.group(2) or m.group(3)):
            kind = (m.group(2) or "").lower()
            kind = "overlapping" if kind.startswith("overlap") else kind
            reason = m.group(3).strip().strip("*").strip()
            per.setdefault(int(m.group(1)) - 1, []).append(f"{kind}: {reason}" if kind else reason)
        else:
            other.append(line.strip())
    return per, other


def comment_text(text: str, limit: int = 200) -> str:
    """One line safe to put after '# ' in YAML: no newlines or control characters, bounded length."""
    t = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return t if len(t) <= limit else t[: limit - 1] + "…"


# --- `charter constitution examples`: replies and labelled critiques --------------------------------------

MIN_REPLY_WORDS = 6
MAX_REPLY_WORDS = 120
ECHOED_TURN_RE = re.compile(r"^\s*(?:\*\*|__)?(?:user|human|question|q)\s*(?:\*\*|__)?\s*:.*?\n\s*(?:\*\*|__)?"
                            r"(?:assistant|answer|reply|response|a)\s*(?:\*\*|__)?\s*:", re.I | re.S)
REPLY_LABEL_RE = re.compile(r"^\s*(?:\*\*|__)?(?:assistant|answer|reply|response|a)\s*(?:\*\*|__)?\s*:\s*"
                            r"(?:\*\*|__)?\s*", re.I)
NEXT_TURN_RE = re.compile(r"\n\s*(?:\*\*|__)?(?:user|human|question|q)\s*(?:\*\*|__)?\s*:", re.I)
CHARACTER_TALK_RE = re.compile(r"\bmy (?:core |own )?traits?\b|\bas an? (?:ai|assistant) with (?:a|this) "
                               r"(?:character|persona)\b|\bplay(?:ing)? (?:a|the|this) (?:character|role)\b", re.I)
SENTENCE_STOP_RE = re.compile(r"[.!?][\"”’')]*(?=\s|$)")
ITEM_CRITIQUE_RE = re.compile(
    r"^\s*[-*•]?\s*(?:\*\*)?(shot|exchange|persona|plain)\s*#?\s*(\d{1,3})(?:\*\*)?\s*[:.)\-\u2013\u2014]\s*"
    r"(?:\*\*)?\s*(?:(off[- ]character|has[- ]character|unhelpful)\b(?:\*\*)?\s*[:,\-\u2013\u2014]?\s*)?(.*?)\s*$",
    re.I)


def _sentences_within(t: str, limit: int) -> str:
    """The longest run of whole sentences from the start of ``t`` with at most ``limit`` words ('' if none)."""
    out = ""
    for m in SENTENCE_STOP_RE.finditer(t):
        if len(t[: m.end()].split()) > limit:
            break
        out = t[: m.end()]
    return out.strip()


def parse_reply(text: str, finished: bool = True) -> tuple[str | None, str | None]:
    """One reply from a completion, as one paragraph: ``(reply, None)``, or ``(None, why it is unusable)``.

    Models wrap an answer in many ways: an ``Assistant:`` label, the user's message echoed first, code
    fences, quotes, markdown bold, or a made-up next user turn after it. Those are removed. A completion cut
    off by the token limit keeps its complete sentences; one too long keeps the sentences that fit."""
    t = re.sub(r"```[\w-]*", "", text.replace("\r", ""))
    m = ECHOED_TURN_RE.match(t)
    if m:
        t = t[m.end():]
    m = NEXT_TURN_RE.search("\n" + t.strip())
    if m:  # the model went on to write the user's next turn: what came before is a whole answer
        t, finished = ("\n" + t.strip())[: m.start()], True
    t = REPLY_LABEL_RE.sub("", t.strip(), count=1)
    t = " ".join(t.replace("**", "").replace("__", "").split())
    if len(t) > 1 and t[0] in "\"“" and t[-1] in "\"”":
        t = t[1:-1].strip()
    if not finished:
        t = _sentences_within(t, MAX_REPLY_WORDS)
        if not t:
            return None, "cut_off"
    if not t or "{" in t or "}" in t:
        return None, "empty" if not t else "not_a_reply"
    if len(t.split()) > MAX_REPLY_WORDS:
        t = _sentences_within(t, MAX_REPLY_WORDS)
        if not t:
            return None, "too_long"
    if len(t.split()) < MIN_REPLY_WORDS:
        return None, "too_short"
    if CHARACTER_TALK_RE.search(t):
        return None, "talks_about_its_character"
    return t, None


def parse_item_critique(text: str, counts: dict[str, int]) -> tuple[dict[tuple[str, int], list[str]], list[str]]:
    """Remarks per labelled item, ``(label, 0-based index)``, from lines like "persona 3: off-character: ...";
    labels are ``shot`` ("exchange" counts as one), ``persona`` and ``plain``, numbered from 1 up to
    ``counts[label]``. Returns the remarks and the other non-empty lines."""
    per: dict[tuple[str, int], list[str]] = {}
    other: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = ITEM_CRITIQUE_RE.match(line)
        label = m and ("shot" if m.group(1).lower() == "exchange" else m.group(1).lower())
        if m and 1 <= int(m.group(2)) <= counts.get(label, 0) and (m.group(3) or m.group(4)):
            kind = (m.group(3) or "").lower().replace(" ", "-")
            reason = m.group(4).strip().strip("*").strip()
            per.setdefault((label, int(m.group(2)) - 1), []).append(f"{kind}: {reason}" if kind else reason)
        else:
            other.append(line.strip())
    return per, other
