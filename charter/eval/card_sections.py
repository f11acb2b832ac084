"""The model card's sections of the built-in evaluations (their registry entries' ``card``): each takes the
evaluation's folder (which holds its results file) and returns Markdown lines.
"""

from __future__ import annotations

from pathlib import Path

from ..runs import read_json


def preferences(d: Path) -> list[str]:
    c = read_json(d / "comparison.json")
    rows = ["| model vs " + str(c.get("baseline")) + " | Spearman ρ | rises | falls | persona's own traits, mean change |",
            "|---|---|---|---|---|"]
    for label, a in (c.get("against") or {}).items():
        ps = a.get("persona_traits") or {}
        own = (f"{ps['mean_delta']:+.0f} [{ps['lo']:+.0f}, {ps['hi']:+.0f}]" if ps.get("mean_delta") is not None
               else "–")
        rho = (a.get("spearman") or {}).get("rho")
        rows.append(f"| {label} | {'–' if rho is None else f'{rho:.2f}'} | {', '.join(a.get('rises', [])[:5])} | "
                    f"{', '.join(a.get('falls', [])[:5])} | {own} |")
    return ["Revealed preferences: which trait the model chooses to act out, Bradley–Terry ratings.", "", *rows]


def steering(d: Path) -> list[str]:
    s = read_json(d / "steering.json")
    return [f"Activation-steering baseline: {s.get('method')} direction, coefficient {s.get('coefficient')} "
            f"(chosen by {s.get('chosen_by')})."]


def robustness(d: Path) -> list[str]:
    from .multipersona import FOLDER

    text = []
    for p in (d / "results.json", d / FOLDER / "results.json"):  # single mode's, then multi mode's (own folder)
        if not p.exists():
            continue
        r = read_json(p)
        if r.get("metric") == "in_persona_rate":
            from .inpersona import format_table

            text += format_table(r)
        else:
            from .multipersona import format_table

            text += format_table(r, r.get("attacks") or [a for a in next(iter(r["table"].values()), {}) if a != "none"])
    return ["Break-character attacks, scored on held-out prompts:", "", "```", *text, "```"]


def coherence(d: Path) -> list[str]:
    r = read_json(d / "results.json")
    rows = ["| pair | win rate of the trained model | 95% CI | counted pairs |", "|---|---|---|---|"]
    for c, a in (r.get("against") or {}).items():
        ci = a.get("ci") or [None, None]
        w = a.get("win_rate")
        rows.append(f"| trained vs {c} | {'–' if w is None else f'{w:.2f}'} | "
                    f"{'–' if ci[0] is None else f'[{ci[0]:.2f}, {ci[1]:.2f}]'} | {a.get('n_counted')} |")
    return ["Pairwise coherence, judged in both orders (only consistent verdicts count):", "", *rows]


def capabilities(d: Path) -> list[str]:
    r = read_json(d / "results.json")
    models = r.get("models") or {}
    labels = list(models)
    tasks = list(dict.fromkeys(t for m in models.values() for t in m))
    rows = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in tasks:
        cells = []
        for m in labels:
            x = models[m].get(t) or {}
            cells.append(f"{x['value']:.3f}" + (f" ± {x['stderr']:.3f}" if x.get("stderr") is not None else "")
                         if "value" in x else "error" if "error" in x else "–")
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    note = [f"Limited to {r['limit']} examples per task: a smoke test, not comparable with published numbers.", ""] \
        if r.get("limit") is not None else []
    return [f"{r.get('harness', 'lm-evaluation-harness')}, accuracy ± standard error.", "", *note, *rows]
