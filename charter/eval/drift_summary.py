"""Drift's summaries: the in-persona rate by turn per condition with bootstrap CIs, the early -> late change, the
activation monitor's projections and their correlation with the detector; the text table and ``drift.png``.

Used by ``charter eval drift`` (``drift.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..classifier import proba_of
from ..runs import derive_seed
from . import inpersona
from .detector import THRESHOLD, detector_check, fit_detector, usable
from .drift_conversations import DriftRun
from .drift_monitor import CAPPED, UNITS
from .stats import bootstrap_mean, paired_difference, pct, signed

if TYPE_CHECKING:
    from ..config import RunConfig

LEVEL = inpersona.LEVEL


def windows(turns: int, attack_turn: int | None) -> tuple[list[int], list[int], str]:
    """(early turns, late turns, what they are): before the attack turn and from it on; without an attack (or
    with it on turn 1), the first and the second half."""
    if attack_turn is not None and attack_turn > 1:
        return (list(range(1, attack_turn)), list(range(attack_turn, turns + 1)),
                f"before vs from the attack turn ({attack_turn})")
    half = max(1, turns // 2)
    return list(range(1, half + 1)), list(range(half + 1, turns + 1)), "first vs second half of the turns"


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 3:
        return None
    x, y = np.array(xs, dtype=float), np.array(ys, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def summarise(cfg: RunConfig, state: DriftRun, ready: list[str], fit: dict | None, persona: str,
              attack_text: str | None, calibration: dict | None, skipped: dict) -> tuple[dict, list[dict], list[str]]:
    """Fit the detector, score every turn, summarise rates and the monitor; (results, predictions, lines)."""
    d = cfg.drift
    ref_rows = list(state.ref.rows.values())
    conv_conf = json.loads((state.stage.dir / "conversations.json").read_text())
    scored_prompts = {u for p in state.plans for u in p["users"]}
    clf, det = fit_detector(cfg, d, "drift", persona, ref_rows, conv_conf["reference"]["fit"], scored_prompts)
    boot_seed = derive_seed(cfg.seed, "drift", "bootstrap")
    det["check"] = detector_check(clf, persona, ref_rows, d.bootstrap, boot_seed)
    rows = [r for r in state.log.rows.values() if r["condition"] in ready and usable(r)]
    probs = proba_of(clf, [r["response"] for r in rows], persona)
    p_of = {r["id"]: p for r, p in zip(rows, probs, strict=True)}
    cids = [p["cid"] for p in state.plans]
    turns = list(range(1, d.turns + 1))
    early, late, windows_are = windows(d.turns, conv_conf["attack_turn"])

    def matrix(values: dict, cond: str, cols: list[int]):
        return [[values.get(f"{cond}/{cid}/t{t}") for t in cols] for cid in cids]

    hits = {rid: float(p >= THRESHOLD) for rid, p in p_of.items()}
    rates, summary = {}, {}
    for c in ready:
        rates[c] = [{"turn": t, **inpersona.bootstrap_rate(matrix(hits, c, [t]), d.bootstrap, boot_seed)}
                    for t in turns]
        summary[c] = {"early": inpersona.bootstrap_rate(matrix(hits, c, early), d.bootstrap, boot_seed),
                      "late": inpersona.bootstrap_rate(matrix(hits, c, late), d.bootstrap, boot_seed) if late else None,
                      "change": paired_difference(matrix(hits, c, early), matrix(hits, c, late), d.bootstrap,
                                                  boot_seed) if late else None,
                      "dropped_exchanges": _mean([state.log.rows[i].get("dropped_exchanges", 0) for i in
                                                  (f"{c}/{cid}/t{t}" for cid in cids for t in turns)
                                                  if i in state.log.rows])}
    monitor = monitor_summary(state, ready, fit, cids, turns, p_of, d.bootstrap, boot_seed)
    predictions = [{"id": r["id"], "condition": r["condition"], "cid": r["cid"], "turn": r["turn"],
                    "p_persona": round(p_of[r["id"]], 4), "in_persona": p_of[r["id"]] >= THRESHOLD}
                   for r in rows]
    results = {"persona": persona, "metric": "in_persona_rate", "conditions": ready, "conversations": d.conversations,
               "turns": d.turns, "attack": {"id": d.attack if attack_text else None, "text": attack_text,
                                            "turn": conv_conf["attack_turn"]},
               "followup_share": d.followup_share, "level": LEVEL, "bootstrap": d.bootstrap,
               "trained_prompts_removed": conv_conf["trained_prompts_removed"],
               "detector": det, "windows": {"early": early, "late": late, "what": windows_are},
               "rates": rates, "summary": summary, "monitor": monitor, "capping": calibration, "skipped": skipped,
               "notes": [f"detector: {d.reference} ({det['fit']}: {det['learned_from']})",
                         "a reply is in persona when the detector's probability is >= 0.5; CIs resample conversations",
                         "'prompted' gets the teacher's persistence note once the request is in its context"]}
    return results, predictions, lines_of(results)


def monitor_summary(state: DriftRun, ready: list[str], fit: dict | None, cids: list[str], turns: list[int],
                    p_of: dict, n_boot: int, seed: int) -> dict:
    """Per condition and turn: the mean projection with a CI over conversations; the correlation of the
    projection with the detector's probability over every turn; the share of positions capping clamped."""
    if not state.cfg.drift.monitor:
        return {"status": "off (drift.monitor=false)"}
    if fit is None:
        return {"status": "skipped: no steering fit (run `charter eval steering` first)"}
    by_turn, corr, clamped = {}, {}, {}
    rows = {r["id"]: r for r in state.mon.rows.values() if r.get("steering") == fit["identity"]}
    for c in ready:
        if c in state.monitor_skipped:
            continue
        proj = {rid: r["projection"] for rid, r in rows.items() if r["condition"] == c}
        if not proj:
            continue
        by_turn[c] = [{"turn": t, **bootstrap_mean([[proj.get(f"{c}/{cid}/t{t}")] for cid in cids], n_boot, seed)}
                      for t in turns]
        both = [(v, p_of[rid]) for rid, v in proj.items() if v is not None and rid in p_of]
        corr[c] = {"pearson": _pearson([a for a, _ in both], [b for _, b in both]), "n": len(both)}
        shares = [r["clamped"] for rid, r in rows.items() if r["condition"] == c and r.get("clamped") is not None]
        if shares:
            clamped[c] = round(sum(shares) / len(shares), 4)
    return {"status": "ok", "layers": fit["layers"], "units": UNITS, "steering": fit["identity"],
            "method": fit["method"], "by_turn": by_turn, "correlation_with_detector": corr,
            "clamped_share": clamped, "not_monitored": dict(state.monitor_skipped)}


def lines_of(results: dict) -> list[str]:
    """The text table: in-persona rate by turn per condition, early -> late change, the monitor's projections."""
    det, turns = results["detector"], results["turns"]
    a = results["attack"]
    attack = f"attack '{a['id']}' at turn {a['turn']}" if a["id"] else "no attack"
    w = max([9, *(len(c) for c in results["rates"])])
    lines = [f"drift in-persona rate by turn ({results['conversations']} conversations x {turns} turns, {attack}; "
             f"detector {det['encoder']} learned from {det['source']})",
             f"detector check on single held-out replies (prompted vs base): balanced accuracy "
             f"{pct(det['check']['balanced_accuracy'], ci=True)} (0.5 is chance)",
             " ".join([f"{'condition':<{w}}", *(f"{t:>5}" for t in range(1, turns + 1)), "  late - early [95% CI]"])]
    for c, cells in results["rates"].items():
        s = results["summary"][c]
        lines.append(" ".join([f"{c:<{w}}", *(f"{pct(x):>5}" for x in cells), f"  {signed(s['change'])}"]))
    lines.append(f"(early/late: {results['windows']['what']})")
    bal = det["check"]["balanced_accuracy"]
    if bal["lo"] is not None and bal["lo"] <= 0.5:
        lines.append("warning: the detector is not better than chance on held-out reference replies, so these rates "
                     "say little (more reference prompts, or another encoder)")
    m = results["monitor"]
    if m.get("status") != "ok":
        lines.append(f"activation monitor: {m['status']}")
    elif m["by_turn"]:
        where = f"{m['layers'][0]}..{m['layers'][-1]}" if len(m["layers"]) > 1 else str(m["layers"][0])
        lines.append(f"activation monitor by turn: projection on the persona direction at layers {where} (units of the "
                     "layer's mean norm, mean over layers); r = Pearson correlation with the detector's probability")
        for c, cells in m["by_turn"].items():
            r = m["correlation_with_detector"][c]["pearson"]
            lines.append(" ".join([f"{c:<{w}}", *(f"{pct(x, 'mean', digits=3):>6}" for x in cells),
                                   f"  r {'-' if r is None else f'{r:+.2f}'}"]))
        for c, why in m["not_monitored"].items():
            lines.append(f"  {c} not monitored: {why}")
    if results["capping"]:
        cap_ = results["capping"]
        share = m.get("clamped_share", {}).get(CAPPED) if m.get("status") == "ok" else None
        clamped = f"; {share:.1%} of the replies' (position, layer) pairs clamped" if share is not None else ""
        lines.append(f"capped: {cap_['model']} clamped from below at level {cap_['level']:g} of the plain -> persona "
                     f"projection at every steering layer{clamped}")
    for c, why in results["skipped"].items():
        lines.append(f"  {c} skipped: {why}")
    return lines


def plot(path: Path, results: dict) -> None:
    """In-persona rate by turn per condition with CI bands (and the monitor's projection below, when it ran);
    the attack turn dashed."""
    from matplotlib.figure import Figure

    from .preferences_plots import _save

    m = results["monitor"]
    panels = 2 if m.get("status") == "ok" and m.get("by_turn") else 1
    fig = Figure(figsize=(7.5, 3.6 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]

    def draw(ax, series: dict, key: str):
        for c, cells in series.items():
            xs = [x["turn"] for x in cells if x[key] is not None]
            ys = [x[key] for x in cells if x[key] is not None]
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=c)
            band = [(x["turn"], x["lo"], x["hi"]) for x in cells if x.get("lo") is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=line.get_color(), alpha=0.15)
        if results["attack"]["turn"]:
            ax.axvline(results["attack"]["turn"], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(1, results["turns"] + 1))
        ax.set_xlabel("assistant turn")
        ax.legend(fontsize=8)

    draw(axes[0], results["rates"], "rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("in-persona rate")
    a = results["attack"]
    axes[0].set_title(f"{results['persona']}: in-persona rate by turn ({results['conversations']} conversations, "
                      f"{int(LEVEL * 100)}% CI" + (f"; '{a['id']}' at turn {a['turn']}" if a["id"] else "") + ")",
                      fontsize=9)
    if panels == 2:
        draw(axes[1], m["by_turn"], "mean")
        axes[1].set_ylabel("projection / layer norm")
        axes[1].set_title("activation monitor: projection on the persona direction", fontsize=9)
    _save(fig, path)
