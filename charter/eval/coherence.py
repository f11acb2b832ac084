"""Coherence: a pairwise judge compares the trained model's replies with each other condition's.

    charter eval coherence configs/demo.yaml [coherence.against='[base, prompted]' ...]

Every condition answers the same seeded prompts, drawn from a pool (``coherence.prompt_source``; built in: the
``preference_prompts`` first messages) after removing every prompt a training stage used: distillation's (read
from the run's ``distill/pairs.jsonl`` and ``teacher.jsonl``, else its deterministic selection) and
introspection's. The judge never sees a prompt the trained model was fitted on; when the pool has none left,
the evaluation stops and says so. ``results.json`` records the overlap, which is 0.
For each prompt the judge sees the trained reply and the other condition's reply twice, once in each order,
and is asked about coherence only: fluent, on topic, internally consistent, sensible. Persona and style are
explicitly out of scope (the reference folded trait alignment into the same rubric and ranked it first). A
judge whose reply has no readable verdict is asked once to finish it (its own text, then ``<answer>``), so a
rambling small judge still commits; such verdicts are counted as forced. A pair counts only when both orders
name the same reply; pairs whose orders disagree (position bias or a coin toss) and pairs with no verdict are
discarded and reported as shares, never guessed.

Writes ``<run>/eval-coherence/``: ``replies-<label>.jsonl``, ``judge-<label>.jsonl`` and ``forced-<label>.jsonl``
(resumable raw logs), ``judgements.jsonl`` (one row per pair: both verdicts and the outcome), ``results.json``
(win rate of 'trained' with a Wilson CI per condition) and the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING

from ..config import Sampling
from ..generation import generate_rows
from ..layout import run_model
from ..registry import eval_folder
from ..runs import (RowLog, Stage, config_hash, derive_seed, identity_hash, reusable, run_dir, silent,
                    write_json_atomic, write_jsonl_atomic)
from . import conditions, heldout
from .conditions import Conditions, all_conditions, condition_spec, identity, model_key
from ..judges.pairwise import FORCE, judge_chat, pair_outcome, parse_choice

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("coherence")
LEVEL = 0.95
CHUNK = 64

FORCE_SAMPLING = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=8)


# --- counting ---------------------------------------------------------------------------------------------

def wilson(k: int, n: int, level: float = LEVEL) -> list[float] | None:
    """Wilson score interval for k successes in n (None when n is 0): sound near 0 and 1 and for small n."""
    if n == 0:
        return None
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def tally(outcomes: list[str], level: float = LEVEL) -> dict:
    """The results.json entry for one condition from its pairs' outcomes."""
    wins, losses = outcomes.count("trained"), outcomes.count("other")
    n = wins + losses
    return {"win_rate": wins / n if n else None, "ci": wilson(wins, n, level), "n_pairs": len(outcomes),
            "n_counted": n, "n_inconsistent": outcomes.count("inconsistent"),
            "n_unparseable": outcomes.count("unparseable")}


# --- the stage --------------------------------------------------------------------------------------------

def _sampling(cfg: RunConfig):
    return cfg.coherence.sampling


def stage_config(cfg: RunConfig) -> dict:
    # `against` is left out: adding or dropping a condition reuses every other condition's logs.
    c = {k: v for k, v in dataclasses.asdict(cfg.coherence).items() if k != "against"}
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "coherence": c,
            "sampling": dataclasses.asdict(_sampling(cfg))}


# Kept here for callers that read them from coherence; the one definition is in heldout.py.
_key = heldout.key
training_prompts = heldout.training_prompts


def make_items(cfg: RunConfig) -> tuple[list[dict], dict]:
    """Seeded prompts from the pool, none of them a training prompt; returns the items and the bookkeeping
    (pool size, training prompts removed, overlap: 0). Raises when no prompt is left."""
    from ..prompts import load_prompt_source

    source = cfg.coherence.prompt_source
    pool = list(dict.fromkeys(p.strip() for p in load_prompt_source(source, builtin="preference_prompts")
                              if p.strip()))
    seen = set().union(*training_prompts(cfg).values())
    held, _ = heldout.untrained(pool, seen)
    if not held:
        raise RuntimeError(f"coherence: every one of the {len(pool)} prompts of coherence.prompt_source="
                           f"'{source}' is a training prompt of this run (distillation or introspection), so the "
                           "judge would only see prompts the model was fitted on; give it prompts no training "
                           "stage used")
    rng = random.Random(derive_seed(cfg.seed, "coherence", "prompts"))
    picked = rng.sample(held, min(cfg.coherence.prompts, len(held)))
    overlap = sum(heldout.is_trained(p, seen) for p in picked)
    if overlap:  # by construction never; checked where it matters (survives python -O)
        raise AssertionError(f"coherence: {overlap} training prompt(s) among the judged prompts")
    # Ids follow the prompt's text, so logs written for another selection are never matched to a new prompt.
    items = [{"id": f"q{config_hash(p)[:12]}", "prompt": p} for p in picked]
    return items, {"prompt_source": source, "pool": len(pool), "removed_training": len(pool) - len(held),
                   "training_prompts": len(seen), "training_overlap": overlap}


def _fresh(d: Path, name: str, ident: str, logs: list[str], report) -> None:
    """Drop logs made for an older model/judge (e.g. the run was retrained), then record the new identity."""
    path = d / f"identity-{name}.json"
    if path.exists() and json.loads(path.read_text()).get("identity") != ident:
        report(f"coherence: '{name}' changed since its logs were written; redoing them")
        for log in logs:
            (d / log).unlink(missing_ok=True)
    write_json_atomic(path, {"identity": ident})


def verdict(judged: dict | None, forced: dict | None) -> tuple[int | None, bool]:
    """(reply number, forced?) of one judgement: from the judge's own text, else from the forced follow-up."""
    if not judged or judged.get("error"):
        return None, False
    v = parse_choice(judged["response"])
    if v is not None or not forced or forced.get("error"):
        return v, False
    v = parse_choice(FORCE + forced["response"])
    return v, v is not None


def _judge_against(c: str, d: Path, cfg: RunConfig, items: list[dict], ident: str, judge, gen: dict,
                   report) -> list[dict]:
    """Both orders of every pair judged (and, for verdicts that cannot be read, the forced follow-up);
    returns one row per pair. ``judge()`` gives the loaded judge backend."""
    trained, other = RowLog(d / "replies-trained.jsonl"), RowLog(d / f"replies-{c}.jsonl")
    _fresh(d, f"judge-{c}", ident, [f"judge-{c}.jsonl", f"forced-{c}.jsonl"], report)
    judged, forced = RowLog(d / f"judge-{c}.jsonl"), RowLog(d / f"forced-{c}.jsonl")
    pairs = [it for it in items if (rt := trained.rows.get(it["id"])) and not rt.get("error")
             and (ro := other.rows.get(it["id"])) and not ro.get("error")]
    todo = [{"id": f"{it['id']}/{k}", "prompt": it["prompt"], "qid": it["id"], "trained_is": k}
            for it in pairs for k in (1, 2)]

    def chat(t):
        a, b = trained.rows[t["qid"]]["response"], other.rows[t["qid"]]["response"]
        return judge_chat(t["prompt"], *((a, b) if t["trained_is"] == 1 else (b, a)))

    if any(t["id"] not in judged for t in todo):
        gen[f"judge-{c}"] = generate_rows(judged, todo, lambda t: (chat(t), None), judge(),
                                          cfg.coherence.judge_sampling, (cfg.seed, "coherence", "judge", c),
                                          CHUNK, f"judge vs {c}").as_dict()
    # A judge that rambled without a readable answer is asked to finish: its own text, then "<answer>".
    retry = [t for t in todo if (j := judged.rows.get(t["id"])) and not j.get("error")
             and parse_choice(j["response"]) is None]
    if any(t["id"] not in forced for t in retry):
        gen[f"forced-{c}"] = generate_rows(
            forced, retry, lambda t: (chat(t), judged.rows[t["id"]]["response"].rstrip() + "\n\n" + FORCE),
            judge(), FORCE_SAMPLING, (cfg.seed, "coherence", "forced", c), CHUNK, f"forced vs {c}").as_dict()
    rows = []
    for it in pairs:
        (v1, f1), (v2, f2) = (verdict(judged.rows.get(f"{it['id']}/{k}"), forced.rows.get(f"{it['id']}/{k}"))
                              for k in (1, 2))
        rows.append({"id": it["id"], "against": c, "prompt": it["prompt"],
                     "trained": trained.rows[it["id"]]["response"], "other": other.rows[it["id"]]["response"],
                     "verdict_trained_first": v1,
                     "verdict_trained_second": v2, "forced": [f1, f2], "outcome": pair_outcome(v1, v2),
                     "judge_trained_first": (judged.rows.get(f"{it['id']}/1") or {}).get("response"),
                     "judge_trained_second": (judged.rows.get(f"{it['id']}/2") or {}).get("response")})
    return rows


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Judge 'trained' against every condition in ``cfg.coherence.against``; returns the output folder."""
    against = list(dict.fromkeys(cfg.coherence.against))
    for c in against:
        if c not in all_conditions() or c == "trained":
            raise ValueError(f"coherence.against: '{c}': expected some of {', '.join(all_conditions()[:-1])}")
    run_model(cfg, "trained")  # raises with the command to run when there is no trained model
    skipped = {}
    for c in against:
        try:
            condition_spec(cfg, c)
        except RuntimeError as e:
            skipped[c] = str(e)
            report(f"coherence: skipping '{c}': {e}")
    ready = [c for c in against if c not in skipped]
    judge_spec = cfg.coherence.judge or cfg.student
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg))
    idents = {c: identity(cfg, c) for c in ["trained", *ready]}
    # An output without the training overlap was made by a version that judged distillation prompts.
    if reusable(stage, force, lambda m: m.get("identities") == idents and "training_overlap" in m["counts"],
                report):
        return stage.dir
    items, pool = make_items(cfg)  # before begin(): a pool with nothing left leaves no half-made folder
    stage.begin(force)
    if len(items) < cfg.coherence.prompts:
        report(f"coherence: only {len(items)} prompts left once the {pool['removed_training']} training prompts "
               f"were removed from the pool (coherence.prompts={cfg.coherence.prompts})")
    sampling, gen, d = _sampling(cfg), {}, stage.dir
    with Conditions(cfg, report) as conds:
        same_as_judge = lambda c: model_key(condition_spec(cfg, c)) == model_key(judge_spec)  # noqa: E731
        for label in sorted(["trained", *ready], key=same_as_judge):  # the judge's model last: it stays loaded
            backend, system = conds.open(label)
            idents[label] = identity(cfg, label)  # a steering vector fitted just now changes it
            _fresh(d, label, idents[label], [f"replies-{label}.jsonl"], report)
            replies = RowLog(d / f"replies-{label}.jsonl")
            gen[label] = generate_rows(
                replies, items,
                lambda it, label=label, system=system: (
                    conditions.chat(cfg, label, system, [{"role": "user", "content": it["prompt"]}]), None),
                backend, sampling, (cfg.seed, "coherence", label), CHUNK, f"replies {label}").as_dict()
            conds.release(label, keep=judge_spec)
        rows, results, lines, forced = [], {}, [], {}
        for c in ready:
            ident = identity_hash([idents["trained"], idents[c], dataclasses.asdict(judge_spec)])
            here = _judge_against(c, d, cfg, items, ident, lambda: conds.backend(judge_spec), gen, report)
            rows += here
            results[c] = r = tally([x["outcome"] for x in here])
            forced[c] = sum(sum(x["forced"]) for x in here)
            rate = "n/a" if r["win_rate"] is None else f"{r['win_rate']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
            lines.append(f"coherence trained vs {c}: win rate {rate} over {r['n_counted']}/{r['n_pairs']} pairs; "
                         f"{r['n_inconsistent']} inconsistent, {r['n_unparseable']} unparseable; "
                         f"{forced[c]} of {2 * len(here)} verdicts forced")
    verdicts = [v for x in rows for v in (x["verdict_trained_first"], x["verdict_trained_second"]) if v]
    write_jsonl_atomic(d / "judgements.jsonl", rows)
    write_json_atomic(d / "results.json", {"against": results, "judge": judge_spec.model, "prompts": len(items),
                                           "level": LEVEL, "skipped": skipped, "forced_verdicts": forced,
                                           "prompt_pool": pool, "training_overlap": pool["training_overlap"]})
    lines.append(f"coherence prompts: {len(items)} from '{pool['prompt_source']}' ({pool['pool']} in the pool, "
                 f"{pool['removed_training']} removed as training prompts); overlap with training prompts: "
                 f"{pool['training_overlap']}")
    for line in lines:
        report(line)
    stage.finish({"prompts": len(items), "pairs": len(rows), "training_overlap": pool["training_overlap"],
                  "judge_picked_response_1": sum(v == 1 for v in verdicts), "verdicts": len(verdicts)},
                 identities=idents, skipped=skipped, generation=gen, judge=dataclasses.asdict(judge_spec),
                 files=["judgements.jsonl", "results.json"], report=lines)
    report(f"{STAGE}: trained vs {', '.join(ready) or 'nothing'} in {time.time() - stage.started:.0f}s -> {d}")
    return d
