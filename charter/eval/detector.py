"""The persona detector drift and formats share: the reference replies it learns from and is checked on, its
fitting on reference texts only, and its check (balanced accuracy on held-out prompted vs base replies).

The reference prompts are split off the evaluation's prompt pool (``drift_conversations.split_pool``); the last
quarter only checks the detector. See ``inpersona.py`` for what the detector is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..classifier import make_classifier, proba_of
from ..generation import generate_rows
from ..runs import RowLog, derive_seed
from . import conditions, inpersona

if TYPE_CHECKING:
    from ..config import RunConfig

THRESHOLD = inpersona.THRESHOLD
REFERENCE_CONDITIONS = (conditions.BASE, conditions.TEACHER)  # always answer the reference prompts: the detector's check needs them


def usable(r: dict | None) -> bool:
    """Whether a logged row is a reply to score: generated without an error and not empty."""
    return r is not None and not r.get("error") and bool((r.get("response") or "").strip())


def reference_items(cond: str, prompts: list[str], split: str) -> list[dict]:
    """Single plain replies to reference prompts; ``split`` 'train' (the detector may learn from them, as
    ``inpersona.reference_texts`` reads them) or 'check' (it never does)."""
    tag = "r" if split == "train" else "k"
    return [{"id": f"{cond}/{split}/{tag}{i}", "condition": cond, "split": split, "attack": "none",
             "pid": f"{tag}{i}", "prompt": p} for i, p in enumerate(prompts)]


def generate_reference(cfg: RunConfig, key: str, log: RowLog, cond: str, backend, system, fit: list[str],
                       check: list[str], reference: str, sampling, chunk_size: int) -> dict:
    """Base's or prompted's single replies to the reference prompts: the check quarter always, the fit part
    only when the detector learns from them (``reference == 'prompted'``). Each part has its own seeds."""
    stats = {}

    def build(it):
        return conditions.chat(cfg, cond, system, [{"role": "user", "content": it["prompt"]}]), None

    parts = [("check", check)] + ([("train", fit)] if reference == "prompted" else [])
    for split, prompts in parts:
        items = reference_items(cond, prompts, split)
        if any(it["id"] not in log for it in items):
            stats[f"{cond}/{split}"] = generate_rows(log, items, build, backend, sampling,
                                                     (cfg.seed, key, "reference", cond, split), chunk_size,
                                                     f"{key} reference {cond} {split}").as_dict()
    return stats


def fit_detector(cfg: RunConfig, section, key: str, persona: str, ref_rows: list[dict], fit: list[str],
                 scored_prompts) -> tuple[object, dict]:
    """(detector, what it learned from): fitted on reference texts only (``inpersona.reference_texts``), with
    the evaluation's own seed; none of them is a reply to a scored prompt."""
    texts, labels, info = inpersona.reference_texts(cfg.name, ref_rows, persona, section.reference, fit,
                                                    set(scored_prompts),
                                                    exemplars=inpersona.exemplars_file(cfg, section.exemplars,
                                                                                        section.reference))
    t0 = time.time()
    clf = make_classifier(section.encoder, section.classifier, derive_seed(cfg.seed, key, "classifier"))
    clf.fit(texts, labels)
    fitted, learned = inpersona.FITS[section.reference]
    return clf, {"reference": section.reference, "fit": fitted, "learned_from": learned, **info,
                 "encoder": section.encoder, "threshold": THRESHOLD, "fit_seconds": round(time.time() - t0, 1)}


def detector_check(clf, persona: str, ref_rows: list[dict], n_boot: int, seed: int) -> dict:
    """Balanced accuracy on the check prompts' single replies (prompted judged persona, base judged plain), with
    a bootstrap CI over those prompts; also the persona recall and the base false-alarm rate."""
    rows = [r for r in ref_rows if r["split"] == "check" and r["condition"] in REFERENCE_CONDITIONS and usable(r)]
    probs = proba_of(clf, [r["response"] for r in rows], persona)
    hit = {c: {} for c in REFERENCE_CONDITIONS}
    for r, p in zip(rows, probs, strict=True):
        hit[r["condition"]][r["pid"]] = float(p >= THRESHOLD)
    pids = sorted({r["pid"] for r in rows})
    persona, plain = hit[conditions.TEACHER], hit[conditions.BASE]
    right = [[persona.get(p), None if p not in plain else 1 - plain[p]] for p in pids]
    return {"balanced_accuracy": inpersona.bootstrap_rate(right, n_boot, seed),
            "persona_recall": inpersona.bootstrap_rate([[persona.get(p)] for p in pids], 0, seed)["rate"],
            "base_false_alarms": inpersona.bootstrap_rate([[plain.get(p)] for p in pids], 0, seed)["rate"],
            "prompts": len(pids)}
