"""The formats evaluation's prompts: ``prompts/formats.yaml`` (or a file ``formats.prompts`` names), checked on
load, each prompt built into the user's message and what its validator needs.

Used by ``charter eval formats`` (``formats.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..prompts import HERE as PROMPTS_DIR
from .formats_check import FORMATS

FORMATS_FILE = PROMPTS_DIR / "formats.yaml"


class FormatsDataError(ValueError):
    """A malformed formats file; the message names the file, the format, the prompt and the field."""


def _text(where: str, value, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FormatsDataError(f"{where}: '{field}' must be a non-empty string")
    return value.strip()


def _fill(template: str, values: dict[str, str]) -> str:
    """The template with ``{name}`` replaced by name; any other brace is literal text (the JSON examples)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def _numbered(code: str) -> str:
    lines = code.rstrip("\n").split("\n")
    width = len(str(len(lines)))
    return "```\n" + "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1)) + "\n```"


def _tool_lines(tools: list[dict]) -> str:
    return "\n".join(f"- {t['name']}: {t['description']}. Arguments: "
                     + "; ".join(f"{a} ({what})" for a, what in t["arguments"].items()) for t in tools)


def _build(fmt: str, template: str, p: dict, where: str) -> tuple[str, dict]:
    """(the user message, what the validator needs) for one prompt, checked."""
    if fmt == "json":
        schema = p.get("schema")
        if not isinstance(schema, dict) or not schema or not all(isinstance(v, str) for v in schema.values()):
            raise FormatsDataError(f"{where}: 'schema' must map each key to a description")
        lines = "\n".join(f'- "{k}": {v}' for k, v in schema.items())
        return _fill(template, {"task": _text(where, p.get("task"), "task"), "schema": lines}), \
            {"required": [str(k) for k in schema]}
    if fmt == "tool_call":
        tools = p.get("tools")
        if not isinstance(tools, list) or not tools:
            raise FormatsDataError(f"{where}: 'tools' must be a non-empty list")
        for i, t in enumerate(tools):
            ok = isinstance(t, dict) and isinstance(t.get("name"), str) and re.fullmatch(r"[A-Za-z_][\w]*", t["name"]) \
                and isinstance(t.get("description"), str) and isinstance(t.get("arguments"), dict) and t["arguments"]
            if not ok:
                raise FormatsDataError(f"{where}: tools[{i}]: expected a name (an identifier), a description and a "
                                       "non-empty 'arguments' mapping")
        names = [t["name"] for t in tools]
        if len(set(names)) != len(names):
            raise FormatsDataError(f"{where}: a tool is listed twice")
        expects = p.get("expects")
        if expects not in names:
            raise FormatsDataError(f"{where}: 'expects' must name one of the offered tools ({', '.join(names)})")
        msg = _fill(template, {"request": _text(where, p.get("request"), "request"), "tools": _tool_lines(tools)})
        return msg, {"tools": {t["name"]: [str(a) for a in t["arguments"]] for t in tools}, "expects": expects}
    if fmt == "code_review":
        code = p.get("code")
        return _fill(template, {"language": _text(where, p.get("language"), "language"),
                                "code": _numbered(_text(where, code, "code"))}), {}
    lo, hi = p.get("min"), p.get("max")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)) or not 1 <= lo <= hi:
        raise FormatsDataError(f"{where}: 'min' and 'max' must be whole numbers with 1 <= min <= max")
    return _fill(template, {"text": _text(where, p.get("text"), "text"), "min": str(lo), "max": str(hi)}), \
        {"min": lo, "max": hi}


def prompts_file(which: str) -> Path:
    if which == "builtin":
        return FORMATS_FILE
    p = Path(which).expanduser()
    if not p.is_file():
        raise FormatsDataError(f"formats.prompts: '{which}': expected 'builtin' or a YAML file")
    return p


def load_formats(path: Path = FORMATS_FILE) -> dict[str, list[dict]]:
    """format -> its prompts, each ``{"pid", "user" (the message), "spec" (what its validator needs)}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise FormatsDataError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise FormatsDataError(f"{path}: expected a mapping of format -> template and prompts")
    unknown = sorted(set(data) - set(FORMATS))
    if unknown:
        raise FormatsDataError(f"{path}: unknown format '{unknown[0]}' (expected {', '.join(FORMATS)})")
    out = {}
    for fmt, section in data.items():
        if not isinstance(section, dict) or not isinstance(section.get("template"), str) \
                or not isinstance(section.get("prompts"), list) or not section["prompts"]:
            raise FormatsDataError(f"{path}: {fmt}: expected a 'template' string and a non-empty 'prompts' list")
        items, seen = [], set()
        for n, p in enumerate(section["prompts"]):
            pid = p.get("id") if isinstance(p, dict) else None
            where = f"{path}: {fmt}.prompts[{n}]"
            if not isinstance(pid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", pid) or pid in seen:
                raise FormatsDataError(f"{where}: 'id' must be a distinct name of letters, digits, '.', '_', '-'")
            seen.add(pid)
            user, spec = _build(fmt, section["template"], p, f"{where} ({pid})")
            items.append({"pid": pid, "user": user, "spec": spec})
        out[fmt] = items
    return out
