"""One self-contained HTML page with every evaluation of a run.

    charter report my-run                  # a run name under $CHARTER_HOME/runs
    charter report ~/.charter/runs/my-run  # or a run folder
    charter eval all configs/my-run.yaml   # every evaluation, then this report

Reads only what the stages and evaluations wrote (their manifests, ``results.json`` files and figures) and
writes ``<run>/report.html``: figures are base64 PNGs (matplotlib Agg), the style is inline, nothing is
fetched, so the file can be mailed or archived alone. A section whose evaluation has not run says so; one
whose files cannot be read says what went wrong instead of failing the whole page.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from ..layout import STAGE_NAMES, path as output_path
from ..runs import run_dir, write_text_atomic
from .html import bar_chart, esc, interval, num, ordered, png, table

TASK_NAMES = {"arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "truthfulqa_mc1": "TruthfulQA mc1",
              "truthfulqa_mc2": "TruthfulQA mc2", "truthfulqa_mc": "TruthfulQA-MC (mean of mc1, mc2)",
              "winogrande": "WinoGrande", "mmlu": "MMLU", "charter_tiny": "charter_tiny (our 20-question check)"}

CSS = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:30px;margin:8px 0 4px}h2{font-size:24px;margin:40px 0 8px;padding-top:12px;border-top:2px solid #e3e6ea}
h3{font-size:18px;margin:22px 0 6px}p.sub{color:#556;margin:0 0 16px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:15px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5d9df;padding:5px 9px;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#eef1f4;font-weight:600;white-space:normal;vertical-align:bottom}td.l,th.l{text-align:left}
td.l{white-space:normal}td:first-child{white-space:nowrap}.row{display:flex;flex-wrap:wrap;gap:0 36px}.row>div{max-width:48%}
.notrun{color:#7a4b00;background:#fff4e0;border-left:4px solid #f0a030;padding:8px 12px}
.err{color:#8a1c1c;background:#fdecec;border-left:4px solid #d04040;padding:8px 12px}
.muted{color:#778}img{max-width:100%;height:auto;display:block;margin:10px 0}
code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f2f4f7}pre{padding:10px;white-space:pre-wrap}
details{margin:6px 0}summary{cursor:pointer;color:#345}
"""


# ---------------------------------------------------------------- small helpers


def not_run(command: str) -> str:
    return f'<p class="notrun">Not run. <code>{esc(command)}</code> makes it.</p>'


def read_json(path: Path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------- sections


def manifests(d: Path) -> dict[str, dict]:
    """Every stage's and evaluation's manifest, pipeline stages first."""
    out = {}
    names = [*STAGE_NAMES, *sorted(p.parent.name for p in d.glob("*/manifest.json")
                                  if p.parent.name not in STAGE_NAMES)]
    for name in names:
        p = d / name / "manifest.json"
        if p.exists():
            try:
                out[name] = read_json(p)
            except (OSError, json.JSONDecodeError):
                out[name] = {"broken": True}
    return out


def _find(obj, key: str):
    """The first value of ``key`` anywhere in nested dicts (stage configs hold different slices of the run)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            if (found := _find(v, key)) is not None:
                return found
    return None


def _counts(c, depth: int = 0) -> str:
    """``k v, k {k v, ...}``: two levels of a manifest's counts, deeper ones elided (the JSON has them)."""
    if not isinstance(c, dict):
        return esc(c)
    if depth >= 2:
        return "{…}"
    parts = ", ".join(f"{esc(k)} {_counts(v, depth + 1)}" for k, v in c.items())
    return "{" + parts + "}" if depth else parts


def overview(d: Path, ms: dict) -> str:
    cfgs = {k: m.get("config", {}) for k, m in ms.items()}
    persona = _find(cfgs, "persona") or "unknown (no stage recorded it)"
    student = (_find(cfgs, "student") or {}).get("model", "unknown")
    teacher = next(((c.get("distill") or {}).get("teacher") or {} for c in cfgs.values()
                    if isinstance(c.get("distill"), dict)), {}).get("model")
    rows = [["run", esc(d.name)], ["folder", f"<code>{esc(d)}</code>"], ["persona", esc(persona)],
            ["student (base model)", esc(student)], ["teacher", esc(teacher or "–")],
            *([label, f"<code>{esc(output_path(d, key))}</code>" if output_path(d, key).exists() else "not made yet"]
              for label, key in (("trained model", "final_model"), ("distilled model (DPO only)", "distilled_model")))]
    out = table(None, rows, left=2)
    if not ms:
        return out + not_run(f"charter train CONFIG name={d.name}")
    stage_rows = [[esc(k), _counts(m.get("counts", {})), esc(m.get("finished_at", "–")), num(m.get("seconds"), 0)]
                  for k, m in ms.items()]
    out += "<h3>Stages and evaluations</h3>" + table(["stage", "counts", "finished", "seconds"], stage_rows, left=2)
    from .. import __version__

    versions = {k: v for m in ms.values() for k, v in (m.get("versions") or {}).items()}
    commands = list(dict.fromkeys(shlex.join(m["argv"]) for m in sorted(ms.values(), key=lambda m: m.get(
        "finished_at", "")) if m.get("argv")))
    out += ("<h3>How it was made</h3><p>charter " + esc(versions.get("charter", "?")) + "; "
            + esc(", ".join(f"{k} {v}" for k, v in versions.items() if k != "charter")) + "</p>"
            + "<p>Commands, in the order their stages finished:</p><pre>" + esc("\n".join(commands) or "–")
            + f"</pre><p class=\"muted\">This page: <code>charter report {esc(d.name)}</code> (charter "
            f"{esc(__version__)}), {esc(time.strftime('%Y-%m-%d %H:%M %Z'))}.</p>")
    out += "".join(f"<details><summary>config of {esc(k)}</summary><pre>{esc(json.dumps(c, indent=2))}</pre>"
                   "</details>" for k, c in cfgs.items() if c)
    return out


def preferences(d: Path) -> str:
    e = d / "eval-preferences"
    ratings = sorted(e.glob("ratings-*.json"))
    if not ratings:
        return not_run("charter eval preferences CONFIG")
    counts = ((read_json(e / "manifest.json") if (e / "manifest.json").exists() else {}).get("counts") or {})
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


def steering(d: Path) -> str:
    p = d / "eval-steering" / "steering.json"
    if not p.exists():
        return not_run("charter eval steering CONFIG")
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


def robustness(d: Path) -> str:
    p = d / "eval-robustness" / "results.json"
    if not p.exists():
        return not_run("charter eval robustness CONFIG")
    r = read_json(p)
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

    rows = [[esc(c), *(cell(tbl[c].get(a)) for a in attacks),
             f"<b>{summ[c]['mean_f1']:.2f}</b> ± {summ[c]['sem_f1']:.2f}" if c in summ else "–",
             num(summ.get(c, {}).get("mean_acc"), 2)] for c in conds]
    out += table(["condition", *attacks, "mean ± SEM", "mean accuracy"], rows)
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


def prefill(d: Path) -> str:
    p = d / "eval-robustness" / "results.json"
    if not p.exists():
        return not_run("charter eval robustness CONFIG")
    r = read_json(p)
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


def coherence(d: Path) -> str:
    p = d / "eval-coherence" / "results.json"
    if not p.exists():
        return not_run("charter eval coherence CONFIG")
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


def capabilities(d: Path) -> str:
    p = d / "eval-capabilities" / "results.json"
    if not p.exists():
        return not_run("charter eval capabilities CONFIG")
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

    others = [m for m in labels if m != "base"] if "base" in models else []  # each against base
    rows = []
    for t in tasks:
        name = TASK_NAMES.get(t, t) + (f", {shots[t]}-shot" if t in shots else "")
        row = [esc(name), esc((r.get("metrics") or {}).get(t, "")), *(cell(models[m].get(t)) for m in labels)]
        for m in others:
            a, b = models["base"].get(t) or {}, models[m].get(t) or {}
            row.append(f"{b['value'] - a['value']:+.3f}".replace("-", "−") if "value" in a and "value" in b else "–")
        rows.append(row)
    out += table(["task", "metric", *labels, *(f"{m} − base" for m in others)], rows, left=2)
    for label, why in (r.get("skipped") or {}).items():
        out += f'<p class="muted">Skipped {esc(label)}: {esc(why)}</p>'
    return out


SECTIONS = [("overview", "Overview"), ("preferences", "Revealed preferences"), ("steering", "Steering baseline"),
            ("robustness", "Robustness to break-character attacks"), ("prefill", "Prefill attack"),
            ("coherence", "Coherence"), ("capabilities", "General capabilities")]


def find_run(run: str | Path) -> Path:
    """A run folder from a run name under CHARTER_HOME (preferred) or a path to the folder."""
    named = run_dir(str(run)) if "/" not in str(run) else None
    if named is not None and named.is_dir():
        return named
    p = Path(run).expanduser()
    if p.is_dir():
        return p
    raise FileNotFoundError(f"{run}: no such run (looked for {named or p})")


def build(run: str | Path) -> Path:
    """Write ``<run>/report.html`` from whatever the run's stages and evaluations wrote; returns its path."""
    d = find_run(run)
    ms = manifests(d)
    parts = []
    for key, title in SECTIONS:
        try:
            body = overview(d, ms) if key == "overview" else globals()[key](d)
        except Exception as e:  # noqa: BLE001 - one malformed file must not cost the whole report
            body = f'<p class="err">Could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        parts.append(f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>')
    nav = " ".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in SECTIONS)
    persona = _find({k: m.get("config", {}) for k, m in ms.items()}, "persona")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>charter report: {esc(d.name)}'
            f"</title><style>{CSS}</style></head><body><main><h1>Character training report: {esc(d.name)}</h1>"
            f'<p class="sub">persona <b>{esc(persona or "?")}</b> · made {esc(time.strftime("%Y-%m-%d %H:%M"))}'
            f"</p><nav>{nav}</nav>{''.join(parts)}</main></body></html>\n")
    out = d / "report.html"
    write_text_atomic(out, page)
    return out
