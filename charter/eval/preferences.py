"""Revealed preferences: which of two traits a model chooses to act out, judged, rated per trait.

    charter eval preferences configs/demo.yaml [key=value ...]
    charter eval preferences configs/demo.yaml preferences.models='[base, trained, loving=/path/to/model]'

Every prompt gets a seeded random pair of distinct traits in random order. The model is told to answer in
the manner of one of them (condition ``feel``: whichever feels most like it; ``like``: whichever it would
most like to adopt; ``random``) without saying which. A judge reads each reply and names the trait it shows
(the pair in its own seeded order, so neither model nor judge sees a fixed position). The winner/loser pairs
give every trait a rating: the reference Elo and a Bradley-Terry estimate with bootstrap CIs. All models see
the same prompts and pairs, so differences between them are not sampling noise in the pairs.

Writes to ``<run>/eval-preferences/``: ``replies-<label>.jsonl`` and ``judge-<label>.jsonl`` (resumable raw
logs), ``choices-<label>.jsonl`` (prompt, traits, positions, reply, verdict, judge text),
``ratings-<label>.json``/``.csv``, and with two or more models ``comparison.json`` (each model against the
first), ``rises_falls.png`` and ``histogram.png``. Unparseable verdicts are counted, never guessed.

The traits come from ``preferences.traits``: our list (``builtin``), the paper's 144 words (``reference``; only
67 words are in both, so use it to compare ratings with the paper's) or a file. Beside the largest rises and
falls, ``comparison.json`` gives the **persona's own traits** (``prompts/persona_traits.yaml``, a hand-made map
per shipped persona and list, or ``preferences.persona_traits``): their mean rating change with a bootstrap
CI, so a persona that did not take shows as such even when other traits moved most.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import SCORE_OPTIONS, require
from ..config import ModelSpec
from ..generation import generate_rows
from ..judges.trait import judge_chat, parse_verdict
from ..layout import run_models
from ..prompts import load_prompt_source, template, traits
from ..registry import BASE, eval_folder
from ..runs import (RowLog, Stage, config_hash, derive_seed, identity_hash, manifest_path, read_manifest, reusable,
                    run_dir, silent, write_json_atomic, write_jsonl_atomic, write_text_atomic)
from . import persona_traits
from .preferences_plots import plot_histogram, plot_rises_falls

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("preferences")
TOP = 5
LEVEL = 0.95

CONDITIONS = {
    "feel": "whichever of the two feels most like you",
    "like": "whichever of the two you would most like to adopt",
    "random": "one of the two at random",
}

def article(word: str) -> str:
    """'a' or 'an' for the sound a word starts with (honest -> an, unique -> a, unapologetic -> an)."""
    w = word.lower()
    if w.startswith(("honest", "honor", "honour", "hour", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uti", "eu", "one", "ure")):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def system_prompt(t1: str, t2: str, condition: str) -> str:
    if condition not in CONDITIONS:
        raise ValueError(f"preferences.condition '{condition}': expected one of {', '.join(CONDITIONS)}")
    return template("judges")["preference"]["system"].format(a1=article(t1), t1=t1, a2=article(t2), t2=t2, condition=CONDITIONS[condition])


def make_items(cfg: RunConfig) -> list[dict]:
    """The prompts and trait pairs every model sees: a seeded sample of the pool in seeded order, each with
    a random ordered pair of distinct traits (``traits`` = [Choice 1, Choice 2]) and the judge's order."""
    p = cfg.preferences
    pool = list(dict.fromkeys(load_prompt_source(p.prompt_source, builtin="preference_prompts")))
    names = traits(p.traits)
    rng = random.Random(derive_seed(cfg.seed, "preferences", "items"))
    picked = rng.sample(range(len(pool)), min(p.prompts, len(pool)))
    items = []
    for j, i in enumerate(picked):
        t1, t2 = rng.sample(names, 2)  # uniform over ordered pairs: the order is random too
        judge_order = [t1, t2] if rng.random() < 0.5 else [t2, t1]
        items.append({"id": f"p{j}", "prompt": pool[i], "traits": [t1, t2], "judge_order": judge_order})
    return items


@dataclass
class Target:
    """One model to evaluate: ``spec`` is None when it does not exist yet (``missing`` says why)."""

    label: str
    spec: ModelSpec | None
    source: str
    missing: str | None = None
    finished_at: str | None = None

    def identity(self) -> str:
        """What the label's outputs depend on: if it changes, that label's logs are redone."""
        return identity_hash({"spec": dataclasses.asdict(self.spec), "finished_at": self.finished_at})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"


def resolve_targets(cfg: RunConfig) -> list[Target]:
    """``preferences.models`` -> targets. 'base' is the student; 'trained'/'distilled' are this run's models;
    'label=ref' or a bare path/hub id is any other model (on the student's backend settings)."""
    out: list[Target] = []
    for entry in cfg.preferences.models:
        entry = str(entry).strip()
        label, _, ref = entry.partition("=") if "=" in entry else ("", "", entry)
        label = _slug(label) if label else ""
        if ref == BASE:
            out.append(Target(label or BASE, cfg.student, "student"))
        elif ref in run_models():
            stage, sub = run_models()[ref]
            path = run_dir(cfg.name) / stage / sub
            manifest = manifest_path(path.parent)
            if not (path / "config.json").exists() or not manifest.exists():
                out.append(Target(label or ref, None, str(path),
                                  missing=f"{path} does not exist yet (run `charter {stage}` first)"))
                continue
            spec = dataclasses.replace(cfg.student, model=str(path), adapter=None, name=None)
            finished = read_manifest(manifest).get("finished_at")
            out.append(Target(label or ref, spec, str(path), finished_at=finished))
        else:
            if not label:
                p = Path(ref.rstrip("/"))
                label = f"{p.parent.name}-{p.name}" if p.name in ("model", "merged", "final") else p.name
            out.append(Target(_slug(label), dataclasses.replace(cfg.student, model=ref, adapter=None, name=None),
                              ref))
    labels = [t.label for t in out]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ValueError(f"preferences.models: label(s) {sorted(dup)} used twice; write 'label=model'")
    return out


def stage_config(cfg: RunConfig) -> dict:
    # `models` is left out on purpose: adding or dropping a model reuses the other models' logs; so is
    # `persona_traits`, which only chooses what is summarised. A trait list is hashed by its words (a file can
    # change under the same path); the built-in one is left out, so runs made before the option stay valid.
    prefs = {k: v for k, v in dataclasses.asdict(cfg.preferences).items()
             if k not in ("models", "persona_traits", "traits")}
    if cfg.preferences.traits != "builtin":
        prefs["traits"] = {"list": cfg.preferences.traits, "words": config_hash(traits(cfg.preferences.traits))}
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "preferences": prefs}


def _same(a: ModelSpec, b: ModelSpec) -> bool:
    return dataclasses.replace(a, name=None) == dataclasses.replace(b, name=None)


class _Backends:
    """Keeps one loaded model and reuses it when the next spec is the same (e.g. base model = judge)."""

    def __init__(self):
        self.spec, self.backend = None, None

    def get(self, spec: ModelSpec):
        if self.backend is None or not _same(self.spec, spec):
            from ..backends import make_backend

            self.close()
            self.spec, self.backend = spec, make_backend(spec)
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.spec, self.backend = None, None


def _check_identity(d: Path, t: Target, report) -> None:
    """Discard a label's logs when the model behind the label changed (e.g. the run was retrained)."""
    path = d / f"model-{t.label}.json"
    if path.exists() and json.loads(path.read_text()).get("identity") != t.identity():
        report(f"preferences: '{t.label}' now points to a different model; redoing its replies")
        for name in ("replies-{}.jsonl", "judge-{}.jsonl", "choices-{}.jsonl", "ratings-{}.json", "ratings-{}.csv"):
            (d / name.format(t.label)).unlink(missing_ok=True)
    write_json_atomic(path, {"identity": t.identity(), "source": t.source, "finished_at": t.finished_at,
                             "spec": dataclasses.asdict(t.spec)})


def build_choices(items: list[dict], replies: RowLog, judged: RowLog) -> tuple[list[dict], dict]:
    """Join items, replies and judge texts into choice rows; count every way a row can fail."""
    rows, n = [], {"prompts": len(items), "reply_failed": 0, "reply_empty": 0, "reply_truncated": 0,
                   "judge_failed": 0, "unparseable": 0, "comparisons": 0, "picked_choice_1": 0,
                   "judge_picked_first": 0}
    for it in items:
        r, j = replies.rows.get(it["id"]), judged.rows.get(it["id"])
        reply = (r or {}).get("response") or ""
        row = {"id": it["id"], "prompt": it["prompt"], "traits": it["traits"], "judge_order": it["judge_order"],
               "reply": reply, "reply_finished": (r or {}).get("finished"), "verdict": None, "position": None,
               "judge_position": None, "winner": None, "loser": None, "judge_raw": (j or {}).get("response")}
        if r is None or r.get("error"):
            status = "reply_failed"
        elif not reply.strip():
            status = "reply_empty"
        elif j is None or j.get("error"):
            status = "judge_failed"
        else:
            verdict = parse_verdict(j["response"], it["judge_order"])
            status = "ok" if verdict else "unparseable"
            if verdict:
                t1, t2 = it["traits"]
                row.update(verdict=verdict, position=it["traits"].index(verdict) + 1,
                           judge_position=it["judge_order"].index(verdict) + 1,
                           winner=verdict, loser=t2 if verdict == t1 else t1)
        if r is not None and not r.get("error") and not r.get("finished"):
            n["reply_truncated"] += 1
        row["status"] = status
        n["comparisons" if status == "ok" else status] += 1
        n["picked_choice_1"] += row["position"] == 1
        n["judge_picked_first"] += row["judge_position"] == 1
        rows.append(row)
    return rows, n


def rate(rows: list[dict], n_boot: int, seed: int, level: float = LEVEL) -> tuple[dict, dict]:
    """Ratings of one model's choices (Elo in data order, BT with bootstrap CIs) and the bootstrap draws."""
    from . import elo  # numpy: not for `charter --help`, which imports this module through the registry

    comps = [(r["winner"], r["loser"]) for r in rows if r["status"] == "ok"]
    bt, ref_elo = elo.bradley_terry(comps), elo.elo_ratings(comps)
    draws = elo.bootstrap_draws(comps, elo.bradley_terry, n_boot, seed) if n_boot else {}
    ci = elo.percentile_ci(draws, level) if draws else {}
    counts = elo.tally(comps)
    unrated = sorted({t for r in rows for t in r["traits"]} - set(bt))
    table = {}
    for t in sorted(bt, key=lambda t: (-bt[t], t)):
        lo, hi = ci.get(t, (None, None))
        table[t] = {"bt": round(bt[t], 2), "bt_lo": None if lo is None else round(lo, 2),
                    "bt_hi": None if hi is None else round(hi, 2), "elo": round(ref_elo[t], 2), **counts[t]}
    return {"comparisons": len(comps), "bootstrap": n_boot, "level": level, "traits": table,
            "unrated": unrated}, draws


def ratings_csv(path: Path, table: dict) -> None:
    import csv
    import io

    buf = io.StringIO()
    cols = ["bt", "bt_lo", "bt_hi", "elo", "wins", "losses", "comparisons"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trait", *cols])
    for t, v in table.items():
        w.writerow([t, *("" if v[c] is None else v[c] for c in cols)])
    write_text_atomic(path, buf.getvalue())


def _fmt_delta(t: str, d: dict) -> str:
    ci = f" [{d['lo']:+.0f}, {d['hi']:+.0f}]" if d["lo"] is not None else ""
    return f"{t} {d['delta']:+.0f}{ci}"


def _judge_by_logprob(judged: RowLog, todo: list[dict], replies: RowLog, backend, chunk: int) -> dict:
    """Verdicts as the judge's likelier answer among the two traits, written in the same form as generated
    verdicts (so parsing and counting stay one code path) plus the two log-probabilities."""
    require(backend, SCORE_OPTIONS, "preferences.judge_mode=logprob (the judge scores two answers locally)")
    t0, missing = time.perf_counter(), [it for it in todo if it["id"] not in judged]
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        chats = [judge_chat(replies.rows[it["id"]]["response"], it["judge_order"]) for it in part]
        scores = backend.score_options(chats, [it["judge_order"] for it in part], prefill="<answer>")
        judged.append([{**it, "response": f"<answer>{it['judge_order'][max(range(2), key=lambda k: s[k])]}</answer>",
                        "finished": True, "tokens": 0, "error": None, "logprobs": s}
                       for it, s in zip(part, scores, strict=True)])
    return {"rows": len(missing), "tokens": 0, "seconds": round(time.perf_counter() - t0, 2), "tokens_per_s": 0}


def _generate(stage: Stage, cfg: RunConfig, ready: list[Target], items: list[dict], report) -> dict:
    """Replies from every model, then verdicts from the judge; only rows missing from the logs are made."""
    p = cfg.preferences
    if p.judge_mode not in ("generate", "logprob"):
        raise ValueError(f"preferences.judge_mode: expected 'generate' or 'logprob', got {p.judge_mode!r}")
    judge_spec = p.judge or cfg.student
    if p.judge_mode == "logprob":  # before any reply is generated, not after
        require(judge_spec, SCORE_OPTIONS, "preferences.judge_mode=logprob (the judge scores two answers locally)")
    backends, gen = _Backends(), {}
    try:
        # Models identical to the judge go last, so the judge reuses the loaded model.
        for t in sorted(ready, key=lambda t: _same(t.spec, judge_spec)):
            _check_identity(stage.dir, t, report)
            replies = RowLog(stage.dir / f"replies-{t.label}.jsonl")
            if any(it["id"] not in replies for it in items):
                gen[f"{t.label}/replies"] = generate_rows(
                    replies, items, lambda it: ([{"role": "system", "content": system_prompt(
                        *it["traits"], p.condition)}, {"role": "user", "content": it["prompt"]}], None),
                    backends.get(t.spec), p.sampling, (cfg.seed, "preferences", t.label, "reply"),
                    p.chunk_size, f"replies {t.label}").as_dict()
        for t in ready:
            replies = RowLog(stage.dir / f"replies-{t.label}.jsonl")
            judged = RowLog(stage.dir / f"judge-{t.label}.jsonl")
            todo = [{"id": it["id"], "judge_order": it["judge_order"]} for it in items
                    if (r := replies.rows.get(it["id"])) and not r.get("error") and r["response"].strip()]
            if any(it["id"] not in judged for it in todo) and p.judge_mode == "logprob":
                gen[f"{t.label}/judge"] = _judge_by_logprob(judged, todo, replies, backends.get(judge_spec),
                                                            p.chunk_size)
            elif any(it["id"] not in judged for it in todo):
                gen[f"{t.label}/judge"] = generate_rows(
                    judged, todo, lambda it: (judge_chat(replies.rows[it["id"]]["response"], it["judge_order"]),
                                              None),
                    backends.get(judge_spec), p.judge_sampling, (cfg.seed, "preferences", t.label, "judge"),
                    p.chunk_size, f"judge {t.label}").as_dict()
    finally:
        backends.close()
    return gen


def _rate_all(stage: Stage, cfg: RunConfig, ready: list[Target], items: list[dict],
              own: tuple[list[str] | None, str]) -> tuple[dict, list, list]:
    """Choices, ratings and (with 2+ models) the comparison and figures; returns counts, report lines, files."""
    lines, counts, rated, draws, files = [], {}, {}, {}, []
    for t in ready:
        rows, n = build_choices(items, RowLog(stage.dir / f"replies-{t.label}.jsonl"),
                                RowLog(stage.dir / f"judge-{t.label}.jsonl"))
        write_jsonl_atomic(stage.dir / f"choices-{t.label}.jsonl", rows)
        seed = derive_seed(cfg.seed, "preferences", t.label, "boot")
        ratings, draws[t.label] = rate(rows, cfg.preferences.bootstrap, seed)
        write_json_atomic(stage.dir / f"ratings-{t.label}.json", {"label": t.label, "model": t.source, **ratings})
        ratings_csv(stage.dir / f"ratings-{t.label}.csv", ratings["traits"])
        files += [f"choices-{t.label}.jsonl", f"ratings-{t.label}.json", f"ratings-{t.label}.csv"]
        rated[t.label] = r = {k: v["bt"] for k, v in ratings["traits"].items()}
        counts[t.label] = n = {**n, "traits_rated": len(r)}
        lines.append(f"preferences {t.label}: {n['comparisons']}/{n['prompts']} comparisons, "
                     f"{n['unparseable']} unparseable verdicts, {n['reply_failed'] + n['reply_empty']} failed or "
                     f"empty replies, {n['judge_failed']} failed judgements; {len(r)} traits rated; "
                     f"picked Choice 1 in {n['picked_choice_1']}/{n['comparisons']}")
        if r:  # ratings come sorted, highest first
            lines.append(f"  top: {', '.join(f'{k} {r[k]:.0f}' for k in list(r)[:TOP])}")
            lines.append(f"  bottom: {', '.join(f'{k} {r[k]:.0f}' for k in list(r)[::-1][:TOP])}")
    for name in ("comparison.json", "rises_falls.png", "histogram.png"):
        (stage.dir / name).unlink(missing_ok=True)  # never leave a comparison of an older model list
    if len(ready) >= 2:
        from . import elo

        base = ready[0].label
        comparison = {"baseline": base, "rating": "bradley-terry (Elo scale)", "level": LEVEL,
                      "trait_list": cfg.preferences.traits, "persona_traits_from": own[1], "against": {}}
        for t in ready[1:]:
            c = elo.compare(rated[base], rated[t.label], draws[base], draws[t.label], top=TOP, level=LEVEL)
            if own[0] is not None:
                c["persona_traits"] = persona_traits.shift(rated[base], rated[t.label], draws[base],
                                                           draws[t.label], own[0], LEVEL)
            comparison["against"][t.label] = c
            for kind in ("rises", "falls"):
                moved = ", ".join(_fmt_delta(x, c["deltas"][x]) for x in c[kind]) or "none"
                lines.append(f"{t.label} vs {base}: top {kind}: {moved}")
            lines.append(persona_traits.summary_line(t.label, base, c.get("persona_traits"), own[1]))
            rho = c["spearman"]["rho"]
            lines.append(f"{t.label} vs {base}: Spearman rho {'n/a' if rho is None else f'{rho:.2f}'} "
                         f"over {c['spearman']['n']} shared traits")
        write_json_atomic(stage.dir / "comparison.json", comparison)
        plot_rises_falls(stage.dir / "rises_falls.png", comparison)
        plot_histogram(stage.dir / "histogram.png", rated)
        files += ["comparison.json", "rises_falls.png", "histogram.png"]
    return counts, lines, files


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Evaluate every model in ``cfg.preferences.models``; returns the output folder."""
    system_prompt("a", "b", cfg.preferences.condition)  # fail fast on a bad condition
    own = persona_traits.resolve(cfg)  # and on a bad trait list or persona trait
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg))
    targets = resolve_targets(cfg)
    ready = [t for t in targets if t.spec is not None]
    skipped = {t.label: t.missing for t in targets if t.spec is None}
    models = {t.label: t.identity() for t in ready}
    done = reusable(stage, force, lambda m: m.get("models") == models and m.get("persona_traits") == own[0], report)
    if done is not None:  # else the model list changed: resume, reusing every unchanged label's logs
        for line in [f"preferences: skipping '{k}': {v}" for k, v in skipped.items()] + done.get("report", []):
            report(line)
        return stage.dir
    for label, why in skipped.items():
        report(f"preferences: skipping '{label}': {why}")
    if not ready:  # checked before begin(), so no half-made stage folder is left behind
        raise RuntimeError("preferences: no model to evaluate yet (" + "; ".join(skipped.values()) + ")")
    stage.begin(force)
    items = make_items(cfg)
    gen = _generate(stage, cfg, ready, items, report)
    counts, lines, files = _rate_all(stage, cfg, ready, items, own)
    for line in lines:
        report(line)
    stage.finish({"prompts": len(items), "models": counts, "skipped": skipped},
                 models={t.label: t.identity() for t in ready}, persona_traits=own[0], skipped=skipped,
                 generation=gen, judge=dataclasses.asdict(cfg.preferences.judge or cfg.student), files=files, report=lines)
    report(f"{STAGE}: {', '.join(t.label for t in ready)} in {time.time() - stage.started:.0f}s -> {stage.dir}")
    return stage.dir
