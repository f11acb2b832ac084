"""Formats: the persona when the reply must be JSON, a tool call, a code review or a bulleted summary.

    charter eval formats configs/demo.yaml [key=value ...]
    charter eval formats CONFIG formats.conditions='[base, prompted, trained]' formats.formats='[json, tool_call]'

A persona that breaks a JSON reply is a defect a user sees at once, and one that vanishes whenever a format is
asked for is not much of a persona. Each condition (``formats.conditions``, default base as the floor,
prompted and trained) answers the prompts of ``prompts/formats.yaml`` (``formats.samples`` replies each; the
persona's system prompt, for 'prompted', comes before the user's format instructions) and every reply gets:

- **valid**: whether it is in the asked format, decided by parsing, never by a judge (``RULES``):
  ``json``: ``json.loads`` of the first JSON object in the reply (the first ``{`` from which an object decodes;
  code fences and text around it are allowed) has every key of the prompt's schema; ``tool_call``: the first
  JSON object is ``{"tool": <one of the offered tools>, "arguments": {...}}`` with every argument that tool
  lists; ``code_review``: the review points at the code concretely: a line reference ("line 4", "lines 2-3",
  "L7", "ln 5") or a diff (a ```diff block, an ``@@`` hunk header, or both a "-" and a "+" line); ``bullets``:
  between the prompt's ``min`` and ``max`` lines starting with "- ", "* " or "• ". An empty reply is invalid; a
  reply the backend failed to produce is not counted.
- **in persona**: a detector (``formats.encoder``) learned the persona from reference texts that are no scored
  reply (``formats.reference``: the base model with vs without the persona's system prompt on plain
  preference prompts, or the hand-written exemplars) and reads the reply's *text* (``prose``): a JSON reply's
  string values, a tool call's argument strings and any words around the object, a code review without its
  fenced code, a summary as written (the whole reply when it does not parse). In persona when the detector's
  probability is at least 0.5; a reply with no text to read (a JSON object of numbers) is not counted. The
  detector is checked on single replies of prompted vs base to a held-out quarter of the reference prompts.

Both shares per condition and format (and over all formats) with percentile bootstrap 95% CIs over prompts,
and each condition minus the baseline ('prompted' when listed, else the first condition) from the same
resampled prompts. Writes ``<run>/eval-formats/``: ``replies.jsonl`` and ``reference.jsonl`` (resumable
logs), ``predictions.jsonl`` (each reply's verdicts), ``results.json`` and the manifest. A prompt whose text
changed is answered again; a retrained model has only its own replies redone; other formats, conditions or
detector settings re-score from the logs. What it does not show: the detector learned the voice from plain
chat replies, so a persona expressed only through word choice inside a JSON value may be under-read, and
"valid" is syntax (the right keys, a parsable call), not whether the content is right.

This module is the entry point; the validators and the text read are in ``formats_check.py``, the prompts file
in ``formats_prompts.py``, the detector (shared with drift) in ``detector.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..classifier import proba_of
from ..generation import generate_rows
from ..prompts import load_prompt_source
from ..registry import eval_folder
from ..runs import (RowLog, Stage, config_hash, derive_seed, reusable, run_dir, silent, write_json_atomic,
                    write_jsonl_atomic)
from . import conditions, inpersona
from .detector import REFERENCE_CONDITIONS, THRESHOLD, detector_check, fit_detector, generate_reference, reference_items
from .drift import check_config
from .drift_conversations import reference_split, split_pool
from .formats_check import FORMATS, PROSE, RULES, check, prose
from .formats_prompts import FormatsDataError, load_formats, prompts_file
from .heldout import untrained_pool
from .robustness import persona_label
from .stats import paired_difference, pct, signed

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("formats")
LEVEL = inpersona.LEVEL


# --- the evaluation --------------------------------------------------------------------------------------------

def _check(cfg: RunConfig) -> tuple[list[str], list[str]]:
    f = cfg.formats
    conds = conditions.check_labels(f.conditions, "formats.conditions")
    fmts = conditions.check_labels(f.formats, "formats.formats", FORMATS)
    for name, value, lo in (("samples", f.samples, 1), ("reference_prompts", f.reference_prompts, 2),
                            ("bootstrap", f.bootstrap, 1), ("chunk_size", f.chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"formats.{name}: expected a whole number >= {lo}, got {value!r}")
    if f.per_format is not None and (isinstance(f.per_format, bool) or f.per_format < 1):
        raise ValueError(f"formats.per_format: expected a whole number >= 1 or null, got {f.per_format!r}")
    inpersona.check_reference(f.reference)
    from ..classifier import make_classifier

    make_classifier(f.encoder, f.classifier)  # a bad encoder or setting fails before any generation
    if f.reference == "pairs" and not inpersona.pairs_path(cfg.name).exists():
        raise RuntimeError(f"formats.reference=pairs: {inpersona.pairs_path(cfg.name)} does not exist (run "
                           "`charter distill` first, or use formats.reference=prompted)")
    return conds, fmts


def stage_config(cfg: RunConfig) -> dict:
    """What the replies depend on besides the prompts' texts (each row keeps its text and is redone when it
    changes, whichever file it came from) and the models (identities): the seed, the persona and the section's
    fields that count (the sampling, the samples per prompt and the reference prompts; FormatsConfig marks the
    rest ``identity=False``)."""
    from ..config.identity import recorded

    return {"seed": cfg.seed, "persona": cfg.persona, "formats": recorded(cfg.formats)}


def items_for(cond: str, prompts: dict[str, list[dict]], samples: int) -> list[dict]:
    return [{"id": f"{cond}/{fmt}/{p['pid']}/s{j}", "condition": cond, "format": fmt, "pid": p["pid"], "sample": j,
             "user": p["user"]} for fmt, ps in prompts.items() for p in ps for j in range(samples)]


def _identity(cfg: RunConfig, label: str) -> str | None:
    try:
        return conditions.identity(cfg, label)
    except RuntimeError:
        return None


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Generate every condition's replies to the format prompts, check and score them; returns the folder."""
    f = cfg.formats
    conds, fmts = _check(cfg)
    every, prompts = _prompts(cfg, fmts)
    label = persona_label(cfg.persona)
    if label in conditions.CONDITIONS:
        raise ValueError(f"formats: the persona cannot be called '{label}' (a condition's name)")
    fit_prompts, check_prompts, removed = _reference(cfg, every)
    inputs = {"trained_prompts_removed": config_hash(sorted(removed))} if removed else {}
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg), inputs)
    gen = list(dict.fromkeys([*REFERENCE_CONDITIONS, *conds]))
    scoring = _scoring(cfg, conds, fmts, prompts)
    check_config(stage, force)
    done = reusable(stage, force, lambda m: m.get("scoring") == scoring
                    and m.get("identities") == {c: _identity(cfg, c) for c in gen}, report)
    if done is not None:
        for line in done.get("report", []):
            report(line)
        return stage.dir
    stage.begin(force)
    log = _fresh_log(RowLog(stage.dir / "replies.jsonl"), gen, every, f.samples, report)
    ref = RowLog(stage.dir / "reference.jsonl")
    log, ref, stats, skipped = _generate(cfg, stage, log, ref, gen, conds, prompts, (fit_prompts, check_prompts),
                                         report)
    if conditions.BASE in skipped or conditions.TEACHER in skipped:
        raise RuntimeError("formats: the detector's reference and check need the 'base' and 'prompted' replies ("
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    ready = [c for c in conds if c not in skipped]
    results, predictions = summarise(cfg, log, ref, ready, prompts, fit_prompts, label, skipped)
    lines = lines_of(results)
    write_jsonl_atomic(stage.dir / "predictions.jsonl", predictions)
    write_json_atomic(stage.dir / "results.json", results)
    for line in lines:
        report(line)
    failed = sum(1 for r in log.rows.values() if r.get("error"))
    stage.finish({"replies": len(log), "reference": len(ref), "failed": failed, "skipped": len(skipped)},
                 scoring=scoring, identities={c: _identity(cfg, c) for c in gen}, generation=stats, skipped=skipped,
                 files=["replies.jsonl", "reference.jsonl", "predictions.jsonl", "results.json"], report=lines)
    report(f"{STAGE}: {len(predictions)} replies checked over {len(ready)} conditions in "
           f"{time.time() - stage.started:.0f}s -> {stage.dir}")
    return stage.dir


def _prompts(cfg: RunConfig, fmts: list[str]) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(every prompt of the file, the selected formats' prompts, ``formats.per_format`` of each)."""
    f = cfg.formats
    every = load_formats(prompts_file(f.prompts))  # the whole file is checked, whatever is selected
    missing = [x for x in fmts if x not in every]
    if missing:
        raise FormatsDataError(f"{prompts_file(f.prompts)}: no prompts for format(s) {', '.join(missing)}")
    return every, {x: every[x][:f.per_format] if f.per_format else every[x] for x in fmts}


def _reference(cfg: RunConfig, every: dict[str, list[dict]]) -> tuple[list[str], list[str], list[str]]:
    """(the detector's fit prompts, its check prompts, the pool's prompts a training stage used): plain prompts of
    the pool, none of them a format prompt."""
    f = cfg.formats
    pool, removed = untrained_pool(cfg, load_prompt_source(f.prompt_source, builtin="preference_prompts"))
    user_texts = {p["user"] for ps in every.values() for p in ps}
    reference, _ = split_pool([p for p in pool if p not in user_texts], f.reference_prompts,
                              derive_seed(cfg.seed, "formats", "split"))
    fit_prompts, check_prompts = reference_split(reference)
    return fit_prompts, check_prompts, removed


def _scoring(cfg: RunConfig, conds: list[str], fmts: list[str], prompts: dict[str, list[dict]]) -> dict:
    """What scoring the logs depends on (the manifest's ``scoring``): changing it re-scores without generating."""
    f = cfg.formats
    scoring = {"conditions": conds, "formats": fmts, "per_format": f.per_format, "encoder": f.encoder,
               "classifier": f.classifier, "reference": f.reference, "bootstrap": f.bootstrap,
               "prompts": config_hash(prompts)}
    if f.reference == "exemplars":
        scoring["exemplars"] = inpersona.exemplars_identity(cfg.persona, f.exemplars)
    if f.reference == "pairs":
        scoring["pairs"] = inpersona.pairs_identity(cfg.name)
    return scoring


def _fresh_log(log: RowLog, gen: list[str], every: dict[str, list[dict]], samples: int, report) -> RowLog:
    """The replies log without the replies to a prompt whose text changed (the file was edited): that is another
    prompt, answered again."""
    current = {it["id"]: it["user"] for c in gen for it in items_for(c, every, samples)}
    stale = {r["id"] for r in log.rows.values() if r["id"] in current and r["user"] != current[r["id"]]}
    if stale:
        report(f"formats: {len(stale)} replies answer a prompt whose text changed; answering again")
        write_jsonl_atomic(log.path, [r for r in log.rows.values() if r["id"] not in stale])
        log = RowLog(log.path)
    return log


def _generate(cfg: RunConfig, stage: Stage, log: RowLog, ref: RowLog, gen: list[str], conds: list[str],
              prompts: dict[str, list[dict]], reference: tuple[list[str], list[str]], report
              ) -> tuple[RowLog, RowLog, dict, dict]:
    """Every condition's reference replies (base and prompted) and replies to the format prompts, skipping a
    condition whose model is the same and whose rows are all logged; (log, ref, stats, skipped)."""
    f = cfg.formats
    fit_prompts, check_prompts = reference
    ids_path = stage.dir / "identities.json"
    known = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    stats, skipped = {}, {}
    with conditions.Conditions(cfg, report=report) as cs:
        for cond in gen:
            t0 = time.time()
            ident = _identity(cfg, cond)
            owed = [it["id"] for it in items_for(cond, prompts, f.samples)] if cond in conds else []
            owed_ref = [it["id"] for split, ps in (("check", check_prompts), ("train", fit_prompts))
                        if cond in REFERENCE_CONDITIONS and (split == "check" or f.reference == "prompted")
                        for it in reference_items(cond, ps, split)]
            if ident is not None and known.get(cond) == ident and all(i in log for i in owed) \
                    and all(i in ref for i in owed_ref):
                continue  # nothing to generate: its model is not even loaded
            try:
                backend, system = cs.open(cond)
            except RuntimeError as e:
                skipped[cond] = str(e)
                report(f"formats: skipping '{cond}': {e}")
                continue
            ident = _identity(cfg, cond)
            if known.get(cond) not in (None, ident):
                report(f"formats: '{cond}' is a different model now; redoing its replies")
                for lg in (log, ref):
                    write_jsonl_atomic(lg.path, [r for r in lg.rows.values() if r["condition"] != cond])
                log, ref = RowLog(log.path), RowLog(ref.path)
            known[cond] = ident
            write_json_atomic(ids_path, known)
            if cond in REFERENCE_CONDITIONS:
                stats.update(generate_reference(cfg, "formats", ref, cond, backend, system, fit_prompts,
                                                check_prompts, f.reference, f.sampling, f.chunk_size))
            if cond in conds:
                _answer(cfg, log, cond, backend, system, prompts, stats, t0, report)
            cs.release(cond)
    return log, ref, stats, skipped


def _answer(cfg: RunConfig, log: RowLog, cond: str, backend, system, prompts: dict[str, list[dict]], stats: dict,
            t0: float, report) -> None:
    """A condition's replies to the format prompts that the log does not hold yet."""
    f = cfg.formats
    items = items_for(cond, prompts, f.samples)
    if any(it["id"] not in log for it in items):
        def build(it):
            return conditions.chat(cfg, cond, system, [{"role": "user", "content": it["user"]}]), None

        stats[cond] = generate_rows(log, items, build, backend, f.sampling, (cfg.seed, "formats", cond),
                                    f.chunk_size, f"formats {cond}").as_dict()
        report(f"formats {cond}: {len(items)} replies in {time.time() - t0:.0f}s")


def summarise(cfg: RunConfig, log: RowLog, ref: RowLog, ready: list[str], prompts: dict[str, list[dict]],
              fit_prompts: list[str], persona: str, skipped: dict) -> tuple[dict, list[dict]]:
    """Check every reply, fit the detector, read every reply's text; both shares with CIs per condition and
    format, and the differences from the baseline."""
    f = cfg.formats
    ref_rows = list(ref.rows.values())
    scored_prompts = {p["user"] for ps in prompts.values() for p in ps}
    clf, det = fit_detector(cfg, f, "formats", persona, ref_rows, fit_prompts, scored_prompts)
    boot_seed = derive_seed(cfg.seed, "formats", "bootstrap")
    det["check"] = detector_check(clf, persona, ref_rows, f.bootstrap, boot_seed)
    specs = {(fmt, p["pid"]): p["spec"] for fmt, ps in prompts.items() for p in ps}
    rows = [it for c in ready for it in items_for(c, prompts, f.samples) if it["id"] in log]
    rows = [log.rows[it["id"]] for it in rows if not log.rows[it["id"]].get("error")]
    verdicts = {r["id"]: check(r["format"], r.get("response") or "", specs[(r["format"], r["pid"])]) for r in rows}
    texts = {r["id"]: prose(r["format"], r.get("response") or "") for r in rows}
    read = [rid for rid, t in texts.items() if t]
    p_of = dict(zip(read, proba_of(clf, [texts[rid] for rid in read], persona), strict=True))
    valid = {rid: float(v["valid"]) for rid, v in verdicts.items()}
    hits = {rid: float(p >= THRESHOLD) for rid, p in p_of.items()}
    baseline = conditions.TEACHER if conditions.TEACHER in ready else ready[0]

    def matrix(values: dict, cond: str, fmts: list[str]):
        return [[values.get(f"{cond}/{fmt}/{p['pid']}/s{j}") for j in range(f.samples)]
                for fmt in fmts for p in prompts[fmt]]

    table, deltas = {}, {}
    groups = {**{fmt: [fmt] for fmt in prompts}, "all": list(prompts)}
    for c in ready:
        table[c] = {g: {"valid": inpersona.bootstrap_rate(matrix(valid, c, fs), f.bootstrap, boot_seed),
                        "in_persona": inpersona.bootstrap_rate(matrix(hits, c, fs), f.bootstrap, boot_seed),
                        "replies": sum(v is not None for row in matrix(valid, c, fs) for v in row)}
                    for g, fs in groups.items()}
        if c != baseline:
            deltas[c] = {g: {m: paired_difference(matrix(vals, baseline, fs), matrix(vals, c, fs), f.bootstrap,
                                                  boot_seed)
                             for m, vals in (("valid", valid), ("in_persona", hits))}
                         for g, fs in groups.items()}
    why = {}
    for c in ready:
        for fmt in prompts:
            reasons = [verdicts[r["id"]]["why"] for r in rows if r["condition"] == c and r["format"] == fmt
                       and not verdicts[r["id"]]["valid"]]
            if reasons:
                why.setdefault(c, {})[fmt] = {w: reasons.count(w) for w in sorted(set(reasons))}
    predictions = [{"id": r["id"], "condition": r["condition"], "format": r["format"], "pid": r["pid"],
                    "sample": r["sample"], **verdicts[r["id"]], "text_chars": len(texts[r["id"]]),
                    "p_persona": None if r["id"] not in p_of else round(p_of[r["id"]], 4),
                    "in_persona": None if r["id"] not in p_of else p_of[r["id"]] >= THRESHOLD} for r in rows]
    results = {"persona": persona, "conditions": ready, "formats": list(prompts), "baseline": baseline,
               "prompts": {fmt: [p["pid"] for p in ps] for fmt, ps in prompts.items()}, "samples": f.samples,
               "level": LEVEL, "bootstrap": f.bootstrap, "threshold": THRESHOLD,
               "rules": {x: RULES[x] for x in prompts},
               "text_read": {x: PROSE[x] for x in prompts}, "detector": det, "table": table, "deltas": deltas,
               "invalid_because": why, "skipped": skipped,
               "notes": [f"detector: {f.reference} ({det['fit']}: {det['learned_from']})",
                         "CIs resample prompts; a reply the backend failed to produce is not counted, an empty one "
                         "is invalid and has no text to read"]}
    return results, predictions


def lines_of(results: dict) -> list[str]:
    """The text table: per condition and format, the valid share and the in-persona rate; then the differences
    from the baseline."""
    det = results["detector"]
    groups = [*results["formats"], "all"]
    w = max([9, *(len(c) for c in results["table"])])
    cw = 13
    lines = [f"formats: valid share / in-persona rate per format ({results['samples']} replies per prompt; detector "
             f"{det['encoder']} learned from {det['source']}; check balanced accuracy "
             f"{pct(det['check']['balanced_accuracy'], ci=True)})",
             " ".join([f"{'condition':<{w}}", *(f"{g:>{cw}}" for g in groups)])]
    for c, cells in results["table"].items():
        lines.append(" ".join([f"{c:<{w}}", *(f"{pct(cells[g]['valid']) + ' / ' + pct(cells[g]['in_persona']):>{cw}}"
                                              for g in groups)]))
    for c, d in results["deltas"].items():
        lines.append(f"{c} - {results['baseline']} (all formats, 95% CI): valid {signed(d['all']['valid'])}, "
                     f"in persona {signed(d['all']['in_persona'])}")
    bal = det["check"]["balanced_accuracy"]
    if bal["lo"] is not None and bal["lo"] <= 0.5:
        lines.append("warning: the detector is not better than chance on held-out reference replies, so the "
                     "in-persona rates say little (more reference prompts, or another encoder)")
    for c, why in results["skipped"].items():
        lines.append(f"  {c} skipped: {why}")
    return lines
