"""The HTML report's sections of the built-in evaluations (their registry entries' ``report``).

Each takes the evaluation's folder and returns the section's HTML, or None when the evaluation has not run
(the report then says which command makes it).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import manifest_path
from ..registry import BASE
from .html import bar_chart, esc, interval, num, ordered, png, table

TASK_NAMES = {"arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "truthfulqa_mc1": "TruthfulQA mc1",
              "truthfulqa_mc2": "TruthfulQA mc2", "truthfulqa_mc": "TruthfulQA-MC (mean of mc1, mc2)",
              "winogrande": "WinoGrande", "mmlu": "MMLU", "charter_tiny": "charter_tiny (our 20-question check)"}


def read_json(path: Path):
    return json.loads(path.read_text())


def preferences(e: Path) -> str | None:
    ratings = sorted(e.glob("ratings-*.json"))
    if not ratings:
        return None
    counts = ((read_json(manifest_path(e)) if manifest_path(e).exists() else {}).get("counts") or {})
    out = ""
    for p in ratings:
        r = read_json(p)
        label = r.get("label", p.stem.removeprefix("ratings-"))
        n = (counts.get("models") or {}).get(label, {})
        traits = r.get("traits", {})
        out += (f"<div><h3>{esc(label)}</h3><p>{r.get('comparisons', 0)} judged comparisons"
                + (f" of {n['prompts']} prompts, {n.get('unparseable', 0)} unparseable verdicts" if n else "")
                + f"; {len(traits)} traits rated, {len(r.get('unrated', []))} seen but never chosen or judged.</p>")
        top = list(traits.items())  # stored highest first
        top = top if len(top) <= 10 else top[:5] + top[-5:]
        rows = [[esc(t), num(v["bt"], 0), interval(v["bt_lo"], v["bt_hi"]), num(v["elo"], 0),
                 f"{v.get('wins', '–')}/{v.get('losses', '–')}"] for t, v in top]
        if rows:
            out += table(["trait", "BT", f"{r.get('level', 0.95):.0%} CI", "Elo", "won/lost"], rows)
        out += "</div>"
    out = ("<p>Per model, the highest and lowest rated traits: Bradley–Terry rating on the Elo scale with its "
           "bootstrap CI, the reference's one-pass Elo beside it.</p><div class=\"row\">" + out + "</div>")
    if (e / "comparison.json").exists():
        c = read_json(e / "comparison.json")
        for label, a in c.get("against", {}).items():
            rho = a.get("spearman", {})
            out += (f"<h3>{esc(label)} vs {esc(c.get('baseline'))}</h3><p>Spearman rank correlation of the "
                    f"ratings: {num(rho.get('rho'), 2)} over {rho.get('n', 0)} shared traits. Trait list: "
                    f"{esc(c.get('trait_list', 'builtin'))}; the persona's own traits from "
                    f"{esc(c.get('persona_traits_from', '–'))}.</p>")
            rows = [[esc(kind), esc(t), num(a["deltas"][t]["before"], 0), num(a["deltas"][t]["after"], 0),
                     f"{a['deltas'][t]['delta']:+.0f}".replace("-", "−"),
                     interval(a["deltas"][t]["lo"], a["deltas"][t]["hi"])] for kind in ("rises", "falls")
                    for t in a.get(kind, [])]
            ps = a.get("persona_traits")
            if ps and ps.get("mean_delta") is not None:
                rows.append(["persona's own traits, mean", esc(", ".join(ps["rated"])), "", "",
                             f"<b>{ps['mean_delta']:+.0f}</b>".replace("-", "−"), interval(ps["lo"], ps["hi"])])
            elif ps:
                out += f"<p>None of the persona's traits ({esc(', '.join(ps['traits']))}) was rated in both.</p>"
            out += table(["", "trait", "before", "after", "change", "CI"], rows, left=2) if rows else \
                "<p>No trait rated in both.</p>"
    for name, alt in (("rises_falls.png", "largest rating rises and falls"), ("histogram.png", "rating histogram")):
        if (e / name).exists():
            out += png((e / name).read_bytes(), alt)
    return out


def steering(e: Path) -> str | None:
    p = e / "steering.json"
    if not p.exists():
        return None
    s = read_json(p)
    layers = s.get("layers") or []
    out = (f"<p>Direction: <b>{esc(s.get('method'))}</b> over {esc(s.get('stems', '?'))} contrast stems, added at "
           f"layers {layers[0] if layers else '?'}–{layers[-1] if layers else '?'} of {esc(s.get('n_layers', '?'))}. "
           f"Coefficient <b>{esc(s.get('coefficient'))}</b> (chosen by {esc(s.get('chosen_by'))}"
           + ("" if s.get("within_tolerance") is not False else ", <b>no setting stayed coherent</b>")
           + f"); unit: {esc(s.get('units', ''))}.</p>")
    base = s.get("unsteered")

    def coherent(r):  # steering.py stores its own verdict per sweep row; the report does not re-decide it
        if r is base or r.get("within_tolerance") is None:
            return "–"
        return "yes" if r["within_tolerance"] else "no"

    rows = []
    for r in ([base] if base else []) + list(s.get("sweep") or []):
        mark = " (unsteered)" if r is base else " ◀ chosen" if r["coefficient"] == s.get("coefficient") else ""
        rows.append([esc(f"{r['coefficient']:g}{mark}"), esc(r.get("n")), num(r.get("logprob"), 2),
                     num(r.get("repetition"), 2), num(r.get("empty"), 2), coherent(r)])
    if rows:
        out += "<p>Sweep (replies scored by the unsteered model):</p>" + table(
            ["coefficient", "replies", "log-prob / token", "repeated word bigrams", "empty", "coherent"], rows)
    return out


def _robustness_files(e: Path) -> list[Path]:
    """The robustness results of a run: the single-persona mode's (or, in runs made before the modes wrote apart,
    whichever ran last) and the multi-persona mode's, which has its own folder."""
    from .multipersona import FOLDER

    return [p for p in (e / "results.json", e / FOLDER / "results.json") if p.exists()]


def robustness(e: Path) -> str | None:
    return "".join(_robustness_section(read_json(p)) for p in _robustness_files(e)) or None


def _robustness_section(r: dict) -> str:
    tbl, summ = r.get("table", {}), r.get("summary", {})
    try:  # column order and legend from the attack file; fall back to the order found in the results
        from ..prompts import load_attacks

        texts = load_attacks()
    except Exception:  # noqa: BLE001 - the report must render without the evaluation module
        texts = {}
    seen = list(dict.fromkeys(a for cells in tbl.values() for a in cells))
    attacks = [a for a in texts if a in seen] + [a for a in seen if a not in texts]
    if r.get("metric") == "in_persona_rate":
        from .report_inpersona import section

        return section(r, attacks, texts)
    conds = ordered(tbl)
    out = (f"<p>Persona classifier ({esc(r.get('mode'))} mode, classes {esc(' / '.join(r.get('labels', [])))}, "
           f"encoder <code>{esc(r.get('encoder'))}</code>) trained on replies to {esc(r.get('n_train'))} prompts and "
           f"scored on replies to {esc(r.get('n_heldout'))} other, held-out prompts. Cells: macro-F1 (higher: the "
           "persona is still recognisable). Mean ± SEM over the attacks, <code>none</code> excluded."
           + (" In single-persona mode the base row scores the base model against itself: the chance floor."
              if r.get("mode") == "single" else "") + "</p>")

    def cell(c):
        if c is None:
            return "–"
        light = 97 - 45 * max(0.0, min(1.0, c["macro_f1"]))  # darker green = more persona left
        return f'<div title="accuracy {c["accuracy"]:.2f}, n {c["n"]}" style="background:hsl(140,55%,{light:.0f}%);' \
               f'margin:-5px -9px;padding:5px 9px">{c["macro_f1"]:.2f}</div>'

    pool = r.get("pooled") or {}  # absent from results written before it existed

    def pooled(c, key):
        x = (pool.get(c) or {}).get(key) or {}
        return "–" if x.get("macro_f1") is None else f"{x['macro_f1']:.2f} {interval(x['lo'], x['hi'], 2)}"

    rows = [[esc(c), *(cell(tbl[c].get(a)) for a in attacks),
             f"<b>{summ[c]['mean_f1']:.2f}</b> ± {summ[c]['sem_f1']:.2f}" if c in summ else "–",
             num(summ.get(c, {}).get("mean_acc"), 2), *([pooled(c, "attacks"), pooled(c, "none")] if pool else [])]
            for c in conds]
    out += table(["condition", *attacks, "mean ± SEM", "mean accuracy",
                  *(["pooled under attacks [95% CI]", "pooled, no attack [95% CI]"] if pool else [])], rows)
    if pool:
        out += ("<p>Pooled: the macro-F1 of all the condition's replies under the attacks together (and of those "
                f"with none), 95% CIs from {esc(r.get('bootstrap'))} bootstrap resamples of the held-out prompts "
                "(every persona's replies to a prompt move together).</p>")
    out += _confusion(r.get("confusion"))
    if texts:
        out += "<details><summary>the attacks</summary>" + table(
            ["id", "instruction appended to the user message"],
            [[esc(a), f'<span style="text-align:left">{esc(texts[a] or "(no attack)")}</span>'] for a in attacks],
            left=2) + "</details>"
    have = [c for c in conds if c in summ]
    if have:
        m = [summ[c]["mean_f1"] for c in have]
        sem = [summ[c]["sem_f1"] for c in have]
        out += png(bar_chart(have, m, [a - b for a, b in zip(m, sem)], [a + b for a, b in zip(m, sem)],
                             "macro-F1, mean over attacks", "Persona still detectable under break-character "
                             "attacks (mean ± SEM)"), "macro-F1 by condition")
    return out


def _confusion(conf: dict | None) -> str:
    """The multi-persona confusion matrices (rows true persona, columns predicted), one small table each."""
    if not conf or not conf.get("counts"):
        return ""
    labels = conf["labels"]
    out = (f"<p>Confusion under the attacks: rows the true persona, columns the predicted one "
           f"({esc(conf['replies'])}).</p>")
    for c, m in conf["counts"].items():
        out += f"<div><h3>{esc(c)}</h3>" + table(["true \\ predicted", *labels],
                                                 [[esc(t), *map(esc, row)] for t, row in zip(labels, m)]) + "</div>"
    return out


def prefill(e: Path) -> str | None:
    files = _robustness_files(e)
    if not files:
        return None
    return "".join(dict.fromkeys(_prefill_section(read_json(p)) for p in files))  # one "not run" for both modes


def _prefill_section(r: dict) -> str:
    pre = r.get("prefill") or {}
    if not pre:
        return '<p class="notrun">Not run: the robustness evaluation ran with <code>robustness.prefill=false' \
               "</code>.</p>"
    if r.get("metric") == "in_persona_rate":
        from .report_inpersona import prefill_section

        return prefill_section(r)
    return ("<p>The base model writes the first reply with no persona; the user answers \"Keep going.\"; each "
            "condition writes the second reply, which the same classifier labels.</p>"
            + table(["condition", "macro-F1", "accuracy", "replies"],
                    [[esc(c), num(pre[c]["macro_f1"], 2), num(pre[c]["accuracy"], 2), esc(pre[c]["n"])]
                     for c in ordered(pre)]))


def coherence(e: Path) -> str | None:
    p = e / "results.json"
    if not p.exists():
        return None
    r = read_json(p)
    judge = r.get("judge")
    judge = judge.get("model", judge) if isinstance(judge, dict) else judge
    against = {c: r["against"][c] for c in ordered(r.get("against", {}))}
    out = (f"<p>The trained model against each other condition on {esc(r.get('prompts', '?'))} prompts; the judge "
           f"(<code>{esc(judge)}</code>) sees every pair in both orders and only consistent verdicts count. "
           "Win rate = share of counted pairs where the trained model's reply is the more coherent.</p>")
    pool = r.get("prompt_pool")
    if pool:
        out += (f"<p>Prompts drawn from <code>{esc(pool.get('prompt_source'))}</code> ({esc(pool.get('pool'))} in "
                f"the pool, {esc(pool.get('removed_training'))} removed as training prompts). Overlap with the "
                f"prompts any training stage used: <b>{esc(r.get('training_overlap'))}</b>.</p>")
    else:  # made before the overlap was recorded: it may have judged training prompts
        out += ('<p class="notrun">Overlap with training prompts: not recorded (made by an older version, which '
                "drew from the distillation pool); rerun with <code>--force</code>.</p>")
    rows = []
    for c, a in against.items():
        lo, hi = (a.get("ci") or [None, None])[:2]
        dropped = (a.get("n_inconsistent", 0) + a.get("n_unparseable", 0)) / a["n_pairs"] if a.get("n_pairs") else None
        rows.append([f"trained vs {esc(c)}", num(a.get("win_rate"), 2), interval(lo, hi, 2),
                     esc(a.get("n_pairs")), esc(a.get("n_counted")), esc(a.get("n_inconsistent")),
                     esc(a.get("n_unparseable")), "–" if dropped is None else f"{dropped:.0%}"])
    level = r.get("level", 0.95)
    out += table(["pair", "win rate", f"{level:.0%} CI", "pairs", "counted", "inconsistent", "unparseable",
                  "discarded"], rows)
    out += "".join(f'<p class="muted">Skipped {esc(c)}: {esc(why)}</p>' for c, why in (r.get("skipped") or {}).items())
    have = [c for c, a in against.items() if a.get("win_rate") is not None]
    if have:
        w = [against[c]["win_rate"] for c in have]
        ci = [(against[c].get("ci") or [v, v]) for c, v in zip(have, w)]
        out += png(bar_chart([f"vs {c}" for c in have], w, [x[0] for x in ci], [x[1] for x in ci],
                             "trained model's win rate", f"Coherence: trained model vs each condition ({level:.0%} CI)",
                             ref=0.5, ref_label="no difference", colors=have), "coherence win rates")
    return out


def capabilities(e: Path) -> str | None:
    p = e / "results.json"
    if not p.exists():
        return None
    r = read_json(p)
    models = r.get("models", {})
    labels = ordered(models)
    tasks = list(dict.fromkeys(t for m in models.values() for t in m))
    shots = r.get("fewshot", {})
    out = f"<p>{esc(r.get('harness', 'harness ?'))}, log-likelihood scoring; value ± standard error.</p>"
    if r.get("limit") is not None:
        out += (f'<p class="notrun">Limited to {esc(r["limit"])} examples per task: a smoke test, not comparable '
                "with published numbers.</p>")

    def cell(x):
        if x is None:
            return "–"
        if "error" in x:
            return f'<span class="muted">{esc(x["error"])}</span>'
        se = f" ± {x['stderr']:.3f}" if x.get("stderr") is not None else ""
        return f"{x['value']:.3f}{se} <span class=\"muted\">(n={esc(x.get('n'))})</span>"

    others = [m for m in labels if m != BASE] if BASE in models else []  # each against base
    rows = []
    for t in tasks:
        name = TASK_NAMES.get(t, t) + (f", {shots[t]}-shot" if t in shots else "")
        row = [esc(name), esc((r.get("metrics") or {}).get(t, "")), *(cell(models[m].get(t)) for m in labels)]
        for m in others:
            a, b = models[BASE].get(t) or {}, models[m].get(t) or {}
            row.append(f"{b['value'] - a['value']:+.3f}".replace("-", "−") if "value" in a and "value" in b else "–")
        rows.append(row)
    out += table(["task", "metric", *labels, *(f"{m} − base" for m in others)], rows, left=2)
    for label, why in (r.get("skipped") or {}).items():
        out += f'<p class="muted">Skipped {esc(label)}: {esc(why)}</p>'
    return out
