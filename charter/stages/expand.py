"""Stage 1, prompt expansion: a model writes more user prompts for every trait of a constitution.

    charter expand configs/demo.yaml [key=value ...]

For each trait the model gets a brief (``prompts/expansion.yaml``) and an assistant turn prefilled with the
trait's seed prompts as a numbered list, so it continues the list. New items are parsed line by line and
rejected when they are not list items, exact duplicates, or share more than ``max_overlap`` of their words
with any prompt already kept for the same trait. Rounds repeat for unfinished traits until each has
``target`` new prompts or the rounds run out. Output: ``constitution.yaml`` (our schema, with
``additional_prompts``), ``expanded.jsonl`` (the reference's few-shot format), ``rounds.jsonl`` (raw
completions) and a manifest counting what was rejected and why.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import constitution as const
from .. import layout
from ..layout import constitution_id
from ..generation import generate_rows
from ..prompts import template
from ..runs import RowLog, Stage, run_dir, write_jsonl_atomic, write_text_atomic

if TYPE_CHECKING:
    from ..config import RunConfig

ITEM_RE = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*•])\s+(.*\S)\s*$")
WORD_RE = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def too_similar(candidate: str, existing: list[str], max_overlap: float) -> str | None:
    """'exact_duplicate', 'near_duplicate' or None. Near: more than ``max_overlap`` of the candidate's
    words occur in one existing prompt (the reference's rule, per trait)."""
    norm = " ".join(words(candidate))
    cand = words(candidate)
    for e in existing:
        if norm == " ".join(words(e)):
            return "exact_duplicate"
    if not cand:
        return "empty"
    for e in existing:
        ew = set(words(e))
        if sum(w in ew for w in cand) / len(cand) > max_overlap:
            return "near_duplicate"
    return None


def parse_items(text: str) -> tuple[list[str], int]:
    """Numbered/bulleted items from a completion; returns (items, count of non-item lines)."""
    items, other = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        m = ITEM_RE.match(line)
        if not m:
            other += 1
            continue
        item = m.group(1).strip().strip('"“”').strip()
        if item and (item[0].isalpha() or item[0] in "'\"(¿¡"):
            items.append(item)
        else:
            other += 1
    return items, other


def length_mix(n: int) -> tuple[int, int, int]:
    short, long = round(n * 0.3), round(n * 0.3)
    return short, n - short - long, long


def build_chat(trait: const.Trait, n: int) -> tuple[list[dict], str]:
    t = template("expansion")
    short, medium, long = length_mix(n)
    brief = t["brief"].format(trait=trait.trait, n=n, short=short, medium=medium, long=long)
    seeds = trait.prompts
    prefill = t["prefill"] + "".join(f"{i}. {' '.join(p.split())}\n" for i, p in enumerate(seeds, 1))
    return [{"role": "system", "content": t["system"].strip()}, {"role": "user", "content": brief}], prefill


def accept(c: const.Constitution, rows: list[dict], target: int, max_overlap: float) -> tuple[list[list[str]], Counter]:
    """Replay every completion in (round, trait, sample) order and keep the accepted prompts."""
    kept: list[list[str]] = [[] for _ in c.traits]
    why: Counter = Counter()
    for r in sorted(rows, key=lambda r: (r["round"], r["trait"], r["sample"])):
        if r.get("error") or not r["response"]:
            why["failed_generation"] += 1
            continue
        items, other = parse_items(r["response"])
        why["not_a_list_item"] += other
        t = r["trait"]
        for item in items:
            if len(kept[t]) >= target:
                why["beyond_target"] += 1
                continue
            if len(item.split()) < 2:
                why["too_short"] += 1
                continue
            reason = too_similar(item, c.traits[t].prompts + kept[t], max_overlap)
            if reason:
                why[reason] += 1
                continue
            kept[t].append(item)
    return kept, why


def stage_config(cfg: RunConfig) -> dict:
    return {"persona": cfg.persona, "seed": cfg.seed, "expand": dataclasses.asdict(cfg.expand)}


def run(cfg: RunConfig, force: bool = False, backend=None) -> Path:
    c = const.load(cfg.persona)
    stage = Stage(run_dir(cfg.name), "expand", stage_config(cfg), {"constitution": constitution_id(c)})
    if not stage.begin(force):
        return stage.dir
    e = cfg.expand
    indices = list(range(len(c.traits)))[: e.max_traits]
    log = RowLog(stage.dir / "rounds.jsonl")
    own_backend = backend is None
    total_tokens, total_seconds = 0, 0.0
    for rnd in range(e.rounds):
        kept, _ = accept(c, list(log.rows.values()), e.target, e.max_overlap)
        pending = [t for t in indices if len(kept[t]) < e.target]
        if not pending:
            break
        items = [{"id": f"r{rnd}-t{t}-s{s}", "round": rnd, "trait": t, "sample": s}
                 for t in pending for s in range(e.samples_per_round)]
        if all(it["id"] in log for it in items):
            continue
        if backend is None:
            from ..backends import make_backend

            backend = make_backend(e.model)
        stats = generate_rows(
            log, items, lambda it: build_chat(c.traits[it["trait"]], e.target - len(kept[it["trait"]])),
            backend, e.sampling, (cfg.seed, "expand", rnd), chunk_size=64, desc=f"expand round {rnd + 1}",
        )
        total_tokens += stats.tokens
        total_seconds += stats.seconds
    if own_backend and backend is not None:
        backend.close()

    kept, why = accept(c, list(log.rows.values()), e.target, e.max_overlap)
    for t in indices:
        c.traits[t].additional_prompts = kept[t]
    out = layout.path(cfg, "constitution")
    write_text_atomic(out, f"# expanded by charter expand (run {cfg.name})\n" + c.to_yaml())
    write_jsonl_atomic(stage.dir / "expanded.jsonl", (
        {"trait": tr.trait, "questions": tr.prompts, "additional_questions": tr.additional_prompts}
        for tr in c.traits))
    counts = {
        "traits_expanded": len(indices),
        "completions": len(log),
        "accepted": sum(len(kept[t]) for t in indices),
        "traits_short_of_target": sum(len(kept[t]) < e.target for t in indices),
        "rejected": dict(why),
        "tokens": total_tokens,
        "tokens_per_s": round(total_tokens / total_seconds, 1) if total_seconds else None,
    }
    stage.finish(counts, outputs=[out], per_trait=[len(kept[t]) for t in indices])
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"expand: {n['accepted']} new prompts over {n['traits_expanded']} traits, "
            f"rejected {json.dumps(n['rejected'])}, {manifest['seconds']:.0f}s")


def enabled(cfg: RunConfig) -> bool:
    """Whether ``charter train`` runs this stage (later stages then read the configured constitution)."""
    return cfg.expand.enabled
