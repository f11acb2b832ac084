"""One self-contained HTML page with every evaluation of a run.

    charter report my-run                  # a run name under $CHARTER_HOME/runs
    charter report ~/.charter/runs/my-run  # or a run folder
    charter eval all configs/my-run.yaml   # every evaluation, then this report

Reads only what the stages and evaluations wrote (their manifests, ``results.json`` files and figures) and
writes ``<run>/report.html``: an overview, then the sections of every registered evaluation
(``registry.Evaluation.report``; the built-ins' are in ``report_sections.py``). Figures are base64 PNGs
(matplotlib Agg), the style is inline, nothing is fetched, so the file can be mailed or archived alone. A section whose evaluation has not run says so; one
whose files cannot be read says what went wrong instead of failing the whole page.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from .. import registry
from ..layout import path as output_path
from ..runs import MANIFEST, manifest_path, resolve_run, write_text_atomic
from .html import esc, num, table
from .report_sections import read_json

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


# ---------------------------------------------------------------- sections


def manifests(d: Path) -> dict[str, dict]:
    """Every stage's and evaluation's manifest, pipeline stages first."""
    out, stages = {}, registry.stage_names()
    names = [*stages, *sorted(p.parent.name for p in d.glob(f"*/{MANIFEST}") if p.parent.name not in stages)]
    for name in names:
        p = manifest_path(d / name)
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


def sections() -> list[tuple[str, str, Callable[[Path, dict], str]]]:
    """(anchor, title, render(run folder, manifests)) of each section: the overview, then every registered
    evaluation's (``registry.Evaluation.report``), each saying which command makes it while it has not run."""
    out = [("overview", "Overview", overview)]
    for e in registry.evaluations():
        for s in e.report:
            out.append((s.key, s.title, lambda d, ms, e=e, s=s: s.html(d / e.folder)
                        or not_run(f"charter eval {e.name} CONFIG")))
    return out


def build(run: str | Path) -> Path:
    """Write ``<run>/report.html`` from whatever the run's stages and evaluations wrote; returns its path."""
    d = run if isinstance(run, Path) else resolve_run(run)
    ms = manifests(d)
    parts = []
    for key, title, render in sections():
        try:
            body = render(d, ms)
        except Exception as e:  # noqa: BLE001 - one malformed file must not cost the whole report
            body = f'<p class="err">Could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        parts.append(f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>')
    nav = " ".join(f'<a href="#{k}">{esc(t)}</a>' for k, t, _ in sections())
    persona = _find({k: m.get("config", {}) for k, m in ms.items()}, "persona")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>charter report: {esc(d.name)}'
            f"</title><style>{CSS}</style></head><body><main><h1>Character training report: {esc(d.name)}</h1>"
            f'<p class="sub">persona <b>{esc(persona or "?")}</b> · made {esc(time.strftime("%Y-%m-%d %H:%M"))}'
            f"</p><nav>{nav}</nav>{''.join(parts)}</main></body></html>\n")
    out = d / "report.html"
    write_text_atomic(out, page)
    return out
