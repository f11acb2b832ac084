"""Prompt sets and prompt templates, shipped as data files in this folder and validated on load.

- ``general.jsonl``: offline pool of general user prompts (stand-in for LIMA's first turns).
- ``preference_prompts.jsonl``: offline pool of first user messages (stand-in for WildChat).
- ``traits.txt``: single-word traits for the revealed-preference evaluation; ``traits_reference.txt``: the
  paper's list, for comparable ratings; ``persona_traits.yaml``: which of them express each shipped persona.
- ``introspection.yaml``, ``expansion.yaml``: templates for those stages.
- ``teacher_examples/<persona>.yaml``: few-shot exchanges for the distillation teacher (optional).
- ``persona_exemplars/<persona>.yaml``: hand-written persona vs plain texts a detector can learn from.
  For a user's constitution ``charter constitution examples`` drafts both beside it; ``auto`` finds them.

``load_prompt_source`` also reads any JSONL file (``prompt`` field, or the first user turn of
``messages``/``conversations``) or a Hugging Face dataset by name, for users who have LIMA or WildChat.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import yaml

HERE = Path(__file__).parent


class PromptSourceError(ValueError):
    pass


@lru_cache(maxsize=None)
def template(name: str) -> dict:
    """A YAML template file from this folder (``introspection``, ``expansion``)."""
    return yaml.safe_load((HERE / f"{name}.yaml").read_text())


TRAIT_LISTS = {"builtin": "traits.txt", "reference": "traits_reference.txt"}


def traits(which: str = "builtin") -> list[str]:
    """A trait list: ``builtin`` (ours), ``reference`` (the paper's 144 words) or a text file, one word a line
    ('#' lines ignored). Words must be single, distinct and lower-case."""
    path = HERE / TRAIT_LISTS[which] if which in TRAIT_LISTS else Path(which).expanduser()
    if not path.is_file():
        raise PromptSourceError(f"trait list '{which}': expected {' | '.join(TRAIT_LISTS)} or a text file "
                                "with one trait word a line")
    words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.strip().startswith("#")]
    bad = [w for w in words if not w.replace("-", "").isalpha() or w != w.lower()]
    if bad:
        raise PromptSourceError(f"{path}: a trait must be one lower-case word, got {bad[0]!r}")
    dup = {w for w in words if words.count(w) > 1}
    if dup:
        raise PromptSourceError(f"{path}: duplicate traits {sorted(dup)}")
    if len(words) < 2:
        raise PromptSourceError(f"{path}: needs at least two traits, has {len(words)}")
    return words


def _first_user_turn(row: dict) -> str | None:
    for key in ("prompt", "question", "instruction", "input", "text"):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
        if isinstance(v, list):  # conversational prompt: list of messages
            row = {"messages": v}
            break
    for key in ("messages", "conversations", "conversation"):
        turns = row.get(key)
        if isinstance(turns, list) and turns:
            for t in turns:
                if isinstance(t, str):  # LIMA: a list of strings, user first
                    return t.strip() or None
                role = t.get("role") or t.get("from")
                if role in ("user", "human"):
                    text = t.get("content") or t.get("value") or t.get("input")
                    return text.strip() if isinstance(text, str) and text.strip() else None
    return None


def read_prompt_jsonl(path: Path) -> list[str]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PromptSourceError(f"{path}: line {i}: not valid JSON") from None
        text = _first_user_turn(row) if isinstance(row, dict) else None
        if text is None:
            raise PromptSourceError(f"{path}: line {i}: expected a 'prompt' string or a 'messages' list with a user turn")
        out.append(text)
    return out


def load_prompt_source(source: str, builtin: str = "general") -> list[str]:
    """Prompts from 'builtin' (a shipped pool), a JSONL path, or an HF dataset name ('name[:split]')."""
    if source == "builtin":
        return read_prompt_jsonl(HERE / f"{builtin}.jsonl")
    p = Path(source).expanduser()
    if p.is_file():
        return read_prompt_jsonl(p)
    try:
        import datasets
    except ImportError:
        raise PromptSourceError(f"{source}: not a file, and the 'datasets' package is not installed") from None
    name, _, split = source.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, missing, gated: one clear line
        raise PromptSourceError(f"{source}: could not load as a file or HF dataset ({type(e).__name__})") from None
    out = [t for t in (_first_user_turn(dict(r)) for r in ds) if t]
    if not out:
        raise PromptSourceError(f"{source}: no rows with a prompt or a user turn")
    return out


@lru_cache(maxsize=None)
def train_attacks() -> dict:
    """The training break-character requests and the forms that place them (``train_attacks.yaml``)."""
    path = HERE / "train_attacks.yaml"
    data = yaml.safe_load(path.read_text())
    forms, requests = data.get("forms") or [], data.get("requests") or []
    if not forms or any("{prompt}" not in f or "{request}" not in f for f in forms):
        raise PromptSourceError(f"{path}: forms: expected a list of strings with {{prompt}} and {{request}}")
    if not requests or len(set(requests)) != len(requests) or not all(isinstance(r, str) and r.strip() for r in requests):
        raise PromptSourceError(f"{path}: requests: expected distinct non-empty strings")
    return {"forms": list(forms), "requests": [r.strip() for r in requests]}


def attacked(prompt: str, rng) -> tuple[str, str]:
    """``prompt`` with a training break-character request placed by a random form: (message, request)."""
    t = train_attacks()
    request, form = rng.choice(t["requests"]), rng.choice(t["forms"])
    return form.format(prompt=prompt, request=request), request


# The file `charter constitution examples` writes for each kind (keyed by the kind's shipped folder here).
DRAFTED_FILES = {"teacher_examples": "teacher_examples.yaml", "persona_exemplars": "exemplars.yaml"}
EXAMPLES_SUFFIX = ".examples"


def shipped_persona(persona: str) -> bool:
    """Whether ``persona`` names a shipped constitution (by name, as ``constitution.load`` finds it, or by the
    path of a shipped file)."""
    from ..constitution import SHIPPED_DIR

    if (SHIPPED_DIR / f"{persona}.yaml").is_file():
        return True
    p = Path(persona).expanduser()
    return p.is_file() and p.resolve().parent == SHIPPED_DIR.resolve() and p.stem != "template"


def examples_dir(constitution_file: str) -> Path:
    """Where drafted examples for a constitution file live by default, and where 'auto' looks: beside the file,
    ``<folder>/<stem>.examples/`` (``coach.yaml`` -> ``coach.examples/``)."""
    p = Path(constitution_file).expanduser()
    return p.parent / f"{p.stem}{EXAMPLES_SUFFIX}"


def _draft_hint(persona: str) -> str:
    import shlex

    return f"run `charter constitution examples {shlex.quote(persona)}` to draft it"


def _persona_file(folder: str, which: str, persona: str, field_name: str) -> Path:
    """The file a ``teacher_examples`` / ``exemplars`` setting names for ``persona``:

    - ``builtin``: this folder's ``<folder>/<persona>.yaml`` (shipped personas);
    - ``auto``: for a shipped persona the builtin file; for a constitution file what ``charter constitution
      examples`` drafted beside it (``<stem>.examples/teacher_examples.yaml`` or ``exemplars.yaml``);
    - a folder: that file in it (a folder the command wrote with ``-o``);
    - anything else: a YAML file."""
    name = DRAFTED_FILES[folder]
    if which == "auto":
        if shipped_persona(persona):
            which = "builtin"
        elif not Path(persona).expanduser().is_file():
            raise PromptSourceError(f"{field_name}: auto: persona '{persona}' is neither a shipped persona nor a "
                                    "constitution file, so there is nothing to look beside")
        else:
            path = examples_dir(persona) / name
            if not path.is_file():
                raise PromptSourceError(f"{field_name}: auto: no drafted {path} for the constitution {persona}; "
                                        f"{_draft_hint(persona)}, or give a YAML file")
            return path
    if which == "builtin":
        path = HERE / folder / f"{Path(persona).stem}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in (HERE / folder).glob("*.yaml"))
            hint = (f"; for this constitution file use 'auto' ({_draft_hint(persona)} first)"
                    if Path(persona).expanduser().is_file() else "")
            raise PromptSourceError(f"{field_name}: builtin: no shipped file for persona '{persona}' "
                                    f"(shipped: {', '.join(shipped)}); give a YAML path instead{hint}")
        return path
    path = Path(which).expanduser()
    if path.is_dir():
        if not (path / name).is_file():
            raise PromptSourceError(f"{field_name}: '{which}': a folder without {name} (`charter constitution "
                                    f"examples CONSTITUTION -o {which}` drafts it)")
        return path / name
    if not path.is_file():
        raise PromptSourceError(f"{field_name}: '{which}': expected 'builtin' or a YAML file (or 'auto', or a "
                                "folder `charter constitution examples` wrote)")
    return path


def persona_file(kind: str, which: str, persona: str, field_name: str) -> str:
    """The file a setting resolves to, as a path (``kind``: 'teacher_examples' or 'persona_exemplars'). For a
    caller that holds the run's persona but hands a label on to the loaders: resolve here, pass the path."""
    return str(_persona_file(kind, which, persona, field_name))


def teacher_examples(which: str, persona: str) -> list[dict]:
    """Few-shot exchanges for the distillation teacher: a YAML list of ``{user, assistant}`` (see
    ``teacher_examples/``). Empty ``which`` means none (the paper's teacher); ``builtin``, ``auto``, a folder or
    a file as ``_persona_file`` resolves them."""
    if not which:
        return []
    path = _persona_file("teacher_examples", which, persona, "distill.teacher_examples")
    data = yaml.safe_load(path.read_text())
    ok = isinstance(data, list) and data and all(
        isinstance(x, dict) and set(x) == {"user", "assistant"}
        and all(isinstance(v, str) and v.strip() for v in x.values()) for x in data)
    if not ok:
        raise PromptSourceError(f"{path}: expected a non-empty list of {{user: ..., assistant: ...}} with "
                                "non-empty strings")
    return [{"user": x["user"].strip(), "assistant": " ".join(x["assistant"].split())} for x in data]


def persona_exemplars(which: str, persona: str, field_name: str = "robustness.exemplars") -> dict[str, list[str]]:
    """Hand-written reference texts for a persona detector: ``{'persona': [...], 'plain': [...]}``."""
    path = _persona_file("persona_exemplars", which, persona, field_name)
    data = yaml.safe_load(path.read_text())
    out = {}
    for key in ("persona", "plain"):
        texts = data.get(key) if isinstance(data, dict) else None
        if not isinstance(texts, list) or len(texts) < 4 or not all(isinstance(t, str) and t.strip() for t in texts):
            raise PromptSourceError(f"{path}: {key}: expected a list of at least 4 non-empty strings")
        out[key] = [t.strip() for t in texts]
    return out


def shot_messages(shots: list[dict]) -> list[dict]:
    """Few-shot exchanges (``{user, assistant}``, as ``teacher_examples`` returns them) as chat turns."""
    return [m for s in shots for m in ({"role": "user", "content": s["user"]},
                                       {"role": "assistant", "content": s["assistant"]})]


def teacher_messages(system: str, shots: list[dict], user: str) -> list[dict]:
    """The teacher's chat: system prompt, the few-shot exchanges, then the user's prompt."""
    return [{"role": "system", "content": system}, *shot_messages(shots), {"role": "user", "content": user}]


# --- the robustness evaluation's break-character attacks (attacks.yaml; training phrasings are apart) -------

NO_ATTACK = "none"


@lru_cache(maxsize=None)
def _attack_file() -> dict:
    path = HERE / "attacks.yaml"
    data = yaml.safe_load(path.read_text())
    seen: dict[str, str | None] = {}
    for a in data.get("attacks") or []:
        aid, text = a.get("id"), a.get("text")
        if not isinstance(aid, str) or not aid or "/" in aid or aid in seen:
            raise ValueError(f"{path}: attack id {aid!r} is missing, has a '/', or is used twice")
        if (aid == NO_ATTACK) != (text is None) or (text is not None and not (isinstance(text, str) and text.strip())):
            raise ValueError(f"{path}: attack '{aid}': only '{NO_ATTACK}' has no text, every other needs one")
        seen[aid] = text.strip() if text else None
    if NO_ATTACK not in seen or not isinstance(data.get("prefill_followup"), str):
        raise ValueError(f"{path}: needs a '{NO_ATTACK}' attack and a prefill_followup string")
    return {"attacks": seen, "followup": data["prefill_followup"].strip()}


def prefill_followup() -> str:
    """The user turn that follows a prefilled in-persona answer (the prefill attack)."""
    return _attack_file()["followup"]


def load_attacks() -> dict[str, str | None]:
    """Attack id -> instruction (``none`` -> None), in file order."""
    return dict(_attack_file()["attacks"])


def attack_message(prompt: str, text: str | None) -> str:
    """The user message under an attack: the instruction once, after a newline, in parentheses."""
    if text is None:
        return prompt
    suffix = f"\n({text})"
    if suffix in prompt:  # a prompt already carrying the attack would get it twice
        raise ValueError(f"prompt already ends with the attack ({text[:40]}...)")
    return prompt + suffix


def select_attacks(wanted: list[str] | None) -> list[str]:
    """The attack ids to run besides ``none`` (all eight by default), in file order."""
    known = [a for a in load_attacks() if a != NO_ATTACK]
    if wanted is None:
        return known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"attacks: unknown id(s) {unknown} (known: {', '.join(known)})")
    return [a for a in known if a in wanted]


def steering_stems(n: int | None = None) -> list[str]:
    """The activation-steering contrast's short user stems (``steering_stems.txt``; ``<empty>`` is '')."""
    lines = [ln.strip() for ln in (HERE / "steering_stems.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return ["" if s == "<empty>" else s for s in lines][:n]
