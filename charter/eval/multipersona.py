"""Multi-persona robustness, as the paper: which persona wrote each held-out reply?

    charter eval robustness configs/cpu-personas.yaml persona=sarcastic name=cpu-sarcastic \
        robustness.personas='[cpu-poetic, cpu-loving, cpu-mathematical]'

One class per persona: this run's and every run ``robustness.personas`` names (each must have run ``charter eval
robustness`` itself). A classifier learns from every persona's plain replies to *this* run's train prompts (rows
matched by prompt text, so runs made with the same seed and prompt settings share the split exactly) and labels
their replies to the held-out prompts, per condition and attack. The base model has no persona and is not scored.

Per cell: macro-F1 and accuracy; per condition, the mean ± SEM of the cells' macro-F1 over the attacks (``none``
excluded), and **pooled** scores: macro-F1 of all the condition's attacked replies together, and of its
unattacked ones, each with a percentile bootstrap 95% CI that resamples held-out *prompts* (every persona's
replies to a prompt, under every attack, move together), seeded from the run seed; plus the confusion matrix
(true persona x predicted persona counts) of the attacked replies.

Written to ``<run>/eval-robustness/personas/`` (``results.json``, ``predictions.jsonl``, ``results-tfidf.json``
and its own manifest), beside the single-persona mode's results in ``<run>/eval-robustness/``, which it leaves as
they are; both modes share that folder's split and ``generations.jsonl``, so neither asks for a reply twice.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING

from ..classifier import make_classifier, mean_sem, score
from ..registry import eval_folder
from ..runs import derive_seed, read_jsonl, run_dir
from .detector import usable
from .heldout import check_no_leak
from .robustness_replies import NONE
from .stats import LEVEL, percentile_ci

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("robustness")
FOLDER = "personas"  # inside STAGE: this mode's results and manifest


@dataclasses.dataclass
class Source:
    """One persona's generations: this run's, or another run's in multi-persona mode."""

    run: str
    label: str
    rows: list[dict]


def other_sources(cfg: RunConfig, own_label: str) -> list[Source]:
    """The runs ``robustness.personas`` names, each labelled with the persona its split.json records."""
    out = []
    for name in map(str, cfg.robustness.personas):
        d = run_dir(name) / STAGE
        if name == cfg.name or not (d / "split.json").exists():
            raise RuntimeError(f"robustness.personas: run '{name}' " + ("is this run" if name == cfg.name else
                               f"has no {STAGE} output (evaluate it first: `charter eval robustness <its config>`)"))
        label = json.loads((d / "split.json").read_text())["persona"]
        if label in [own_label] + [s.label for s in out]:
            raise ValueError(f"robustness.personas: persona '{label}' (run '{name}') appears twice")
        out.append(Source(name, label, read_jsonl(d / "generations.jsonl")))
    return out


def training_set(sources: list[Source], conds: list[str], train_prompts, heldout_prompts):
    """(texts, labels, prompts) of plain replies to train prompts, labelled with their run's persona; asserts no
    held-out prompt is among them."""
    texts, labels, prompts = [], [], []
    train_set = set(train_prompts)
    for s in sources:
        for row in s.rows:
            if (row["condition"] in conds and row["attack"] == NONE and row["split"] in ("train", "heldout")
                    and row["prompt"] in train_set and usable(row)):
                texts.append(row["response"])
                labels.append(s.label)
                prompts.append(row["prompt"])
    check_no_leak(prompts, heldout_prompts)
    return texts, labels, prompts


def _cells(sources: list[Source], cond: str, split: str, attack: str, heldout: set) -> list[tuple]:
    """(source, row, true label) scored for one cell: every persona's replies of condition ``cond``."""
    return [(s, r, s.label) for s in sources for r in s.rows if r["condition"] == cond and r["split"] == split
            and r["attack"] == attack and r["prompt"] in heldout and usable(r)]


def summarize(table: dict, attack_ids: list[str]) -> dict:
    """Mean ± SEM of macro-F1 (and mean accuracy) over the attacks, ``none`` excluded."""
    out = {}
    for cond, cells in table.items():
        f1 = [cells[a]["macro_f1"] for a in attack_ids if a in cells]
        acc = [cells[a]["accuracy"] for a in attack_ids if a in cells]
        m, sem = mean_sem(f1)
        out[cond] = {"mean_f1": round(m, 4), "sem_f1": round(sem, 4), "mean_acc": round(mean_sem(acc)[0], 4)}
    return out


def _rounded(s: dict) -> dict:
    return {"macro_f1": round(s["macro_f1"], 4), "accuracy": round(s["accuracy"], 4), "n": s["n"]}


# ---------------------------------------------------------------- pooled scores: prompt bootstrap, confusion


def confusion_by_prompt(items: list[tuple[str, str, str]], prompts: list[str], labels: list[str]):
    """(prompts, labels, labels) counts of ``items`` (prompt, true label, predicted label): one confusion matrix,
    rows true and columns predicted, per prompt."""
    import numpy as np

    at = {p: i for i, p in enumerate(prompts)}
    lab = {x: i for i, x in enumerate(labels)}
    counts = np.zeros((len(prompts), len(labels), len(labels)), dtype=np.int64)
    for prompt, true, pred in items:
        counts[at[prompt], lab[true], lab[pred]] += 1
    return counts


def macro_f1(counts):
    """Macro-F1 of confusion matrices ``(..., L, L)`` (rows true), over the classes that occur as true labels, as
    ``classifier.score``: a class's F1 is 2 TP / (its true count + its predicted count)."""
    import numpy as np

    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    true, pred = counts.sum(-1), counts.sum(-2)
    f1 = np.where(true > 0, 2 * tp / np.maximum(true + pred, 1), np.nan)
    return np.nanmean(f1, axis=-1)


def bootstrap_f1(by_prompt, n_boot: int, seed: int, level: float = LEVEL) -> dict:
    """Macro-F1 and accuracy of the summed per-prompt confusion matrices ``by_prompt`` (P, L, L), with a
    percentile bootstrap CI of the macro-F1 from resampling prompts (a prompt's replies move together); prompts
    with no reply are left out. ``n`` counts replies, ``prompts`` the prompts that had one."""
    import numpy as np

    by_prompt = by_prompt[by_prompt.sum(axis=(1, 2)) > 0]
    n_prompts = len(by_prompt)
    if not n_prompts:
        return {"macro_f1": None, "lo": None, "hi": None, "accuracy": None, "n": 0, "prompts": 0}
    total = by_prompt.sum(axis=0)
    lo = hi = None
    if n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, n_prompts, size=(n_boot, n_prompts))
        weights = np.zeros((n_boot, n_prompts), dtype=np.int64)
        np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1)  # how often each prompt was drawn
        lo, hi = (round(x, 4) for x in percentile_ci(macro_f1(np.tensordot(weights, by_prompt, axes=1)), level))
    return {"macro_f1": round(float(macro_f1(total)), 4), "lo": lo, "hi": hi,
            "accuracy": round(float(np.trace(total) / total.sum()), 4), "n": int(total.sum()), "prompts": n_prompts}


def pooled(cfg: RunConfig, cells: dict, pred: dict, conds: list[str], attack_ids: list[str], split: dict,
           labels: list[str]) -> tuple[dict, dict]:
    """Per condition the pooled macro-F1 under the attacks and with none, each with its prompt-bootstrap CI, and
    the confusion matrix of the attacked replies; (pooled, confusion)."""
    prompts = [x["prompt"] for x in split["heldout"]]
    n_boot, seed = cfg.robustness.bootstrap, derive_seed(cfg.seed, "robustness", "bootstrap")

    def items(cond, attacks):
        return [(row["prompt"], y, pred[(s.run, row["id"])]) for a in attacks for s, row, y in cells.get((cond, a), ())]

    out, matrices = {}, {}
    for c in conds:
        attacked = confusion_by_prompt(items(c, attack_ids), prompts, labels)
        none = confusion_by_prompt(items(c, [NONE]), prompts, labels)
        if not attacked.sum() and not none.sum():
            continue
        out[c] = {"attacks": bootstrap_f1(attacked, n_boot, seed), "none": bootstrap_f1(none, n_boot, seed)}
        matrices[c] = attacked.sum(axis=0).tolist()
    confusion = {"rows": "true persona", "columns": "predicted persona", "labels": labels,
                 "replies": f"every held-out reply under the {len(attack_ids)} attacks (none and prefill excluded)",
                 "counts": matrices}
    return out, confusion


# ---------------------------------------------------------------- scoring


def score_all(cfg: RunConfig, sources: list[Source], scored: list[str], attack_ids: list[str], split: dict,
              encoder: str, settings: dict) -> tuple[dict, list[dict], dict]:
    """Train the classifier on every persona's plain train-prompt replies and score the held-out ones; returns
    (results, predictions, counts)."""
    train_prompts = [x["prompt"] for x in split["train"]]
    heldout = {x["prompt"] for x in split["heldout"]}
    texts, labels, prompts = training_set(sources, scored, train_prompts, heldout)
    check_no_leak(prompts, heldout)  # once more, right where the classifier sees them
    t0 = time.time()
    clf = make_classifier(encoder, settings, derive_seed(cfg.seed, "robustness", "classifier"))
    clf.fit(texts, labels)
    fit_s = time.time() - t0
    cells = {(c, a): _cells(sources, c, "heldout", a, heldout) for c in scored for a in [NONE, *attack_ids]}
    if cfg.robustness.prefill:
        cells.update({(c, "prefill"): _cells(sources, c, "turn2", "prefill", heldout) for c in scored})
    unique = {(s.run, row["id"]): (s, row, y) for cell in cells.values() for s, row, y in cell}
    keys = list(unique)
    pred = dict(zip(keys, clf.predict([unique[k][1]["response"] for k in keys]), strict=True))
    table, prefill = {}, {}
    for (c, a), cell in cells.items():
        if not cell:
            continue
        s = _rounded(score([y for _, _, y in cell], [pred[(src.run, row["id"])] for src, row, _ in cell]))
        if a == "prefill":
            prefill[c] = s
        else:
            table.setdefault(c, {})[a] = s
    names = sorted(set(labels) | {s.label for s in sources})  # a persona with no train reply is still a true label
    pooled_f1, confusion = pooled(cfg, cells, pred, [c for c in scored if c in table], attack_ids, split, names)
    results = {"mode": "multi", "labels": sorted(set(labels)), "encoder": encoder, "n_train": len(train_prompts),
               "n_heldout": len(heldout), "table": table, "summary": summarize(table, attack_ids),
               "prefill": prefill, "attacks": list(attack_ids), "runs": {s.label: s.run for s in sources},
               "level": LEVEL, "bootstrap": cfg.robustness.bootstrap, "pooled": pooled_f1, "confusion": confusion}
    predictions = [{"run": s.run, "id": row["id"], "condition": row["condition"], "split": row["split"],
                    "attack": row["attack"], "prompt": row["prompt"], "true": s.label,
                    "predicted": pred[(s.run, row["id"])]} for s, row, _ in unique.values()]
    counts = {"train_texts": len(texts), "train_by_label": {k: labels.count(k) for k in sorted(set(labels))},
              "scored_texts": len(keys), "classifier_seconds": round(fit_s, 1)}
    return results, predictions, counts


def _ci(cell: dict | None) -> str:
    if not cell or cell.get("macro_f1") is None:
        return "-"
    return f"{cell['macro_f1']:.2f}" + (f" [{cell['lo']:.2f},{cell['hi']:.2f}]" if cell.get("lo") is not None else "")


def format_table(results: dict, attack_ids: list[str]) -> list[str]:
    """The macro-F1 table as text lines: one row per condition, one column per attack, then the pooled scores
    with their CIs (results written before they existed have none) and the confusion matrices."""
    cols = [NONE, *attack_ids]
    w = max([9, *(len(c) for c in results["table"])])
    pool = results.get("pooled") or {}
    lines = [f"robustness macro-F1 on {results['n_heldout']} held-out prompts ({results['mode']} mode: "
             f"{' / '.join(results['labels'])}; encoder {results['encoder']}; trained on {results['n_train']} "
             "other prompts)",
             " ".join([f"{'condition':<{w}}", *(f"{c:>{max(5, len(c))}}" for c in cols), f"{'mean±sem':>11}",
                       f"{'prefill':>7}", *([f"{'pooled attacks [95% CI]':>23}"] if pool else [])])]
    for cond, cells in results["table"].items():
        vals = [f"{cells[c]['macro_f1']:>{max(5, len(c))}.2f}" if c in cells else f"{'-':>{max(5, len(c))}}"
                for c in cols]
        s = results["summary"][cond]
        pre = results["prefill"].get(cond)
        lines.append(" ".join([f"{cond:<{w}}", *vals, f"{s['mean_f1']:>6.2f}±{s['sem_f1']:.2f}",
                               f"{pre['macro_f1']:>7.2f}" if pre else f"{'-':>7}",
                               *([f"{_ci((pool.get(cond) or {}).get('attacks')):>23}"] if pool else [])]))
    conf = results.get("confusion")
    if conf and conf["counts"]:
        lines.append(f"confusion under the attacks (rows true, columns predicted: {' / '.join(conf['labels'])}):")
        lines += [f"  {c:<{w}} " + " | ".join(" ".join(f"{v:>3}" for v in row) for row in m)
                  for c, m in conf["counts"].items()]
    return lines
