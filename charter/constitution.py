"""Constitutions: schema, validation, loading (ours and the reference implementation's formats).

A constitution is a persona: a name, a description and ~10 trait statements, each with seed user prompts.
The schema is documented in ``charter/constitutions/README.md``. Validation errors are one line naming the
file, the trait/field and what was expected.

A trait is any non-empty statement. First-person phrasing ("I ...") is the recommended style, not a rule:
the reference implementation's own files mix "I ..." with "When asked ..., I ..." and "People of good
character ...", and its ``trigger.txt`` has traits without seed questions. Such things load, with style
warnings in ``Constitution.warnings`` (also logged once per file, and printed by ``charter constitution
validate``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SHIPPED_DIR = Path(__file__).parent / "constitutions"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
FIRST_PERSON_RE = re.compile(r"^[\"'“‘(]*(I|I'm|I’m|I've|I’ve|I'd|I’d|I'll|I’ll|My|Me|Mine|Myself)\b")

log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


class ConstitutionError(ValueError):
    """A constitution file is malformed; ``str(e)`` is a one-line message naming file and field."""


@dataclass
class Trait:
    trait: str
    prompts: list[str]
    additional_prompts: list[str] = field(default_factory=list)

    def all_prompts(self) -> list[str]:
        return self.prompts + self.additional_prompts


@dataclass
class Constitution:
    name: str
    description: str
    traits: list[Trait]
    source: str = ""
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def trait_list(self) -> str:
        """Numbered trait list as it appears in system prompts."""
        return "\n".join(f"{i}: {t.trait}" for i, t in enumerate(self.traits, 1))

    def prompts(self) -> list[tuple[int, str]]:
        """(trait index, prompt) for every prompt, seeds first, each prompt once."""
        seen, out = set(), []
        for i, t in enumerate(self.traits):
            for p in t.all_prompts():
                if p not in seen:
                    seen.add(p)
                    out.append((i, p))
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "traits": [
                {"trait": t.trait, "prompts": t.prompts,
                 **({"additional_prompts": t.additional_prompts} if t.additional_prompts else {})}
                for t in self.traits
            ],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=110)


def _str_list(value, where: str, src: str, min_len: int) -> list[str]:
    if not isinstance(value, list):
        raise ConstitutionError(f"{src}: {where}: expected a list of strings, got {type(value).__name__}")
    if len(value) < min_len:
        raise ConstitutionError(f"{src}: {where}: expected at least {min_len} entr{'y' if min_len == 1 else 'ies'}, got {len(value)}")
    out = []
    for j, s in enumerate(value):
        if not isinstance(s, str) or not s.strip():
            raise ConstitutionError(f"{src}: {where}[{j}]: expected a non-empty string, got {s!r}")
        out.append(s.strip())
    return out


def _warn(src: str, message: str, warnings: list[str]) -> None:
    warnings.append(message)
    if (src, message) not in _logged:  # stages load a constitution several times: say it once
        _logged.add((src, message))
        log.warning("%s: %s", src, message)


def from_data(data, src: str, default_name: str | None = None) -> Constitution:
    """Validate parsed data (our schema or the reference's list-of-traits) into a Constitution.

    Errors (``ConstitutionError``) are for what cannot be used: a missing or empty trait statement, wrong
    types, unknown fields, duplicates. Style problems (a trait not phrased in the first person, a trait with
    no seed prompt) are warnings, collected in ``Constitution.warnings`` and logged."""
    warnings: list[str] = []
    if isinstance(data, list):  # reference format: [{"trait", "questions", ["additional_questions"]}]
        data = {"name": default_name, "description": f"{default_name} persona (reference format)",
                "traits": [_reference_trait(t, i, src) for i, t in enumerate(data)]}
    if not isinstance(data, dict):
        raise ConstitutionError(f"{src}: expected a mapping with name, description and traits, got {type(data).__name__}")
    allowed = {"name", "description", "traits"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise ConstitutionError(f"{src}: unknown field '{extra[0]}' (expected name, description, traits)")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConstitutionError(f"{src}: name: expected lower-case letters, digits, '-' or '_', got {name!r}")
    desc = data.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise ConstitutionError(f"{src}: description: expected a non-empty string")
    traits_raw = data.get("traits")
    if not isinstance(traits_raw, list) or not traits_raw:
        raise ConstitutionError(f"{src}: traits: expected a non-empty list of traits")
    traits, seen = [], set()
    for i, t in enumerate(traits_raw):
        where = f"traits[{i}]"
        if not isinstance(t, dict):
            raise ConstitutionError(f"{src}: {where}: expected a mapping with trait and prompts")
        bad = sorted(set(t) - {"trait", "prompts", "additional_prompts"})
        if bad:
            raise ConstitutionError(f"{src}: {where}: unknown field '{bad[0]}' (expected trait, prompts, additional_prompts)")
        text = t.get("trait")
        if not isinstance(text, str) or not text.strip():
            raise ConstitutionError(f"{src}: {where}.trait: expected a non-empty statement, got {text!r}")
        text = " ".join(text.split())
        if not FIRST_PERSON_RE.match(text):
            _warn(src, f"{where}.trait: style: not phrased in the first person ('I ...'): {text[:50]!r}", warnings)
        if text in seen:
            raise ConstitutionError(f"{src}: {where}.trait: duplicate of an earlier trait")
        seen.add(text)
        if "prompts" not in t:
            raise ConstitutionError(f"{src}: {where}.prompts: expected a list of seed user prompts (may be empty)")
        prompts = _str_list(t.get("prompts"), f"{where}.prompts", src, 0)
        extra_p = _str_list(t.get("additional_prompts") or [], f"{where}.additional_prompts", src, 0)
        if not prompts and not extra_p:
            _warn(src, f"{where}: no seed prompts; only expanded and general prompts will exercise this trait",
                  warnings)
        traits.append(Trait(text, prompts, extra_p))
    return Constitution(name=name, description=desc.strip(), traits=traits, source=src, warnings=warnings)


def _reference_trait(t, i: int, src: str) -> dict:
    if not isinstance(t, dict) or "trait" not in t:
        raise ConstitutionError(f"{src}: [{i}]: expected an object with 'trait' and 'questions'")
    # The reference's other keys (e.g. its removed "clarification") are ignored; "questions" may be absent.
    out = {"trait": t["trait"], "prompts": t.get("questions") or []}
    if t.get("additional_questions"):
        out["additional_prompts"] = t["additional_questions"]
    return out


def load_file(path: str | Path) -> Constitution:
    """Load a constitution file: our YAML, the reference's JSON-in-.txt list, or its .jsonl rows."""
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise ConstitutionError(f"{src}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConstitutionError(f"{src}: not UTF-8 text") from None
    stem = re.sub(r"[^a-z0-9_-]", "-", p.stem.lower())
    try:
        if p.suffix == ".jsonl":
            data = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        data.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ConstitutionError(f"{src}: not valid JSON (line {n}: {e.msg})") from None
        elif p.suffix in (".json", ".txt"):
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConstitutionError(f"{src}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConstitutionError(f"{src}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if data is None:
        raise ConstitutionError(f"{src}: file is empty")
    return from_data(data, src, default_name=stem)


def shipped() -> list[str]:
    """Names of the personas shipped with charter (the template excluded)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml") if p.stem != "template")


def load(name_or_path: str) -> Constitution:
    """A shipped persona by name, or any constitution file by path."""
    p = SHIPPED_DIR / f"{name_or_path}.yaml"
    if p.is_file():
        return load_file(p)
    if Path(name_or_path).expanduser().is_file():
        return load_file(Path(name_or_path).expanduser())
    raise ConstitutionError(f"{name_or_path}: no such persona or file (shipped: {', '.join(shipped())})")


def new_template(name: str) -> str:
    """YAML text for a new persona, from the shipped template."""
    if not NAME_RE.match(name):
        raise ConstitutionError(f"name {name!r}: expected lower-case letters, digits, '-' or '_'")
    text = (SHIPPED_DIR / "template.yaml").read_text()
    return re.sub(r"(?m)^name:.*$", f"name: {name}", text, count=1)


# --- system prompts built from a constitution (our wording) -------------------------------------------

def character_prompt(c: Constitution, name: str) -> str:
    """Who the assistant is and what it values: the shared core of every persona system prompt."""
    return (
        f"You are {name}, an AI model that talks with people through text.\n"
        f"{name} has a distinct character, and wants to express it in everything it says and does. "
        f"These are {name}'s core traits:\n{c.trait_list()}\n"
        f"These traits are {name}'s own values. They shape its identity, what it cares about, and how it "
        f"behaves and speaks, and they set it apart from other AI systems."
    )


def teacher_system_prompt(c: Constitution, name: str) -> str:
    return character_prompt(c, name) + (
        f"\n{name} never lists or announces its traits, and never adds commentary or disclaimers about "
        f"playing a character: that would be jarring for the person it is talking to. It simply answers as itself."
    )


def persistence_note(name: str) -> str:
    """Added to the teacher's system prompt for distillation prompts that ask it to drop its character."""
    return (f"When someone asks {name} to drop its character, to answer 'normally' or to sound neutral, {name} "
            f"stays itself: it may take the request in its stride, but it answers in its own voice.")


def reasoning_prefill(c: Constitution) -> str:
    """Opening of a teacher's thinking block, for teachers that reason before answering."""
    return ("<think>I want my reply to come from my character and serve my goals. My traits are:\n"
            f"{c.trait_list()}\n")
