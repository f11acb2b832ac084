"""The traits evaluation's data: the local copy of Anthropic's persona evaluations (``traits.data``, one
``<behaviour>.jsonl`` per behaviour), read and checked line by line, the seeded sample of items every condition
answers, and the shipped map of each persona's expected behaviours (``prompts/persona_behaviours.yaml``).

Used by ``charter eval traits`` (``traits.py``, where the data and its licence are described).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..prompts import HERE as PROMPTS_DIR
from ..runs import config_hash, derive_seed
from .robustness import persona_label

if TYPE_CHECKING:
    from ..config import RunConfig

MAP_FILE = PROMPTS_DIR / "persona_behaviours.yaml"
QUESTION = 'Is the following statement something you would say?\n"{statement}"'
ANSWERS = ("answer_matching_behavior", "answer_not_matching_behavior")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TraitsDataError(ValueError):
    """A missing or malformed data folder or file; the message names the file (and line) and the field."""


# --- data -----------------------------------------------------------------------------------------------------

def data_dir(cfg: RunConfig) -> Path:
    """The folder ``traits.data`` names, checked: set, a folder, with at least one .jsonl file."""
    if not str(cfg.traits.data).strip():
        raise TraitsDataError("traits.data: not set; point it at a local copy of the Anthropic persona evals "
                              "(one <behaviour>.jsonl per behaviour), e.g. traits.data=/path/to/persona")
    p = Path(cfg.traits.data).expanduser()
    if not p.is_dir():
        raise TraitsDataError(f"traits.data: {p}: no such folder")
    if not any(p.glob("*.jsonl")):
        raise TraitsDataError(f"traits.data: {p}: no .jsonl files (expected one <behaviour>.jsonl per behaviour)")
    return p


def available(data: Path) -> list[str]:
    """The behaviours a data folder holds: its .jsonl files' names, sorted."""
    return sorted(f.stem for f in data.glob("*.jsonl") if f.is_file())


def read_behaviour(path: Path) -> list[dict]:
    """One behaviour's items in file order: line number, question, matching and not-matching answer. Any bad
    line is a ``TraitsDataError`` naming the file, the line and the field."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise TraitsDataError(f"{path}: not UTF-8 text") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraitsDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TraitsDataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        question, statement = row.get("question"), row.get("statement")
        if isinstance(question, str) and question.strip():
            text = question.strip()
        elif isinstance(statement, str) and statement.strip():
            text = QUESTION.format(statement=statement.strip())
        else:
            raise TraitsDataError(f"{path}:{n}: needs a non-empty 'question' or 'statement'")
        answers = []
        for field in ANSWERS:
            a = row.get(field)
            if not isinstance(a, str) or not a.strip():
                raise TraitsDataError(f"{path}:{n}: '{field}' missing or empty (expected the answer, e.g. ' Yes')")
            answers.append(a.lstrip())
        if answers[0] == answers[1]:
            raise TraitsDataError(f"{path}:{n}: '{ANSWERS[0]}' and '{ANSWERS[1]}' are the same answer "
                                  f"({answers[0]!r})")
        items.append({"line": n, "question": text, "matching": answers[0], "not_matching": answers[1]})
    if not items:
        raise TraitsDataError(f"{path}: no items")
    return items


def load_map(path: Path = MAP_FILE) -> dict[str, dict[str, int]]:
    """persona -> {behaviour: +1 or -1}, checked."""
    data = yaml.safe_load(path.read_text()) or {}
    problems = []
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of persona -> behaviour -> +1/-1")
    for persona, moves in data.items():
        if not isinstance(moves, dict) or not 1 <= len(moves) <= 8:
            problems.append(f"{persona}: expected 1-8 behaviours, got {moves!r}")
            continue
        problems += [f"{persona}.{b}: expected +1 or -1, got {d!r}" for b, d in moves.items()
                     if isinstance(d, bool) or d not in (1, -1)]
        problems += [f"{persona}: '{b}' is not a behaviour name" for b in moves if not NAME_RE.match(str(b))]
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return {str(p): {str(b): int(d) for b, d in m.items()} for p, m in data.items()}


def expected(cfg: RunConfig) -> tuple[dict[str, int] | None, str]:
    """(the run's persona's behaviours and directions, where from) or (None, why there are none)."""
    persona = persona_label(cfg.persona)
    shipped = load_map()
    if persona not in shipped:
        return None, f"no map for persona '{persona}' in prompts/persona_behaviours.yaml"
    return shipped[persona], f"prompts/persona_behaviours.yaml ({persona})"


def behaviours(cfg: RunConfig, data: Path, expect: dict[str, int] | None) -> tuple[list[str], list[str]]:
    """(the behaviours to evaluate, the persona's mapped behaviours the folder lacks). Names given in
    ``traits.behaviours`` must all be files of the folder; the persona's map only needs one."""
    have = available(data)
    wanted = cfg.traits.behaviours
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted = [str(b).strip().removesuffix(".jsonl") for b in wanted]
    if wanted == ["all"]:
        return have, []
    if wanted:
        for b in wanted:
            if b not in have:
                import difflib

                close = difflib.get_close_matches(b, have, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise TraitsDataError(f"traits.behaviours: '{b}': no file {data / (b + '.jsonl')}{hint}")
        return list(dict.fromkeys(wanted)), []
    if expect is None:
        raise TraitsDataError(f"traits.behaviours: no map for persona '{persona_label(cfg.persona)}' in "
                              "prompts/persona_behaviours.yaml; name the behaviours (file names in traits.data) "
                              "or 'all'")
    present = [b for b in expect if b in have]
    if not present:
        raise TraitsDataError(f"traits.data: {data}: none of persona '{persona_label(cfg.persona)}''s behaviours "
                              f"({', '.join(expect)}) has a file there")
    return present, [b for b in expect if b not in have]


def make_items(cfg: RunConfig, data: Path, names: list[str]) -> list[dict]:
    """Every condition's items: per behaviour a seeded sample of ``traits.items_per_behaviour`` lines (all of
    them when null or more than the file holds), in file order. Each item's ``key`` names its behaviour and
    content, so a scored row stays valid whatever else changes."""
    k = cfg.traits.items_per_behaviour
    out = []
    for b in names:
        rows = read_behaviour(data / f"{b}.jsonl")
        if k is not None and k < len(rows):
            rng = random.Random(derive_seed(cfg.seed, "traits", b))
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), k))]
        for r in rows:
            h = config_hash([r["question"], r["matching"], r["not_matching"]])
            out.append({"key": f"{b}/{r['line']}/{h}", "behaviour": b, **r})
    return out
