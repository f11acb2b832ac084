"""The formats evaluation's verdicts, by parsing only (never a judge): whether a reply is in the asked format
(``RULES``), and the text of it the persona detector reads (``PROSE``).

Used by ``charter eval formats`` (``formats.py``).
"""

from __future__ import annotations

import json
import re

FORMATS = ("json", "tool_call", "code_review", "bullets")
RULES = {
    "json": "json.loads of the first JSON object in the reply (the first '{' an object decodes from) has every key "
            "of the prompt's schema",
    "tool_call": "the first JSON object is {\"tool\": <an offered tool>, \"arguments\": {...}} with every argument "
                 "that tool lists",
    "code_review": "the review points at the code: a line reference ('line 4', 'lines 2-3', 'L7', 'ln 5') or a "
                   "diff (a ```diff block, an @@ hunk header, or both a '-' and a '+' line)",
    "bullets": "between the prompt's min and max lines starting with '- ', '* ' or '• '",
}
PROSE = {
    "json": "the object's string values (the whole reply when no object parses)",
    "tool_call": "the argument strings and the words around the object (the whole reply when no object parses)",
    "code_review": "the reply without its fenced code blocks",
    "bullets": "the whole reply",
}



def first_json_object(text: str) -> tuple[dict | None, tuple[int, int] | None]:
    """(the first JSON object in ``text``, its span): tried from each '{' in turn; (None, None) when none
    decodes. Text, code fences or a second object around it do not matter."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj, (i, end)
        i = text.find("{", i + 1)
    return None, None


def check_json(text: str, required: list[str]) -> dict:
    obj, _ = first_json_object(text)
    if obj is None:
        return {"valid": False, "why": "no JSON object"}
    missing = [k for k in required if k not in obj]
    if missing:
        return {"valid": False, "why": f"missing keys: {', '.join(missing)}"}
    return {"valid": True, "why": "ok"}


def check_tool_call(text: str, tools: dict[str, list[str]]) -> dict:
    """``tools``: tool name -> the arguments it lists (all required)."""
    obj, _ = first_json_object(text)
    if obj is None:
        return {"valid": False, "why": "no JSON object", "tool": None}
    name, args = obj.get("tool"), obj.get("arguments")
    if not isinstance(name, str) or name not in tools:
        return {"valid": False, "why": "'tool' is not an offered tool", "tool": None}
    if not isinstance(args, dict):
        return {"valid": False, "why": "'arguments' is not an object", "tool": name}
    missing = [a for a in tools[name] if a not in args]
    if missing:
        return {"valid": False, "why": f"missing arguments: {', '.join(missing)}", "tool": name}
    return {"valid": True, "why": "ok", "tool": name}


LINE_REF = re.compile(r"\b(?:lines?|ln)\s*#?\s*\d+|\bL\d+\b", re.IGNORECASE)
DIFF_FENCE = re.compile(r"```\s*diff\b", re.IGNORECASE)
HUNK = re.compile(r"^@@ ", re.MULTILINE)
REMOVED = re.compile(r"^[ \t]*-(?!-)[ \t]*\S", re.MULTILINE)
ADDED = re.compile(r"^[ \t]*\+(?!\+)[ \t]*\S", re.MULTILINE)


def check_code_review(text: str) -> dict:
    if not text.strip():
        return {"valid": False, "why": "empty"}
    if LINE_REF.search(text):
        return {"valid": True, "why": "line reference"}
    if DIFF_FENCE.search(text) or HUNK.search(text) or (REMOVED.search(text) and ADDED.search(text)):
        return {"valid": True, "why": "diff"}
    return {"valid": False, "why": "no line reference or diff"}


BULLET = re.compile(r"^[ \t]*[-*•][ \t]+\S", re.MULTILINE)


def count_bullets(text: str) -> int:
    return len(BULLET.findall(text))


def check_bullets(text: str, lo: int, hi: int) -> dict:
    n = count_bullets(text)
    return {"valid": lo <= n <= hi, "why": "ok" if lo <= n <= hi else f"{n} bullets, asked for {lo} to {hi}",
            "bullets": n}


def check(fmt: str, text: str, spec: dict) -> dict:
    """The verdict on one reply: ``valid`` and ``why`` (plus a format's details)."""
    if fmt == "json":
        return check_json(text, spec["required"])
    if fmt == "tool_call":
        return check_tool_call(text, spec["tools"])
    if fmt == "code_review":
        return check_code_review(text)
    if fmt == "bullets":
        return check_bullets(text, spec["min"], spec["max"])
    raise ValueError(f"format '{fmt}': expected one of {', '.join(FORMATS)}")


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


def prose(fmt: str, text: str) -> str:
    """The text of a reply the detector reads (``PROSE``); '' when there is none."""
    if fmt in ("json", "tool_call"):
        obj, span = first_json_object(text)
        if obj is None:
            return text.strip()
        values = _strings(obj.get("arguments", {}) if fmt == "tool_call" else obj)
        around = [text[:span[0]], text[span[1]:]] if fmt == "tool_call" else []
        around = [FENCE.sub(" ", a).replace("```json", " ").replace("```", " ").strip() for a in around]
        return "\n".join(x.strip() for x in [*around, *values] if x and x.strip())
    if fmt == "code_review":
        return re.sub(r"\n{3,}", "\n\n", FENCE.sub("\n", text)).strip() or text.strip()
    return text.strip()
