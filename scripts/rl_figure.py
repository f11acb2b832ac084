"""The RL reward curves: each reward's mean per step and the weighted total, from ``<run>/rl/rewards.jsonl``.

    .venv/bin/python scripts/rl_figure.py RUN_DIR -o docs/rl-rewards.png [--smooth 4]

``RUN_DIR``: the run's folder (``$CHARTER_HOME/runs/<name>``). A moving average over ``--smooth`` steps is drawn
over the raw points (GRPO rewards are noisy with a few prompts a step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLORS = {"persona": "#c0392b", "judge": "#2a9d8f", "coherence": "#264653", "reward": "#000000", "kl": "#999999"}


def moving(xs: list[float], k: int) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--smooth", type=int, default=4)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [json.loads(x) for x in (args.run / "rl" / "rewards.jsonl").read_text().splitlines() if x.strip()]
    from charter.runs import manifest_path

    manifest = json.loads(manifest_path(args.run / "rl").read_text())
    names = [*manifest["counts"]["rewards"], "reward"]
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax, kx = fig.subplots(1, 2, width_ratios=[3, 1])
    steps = [r["step"] for r in rows]
    for n in names:
        ys = [r.get(n) for r in rows]
        if any(y is None for y in ys):
            continue
        label = "weighted total" if n == "reward" else f"{n} (x{manifest['counts']['weights'][n]:g})"
        ax.plot(steps, ys, ".", color=COLORS.get(n, "#555555"), alpha=0.35)
        ax.plot(steps, moving(ys, args.smooth), "-", color=COLORS.get(n, "#555555"), label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward over the step's replies")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7)
    kl = [r.get("kl") or 0.0 for r in rows]
    kx.plot(steps, kl, "-", color=COLORS["kl"])
    kx.set_title("KL to the start model", fontsize=8)
    kx.set_xlabel("step")
    fig.suptitle(f"GRPO rewards, run {args.run.name} ({manifest['counts']['prompts']} prompts, "
                 f"{manifest['counts']['attacked']} attacked)", fontsize=9)
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
