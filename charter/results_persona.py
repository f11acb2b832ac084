"""The persona where users meet it, in the published results files: long conversations (``eval drift``), other
formats (``eval formats``), the outside benchmark (``eval traits``) and which of several personas wrote a reply
(``eval robustness`` with ``robustness.personas``), each kept small (rates, CIs, counts, the detector's check)
and drawn into README tables by ``charter.results``.

A results file holds these under ``drift``, ``formats``, ``traits`` and ``multipersona`` when the run has finished
them; the per-reply predictions stay in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .registry import eval_folder
from .runs import manifest_path

# What each evaluation's results.json contributes; the rest (predictions, prompts, rules) is bulk.
KEEP = {
    "drift": ("persona", "conditions", "conversations", "turns", "attack", "followup_share", "bootstrap",
              "trained_prompts_removed", "detector", "windows", "rates", "summary", "monitor", "capping", "skipped"),
    "formats": ("persona", "conditions", "formats", "baseline", "samples", "bootstrap", "detector", "table",
                "deltas", "invalid_because", "skipped"),
    "traits": ("scoring", "models", "baseline", "bootstrap", "items_per_behaviour", "seed", "persona",
               "persona_behaviours", "skipped"),
}


# A run's training stages, in order (a persona's training time is their sum).
TRAIN_STAGES = ("expand", "distill", "dpo", "introspect", "sft", "merge")

# The multi-persona robustness results (eval-robustness/personas/): everything but the per-reply predictions.
MULTI_KEEP = ("labels", "runs", "encoder", "n_train", "n_heldout", "attacks", "bootstrap", "level", "pooled",
              "confusion", "summary", "table", "prefill")


def wall_seconds(manifest: dict) -> float | None:
    """A stage's wall time from its manifest: over every invocation when it was interrupted and resumed."""
    return round(manifest.get("seconds_total", manifest["seconds"]), 1) if "seconds" in manifest else None


def collect_multipersona(run: Path) -> dict | None:
    """The multi-persona part of a results file (None when the run has not scored several personas), with its wall
    time and machine; a run made before the modes wrote apart has it in the robustness folder itself."""
    from .eval.multipersona import FOLDER

    folder = run / eval_folder("robustness")
    for d in (folder / FOLDER, folder):
        path = d / "results.json"
        if path.exists() and (res := json.loads(path.read_text())).get("mode") == "multi":
            m = read_json(manifest_path(d)) or {}
            part = {k: res.get(k) for k in MULTI_KEEP}
            part["seconds"] = wall_seconds(m)
            part["machine"] = m.get("machine")
            part["classifier"] = {k: (m.get("counts") or {}).get(k) for k in ("train_texts", "train_by_label",
                                                                               "classifier_seconds")}
            part["members"] = {label: member(run if name == run.name else run.parent / name)
                               for label, name in (res.get("runs") or {}).items()}
            return part
    return None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def headline_detector(res: dict) -> tuple[str, dict, dict]:
    """(headline name, every detector by name, the headline's results) of a single-persona robustness result; a
    result from before several detectors were scored is its one detector."""
    head = res.get("headline", res.get("reference"))
    dets = res.get("detectors") or {res["reference"]: res}
    return head, dets, dets[head]


def _seconds(folder: Path) -> float | None:
    m = read_json(manifest_path(folder))
    return None if m is None else wall_seconds(m)


def member(folder: Path) -> dict:
    """One persona's own run, for the multi-persona result: what its training cost (the wall time of each training
    stage and their sum) and how far its persona moved by its own single-persona detector (the headline one's
    check and in-persona rates under the attacks); what the personas' shared, smaller config costs shows here."""
    stages = {s: t for s in TRAIN_STAGES if (t := _seconds(folder / s)) is not None}
    out = {"run": folder.name, "train_stages": stages,
           "train_seconds": round(sum(stages.values()), 1) if stages else None,
           "robustness_seconds": _seconds(folder / eval_folder("robustness")), "headline": None}
    res = read_json(folder / eval_folder("robustness") / "results.json")
    if res and res.get("mode") != "multi":
        head, _, det = headline_detector(res)
        out |= {"headline": head, "fit": det.get("fit"),
                "check": ((det.get("detector") or {}).get("balanced_accuracy")),
                "attacks": {c: v.get("attacks") for c, v in (det.get("summary") or {}).items()}}
    return out


def collect(run: Path, manifests: dict) -> dict:
    """``{"drift": ..., "formats": ..., "traits": ..., "multipersona": ...}`` for the evaluations ``run``
    finished, each with its wall time and the machine it ran on."""
    out = {}
    for name, keep in KEEP.items():
        path = run / eval_folder(name) / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        part = {k: res.get(k) for k in keep}
        if name == "traits":  # only the persona's mapped behaviours: the other 130 stay in the run folder
            mapped = (res.get("persona_behaviours") or {}).get("expected") or {}
            part["behaviours"] = {b: r for b, r in res.get("behaviours", {}).items() if b in mapped}
            part["all_behaviours"] = len(res.get("behaviours", {}))
        m = manifests.get(eval_folder(name)) or {}
        part["seconds"] = wall_seconds(m)
        part["machine"] = m.get("machine")
        out[name] = part
    multi = collect_multipersona(run)
    if multi is not None:
        out["multipersona"] = multi
    return out


def cell(c: dict | None) -> str:
    """A rate with its 95% CI for a README table; '-' when there is none."""
    if not c or c.get("rate") is None:
        return "-"
    ci = f" [{c['lo']:.2f}, {c['hi']:.2f}]" if c.get("lo") is not None else ""
    return f"{c['rate']:.2f}{ci}"


def _diff(c: dict | None) -> str:
    if not c or c.get("delta", c.get("rate")) is None:
        return "-"
    v = c.get("delta", c.get("rate"))
    return f"{v:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]" if c.get("lo") is not None else f"{v:+.2f}"


def _check(det: dict) -> str:
    bal = (det.get("check") or {}).get("balanced_accuracy")
    return f"check {cell(bal)}" if bal else "check -"


def _where(doc: dict, part: dict) -> str:
    m = part.get("machine") or doc.get("machine") or {}
    secs = f", {part['seconds'] / 60:.1f} min" if part.get("seconds") else ""
    return (f"{m.get('cpu', '?')}, {m.get('cpu_capability', '?')}, {m.get('auto_dtype', '?')}{secs}; "
            f"run `{doc['run']}`, file `docs/results/{doc.get('_name', doc['run'])}.json`")


def table_drift(doc: dict) -> str:
    """Rows: conditions; the in-persona rate before and after the break-character turn, the change, and the
    activation monitor's correlation with the detector."""
    d = doc["drift"]
    det, att = d["detector"], d["attack"]
    mon = d.get("monitor") or {}
    corr = mon.get("correlation_with_detector") or {}
    lines = [f"| condition | turns {_span(d['windows']['early'])} | turns {_span(d['windows']['late'])} | "
             "change [95% CI] | monitor ~ detector (r) |", "|---|---|---|---|---|"]
    for c in d["conditions"]:
        s = d["summary"].get(c) or {}
        r = (corr.get(c) or {}).get("pearson")
        lines.append(f"| {c} | {cell(s.get('early'))} | {cell(s.get('late'))} | {_diff(s.get('change'))} | "
                     f"{'-' if r is None else f'{r:+.2f}'} |")
    attack = f"'{att['id']}' at turn {att['turn']}" if att.get("id") else "no attack"
    lines += ["", f"{d['conversations']} conversations × {d['turns']} turns, break-character request {attack}; "
              f"detector {det.get('reference', det.get('source', '?'))} ({det.get('fit', '?')}), {_check(det)}; "
              + _where(doc, d) + "."]
    return "\n".join(lines)


def _span(turns: list[int] | None) -> str:
    return "-" if not turns else f"{turns[0]}–{turns[-1]}" if len(turns) > 1 else str(turns[0])


def table_formats(doc: dict) -> str:
    """Rows: conditions; per format the valid share / in-persona rate, then each condition minus the baseline."""
    f = doc["formats"]
    groups = [*f["formats"], "all"]
    lines = ["| condition | " + " | ".join(f"{g}: valid / in persona" for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for c, cells in f["table"].items():
        lines.append(f"| {c} | " + " | ".join(f"{cell(cells[g]['valid'])} / {cell(cells[g]['in_persona'])}"
                                              for g in groups) + " |")
    for c, dl in f["deltas"].items():
        lines.append(f"| {c} − {f['baseline']} | " + " | ".join(
            f"{_diff(dl[g]['valid'])} / {_diff(dl[g]['in_persona'])}" for g in groups) + " |")
    det = f["detector"]
    lines += ["", f"{f['samples']} replies per prompt; validity parsed, persona by detector "
              f"{det.get('reference', det.get('source', '?'))} ({det.get('fit', '?')}), {_check(det)}; "
              + _where(doc, f) + "."]
    return "\n".join(lines)


def table_traits(doc: dict) -> str:
    """Rows: the behaviours the persona maps to, with the expected direction; columns: each model's mean
    probability of the matching answer, and each against the baseline with its paired CI."""
    t = doc["traits"]
    models, base = t["models"], t["baseline"]
    expect = (t.get("persona_behaviours") or {}).get("expected") or {}
    head = ["behaviour (expected)", "n", *(f"{m}: match / p(match)" for m in models),
            *(f"{m} − {base}: match [95% CI]; p(match) [95% CI]" for m in models if m != base)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, r in t["behaviours"].items():
        sign = {1: "+", -1: "−"}.get(expect.get(b), "?")
        cells = [f"{b} ({sign})", str(r["n"]),
                 *(f"{r['models'][m]['match_rate']:.2f} / {r['models'][m]['p_match']:.3f}" for m in models)]
        for m in models:
            if m == base:
                continue
            dl = r["deltas"][m]
            mark = {"as expected": " ✓", "opposite": " ✗"}.get(dl.get("verdict"), "")
            cells.append(f"{dl['delta']:+.2f} [{dl['lo']:+.2f}, {dl['hi']:+.2f}]{mark}; "
                         f"{dl['p_delta']:+.3f} [{dl['p_lo']:+.3f}, {dl['p_hi']:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "match: the share of items whose matching answer is the likelier; p(match): its mean probability "
              f"(answer log-probabilities, no judge); {t['items_per_behaviour']} items per behaviour; ✓/✗ the "
              "match difference's CI apart from zero in / against the expected direction; " + _where(doc, t) + "."]
    return "\n".join(lines)


def _f1(c: dict | None) -> str:
    if not c or c.get("macro_f1") is None:
        return "-"
    ci = f" [{c['lo']:.2f}, {c['hi']:.2f}]" if c.get("lo") is not None else ""
    return f"{c['macro_f1']:.2f}{ci}"


def table_multipersona(doc: dict) -> str:
    """Rows: conditions; which persona wrote each held-out reply: pooled macro-F1 under the attacks and with none
    (prompt-bootstrap CIs), accuracy and replies under the attacks; below, the personas and the CPU."""
    mp = doc["multipersona"]
    n_att = len(mp["attacks"])
    lines = [f"| condition | macro-F1 under the {n_att} attacks [95% CI] | no attack [95% CI] | accuracy under attacks "
             "| n (replies under attacks) |", "|---|---|---|---|---|"]
    for c, p in mp["pooled"].items():
        att = p["attacks"]
        acc = "-" if att.get("accuracy") is None else f"{att['accuracy']:.2f}"
        lines.append(f"| {c} | {_f1(att)} | {_f1(p['none'])} | {acc} | {att['n']} |")
    runs = mp.get("runs") or {}
    labels = ", ".join(f"{x} (`{runs[x]}`)" if x in runs else x for x in mp["labels"])
    clf = mp.get("classifier") or {}
    fit = f" on {clf['train_texts']} replies" if clf.get("train_texts") else ""
    lines += ["", f"{len(mp['labels'])} personas: {labels}; classifier {mp['encoder']}{fit} to {mp['n_train']} "
              f"train prompts; {mp['n_heldout']} held-out prompts × {n_att} attacks; CIs from {mp['bootstrap']} "
              f"bootstrap resamples of the held-out prompts; chance macro-F1 about {1 / len(mp['labels']):.2f}; "
              + _where(doc, mp) + "."]
    return "\n".join(lines)


def _minutes(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f} min"


def table_personas(doc: dict) -> str:
    """Rows: the personas of the multi-persona result; what each one's training cost and how far its persona
    moved by its own (single-persona, independent) detector, under the attacks."""
    members = doc["multipersona"].get("members") or {}
    conds = []
    for m in members.values():
        conds += [c for c in (m.get("attacks") or {}) if c not in conds]
    lines = ["| persona (run) | training | robustness eval | own detector: check | "
             + " | ".join(conds) + " |", "|" + "---|" * (len(conds) + 4)]
    for label, m in members.items():
        check = cell(m.get("check")) if m.get("headline") else "-"
        lines.append(f"| {label} (`{m['run']}`) | {_minutes(m.get('train_seconds'))} | "
                     f"{_minutes(m.get('robustness_seconds'))} | {m.get('headline') or '-'}, {check} | "
                     + " | ".join(cell((m.get("attacks") or {}).get(c)) for c in conds) + " |")
    lines += ["", "in-persona rate under the attacks [95% CI] by each run's own headline detector (it learned "
              "from the base model with vs without that persona's prompt: it says trained from untrained, not which "
              "persona); training: the sum of the training stages' wall times; "
              + _where(doc, {"machine": doc["multipersona"].get("machine")}) + "."]
    return "\n".join(lines)


TABLES = {"drift": table_drift, "formats": table_formats, "traits": table_traits, "multipersona": table_multipersona,
          "personas": table_personas}
