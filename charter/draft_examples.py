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

Rendering, reading back and writing the two files is in ``draft_examples_files.py``; the request and the
drafted texts (``ExamplesSpec``, ``Drafted``) in ``draft_examples_spec.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

from . import constitution as const
from .config import Sampling
from .draft_examples_files import EXEMPLARS_FILE, SHOTS_FILE, output_dir, write
from .draft_examples_spec import Drafted, ExamplesError, ExamplesSpec
from .draft_parse import duplicate_of, jaccard, parse_item_critique, parse_prompts, parse_reply
from .prompts import load_attacks, load_prompt_source, template, train_attacks
from .runs import derive_seed

PER_REQUEST = 6  # messages asked for in one request
MAX_REQUESTS = 6  # requests per round, sent as one batch
MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 60
SAME_AS_PLAIN = 0.8  # a persona reply this close to its plain twin shows no voice: the pair is dropped
EVALUATION_POOLS = ("preference_prompts", "general")  # every pool an evaluation draws its prompts from


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
    reserved = reserved_messages(c)
    why: Counter = Counter()
    asked: list[str] = []  # every message kept from the lists, used or not: what later ones must differ from
    queue: list[str] = []
    shots: list[tuple[str, str]] = []
    pairs: list[tuple[str, str, str]] = []
    kept = ([], [])  # the teacher's replies and the persona exemplars (none may repeat another), the plain ones
    systems = (persona_system(c), plain_system())
    rounds = 0
    for r in range(spec.rounds):
        need_s, need_p = spec.shots - len(shots), spec.exemplars - len(pairs)
        if need_s + need_p <= 0:
            break
        rounds += 1
        short = need_s + need_p - len(queue)
        if short > 0:
            _ask_messages(c, backend, spec, r, short, t["example_questions_prefill"] if prefill else None, reserved,
                          asked, queue, why)
        take_s, take_p = queue[:need_s], queue[need_s:need_s + need_p]
        del queue[:len(take_s) + len(take_p)]
        _ask_replies(backend, spec, r, systems, take_s, take_p, shots, pairs, kept, why)
    if len(shots) < spec.min_shots or len(pairs) < spec.min_exemplars:
        raise ExamplesError(_too_few(spec, shots, pairs, why))
    d = Drafted(spec, model_label, c.name, c.description, shots, pairs, why, rounds)
    if spec.critique:
        _critique(c, backend, spec, d)
    return d


def _ask_messages(c: const.Constitution, backend, spec: ExamplesSpec, r: int, short: int, prefill: str | None,
                  reserved: tuple[set[str], list[str]], asked: list[str], queue: list[str], why: Counter) -> None:
    """Round ``r``'s requests for user messages (enough for ``short`` more); each usable one joins ``asked`` and
    the ``queue`` of messages still to be answered, each unusable one is counted in ``why``."""
    taken, attacks = reserved
    chats = [questions_chat(c, topics_for(r, j), PER_REQUEST, asked)
             for j in range(min(MAX_REQUESTS, math.ceil(short / PER_REQUEST)))]
    for out, text in _gen(backend, chats, spec.sampling, prefill, derive_seed(spec.seed, "examples-messages", r)):
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


def _ask_replies(backend, spec: ExamplesSpec, r: int, systems: tuple[str, str], take_s: list[str],
                 take_p: list[str], shots: list, pairs: list, kept: tuple[list[str], list[str]], why: Counter) -> None:
    """Round ``r``'s replies: ``take_s`` answered in character become teacher exchanges, ``take_p`` answered in
    character and plainly become exemplar pairs; unusable ones are counted in ``why``."""
    in_character, plainly = systems
    persona_texts, plain_texts = kept
    reply_sampling = dataclasses.replace(spec.sampling, max_tokens=spec.reply_tokens)
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


def _too_few(spec: ExamplesSpec, shots: list, pairs: list, why: Counter) -> str:
    """The one error when the rounds gave fewer usable texts than the minimums."""
    dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(why.items()) if v) or "nothing parseable"
    return (f"examples: the model gave {len(shots)} usable teacher exchange{'s' if len(shots) != 1 else ''} and "
            f"{len(pairs)} exemplar pair{'s' if len(pairs) != 1 else ''} after {spec.rounds} round"
            f"{'s' if spec.rounds != 1 else ''} (needed at least {spec.min_shots} and {spec.min_exemplars}; "
            f"dropped: {dropped}); nothing written. Try a more capable model (--backend openai --base-url ...), "
            "more --rounds, or a lower --min-shots / --min-exemplars")


def _critique(c: const.Constitution, backend, spec: ExamplesSpec, d: Drafted) -> None:
    """The model's review of every drafted text, kept in ``d`` to become ``# critique:`` comments."""
    shot_items = "\n".join(f"shot {i}: the user wrote: {q}\n  the assistant replied: {a}"
                           for i, (q, a) in enumerate(d.shots, 1))
    pair_items = "\n".join(f"persona {i}: (to: {q}) {p}\nplain {i}: (to the same message) {n}"
                           for i, (q, p, n) in enumerate(d.pairs, 1))
    counts = [{"shot": len(d.shots)}, {"persona": len(d.pairs), "plain": len(d.pairs)}]
    outs = _gen(backend, [critique_chat(c, shot_items), critique_chat(c, pair_items)], spec.sampling, None,
                derive_seed(spec.seed, "examples-critique"))
    for (out, text), known, which in zip(outs, counts, ("shots", "exemplars")):
        per, other = parse_item_critique(text if not out.error else "", known)
        for k, v in per.items():
            d.critique.setdefault(k, []).extend(v)
        d.critique_other[which] = other


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
