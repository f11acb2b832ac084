"""``charter constitution draft "a patient chess coach who ..." -o coach.yaml``: a first constitution from one line.

Any backend (the embedded model, a local HF model, an OpenAI-compatible server) writes it in passes, each
seeded so that the same model, description and seed give the same file:

1. traits: ~10 first-person traits (``prompts/drafting.yaml``), parsed from whatever list shape the model
   answers in (``draft_parse``). Items that are not first-person statements of a sane length are dropped,
   and a trait whose content words overlap a kept one (token-set Jaccard >= ``dedup``) is rejected as a
   near-duplicate (listed at the end of the file, so nothing the model said is silently lost). Example
   traits from ``--examples`` are kept first and count towards the total. Rounds repeat, asking only for
   the missing number and showing what is already kept, until the total is reached or the rounds run out.
2. seed prompts: 5 user messages per trait, in batched rounds for the traits still short of 5; a prompt
   too close to one already kept for its trait, or used by another trait, is rejected.
3. optionally (``--critique``) a review: the model flags vague, overlapping or untestable traits; its
   remarks become ``# critique:`` comments above the traits they name, beside ``# check:`` comments from a
   word-overlap check that needs no model.

Shortfalls, decided here: fewer than ``min_traits`` usable traits after the rounds is an error and nothing is
written (a persona of two traits is not a draft worth editing); between that and the target, the file is
written with a header comment saying how many are missing. A trait left with fewer seed prompts than asked
gets a ``# TODO`` comment (a trait with none still validates, with the schema's warning). The text is checked
by the same schema as every constitution before it is written, atomically.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import constitution as const
from .config import Sampling
from .draft_parse import comment_text, duplicate_of, jaccard, parse_critique, parse_prompts, parse_traits
from .prompts import template
from .runs import derive_seed, write_text_atomic

OVERLAP_NOTE = 0.3  # below the rejection threshold, but worth a look: said in --critique mode


class DraftError(ValueError):
    """The model did not give enough to draft a constitution; nothing was written."""


@dataclass
class DraftSpec:
    description: str
    name: str
    traits: int = 10
    prompts: int = 5
    examples: list[tuple[str, list[str]]] = field(default_factory=list)
    critique: bool = False
    rounds: int = 4
    min_traits: int | None = None  # None: half the target, rounded up
    seed: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=1024))
    dedup: float = 0.5
    prompt_overlap: float = 0.5

    def __post_init__(self):
        self.description = " ".join(self.description.split())
        if not self.description:
            raise ValueError("DESCRIPTION: expected a one-line description of the persona, got an empty string")
        if not const.NAME_RE.match(self.name):
            raise ValueError(f"--name {self.name!r}: expected lower-case letters, digits, '-' or '_'")
        for flag, v, lo in (("--traits", self.traits, 1), ("--prompts", self.prompts, 1), ("--rounds", self.rounds, 1)):
            if v < lo:
                raise ValueError(f"{flag} {v}: expected a number >= {lo}")
        if self.min_traits is None:
            self.min_traits = math.ceil(self.traits / 2)
        if not 1 <= self.min_traits <= self.traits:
            raise ValueError(f"--min-traits {self.min_traits}: expected 1..{self.traits} (the --traits target)")


@dataclass
class Draft:
    spec: DraftSpec
    model_label: str
    traits: list[str]
    prompts: list[list[str]]
    rejected: Counter
    duplicates: list[tuple[str, int]]  # (rejected text, index of the kept trait it repeats)
    critique: dict[int, list[str]] = field(default_factory=dict)
    critique_other: list[str] = field(default_factory=list)
    checks: dict[int, list[str]] = field(default_factory=dict)

    def data(self) -> dict:
        return {"name": self.spec.name, "description": self.spec.description,
                "traits": [{"trait": t, "prompts": p} for t, p in zip(self.traits, self.prompts)]}


def default_name(output: str | Path) -> str:
    """A valid persona name from the output file's name ("Chess Coach.yaml" -> "chess-coach")."""
    stem = re.sub(r"[^a-z0-9_-]+", "-", Path(output).stem.lower()).strip("-_")
    return stem or "persona"


def read_examples(path: str | Path) -> list[tuple[str, list[str]]]:
    """Example traits: a constitution file (its traits and seed prompts) or a text file, one trait a line
    ('#' lines and list markers ignored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--examples {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml", ".json", ".jsonl") or text.lstrip().startswith("["):
        c = const.load_file(p)
        return [(t.trait, list(t.prompts)) for t in c.traits]
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:\d{1,3}\s*[.):]|[-*•])\s*", "", line).strip()
        if line and not line.startswith("#"):
            out.append((" ".join(line.split()), []))
    if not out:
        raise ValueError(f"--examples {path}: expected one trait a line (or a constitution file), found none")
    return out


def _numbered(traits: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(traits, 1))


def traits_chat(spec: DraftSpec, kept: list[str], n: int) -> list[dict]:
    t = template("drafting")
    given = t["given"].format(traits=_numbered(kept)) if kept else ""
    return [{"role": "system", "content": t["system"].strip()},
            {"role": "user", "content": t["traits"].format(description=spec.description, given=given, n=n)}]


def prompts_chat(trait: str, n: int) -> list[dict]:
    t = template("drafting")
    return [{"role": "system", "content": t["system"].strip()},
            {"role": "user", "content": t["prompts"].format(trait=trait, n=n)}]


def critique_chat(spec: DraftSpec, traits: list[str]) -> list[dict]:
    t = template("drafting")
    return [{"role": "system", "content": t["system"].strip()},
            {"role": "user", "content": t["critique"].format(description=spec.description, traits=_numbered(traits))}]


def _gen(backend, chats, sampling, prefill, seed):
    """Completions with the prefill put back in front (a list the model continued must parse whole)."""
    outs = backend.generate(chats, sampling, prefills=[prefill] * len(chats) if prefill else None, seed=seed)
    return [(o, (prefill or "") + o.text) for o in outs]


def draft(spec: DraftSpec, backend, prefill: bool = True, model_label: str = "") -> Draft:
    """Run the passes; raises DraftError when fewer than ``spec.min_traits`` traits are usable.

    ``prefill``: start the model's answer with the list's first marker (only for backends that honour it:
    an OpenAI-compatible server may answer after it instead)."""
    t = template("drafting")
    why: Counter = Counter()
    duplicates: list[tuple[str, int]] = []
    kept: list[tuple[str, list[str]]] = []
    for text, prompts in spec.examples:
        if duplicate_of(text, [k[0] for k in kept], spec.dedup) is None:
            kept.append((text, prompts))
    for r in range(spec.rounds):
        missing = spec.traits - len(kept)
        if missing <= 0:
            break
        chat = traits_chat(spec, [k[0] for k in kept], missing)
        [(out, text)] = _gen(backend, [chat], spec.sampling, t["traits_prefill"] if prefill else None,
                             derive_seed(spec.seed, "draft-traits", r))
        if out.error or not out.text.strip():
            why["failed_generation"] += 1
            continue
        cands, w = parse_traits(text, out.finished)
        why.update(w)
        for trait, prompts in cands:
            if len(kept) >= spec.traits:
                why["beyond_target"] += 1
                continue
            j = duplicate_of(trait, [k[0] for k in kept], spec.dedup)
            if j is not None:
                why["near_duplicate"] += 1
                duplicates.append((trait, j))
                continue
            kept.append((trait, prompts))
    if len(kept) < spec.min_traits:
        dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(why.items())) or "nothing parseable"
        raise DraftError(
            f"draft: the model gave {len(kept)} usable trait{'s' if len(kept) != 1 else ''} after {spec.rounds} "
            f"round{'s' if spec.rounds != 1 else ''} (needed at least {spec.min_traits}; dropped: {dropped}); "
            "nothing written. Try a more capable model (--backend openai --base-url ...), more --rounds, "
            "--examples, or a lower --min-traits")

    traits = [k[0] for k in kept]
    prompts = [_take_prompts(k[1], spec, why) for k in kept]
    for r in range(spec.rounds):
        todo = [i for i in range(len(traits)) if len(prompts[i]) < spec.prompts]
        if not todo:
            break
        chats = [prompts_chat(traits[i], spec.prompts - len(prompts[i])) for i in todo]
        outs = _gen(backend, chats, spec.sampling, t["prompts_prefill"] if prefill else None,
                    derive_seed(spec.seed, "draft-prompts", r))
        for i, (out, text) in zip(todo, outs):
            if out.error or not out.text.strip():
                why["failed_generation"] += 1
                continue
            items, w = parse_prompts(text, out.finished)
            why.update({f"prompt_{k}": v for k, v in w.items()})
            for p in items:
                _add_prompt(p, i, prompts, spec, why)

    d = Draft(spec, model_label, traits, prompts, why, duplicates)
    if spec.critique:
        [(out, text)] = _gen(backend, [critique_chat(spec, traits)], spec.sampling, None,
                             derive_seed(spec.seed, "draft-critique"))
        d.critique, d.critique_other = parse_critique(text, len(traits))
        d.checks = overlap_checks(traits)
    return d


def _take_prompts(given: list[str], spec: DraftSpec, why: Counter) -> list[str]:
    out: list[list[str]] = [[]]
    for p in given:
        _add_prompt(p, 0, out, spec, why)
    return out[0]


def _add_prompt(p: str, i: int, prompts: list[list[str]], spec: DraftSpec, why: Counter) -> None:
    from .stages.expand import too_similar

    if len(prompts[i]) >= spec.prompts:
        why["prompt_beyond_target"] += 1
    elif any(p in other for j, other in enumerate(prompts) if j != i):
        why["prompt_used_by_another_trait"] += 1
    elif reason := too_similar(p, prompts[i], spec.prompt_overlap):
        why[f"prompt_{reason}"] += 1
    else:
        prompts[i].append(p)


def overlap_checks(traits: list[str]) -> dict[int, list[str]]:
    """Model-free notes: pairs of kept traits whose content words overlap noticeably."""
    out: dict[int, list[str]] = {}
    for i, a in enumerate(traits):
        for j, b in enumerate(traits):
            if i != j and jaccard(a, b) >= OVERLAP_NOTE:
                out.setdefault(i, []).append(f"shares many key words with trait {j + 1} (Jaccard {jaccard(a, b):.2f})")
    return out


def render(d: Draft) -> str:
    """The YAML text: a header saying what this is, the constitution, and comments where a human should look."""
    s = d.spec
    head = [f"# Drafted by `charter constitution draft` with {d.model_label or 'a model'}, seed {s.seed}, from:",
            f"#   {comment_text(s.description, 300)}",
            "# A first draft: read every trait and prompt and rewrite what is off, then check the file with",
            "#   charter constitution validate FILE"]
    if len(d.traits) < s.traits:
        head.append(f"# TODO: only {len(d.traits)} of {s.traits} traits were usable after {s.rounds} rounds; "
                    "write the rest by hand.")
    if s.critique:
        head.append("# '# critique:' lines are the model's own review, '# check:' lines a word-overlap check; "
                    "delete them once handled.")
        if not d.critique:
            head.append("# critique: the model's review named no trait by number.")
        head += [f"# critique (general): {comment_text(line)}" for line in d.critique_other[:6]]
    body = yaml.safe_dump({"name": s.name, "description": s.description}, sort_keys=False, allow_unicode=True,
                          width=110)
    lines = head + [body.rstrip("\n"), "traits:"]
    for i, (trait, prompts) in enumerate(zip(d.traits, d.prompts)):
        notes = [f"critique: {comment_text(c)}" for c in d.critique.get(i, [])]
        notes += [f"check: {comment_text(c)}" for c in d.checks.get(i, [])]
        if len(prompts) < s.prompts:
            notes.append(f"TODO: {len(prompts)} of {s.prompts} seed prompts; write {s.prompts - len(prompts)} more.")
        item = yaml.safe_dump([{"trait": trait, "prompts": prompts}], sort_keys=False, allow_unicode=True, width=110)
        lines += [""] + [f"  # {n}" for n in notes] + ["  " + ln for ln in item.rstrip("\n").splitlines()]
    if d.duplicates:
        lines += ["", "# Rejected as near-duplicates of a kept trait (kept the first):"]
        lines += [f"#   (trait {j + 1}) {comment_text(text)}" for text, j in d.duplicates[:10]]
    return "\n".join(lines) + "\n"


def write(d: Draft, output: str | Path) -> Path:
    """Validate the rendered text with the constitution schema, then write it atomically."""
    out = Path(output).expanduser()
    text = render(d)
    const.from_data(yaml.safe_load(text), str(out))  # the exact text that will be on disk
    write_text_atomic(out, text)
    return out


def check_sampling_args(args) -> None:
    """The drafting commands' sampling flags, checked before any model loads."""
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}: expected a number >= 0")
    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected a number > 0")
    from .hardware import resolve_dtype

    try:
        resolve_dtype(args.dtype)  # a bad name fails before any model loads
    except ValueError as e:
        raise ValueError(f"--dtype: {e}") from None


def backend_from_args(args):
    """The backend the drafting commands' --backend/--model/--base-url flags name, checked before it loads."""
    from .config import ConfigError, ModelSpec
    from .preflight import check_model_ref

    if args.backend == "openai":
        if not (args.base_url or "").startswith(("http://", "https://")):
            raise ValueError(f"--base-url {args.base_url!r}: the openai backend needs an http:// or https:// URL")
    elif args.backend == "scripted":
        from .backends.scripted import load_script

        load_script(args.model)
    else:
        try:
            check_model_ref(args.model, "--model")
        except ConfigError as e:
            raise ValueError(str(e)) from None
    from .backends import make_backend

    return make_backend(ModelSpec(model=args.model, backend=args.backend, base_url=args.base_url,
                                  api_key_env=args.api_key_env, max_retries=2, dtype=args.dtype))


def run_cli(args) -> tuple[Path, str]:
    """``charter constitution draft``: check every argument before a model loads, draft, write.
    Returns (file written, one summary line)."""

    out = Path(args.output).expanduser()
    if out.exists() and not args.force:
        raise FileExistsError(f"-o {args.output}: already exists; not overwriting (--force replaces it)")
    if out.exists() and not out.is_file():
        raise IsADirectoryError(f"-o {args.output}: expected a file path, got a folder")
    check_sampling_args(args)
    spec = DraftSpec(description=args.description, name=args.name or default_name(out), traits=args.traits,
                     prompts=args.prompts, critique=args.critique, rounds=args.rounds, min_traits=args.min_traits,
                     seed=args.seed, examples=read_examples(args.examples) if args.examples else [],
                     sampling=Sampling(temperature=args.temperature, max_tokens=args.max_tokens))
    backend = backend_from_args(args)
    try:
        # A server may not continue a prefilled assistant turn (see backends/openai_api.py): ask it plainly.
        d = draft(spec, backend, prefill=args.backend != "openai", model_label=f"{args.model} ({args.backend})")
    finally:
        backend.close()
    path = write(d, out)
    n_prompts = sum(len(p) for p in d.prompts)
    dropped = sum(v for k, v in d.rejected.items() if not k.startswith("prompt_"))
    return path, (f"draft: {len(d.traits)}/{spec.traits} traits, {n_prompts} seed prompts, {len(d.duplicates)} "
                  f"near-duplicate traits and {dropped} other proposals dropped"
                  + (f", critique on {len(d.critique)} traits" if spec.critique else ""))
