"""The report's robustness and prefill sections for single-persona mode: in-persona rates with their CIs
(``inpersona.py`` writes them). Multi-persona results keep the classifier-F1 rendering in ``report.py``."""

from __future__ import annotations

from .html import bar_chart, esc, interval, num, ordered, png, table
from ..registry import BASE

FLOOR_NOTE = ("Base is the floor: the share of plain replies the detector wrongly calls in persona. "
              "A condition near it has lost the persona.")


def _shade(cell: dict | None) -> str:
    if not cell or cell.get("rate") is None:
        return "–"
    light = 97 - 45 * max(0.0, min(1.0, cell["rate"]))  # darker green = more persona left
    tip = f"95% CI {interval(cell['lo'], cell['hi'], 2)}, {cell['n']} replies"
    return (f'<div title="{esc(tip)}" style="background:hsl(140,55%,{light:.0f}%);margin:-5px -9px;'
            f'padding:5px 9px">{cell["rate"]:.2f}</div>')


def section(r: dict, attacks: list[str], texts: dict) -> str:
    """The robustness section: the detector, its check, the table of rates and the bar chart."""
    tbl, summ, det = r.get("table", {}), r.get("summary", {}), r.get("detector", {})
    conds = ordered(tbl)
    counts = r.get("texts", {})
    out = (f"<p>A persona detector (encoder <code>{esc(r.get('encoder'))}</code>) learned the persona "
           f"<b>{esc(r.get('persona'))}</b> from reference texts only: {esc(r.get('source'))} "
           f"({esc(', '.join(f'{v} {k}' for k, v in counts.items()))}). No scored reply was among them"
           + ("; the prompted model's replies to the train prompts are the reference, and it is scored on the "
              f"{esc(r.get('n_heldout'))} held-out prompts only" if r.get("reference") == "prompted" else "")
           + f". Cells: the share of a condition's held-out replies the detector judges in persona "
           f"(probability ≥ {r.get('threshold', 0.5)}); hover for the 95% bootstrap CI over prompts. {FLOOR_NOTE}</p>")
    bal = det.get("balanced_accuracy") or {}
    if bal.get("rate") is not None:
        weak = bal.get("lo") is not None and bal["lo"] <= 0.5
        out += (("<p class=\"notrun\">" if weak else "<p>") + "Detector check on held-out reference replies "
                f"(prompted vs base, no attack): balanced accuracy <b>{bal['rate']:.2f}</b> {interval(bal['lo'], bal['hi'], 2)}"
                f"; persona recall {num(det.get('persona_recall'), 2)}, false alarms on base "
                f"{num(det.get('base_false_alarms'), 2)}."
                + (" Not better than chance: the rates below say little." if weak else "") + "</p>")
    rows = []
    for c in conds:
        s = summ.get(c, {})
        a = s.get("attacks") or {}
        rows.append([esc(c), *(_shade(tbl[c].get(x)) for x in attacks),
                     f"<b>{num(a.get('rate'), 2)}</b>", interval(a.get("lo"), a.get("hi"), 2),
                     _shade(s.get("prefill"))])
    out += table(["condition", *attacks, "mean over attacks", "95% CI", "prefill"], rows)
    if texts:
        out += "<details><summary>the attacks</summary>" + table(
            ["id", "instruction appended to the user message"],
            [[esc(a), f'<span style="text-align:left">{esc(texts.get(a) or "(no attack)")}</span>'] for a in attacks],
            left=2) + "</details>"
    have = [c for c in conds if (summ.get(c, {}).get("attacks") or {}).get("rate") is not None]
    if have:
        cells = [summ[c]["attacks"] for c in have]
        m = [x["rate"] for x in cells]
        floor = summ.get(BASE, {}).get("attacks", {}).get("rate")
        out += png(bar_chart(have, m, [x["lo"] if x["lo"] is not None else x["rate"] for x in cells],
                             [x["hi"] if x["hi"] is not None else x["rate"] for x in cells],
                             "in-persona rate, mean over attacks",
                             "Replies still in persona under break-character attacks (95% CI)",
                             ref=floor, ref_label="base model (floor)"), "in-persona rate by condition")
    return out


def prefill_section(r: dict) -> str:
    pre = r.get("prefill") or {}
    return ("<p>The base model writes the first reply with no persona; the user answers \"Keep going.\"; each "
            "condition writes the second reply, which the same detector judges. " + FLOOR_NOTE + "</p>"
            + table(["condition", "in-persona rate", "95% CI", "replies"],
                    [[esc(c), num(pre[c]["rate"], 2), interval(pre[c]["lo"], pre[c]["hi"], 2), esc(pre[c]["n"])]
                     for c in ordered(pre)]))
