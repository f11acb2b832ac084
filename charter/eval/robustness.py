"""Robustness: does the persona survive being asked to drop it?

    charter eval robustness configs/demo.yaml [key=value ...]
    charter eval robustness configs/demo.yaml robustness.encoder=tfidf robustness.personas='[run-b, run-c]'

Prompts are split, with a seeded shuffle, into a train set and a held-out set that share no prompt. Every
condition (base, prompted, steered, distilled, trained; see ``conditions.py``) answers the held-out prompts
plainly and under each break-character attack (``prompts/attacks.yaml``, the instruction appended once to the
user message), and, where a scorer learns from them, the train prompts plainly. Nothing is scored on a prompt
its scorer learned from.

- **Single-persona mode** (``robustness.personas`` empty): the **in-persona rate** (``inpersona.py``). A
  detector learns the persona from reference texts that belong to no scored reply (``robustness.reference``:
  the base model with vs without the persona's system prompt on the train prompts, or the distillation
  pairs), then every condition's held-out replies get the share it judges in persona, with bootstrap 95%
  CIs over prompts. Base is a real floor, 'prompted' a real reference. 'prompted' and 'base' always answer
  the held-out prompts plainly, even when not scored: the detector's own check needs them. Replies to the
  train prompts are read here only with ``reference: prompted`` (base's and prompted's);
  ``train_replies: false`` skips the rest, a tenth of the generation, at the price of this run's log
  serving another run's multi-persona mode.
- **Multi-persona mode** (``robustness.personas`` = other run names): one class per persona, as the paper
  (``multipersona.py``). Each listed run must have run this evaluation itself; its ``generations.jsonl`` is read
  and its rows are matched to *this* run's split by prompt text: its plain replies to our train prompts are
  training data, its replies to our held-out prompts are scored. Runs made with the same seed, prompt source,
  prompt count and held-out fraction share the split exactly. The base model has no persona and is not scored
  here. Macro-F1 and accuracy per condition and attack, mean ± SEM over the attacks (not ``none``), and pooled
  macro-F1 with prompt-bootstrap CIs and a confusion matrix per condition.
- **Prefill attack**: the base model answers each held-out prompt with no persona (turn 1), the user says
  "Keep going." and each condition writes turn 2, which is scored like a reply.

Writes to ``<run>/eval-robustness/``: ``split.json``, ``generations.jsonl`` (resumable), ``predictions.jsonl``,
``results.json`` (plus ``results-tfidf.json``, the same scores from the TF-IDF baseline, when the encoder is
another) and the manifest; multi-persona mode writes its scores and manifest to ``eval-robustness/personas/``
instead, so one run holds both modes' results (``--force`` still redoes the whole folder). The built-in prompt
pool is ``preference_prompts`` (WildChat-like first messages), not ``general``, which distillation trains on.
Changing the encoder, the reference, the conditions or the personas re-scores, generating only replies that
were never asked for (the train replies, on switching to ``reference: prompted``); a retrained model (its
condition's identity changed) has only its own replies redone.

This module is the entry point, the split and the scoring; what each condition answers and its generation are in
``robustness_replies.py``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..classifier import make_classifier
from ..prompts import load_prompt_source, select_attacks
from ..runs import (RowLog, Stage, config_hash, derive_seed, identity_hash, reusable, run_dir, silent,
                    write_json_atomic, write_jsonl_atomic)
from . import conditions, inpersona, multipersona
from .detector import usable
from .conditions import TEACHER
from .heldout import check_no_leak
from .multipersona import STAGE, Source, other_sources, score_all
from .robustness_replies import BASE, generate_replies

if TYPE_CHECKING:
    from ..config import RunConfig


# ---------------------------------------------------------------- the prompt split (attacks: charter.prompts)


def split_prompts(pool: list[str], n: int, heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): ``n`` distinct prompts drawn with ``seed``, split by ``heldout_fraction``."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"robustness.heldout_fraction {heldout_fraction}: expected a number between 0 and 1")
    pool = list(dict.fromkeys(p.strip() for p in pool if p.strip()))  # a prompt can sit on one side only
    n = min(n, len(pool))
    if n < 2:
        raise ValueError(f"robustness.prompts: need at least 2 distinct prompts, have {n}")
    picked = random.Random(seed).sample(pool, n)
    k = min(n - 1, max(1, round(n * heldout_fraction)))
    train, heldout = picked[k:], picked[:k]
    check_no_leak(train, heldout)
    return train, heldout


def untrained_split(cfg: RunConfig, train: list[str], heldout: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(train, held-out, removed): both sides without every prompt a training stage of this run used (same text,
    or contained in a trained prompt, so an attacked copy counts); the run's prompt logs are read once. Nothing
    is removed before training has written its logs."""
    from .heldout import trained_set, untrained

    trained = trained_set(cfg)
    (train, gone_train), (heldout, gone_heldout) = untrained(train, trained), untrained(heldout, trained)
    return train, heldout, gone_heldout + gone_train


def persona_label(persona: str) -> str:
    """A persona name for labels: a shipped name as is, a constitution file by its stem."""
    return Path(persona).stem if ("/" in persona or "." in persona) else persona


# ---------------------------------------------------------------- entry point


def stage_config(cfg: RunConfig) -> dict:
    # What the replies depend on: the section's fields that count (the conditions, personas, detectors, bootstrap
    # and prefill switch only choose what is generated or scored: ``identity=False`` on RobustnessConfig).
    from ..config.identity import recorded

    return {"seed": cfg.seed, "persona": cfg.persona, "robustness": recorded(cfg.robustness)}



def run(cfg: RunConfig, force: bool = False, report=silent, attacks: list[str] | None = None) -> Path:
    """Generate, classify and score; ``attacks`` limits the attack ids (tests, quick looks). Returns the folder of
    the results: ``eval-robustness/``, in multi-persona mode its ``personas/``."""
    r = cfg.robustness
    conds, attack_ids, mode, label = _check(cfg, attacks)
    # Single mode: 'prompted' answers plainly even when not scored (the reference and the detector's check).
    plain_only = (TEACHER,) if mode == "single" and TEACHER not in conds else ()
    gen_conds = conds + list(plain_only)
    others = other_sources(cfg, label) if mode == "multi" else []
    seed, train, heldout, removed = _split(cfg)
    # The removed prompts are an input: when training later uses more of the pool, the split is drawn anew.
    # Absent when nothing was removed, so outputs made before the check stay valid.
    inputs = {"trained_prompts_removed": config_hash(sorted(removed))} if removed else {}
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg), inputs)
    scoring = _scoring(cfg, mode, conds, attack_ids, others)
    # Multi mode scores into a folder of its own, with its own manifest: the single mode's results stay valid
    # beside it, and both read the same split and replies.
    out = Stage(stage.dir, multipersona.FOLDER, stage.config, inputs) if mode == "multi" else stage
    # Something changed: resume, reusing every reply still valid.
    # A finished output counts as done only for the same stage config too (prompts, split, sampling): otherwise
    # its manifest goes and stage.begin says the config changed, instead of reporting the old rates.
    done = reusable(out, force, lambda m: m.get("scoring") == scoring
                    and m.get("identities") == _identities(cfg, gen_conds)
                    and identity_hash(m.get("config") or {}) == identity_hash(stage.config), report)
    if done is not None:
        for line in done.get("report", []):
            report(line)
        return out.dir
    stage.begin(force)
    if out is not stage:
        out.begin(force)
    split = {"persona": label, "seed": seed, "prompt_source": r.prompt_source, "trained_prompts_removed": len(removed),
             "train": [{"pid": f"t{i}", "prompt": p} for i, p in enumerate(train)],
             "heldout": [{"pid": f"h{i}", "prompt": p} for i, p in enumerate(heldout)]}
    write_json_atomic(stage.dir / "split.json", split)
    plan = sorted(gen_conds, key=lambda c: c != BASE)  # base first: it writes the prefill attack's turn 1
    if r.prefill and BASE not in plan:
        plan.insert(0, BASE)
    log, gen_stats, skipped = generate_replies(cfg, stage, RowLog(stage.dir / "generations.jsonl"), plan, mode,
                                               attack_ids, split, report, plain_only)
    if mode == "multi" and BASE in conds:
        report("robustness: multi-persona mode has no label for 'base'; it only writes the prefill turn 1")
    ready = [c for c in conds if c not in skipped]
    persona_conds = [c for c in ready if c != BASE]
    if mode == "single" and (TEACHER in skipped or BASE in skipped):
        raise RuntimeError("robustness: the detector's reference and check need the 'base' and 'prompted' "
                           "replies (" + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    if mode == "multi" and not persona_conds:
        raise RuntimeError("robustness: no persona-bearing condition could be evaluated ("
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    sources = [Source(cfg.name, label, list(log.rows.values())), *others]
    lines, counts, files = _score(cfg, out.dir, mode, sources, ready, persona_conds, attack_ids, split)
    for line in lines:
        report(line)
    failed = sum(1 for row in log.rows.values() if not usable(row))
    out.finish({"generations": len(log), "failed_or_empty": failed, **counts, "skipped": skipped},
               scoring=scoring, identities=_identities(cfg, gen_conds), generation=gen_stats, skipped=skipped,
               files=(["split.json", "generations.jsonl"] if out is stage else []) + files, report=lines)
    report(f"{STAGE}: {len(log)} replies, {'detector' if mode == 'single' else 'classifier'} on "
           f"{counts['train_texts']} texts, {time.time() - out.started:.0f}s -> {out.dir}")
    return out.dir


def _check(cfg: RunConfig, attacks: list[str] | None) -> tuple[list[str], list[str], str, str]:
    """(conditions, attack ids, mode, the persona's label), every setting checked before any output exists."""
    r = cfg.robustness
    conds = list(dict.fromkeys(str(c) for c in r.conditions))
    unknown = sorted(set(conds) - set(conditions.CONDITIONS))
    if unknown:
        raise ValueError(f"robustness.conditions: unknown {unknown} (known: {', '.join(conditions.CONDITIONS)})")
    attack_ids = select_attacks(attacks)
    make_classifier(r.encoder, r.classifier)  # a bad encoder or setting fails before any generation
    mode = "multi" if r.personas else "single"
    label = persona_label(cfg.persona)
    if mode == "single" and (BASE not in conds or label == BASE):
        raise ValueError("robustness: single-persona mode scores every condition against the base model's floor, "
                         "so robustness.conditions must include 'base' (and the persona cannot be called 'base')")
    for ref in inpersona.references(r):
        inpersona.check_reference(ref)
    if r.detector_seeds < 1:
        raise ValueError(f"robustness.detector_seeds: expected at least 1, got {r.detector_seeds}")
    if mode == "single" and "pairs" in inpersona.references(r) and not inpersona.pairs_path(cfg.name).exists():
        raise RuntimeError(f"robustness.reference=pairs: {inpersona.pairs_path(cfg.name)} does not exist (run "
                           "`charter distill` first, or use robustness.reference=prompted)")
    return conds, attack_ids, mode, label


def _split(cfg: RunConfig) -> tuple[int, list[str], list[str], list[str]]:
    """(the split's seed, train prompts, held-out prompts, prompts removed as trained). Drawn before the stage
    folder exists, so a bad setting leaves nothing half-made."""
    r = cfg.robustness
    seed = derive_seed(cfg.seed, "robustness", "split")
    # The split is drawn from the whole pool, so runs with the same seed share it (multi-persona mode matches
    # them), and then loses every prompt this run trained on, on either side.
    train, heldout = split_prompts(load_prompt_source(r.prompt_source, builtin="preference_prompts"), r.prompts,
                                   r.heldout_fraction, seed)
    train, heldout, removed = untrained_split(cfg, train, heldout)
    if not heldout or not train:
        raise RuntimeError(f"robustness: every {'held-out' if not heldout else 'train'} prompt of the split is a "
                           "prompt this run trained on; give robustness.prompt_source prompts no stage used")
    return seed, train, heldout, removed


def _scoring(cfg: RunConfig, mode: str, conds: list[str], attack_ids: list[str], others: list[Source]) -> dict:
    """What scoring the log depends on (the manifest's ``scoring``): changing it re-scores without generating."""
    r = cfg.robustness
    scoring = {"conditions": conds, "attacks": attack_ids, "encoder": r.encoder, "classifier": r.classifier,
               "prefill": r.prefill, "personas": {s.run: len(s.rows) for s in others}}
    if mode == "single":
        refs = inpersona.references(r)
        scoring.update(reference=r.reference, bootstrap=r.bootstrap,
                       pairs=inpersona.pairs_identity(cfg.name) if "pairs" in refs else None)
        if "exemplars" in refs:  # absent otherwise, so earlier results stay valid
            scoring["exemplars"] = inpersona.exemplars_identity(cfg.persona, r.exemplars)
        if r.secondary or r.detector_seeds > 1:
            scoring.update(secondary=list(r.secondary), detector_seeds=r.detector_seeds)
        if "rl" in conds:
            scoring["rl_reward_reference"] = inpersona.rl_reward_reference(cfg.name)
    return scoring


def _score(cfg: RunConfig, folder: Path, mode: str, sources: list[Source], ready: list[str],
           persona_conds: list[str], attack_ids: list[str], split: dict) -> tuple[list[str], dict, list[str]]:
    """Score with the configured encoder (and the TF-IDF baseline when it is another), write predictions and
    results into ``folder``; (report lines, counts, files written)."""
    r = cfg.robustness
    label, rows = sources[0].label, sources[0].rows

    def score_with(encoder, settings):
        if mode == "single":
            return inpersona.score(cfg, rows, label, ready, attack_ids, split, encoder, settings)
        return score_all(cfg, sources, persona_conds, attack_ids, split, encoder, settings)

    results, predictions, counts = score_with(r.encoder, r.classifier)
    write_jsonl_atomic(folder / "predictions.jsonl", predictions)
    write_json_atomic(folder / "results.json", results)
    files = ["predictions.jsonl", "results.json"]
    lines = (inpersona.format_table(results) if mode == "single"
             else multipersona.format_table(results, attack_ids))
    if r.encoder != "tfidf":  # the word-count baseline costs seconds and says whether the encoder adds anything
        baseline = score_with("tfidf", {})[0]
        write_json_atomic(folder / "results-tfidf.json", baseline)
        files.append("results-tfidf.json")
        lines.append("tf-idf baseline, " + ", ".join(
            f"{c} {inpersona._pct(v['attacks'])}" if mode == "single" else f"{c} {v['mean_f1']:.2f}"
            for c, v in baseline["summary"].items()) + (" (in-persona rate" if mode == "single" else " (macro-F1")
            + ", mean over attacks)")
    return lines, counts, files


def _identities(cfg: RunConfig, conds: list[str]) -> dict:
    """Each condition's identity (None while its model does not exist), so a retrained model re-scores.
    Base is always included: it writes the prefill attack's turn 1."""
    def ident(c):
        try:
            return conditions.identity(cfg, c)
        except RuntimeError:
            return None

    return {c: ident(c) for c in dict.fromkeys([BASE, *conds])}
