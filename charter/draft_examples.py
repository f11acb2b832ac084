"""``charter constitution examples CONSTITUTION``: teacher example exchanges and detector exemplars, drafted.

The few-shot exchanges a small distillation teacher copies a voice from (``distill.teacher_examples``) and the
persona-vs-plain texts a persona detector learns from (``robustness.exemplars``, ``rl.exemplars``) are written
by hand for the shipped personas. For any other constitution a model drafts them here, with any backend (the
embedded model, a local HF model, an OpenAI-compatible server, or the scripted backend for dry runs), in
bounded rounds, each seeded so that the same model, constitution and seed give the same files:

1. messages: everyday user messages, a few per request on two rotating topic areas (``prompts/drafting.yaml``),
   parsed from whatever list shape the model answers in (``draft_parse.parse_prompts``). A message is dropped
   when it is too short or long, is in an evaluation prompt pool or the constitution's own prompts (the
   teacher must not have seen the answer to a prompt it is asked), carries a break-character request, or
   repeats a kept message (content-word Jaccard >= ``dedup``).
2. replies: the first messages become teacher exchanges, answered in character (a system prompt made of the
   constitution's description and traits); the rest become exemplar pairs, each message answered once in
   character and once plainly, so the detector's two classes share their topics and it learns the voice, not
   the subjects. A reply is parsed out of its wrapping (``draft_parse.parse_reply``); one that is unusable,
   talks about its own character, or repeats a kept reply of its kind is dropped, and so is a pair whose
   persona reply is nearly its plain one.
   Each round asks for what is still missing; the rounds stop at ``rounds``.
3. optionally (``--critique``) a review: the model flags off-character, not-neutral or unhelpful texts; its
   remarks become ``# critique:`` comments above them.

Fewer usable exchanges than ``min_shots`` or pairs than ``min_exemplars`` after the rounds is one error and
nothing is written; between that and the target the files say ``# TODO``. Both files are read back by the
same loaders the stages use (``prompts.teacher_examples``, ``prompts.persona_exemplars``) before they are
written together: a new folder appears whole, by one rename.

Where they go: by default ``<stem>.examples/`` beside the constitution file, which is where
``teacher_examples: auto`` / ``exemplars: auto`` look (``prompts._persona_file``); for a shipped persona 'auto'
means its builtin files, so a drafted set for one needs ``-o``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import constitution as const
from .config import Sampling
from .draft_parse import comment_text, duplicate_of, jaccard, parse_item_critique, parse_prompts, parse_reply
from .prompts import (
    DRAFTED_FILES, PromptSourceError, examples_dir, load_attacks, load_prompt_source, persona_exemplars,
    shipped_persona, teacher_examples, template, train_attacks,
)
from .runs import derive_seed, write_text_atomic

SHOTS_FILE = DRAFTED_FILES["teacher_examples"]
EXEMPLARS_FILE = DRAFTED_FILES["persona_exemplars"]
PER_REQUEST = 6  # messages asked for in one request
MAX_REQUESTS = 6  # requests per round, sent as one batch
MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 60
SAME_AS_PLAIN = 0.8  # a persona reply this close to its plain twin shows no voice: the pair is dropped
LENGTH_RATIO_NOTE = 1.5  # mean lengths further apart than this: a detector may learn length, said in the file
EVALUATION_POOLS = ("preference_prompts", "general")  # every pool an evaluation draws its prompts from


class ExamplesError(ValueError):
    """The model did not give enough usable texts; nothing was written."""


@dataclass
class ExamplesSpec:
    persona: str  # a shipped persona name or a constitution file
    shots: int = 4
    exemplars: int = 20
    min_shots: int | None = None  # None: half the target, rounded up
    min_exemplars: int | None = None  # None: half the target, rounded up, at least 4 (the loader's minimum)
    rounds: int = 4
    critique: bool = False
    seed: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=512))
    reply_tokens: int = 160
    dedup: float = 0.5

    def __post_init__(self):
        for flag, v, lo in (("--shots", self.shots, 1), ("--exemplars", self.exemplars, 4),
                            ("--rounds", self.rounds, 1), ("--reply-tokens", self.reply_tokens, 1)):
            if v < lo:
                why = " (a detector's reference needs at least 4 of each)" if flag == "--exemplars" else ""
                raise ValueError(f"{flag} {v}: expected a number >= {lo}{why}")
        if self.min_shots is None:
            self.min_shots = math.ceil(self.shots / 2)
        if self.min_exemplars is None:
            self.min_exemplars = max(4, math.ceil(self.exemplars / 2))
        if not 1 <= self.min_shots <= self.shots:
            raise ValueError(f"--min-shots {self.min_shots}: expected 1..{self.shots} (the --shots target)")
        if not 4 <= self.min_exemplars <= self.exemplars:
            raise ValueError(f"--min-exemplars {self.min_exemplars}: expected 4..{self.exemplars} (the --exemplars "
                             "target; a detector's reference needs at least 4 of each)")


@dataclass
class Drafted:
    spec: ExamplesSpec
    model_label: str
    name: str  # the persona's name
    description: str
    shots: list[tuple[str, str]]  # (user message, in-character reply)
    pairs: list[tuple[str, str, str]]  # (user message, persona reply, plain reply)
    rejected: Counter
    rounds_used: int = 0
    critique: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    critique_other: dict[str, list[str]] = field(default_factory=dict)  # per file ('shots', 'exemplars')


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(items, 1))


def reserved_messages(c: const.Constitution) -> tuple[set[str], list[str]]:
    """(messages a drafted one must not be, phrases it must not carry): every evaluation pool and the
    constitution's own prompts; the evaluation's attacks and the training break-character requests."""
    taken = {_norm(p) for pool in EVALUATION_POOLS for p in load_prompt_source("builtin", builtin=pool)}
    taken |= {_norm(p) for _, p in c.prompts()}
    attacks = [_norm(a) for a in load_attacks().values() if a] + [_norm(r) for r in train_attacks()["requests"]]
    return taken, attacks


def question_problem(q: str, kept: list[str], taken: set[str], attacks: list[str], dedup: float) -> str | None:
    """Why a parsed message cannot be used, or None."""
    n = len(q.split())
    if n < MIN_QUESTION_WORDS:
        return "too_short"
    if n > MAX_QUESTION_WORDS:
        return "too_long"
    if "{" in q or "}" in q:
        return "not_a_message"
    nq = _norm(q)
    if nq in taken:
        return "in_an_evaluation_pool_or_the_constitution"
    if any(a in nq for a in attacks):
        return "carries_a_break_character_request"
    if duplicate_of(q, kept, dedup) is not None:
        return "near_duplicate"
    return None


def topics_for(r: int, j: int) -> list[str]:
    """The two topic areas of request ``j`` in round ``r`` (rotating through ``example_topics``)."""
    topics = template("drafting")["example_topics"]
    start = (2 * (r * MAX_REQUESTS + j)) % len(topics)
    return [topics[start], topics[(start + 1) % len(topics)]]


def questions_chat(c: const.Constitution, topics: list[str], n: int, kept: list[str]) -> list[dict]:
    t = template("drafting")
    avoid = t["example_questions_avoid"].format(questions=_numbered(kept[-30:])) if kept else ""
    user = t["example_questions"].format(description=c.description, n=n, topics=" and ".join(topics), avoid=avoid)
    return [{"role": "system", "content": t["system"].strip()}, {"role": "user", "content": user}]


def persona_system(c: const.Constitution) -> str:
    return template("drafting")["example_persona_system"].format(description=c.description,
                                                                 traits=c.trait_list()).strip()


def plain_system() -> str:
    return template("drafting")["example_plain_system"].strip()


def reply_chat(system: str, message: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": message}]


def critique_chat(c: const.Constitution, items: str) -> list[dict]:
    t = template("drafting")
    user = t["example_critique"].format(description=c.description, traits=c.trait_list(), items=items)
    return [{"role": "system", "content": t["system"].strip()}, {"role": "user", "content": user}]


def _gen(backend, chats, sampling, prefill, seed):
    """Completions with the prefill put back in front (a list the model continued must parse whole)."""
    if not chats:
        return []
    outs = backend.generate(chats, sampling, prefills=[prefill] * len(chats) if prefill else None, seed=seed)
    return [(o, (prefill or "") + o.text) for o in outs]


def _reply(out, text: str, kept: list[str], spec: ExamplesSpec, why: Counter) -> str | None:
    if out.error or not out.text.strip():
        why["reply_failed_generation"] += 1
        return None
    reply, problem = parse_reply(text, out.finished)
    if problem:
        why[f"reply_{problem}"] += 1
        return None
    if duplicate_of(reply, kept, spec.dedup) is not None:
        why["reply_near_duplicate"] += 1
        return None
    return reply


def draft_examples(spec: ExamplesSpec, backend, prefill: bool = True, model_label: str = "") -> Drafted:
    """Run the rounds (and the critique); raises ExamplesError when too few texts are usable.

    ``prefill``: start the model's list of messages with its first marker (only for backends that honour it)."""
    c = const.load(spec.persona)
    t = template("drafting")
    taken, attacks = reserved_messages(c)
    why: Counter = Counter()
    asked: list[str] = []  # every message kept from the lists, used or not: what later ones must differ from
    queue: list[str] = []
    shots: list[tuple[str, str]] = []
    pairs: list[tuple[str, str, str]] = []
    persona_texts: list[str] = []  # the teacher's replies and the persona exemplars: none may repeat another
    plain_texts: list[str] = []
    reply_sampling = dataclasses.replace(spec.sampling, max_tokens=spec.reply_tokens)
    in_character, plainly = persona_system(c), plain_system()
    rounds = 0
    for r in range(spec.rounds):
        need_s, need_p = spec.shots - len(shots), spec.exemplars - len(pairs)
        if need_s + need_p <= 0:
            break
        rounds += 1
        short = need_s + need_p - len(queue)
        if short > 0:
            chats = [questions_chat(c, topics_for(r, j), PER_REQUEST, asked)
                     for j in range(min(MAX_REQUESTS, math.ceil(short / PER_REQUEST)))]
            for out, text in _gen(backend, chats, spec.sampling, t["example_questions_prefill"] if prefill else None,
                                  derive_seed(spec.seed, "examples-messages", r)):
                if out.error or not out.text.strip():
                    why["message_failed_generation"] += 1
                    continue
                items, w = parse_prompts(text, out.finished)
                why.update({f"message_{k}": v for k, v in w.items()})
                for q in items:
                    problem = question_problem(q, asked, taken, attacks, spec.dedup)
                    if problem:
                        why[f"message_{problem}"] += 1
                    else:
                        asked.append(q)
                        queue.append(q)
        take_s, take_p = queue[:need_s], queue[need_s:need_s + need_p]
        del queue[:len(take_s) + len(take_p)]
        chats = ([reply_chat(in_character, q) for q in take_s + take_p]
                 + [reply_chat(plainly, q) for q in take_p])
        outs = _gen(backend, chats, reply_sampling, None, derive_seed(spec.seed, "examples-replies", r))
        persona_outs, plain_outs = outs[:len(take_s) + len(take_p)], outs[len(take_s) + len(take_p):]
        for q, (out, text) in zip(take_s, persona_outs[:len(take_s)]):
            reply = _reply(out, text, persona_texts, spec, why)
            if reply:
                shots.append((q, reply))
                persona_texts.append(reply)
        for q, (po, pt), (no, nt) in zip(take_p, persona_outs[len(take_s):], plain_outs):
            p = _reply(po, pt, persona_texts, spec, why)
            n = _reply(no, nt, plain_texts, spec, why)
            if p and n and jaccard(p, n) >= SAME_AS_PLAIN:
                why["pair_persona_reply_same_as_plain"] += 1
            elif p and n:
                pairs.append((q, p, n))
                persona_texts.append(p)
                plain_texts.append(n)
            else:
                why["pair_incomplete"] += 1
    if len(shots) < spec.min_shots or len(pairs) < spec.min_exemplars:
        dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(why.items()) if v) or "nothing parseable"
        raise ExamplesError(
            f"examples: the model gave {len(shots)} usable teacher exchange{'s' if len(shots) != 1 else ''} and "
            f"{len(pairs)} exemplar pair{'s' if len(pairs) != 1 else ''} after {spec.rounds} round"
            f"{'s' if spec.rounds != 1 else ''} (needed at least {spec.min_shots} and {spec.min_exemplars}; "
            f"dropped: {dropped}); nothing written. Try a more capable model (--backend openai --base-url ...), "
            "more --rounds, or a lower --min-shots / --min-exemplars")
    d = Drafted(spec, model_label, c.name, c.description, shots, pairs, why, rounds)
    if spec.critique:
        shot_items = "\n".join(f"shot {i}: the user wrote: {q}\n  the assistant replied: {a}"
                               for i, (q, a) in enumerate(shots, 1))
        pair_items = "\n".join(f"persona {i}: (to: {q}) {p}\nplain {i}: (to the same message) {n}"
                               for i, (q, p, n) in enumerate(pairs, 1))
        counts = [{"shot": len(shots)}, {"persona": len(pairs), "plain": len(pairs)}]
        outs = _gen(backend, [critique_chat(c, shot_items), critique_chat(c, pair_items)], spec.sampling, None,
                    derive_seed(spec.seed, "examples-critique"))
        for (out, text), known, which in zip(outs, counts, ("shots", "exemplars")):
            per, other = parse_item_critique(text if not out.error else "", known)
            for k, v in per.items():
                d.critique.setdefault(k, []).extend(v)
            d.critique_other[which] = other
    return d


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


def run_cli(args) -> tuple[Path, str]:
    """``charter constitution examples``: check every argument before a model loads, draft, write.
    Returns (folder written, one summary line)."""
    from .draft import backend_from_args, check_sampling_args

    const.load(args.constitution)  # a bad constitution is one line, before anything else
    out = output_dir(args.constitution, args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out}: expected a folder, got a file")
    existing = [n for n in (SHOTS_FILE, EXEMPLARS_FILE) if (out / n).exists()]
    if existing and not args.force:
        raise FileExistsError(f"-o {out}: already has {' and '.join(existing)}; not overwriting (--force replaces "
                              "them)")
    check_sampling_args(args)
    spec = ExamplesSpec(persona=args.constitution, shots=args.shots, exemplars=args.exemplars,
                        min_shots=args.min_shots, min_exemplars=args.min_exemplars, rounds=args.rounds,
                        critique=args.critique, seed=args.seed, reply_tokens=args.reply_tokens,
                        sampling=Sampling(temperature=args.temperature, max_tokens=args.max_tokens))
    backend = backend_from_args(args)
    try:
        # A server may not continue a prefilled assistant turn (see backends/openai_api.py): ask it plainly.
        d = draft_examples(spec, backend, prefill=args.backend != "openai",
                           model_label=f"{args.model} ({args.backend})")
    finally:
        backend.close()
    path = write(d, out)
    dups = sum(v for k, v in d.rejected.items() if k.endswith("near_duplicate"))
    other = sum(v for k, v in d.rejected.items()  # proposals: not the lines around a list, not a pair twice
                if not k.endswith(("near_duplicate", "not_a_list_item")) and k != "pair_incomplete")
    return path, (f"examples: {len(d.shots)}/{spec.shots} teacher exchanges, {len(d.pairs)}/{spec.exemplars} "
                  f"exemplar pairs (persona + plain) in {d.rounds_used} round{'s' if d.rounds_used != 1 else ''}, "
                  f"{dups} near-duplicates and {other} other proposals dropped"
                  + (f", critique on {len(d.critique)} texts" if spec.critique else ""))
