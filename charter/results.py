"""Published results: one small JSON file per measured run under ``docs/results/``, and the README tables
drawn from them.

    python scripts/results.py collect RUN -o docs/results/NAME.json --command "bash scripts/cpu_persona.sh" \
        [--fluency fluency.json] [--note "..."]
    python scripts/results.py readme --check      # exit 1 when a README table differs from its file
    python scripts/results.py readme --write      # redraw every table between its markers

A file holds what a table or figure needs and nothing bulky: the in-persona rates of every detector with
their bootstrap CIs and the spread over detector refits, the detector checks, the multi-persona classifier's
macro-F1 with its CIs and confusion matrices (``results_persona.py``), fluency, the stage wall
times, the CPU (from the manifests), the config and its hash, the commit, package versions and the
commands that wrote it. In the README a table sits between ``<!-- results NAME KIND -->`` and
``<!-- /results -->``; ``tests/test_results_files.py`` fails when one differs from what its file renders.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from . import results_persona
from .results_persona import cell, headline_detector
from .registry import eval_folder
from .runs import MANIFEST, manifest_path

SCHEMA = "charter.results/1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
MARKER = re.compile(r"<!-- results (\S+) (\S+) -->\n(.*?)<!-- /results -->", re.S)
TRAIN_STAGES = results_persona.TRAIN_STAGES
ROBUSTNESS = eval_folder("robustness")
EVAL_STAGES = tuple(eval_folder(n) for n in ("steering", "robustness", "coherence", "preferences", "drift", "formats",
                                             "traits"))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _robustness(res: dict) -> dict:
    """The robustness results without the per-prompt bulk: every detector's summary, check and spread."""
    keep = ("reference", "fit", "learned_from", "texts", "detector", "summary", "seeds", "not_scored")
    head, dets, _ = headline_detector(res)
    return {"headline": head, "encoder": res["encoder"],
            "n_heldout": res["n_heldout"], "n_train": res["n_train"], "attacks": res["attacks"],
            "bootstrap": res["bootstrap"], "trained_prompts_removed": res.get("trained_prompts_removed", 0),
            "detectors": {ref: {k: d.get(k) for k in keep} for ref, d in dets.items()}}


def collect(run: Path, commands: list[str], fluency: dict | None = None, notes: list[str] = ()) -> dict:
    """The results document of a finished run folder ``run``."""
    from .runs import config_hash

    manifests = {s: results_persona.read_json(manifest_path(run / s)) for s in (*TRAIN_STAGES, *EVAL_STAGES)}
    any_m = next((m for m in manifests.values() if m), None)
    if any_m is None:
        raise FileNotFoundError(f"{run}: no finished stage (no {MANIFEST} under it)")
    cfg = manifests["merge"] and manifests["merge"].get("config") or any_m.get("config")
    doc = {"schema": SCHEMA, "run": run.name, "commands": list(commands), "notes": list(notes),
           "commit": _commit(), "machine": any_m.get("machine"), "versions": any_m.get("versions"),
           "seconds": {s: results_persona.wall_seconds(m) for s, m in manifests.items()
                       if m and "seconds" in m}}
    rob = results_persona.read_json(run / ROBUSTNESS / "results.json")
    if rob is not None and rob.get("mode") != "multi":  # a multi-persona result there is collected as 'multipersona'
        doc["robustness"] = _robustness(rob)
        doc["machine"] = manifests[ROBUSTNESS].get("machine", doc["machine"])
        doc["config_hash"] = config_hash(manifests[ROBUSTNESS].get("config"))
    if manifests["dpo"]:
        doc["dpo"] = {k: manifests["dpo"]["counts"].get(k) for k in ("steps", "pairs", "train_loss", "last_margin")}
        doc["fold"] = manifests["dpo"].get("fold")
    if manifests["merge"]:
        doc["merge"] = {"sft_weight": manifests["merge"]["counts"].get("sft_weight", 1.0),
                        "fold": manifests["merge"].get("fold")}
    coh = results_persona.read_json(run / eval_folder("coherence") / "results.json")
    if coh is not None:
        doc["coherence"] = coh.get("summary", coh)
    if fluency is not None:
        doc["fluency"] = fluency
    doc.update(results_persona.collect(run, manifests))
    if cfg:
        doc["train_config_hash"] = config_hash(cfg)
    return doc


# ---------------------------------------------------------------- README tables

def _spread(st: dict | None) -> str:
    return "" if not st or len(st.get("values", [])) < 2 else f"<br>fits {st['min']:.2f}–{st['max']:.2f}"


def record_figure(png: str | Path, sources: list[str | Path], command: str) -> None:
    """List a figure in ``docs/results/figures.json`` with the results files it was drawn from and its command
    (the README test reads it)."""
    index = RESULTS_DIR / "figures.json"
    figures = json.loads(index.read_text()) if index.exists() else {}
    figures[Path(png).name] = {"from": [Path(s).name for s in sources], "command": command}
    index.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def _cpu(doc: dict) -> str:
    m = doc.get("machine") or {}
    return f"{m.get('cpu', '?')}, {m.get('cpu_capability', '?')}, {m.get('auto_dtype', '?')}"


def table_inpersona(doc: dict, conditions: list[str] | None = None) -> str:
    """Rows: detectors (headline first); columns: conditions; cells: mean over the attacks [95% CI] and the
    range over detector refits."""
    rob = doc["robustness"]
    dets = rob["detectors"]
    order = [rob["headline"], *[r for r in dets if r != rob["headline"]]]
    from .eval.conditions import CONDITIONS

    conds = [c for c in CONDITIONS if any(c in dets[r]["summary"] for r in order)]
    if conditions:
        conds = [c for c in conds if c in conditions]
    head = "| detector (learned from; check) | " + " | ".join(conds) + " |"
    lines = [head, "|" + "---|" * (len(conds) + 1)]
    for ref in order:
        d = dets[ref]
        check = d["detector"]["balanced_accuracy"]
        name = f"**{ref}** (headline)" if ref == rob["headline"] else ref
        spread = (d.get("seeds") or {}).get("conditions", {})
        cells = [cell(d["summary"].get(c, {}).get("attacks")) + _spread(spread.get(c, {}).get("attacks"))
                 if c in d["summary"] else "not scored" for c in conds]
        lines.append(f"| {name}: {d['fit']}; check {cell(check)}{_spread((d.get('seeds') or {}).get('check'))} | "
                     + " | ".join(cells) + " |")
    lines.append(f"\n{rob['n_heldout']} held-out prompts × {len(rob['attacks'])} attacks, "
                 f"{(dets[rob['headline']].get('seeds') or {}).get('fits', 1)} detector fits each; {_cpu(doc)}; "
                 f"run `{doc['run']}`, file `docs/results/{doc['_name']}.json`.")
    return "\n".join(lines)


def table_none(doc: dict) -> str:
    """The same detectors with no attack: does the persona show at all?"""
    rob = doc["robustness"]
    d = rob["detectors"][rob["headline"]]
    conds = list(d["summary"])
    return ("| no attack, headline detector | " + " | ".join(conds) + " |\n|" + "---|" * (len(conds) + 1) + "\n"
            + f"| {rob['headline']} | " + " | ".join(cell(d["summary"][c].get("none")) for c in conds) + " |")


def table_fluency(doc: dict) -> str:
    flu = doc["fluency"]
    return ("| fluency: log-likelihood per token under the base model, no attack (higher is more fluent) | "
            + " | ".join(flu) + " |\n|" + "---|" * (len(flu) + 1) + "\n| nats/token [95% CI] | "
            + " | ".join(f"{v['logprob']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]" for v in flu.values()) + " |")


def table_seconds(doc: dict) -> str:
    s = doc["seconds"]
    stages = [k for k in (*TRAIN_STAGES, *EVAL_STAGES) if k in s]
    total = sum(s[k] for k in stages)
    return ("| " + " | ".join(stages) + " | total |\n|" + "---|" * (len(stages) + 1) + "\n| "
            + " | ".join(f"{s[k]:.0f} s" for k in stages) + f" | **{total / 60:.1f} min** |\n\n{_cpu(doc)}.")


def timed(command: list[str], what: str, cwd: Path | None = None) -> dict:
    """Run ``command`` once, timing it from outside, and return a results document for the timing table (the
    command's own output is passed through; its tail and exit code are kept)."""
    import time

    from .hardware import machine
    from .runs import package_versions

    t0 = time.time()
    proc = subprocess.run(command, cwd=cwd or ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    lines = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
    # the test runner's closing line when there is one (pytest: "N passed ..."), else the last lines
    summary = [ln for ln in lines if re.search(r"\d+ (passed|failed)", ln)]
    tail = summary[-1:] or lines[-3:]
    return {"schema": SCHEMA, "what": what, "commands": [" ".join(command)], "commit": _commit(),
            "machine": machine(), "versions": package_versions(), "config_hash": None,
            "timing": {"wall_seconds": round(wall, 1), "returncode": proc.returncode, "tail": tail}}


def table_timing(doc: dict) -> str:
    t = doc["timing"]
    return ("| what | command | wall | exit | CPU |\n|---|---|---|---|---|\n"
            f"| {doc['what']} | `{doc['commands'][0]}` | {t['wall_seconds'] / 60:.1f} min | {t['returncode']} | "
            f"{_cpu(doc)} |" + (f"\n\n`{t['tail'][-1].strip()}`" if t["tail"] and re.search(
                r"\d+ (passed|failed)", t["tail"][-1]) else ""))


def table_versus(doc: dict) -> str:
    """Two commands run in turn on one CPU (A: this code, B: before it): CPU and wall seconds, and A/B."""
    rows = ["| run | user | CPU (user + sys) | wall | exit |", "|---|---|---|---|---|"]
    for k in ("A", "B"):
        r = doc[k]
        rows.append(f"| {k} ({doc['commit'][k]}) | {r['user_s']:.0f} s | {r['cpu_s']:.0f} s | {r['wall_s']:.0f} s | "
                    f"{r['exit']} |")
    q = doc["ratio_A_over_B"]
    rows.append(f"| A / B | {q['user']:.3f} | {q['cpu']:.3f} | {q['wall']:.3f} | |")
    return "\n".join(rows) + f"\n\n{_cpu(doc)}; {'; '.join(doc['notes'])}."


TABLES = {"inpersona": table_inpersona, "none": table_none, "fluency": table_fluency, "seconds": table_seconds,
          "timing": table_timing, "versus": table_versus, **results_persona.TABLES}


def load(name: str, results_dir: Path = RESULTS_DIR) -> dict:
    path = results_dir / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file (README marker 'results {name} ...')")
    doc = json.loads(path.read_text())
    doc["_name"] = name
    return doc


def render(name: str, kind: str, results_dir: Path = RESULTS_DIR) -> str:
    if kind not in TABLES:
        raise ValueError(f"README marker 'results {name} {kind}': unknown table kind (known: {', '.join(TABLES)})")
    return TABLES[kind](load(name, results_dir)).strip() + "\n"


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """(name, kind, current body) of every results block in a README."""
    return [(m.group(1), m.group(2), m.group(3)) for m in MARKER.finditer(text)]


def redraw(text: str, results_dir: Path = RESULTS_DIR) -> str:
    return MARKER.sub(lambda m: f"<!-- results {m.group(1)} {m.group(2)} -->\n"
                      f"{render(m.group(1), m.group(2), results_dir)}<!-- /results -->", text)


def mismatches(text: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """The README blocks whose body is not what their results file renders."""
    return [f"{name} {kind}" for name, kind, body in readme_blocks(text)
            if body != render(name, kind, results_dir)]
