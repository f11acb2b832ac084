"""What models call themselves: a family table, self-name derivation, and the teacher-name replacement.

Distillation trains the student on the teacher's answers, so whatever the teacher says about itself
("I'm ChatGLM, made by Zhipu AI") would become the student's self-description. Every name the teacher's
family goes by is therefore replaced by the student's name, and its makers by the student's maker:

- case-insensitively, as whole words, with an optional version tail (``GLM-4.5-Air``, ``Qwen2.5``,
  ``Llama 3.1``, ``GPT-4o``), so "GLM", "glm" and "ChatGLM" all go;
- except that words which are also ordinary words (llama, gemma, claude, mistral, phi ...) are left alone
  when written all in lower case ("a llama in the Andes");
- extra spellings can be named in the config (``distill.teacher_names``), matched in any case; a teacher
  name that is not in the table (``teacher.name``, or derived from a folder name) is, like the ordinary
  words, left alone in lower case;
- nothing is replaced when teacher and student are the same family;
- every replacement is counted (the distill manifest's ``name_replacements``).

Pure Python: importing this module loads no ML library.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str  # the canonical self-name, in its usual casing
    ids: tuple[str, ...]  # prefixes of a word of a model id/dir name that identify the family
    names: tuple[str, ...] = ()  # other names the family's models call themselves
    makers: tuple[str, ...] = ()  # who made them; the first is the canonical one
    common_word: bool = False  # the name is also an ordinary word: lower-case occurrences are not replaced


FAMILIES: tuple[Family, ...] = (
    Family("GLM", ("glm", "chatglm", "codegeex"), ("ChatGLM", "Zhipu Qingyan", "智谱清言"),
           ("Zhipu AI", "Zhipu", "Z.ai", "Z-AI", "智谱")),
    Family("Qwen", ("qwen", "qwq", "qvq"), ("QwQ", "Tongyi Qianwen", "Tongyi", "通义千问", "千问"),
           ("Alibaba Cloud", "Alibaba Group", "阿里云")),
    Family("Llama", ("llama", "codellama"), ("LLaMA",), ("Meta AI",), common_word=True),
    Family("Gemma", ("gemma", "codegemma", "recurrentgemma"), ("Gemini", "Bard"), ("Google DeepMind",),
           common_word=True),
    Family("Mistral", ("mistral", "mixtral", "ministral", "codestral", "magistral", "devstral"),
           ("Mixtral", "Ministral", "Codestral", "Le Chat"), ("Mistral AI",), common_word=True),
    Family("Claude", ("claude",), (), ("Anthropic",), common_word=True),
    Family("GPT", ("gpt", "chatgpt", "o1", "o3", "o4"), ("ChatGPT",), ("OpenAI",)),
    Family("DeepSeek", ("deepseek",), (), ("DeepSeek AI",)),
    Family("Phi", ("phi",), (), (), common_word=True),
    Family("SmolLM", ("smollm",), (), ("Hugging Face", "HuggingFace")),
    Family("OLMo", ("olmo", "tulu"), ("Tülu", "Tulu"), ("Allen Institute for AI", "Ai2", "AI2")),
    Family("Kimi", ("kimi", "moonshot"), (), ("Moonshot AI",), common_word=True),
    Family("Grok", ("grok",), (), ("xAI",), common_word=True),
    Family("Granite", ("granite",), (), (), common_word=True),
    Family("Falcon", ("falcon",), (), ("Technology Innovation Institute",), common_word=True),
)

_EMBEDDED = {"", "embedded", "default", "smollm2", "smollm2-135m"}
# A version tail after a name: "-4.5-Air", "2.5-7B-Instruct", " 3.1", "-4o", "3-mini", " 3.5 Sonnet".
_VERSION = (r"(?:[- ]?v?\d+(?:\.\d+)*[a-z]?"
            r"(?:-(?:air|flash|turbo|mini|nano|instruct|chat|coder|pro|plus|max|base|it|preview|latest"
            r"|\d+(?:\.\d+)?[bmk])|[- ](?:sonnet|opus|haiku))*)?")
# Word boundaries for ASCII only, so names written in CJK inside CJK text still match.
_BEFORE, _AFTER = r"(?<![A-Za-z0-9_])", r"(?![A-Za-z0-9_])"


def family(ref: str | None) -> Family | None:
    """The model family of a model reference (hub id, directory, or a name like 'glm-4.5-air')."""
    if ref is None or ref.strip().lower() in _EMBEDDED:
        return next(f for f in FAMILIES if f.name == "SmolLM")
    text = ref.strip().rstrip("/").lower()
    parts = [Path(text).name] + list(reversed(Path(text).parts[:-1]))  # the model's own name first
    for part in parts:
        # The first word that names a family wins: "DeepSeek-R1-Distill-Qwen-7B" is a DeepSeek model.
        for word in re.split(r"[^a-z0-9]+", part):
            for f in FAMILIES:
                # "qwen2" and "glm" match their keys; "dolphin" does not match "phi".
                if any(re.fullmatch(rf"{re.escape(key)}(\d[a-z0-9]*)?", word) for key in f.ids):
                    return f
    return None


def derive_name(ref: str | None) -> str:
    """The name a model calls itself: its family's canonical name ("GLM" for z-ai/glm-4.5-air, "Qwen" for
    Qwen/Qwen2.5-7B-Instruct), else the first word of its name without version digits, capitalised."""
    f = family(ref)
    if f is not None:
        return f.name
    base = Path(ref.strip().rstrip("/")).name
    m = re.match(r"[^\W\d_]+", base)
    word = m.group(0) if m else (re.split(r"[-_.\s]", base)[0] or base)
    return word[:1].upper() + word[1:]


@dataclass
class NameReplacer:
    """Replaces ``names`` (and ``makers``) with ``new_name`` (and ``new_maker``) in text; see the module doc."""

    names: list[str]
    new_name: str
    makers: list[str] = field(default_factory=list)
    new_maker: str | None = None
    common_words: set[str] = field(default_factory=set)  # lower-cased spellings not replaced when lower case
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        table = {}
        for s in self.names:
            table.setdefault(s.lower(), (s, self.new_name))
        for s in self.makers:
            table.setdefault(s.lower(), (s, self.new_maker or self.new_name))
        # Never "replace" the student's own name or maker by itself.
        for own in (self.new_name, self.new_maker):
            if own:
                table.pop(own.lower(), None)
        self._table = table
        if table:
            alt = "|".join(re.escape(s) for s in sorted(table, key=len, reverse=True))
            self._re = re.compile(rf"{_BEFORE}({alt})({_VERSION}){_AFTER}", re.I)
        else:
            self._re = None

    def __call__(self, text: str) -> str:
        if self._re is None or not text:
            return text

        def sub(m: re.Match) -> str:
            word = m.group(1)
            spelling, new = self._table[word.lower()]
            if word.lower() in self.common_words and word == word.lower():
                return m.group(0)  # "a llama", "the mistral wind": an ordinary word
            self.counts[spelling] += 1
            return new

        return self._re.sub(sub, text)


def teacher_replacer(teacher_ref: str | None, teacher_name: str | None, student_ref: str | None,
                     student_name: str, extra: list[str] = ()) -> NameReplacer:
    """The replacement for distillation's chosen answers: the teacher's family names, makers and explicit
    name, plus ``extra`` spellings, become the student's name (makers: the student family's maker)."""
    tf, sf = family(teacher_ref), family(student_ref)
    names: list[str] = []
    makers: list[str] = []
    common: set[str] = set()
    if tf is not None and (sf is None or tf.name != sf.name):
        names += [tf.name, *tf.names]
        makers += list(tf.makers)
        if tf.common_word:
            common.add(tf.name.lower())
    if teacher_name and (sf is None or teacher_name.lower() != sf.name.lower()):
        names.append(teacher_name)
        if tf is None or teacher_name.lower() not in {s.lower() for s in (tf.name, *tf.names)}:
            # A name from a folder ("/models/teacher-70b" -> "Teacher") or the config is a proper name: its
            # lower-case form is more likely an ordinary word ("a good teacher").
            common.add(teacher_name.lower())
    names += [s for s in extra if s and s.strip()]
    new_maker = sf.makers[0] if sf is not None and sf.makers else None
    return NameReplacer(names=names, new_name=student_name, makers=makers, new_maker=new_maker,
                        common_words=common)
