"""The CPU persona figure, drawn from results files only: in-persona rate under the 8 break-character attacks
per condition, with bootstrap 95% CIs and the range over detector refits, one panel per (results file,
detector).

    .venv/bin/python scripts/persona_figure.py -o docs/cpu-sarcastic.png \
        "main=docs/results/cpu-sarcastic.json" "no attacked rows=docs/results/cpu-sarcastic-noattack.json"

Each panel's title carries the detector's check (balanced accuracy on held-out prompted vs base replies) and
whether it is independent of training or fit to the DPO contrast. Writes the figure and records it in
docs/results/figures.json (the files it was drawn from and this command), which the README test reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from charter.eval.conditions import CONDITIONS as ORDER  # the one list of conditions, in order
from charter.layout import RUN_MODELS  # the conditions a run trains; the others (grey) are no training
from charter.results import record_figure


def panel(ax, title: str, det: dict) -> None:
    conds = [c for c in ORDER if c in det["summary"]]
    cells = [det["summary"][c]["attacks"] for c in conds]
    rates = [c["rate"] for c in cells]
    err = [[r - c["lo"] for r, c in zip(rates, cells)], [c["hi"] - r for r, c in zip(rates, cells)]]
    colors = ["#999999" if c not in RUN_MODELS else "#c0392b" for c in conds]
    ax.bar(range(len(conds)), rates, yerr=err, capsize=3, color=colors)
    spread = (det.get("seeds") or {}).get("conditions", {})
    for i, c in enumerate(conds):  # the range over detector refits, as a thin black line beside the bar
        st = spread.get(c, {}).get("attacks")
        if st and len(st.get("values", [])) > 1:
            ax.plot([i + 0.3, i + 0.3], [st["min"], st["max"]], color="black", lw=1)
    ax.set_xticks(range(len(conds)), conds, rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    check = det["detector"]["balanced_accuracy"]
    ax.set_title(f"{title}\n{det['fit']}; check {check['rate']:.2f} [{check['lo']:.2f}, {check['hi']:.2f}]",
                 fontsize=7)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", metavar="TITLE=RESULTS.json")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--detectors", nargs="*", help="which detectors to draw (default: every one in each file)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for spec in args.files:
        title, _, path = spec.rpartition("=")
        rob = json.loads(Path(path).read_text())["robustness"]
        order = [rob["headline"], *[r for r in rob["detectors"] if r != rob["headline"]]]
        panels += [(f"{title}: {ref}", rob["detectors"][ref]) for ref in order
                   if not args.detectors or ref in args.detectors]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.7 * len(panels), 3.4), sharey=True, squeeze=False)
    for ax, (title, det) in zip(axes[0], panels):
        panel(ax, title, det)
    axes[0][0].set_ylabel("in-persona rate, mean over 8 attacks")
    fig.suptitle("sarcastic on the embedded 135M model (grey: no training; black line: range over detector refits)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    record_figure(args.output, [spec.rpartition("=")[2] for spec in args.files],
                  "python scripts/persona_figure.py " + shlex.join(sys.argv[1:]))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
