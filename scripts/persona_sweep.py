"""A small measured sweep over training settings, all sharing one run's distillation data and evaluation replies.

    .venv/bin/python scripts/persona_sweep.py configs/cpu-sarcastic.yaml \
        --variant lr1e-4 dpo.trl.learning_rate=1e-4 --variant lr3e-4 dpo.trl.learning_rate=3e-4 \
        [--until dpo|merge] [--eval robustness.prompts=40]

The config's own run makes the prompts and pairs once (``charter distill``) and answers the robustness prompts
as base and prompted once. Each variant is a run named ``<name>-<tag>`` that starts from copies of those
folders, trains with its overrides (``charter dpo``, or every stage with ``--until merge``), and is scored by
``charter eval robustness`` on the same held-out prompts and attacks. Printed: each variant's in-persona rate
(mean over the 8 attacks, no attack) with 95% CIs, beside base and prompted; also written to
``<run>/sweep.json``. Everything runs through the CLI, so a variant is exactly what ``charter`` would train.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def charter(*args: str) -> None:
    cmd = [sys.executable, "-m", "charter.cli", *args]
    print("$ charter " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def robustness_row(run: Path, cond: str) -> dict:
    from charter.eval.robustness import STAGE

    summary = json.loads((run / STAGE / "results.json").read_text())["summary"][cond]
    return {k: summary.get(k) for k in ("attacks", "none", "prefill")}


def fmt(cell) -> str:
    if not cell or cell.get("rate") is None:
        return "-"
    return f"{cell['rate']:.2f} [{cell['lo']:.2f}, {cell['hi']:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar=("TAG", "KEY=VALUE"),
                    help="a tag and its overrides; repeat for each variant")
    ap.add_argument("--until", choices=("dpo", "merge"), default="dpo",
                    help="dpo: score the distilled model; merge: train every stage and score the trained model")
    ap.add_argument("--eval", nargs="*", default=[], help="overrides for the evaluation only")
    args = ap.parse_args()

    from charter import layout, registry
    from charter.config import load_config
    from charter.eval.robustness import STAGE as ROBUSTNESS
    from charter.runs import run_dir

    cfg = load_config(args.config)
    home = run_dir(cfg.name)
    # The run model the last stage trained makes (--until dpo: 'distilled', merge: 'trained'), and the stages
    # before DPO (expand, distill), whose outputs every variant reuses as they are.
    cond = next(label for label, (stage, _) in layout.RUN_MODELS.items() if stage == args.until)
    names = registry.stage_names()
    shared = names[:names.index("dpo")]
    t0 = time.time()
    charter("distill", args.config)
    charter("eval", "robustness", args.config, "robustness.conditions=[base, prompted]", *args.eval)
    rows = {"base": robustness_row(home, "base"), "prompted": robustness_row(home, "prompted")}
    for tag, *overrides in args.variant:
        name = f"{cfg.name}-{tag}"
        dst = run_dir(name)
        for stage in shared:
            if (home / stage).exists() and not (dst / stage).exists():
                shutil.copytree(home / stage, dst / stage)
        ev = dst / ROBUSTNESS
        if not ev.exists():  # base and prompted replies are the same for every variant: reuse them
            ev.mkdir(parents=True)
            for f in ("split.json", "generations.jsonl"):
                shutil.copy2(home / ROBUSTNESS / f, ev / f)
            shutil.copy2(home / ROBUSTNESS / "config.json", ev / "config.json")
        started = time.time()
        stage_cmd = "dpo" if args.until == "dpo" else "train"
        charter(stage_cmd, args.config, f"name={name}", *overrides)
        trained = time.time() - started
        charter("eval", "robustness", args.config, f"name={name}", *overrides,
                f"robustness.conditions=[base, prompted, {cond}]", *args.eval)
        rows[tag] = {**robustness_row(dst, cond), "overrides": overrides, "train_seconds": round(trained)}
    print(f"\nin-persona rate ({cond} for the variants), 95% CIs; {time.time() - t0:.0f}s in all")
    print(f"{'':14s} {'8 attacks (mean)':24s} {'no attack':24s} {'prefill':24s} overrides")
    for tag, r in rows.items():
        print(f"{tag:14s} {fmt(r['attacks']):24s} {fmt(r['none']):24s} {fmt(r['prefill']):24s} "
              f"{' '.join(r.get('overrides', []))}")
    (home / "sweep.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
