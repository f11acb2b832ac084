"""The files ``charter constitution examples`` writes: the drafted teacher exchanges and detector exemplars
rendered as commented YAML, read back with the loaders every stage uses, and written together (a new folder
appears whole, by one rename); and where they go by default.

Used by ``charter.draft_examples`` (which drafts the texts, ``draft_examples_spec.Drafted``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from .draft_examples_spec import Drafted, ExamplesError
from .draft_parse import comment_text
from .prompts import (DRAFTED_FILES, PromptSourceError, examples_dir, persona_exemplars, shipped_persona,
                      teacher_examples)
from .runs import write_text_atomic

SHOTS_FILE = DRAFTED_FILES["teacher_examples"]
EXEMPLARS_FILE = DRAFTED_FILES["persona_exemplars"]
LENGTH_RATIO_NOTE = 1.5  # mean lengths further apart than this: a detector may learn length, said in the file


# ------------------------------------------------------------------------------------------- rendering


def _mean_words(texts: list[str]) -> float:
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def _head(d: Drafted, what: list[str]) -> list[str]:
    s = d.spec
    out = [f"# Drafted by `charter constitution examples` with {d.model_label or 'a model'}, seed {s.seed}, for",
           f"#   {comment_text(s.persona, 200)} (persona '{d.name}': {comment_text(d.description, 160)})"]
    out += [f"# {line}" for line in what]
    if s.critique:
        out.append("# '# critique:' lines are the model's own review; delete them once handled.")
    return out


def _item(obj, indent: str = "") -> list[str]:
    text = yaml.safe_dump([obj], sort_keys=False, allow_unicode=True, width=110)
    return [indent + ln for ln in text.rstrip("\n").splitlines()]


def _notes(d: Drafted, label: str, i: int, indent: str = "") -> list[str]:
    return [f"{indent}# critique: {comment_text(c)}" for c in d.critique.get((label, i), [])]


def render_shots(d: Drafted) -> str:
    s = d.spec
    lines = _head(d, ["Few-shot exchanges shown to the distillation teacher after its system prompt",
                      "(distill.teacher_examples: auto, or this file's path). A model wrote them: read each one and",
                      "rewrite what does not sound like the persona. No message is in an evaluation prompt pool,",
                      "an attack list or the constitution's own prompts."])
    if len(d.shots) < s.shots:
        lines.append(f"# TODO: only {len(d.shots)} of {s.shots} exchanges were usable after {s.rounds} rounds; "
                     "write the rest by hand.")
    if s.critique:
        lines += [f"# critique (general): {comment_text(x)}" for x in d.critique_other.get("shots", [])[:6]]
    for i, (q, a) in enumerate(d.shots):
        lines += _notes(d, "shot", i) + _item({"user": q, "assistant": a})
    return "\n".join(lines) + "\n"


def render_exemplars(d: Drafted) -> str:
    s = d.spec
    persona, plain = [p for _, p, _ in d.pairs], [n for _, _, n in d.pairs]
    mp, mn = _mean_words(persona), _mean_words(plain)
    lines = _head(d, ["Reference texts for a persona detector (robustness.exemplars / rl.exemplars: auto, or this",
                      "file's path): 'persona' replies in the persona's voice and 'plain' neutral replies to the",
                      "same messages (persona k and plain k answer the message in the '# to:' comment), so a",
                      "detector learns the voice, not the topics. A model wrote them, not a person: read them, fix",
                      "or delete what is off, and keep both lists about the same length.",
                      f"Mean length: persona {mp:.0f} words, plain {mn:.0f} words."])
    if max(mp, mn) > LENGTH_RATIO_NOTE * max(1.0, min(mp, mn)):
        lines.append("# check: the two lists differ much in length, so a detector may learn length instead of "
                     "the voice; shorten the longer texts.")
    if len(d.pairs) < s.exemplars:
        lines.append(f"# TODO: only {len(d.pairs)} of {s.exemplars} pairs were usable after {s.rounds} rounds; "
                     "write the rest by hand.")
    if s.critique:
        lines += [f"# critique (general): {comment_text(x)}" for x in d.critique_other.get("exemplars", [])[:6]]
    lines.append("persona:")
    for i, (q, p, _) in enumerate(d.pairs):
        lines += _notes(d, "persona", i, "  ") + [f"  # to: {comment_text(q)}"] + _item(p, "  ")
    lines.append("plain:")
    for i, (_, _, n) in enumerate(d.pairs):
        lines += _notes(d, "plain", i, "  ") + _item(n, "  ")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- writing


def check_files(d: Drafted, folder: Path, target: Path) -> None:
    """Read the files in ``folder`` back with the loaders every stage uses; they must give what was drafted.
    Errors name the files as they would be in ``target``."""
    try:
        shots = teacher_examples(str(folder / SHOTS_FILE), d.spec.persona)
        ex = persona_exemplars(str(folder / EXEMPLARS_FILE), d.spec.persona, "exemplars")
    except PromptSourceError as e:
        raise ExamplesError(f"examples: the drafted files do not load ({str(e).replace(str(folder), str(target))}); "
                            "nothing written") from None
    if ([(x["user"], x["assistant"]) for x in shots] != d.shots
            or ex != {"persona": [p for _, p, _ in d.pairs], "plain": [n for _, _, n in d.pairs]}):
        raise ExamplesError("examples: the drafted files do not read back as drafted; nothing written")


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write(d: Drafted, output: str | Path) -> Path:
    """Validate both files with the loaders, then write them: a new (or empty) folder appears whole by one
    rename; into an existing folder (``--force``) each file is replaced atomically."""
    out = Path(output).expanduser()
    texts = {SHOTS_FILE: render_shots(d), EXEMPLARS_FILE: render_exemplars(d)}
    with tempfile.TemporaryDirectory(prefix="charter-examples-") as tmp:
        for name, text in texts.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        check_files(d, Path(tmp), out)
    if out.is_dir() and any(out.iterdir()):
        for name, text in texts.items():
            write_text_atomic(out / name, text)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        for name, text in texts.items():
            _write_synced(stage / name, text)
        if out.is_dir():
            out.rmdir()  # empty
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def output_dir(persona: str, output: str | None) -> Path:
    """``-o`` or, for a constitution file, the folder 'auto' reads (``<stem>.examples/`` beside it)."""
    if output:
        return Path(output).expanduser()
    if shipped_persona(persona):
        raise ValueError(f"-o DIR: required for the shipped persona '{persona}' ('auto' reads its builtin files, so "
                         "drafted ones go where you say, and a config names that folder)")
    return examples_dir(persona)
