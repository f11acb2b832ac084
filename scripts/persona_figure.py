"""The CPU persona figure: in-persona rate under the 8 break-character attacks, per condition, with 95% CIs,
one panel per (run, detector) from ``charter eval robustness`` results files.

    .venv/bin/python scripts/persona_figure.py -o docs/cpu-sarcastic.png \
        "A, pairs detector=runA-pairs.json" "A, exemplar detector=runA-exemplars.json" ...

Each results.json is what ``<run>/eval-robustness/results.json`` held after scoring with that reference
(copy it aside before re-scoring with another). The panel title carries the detector's own check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from charter.eval.conditions import CONDITIONS as ORDER  # the one list of conditions, in order


def panel(ax, title: str, results: dict) -> None:
    conds = [c for c in ORDER if c in results["summary"]]
    cells = [results["summary"][c]["attacks"] for c in conds]
    rates = [c["rate"] for c in cells]
    err = [[r - c["lo"] for r, c in zip(rates, cells)], [c["hi"] - r for r, c in zip(rates, cells)]]
    colors = ["#999999" if c in ("base", "prompted", "steered") else "#c0392b" for c in conds]
    ax.bar(range(len(conds)), rates, yerr=err, capsize=3, color=colors)
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    check = results["detector"]["balanced_accuracy"]
    ax.set_title(f"{title}\ncheck {check['rate']:.2f} [{check['lo']:.2f}, {check['hi']:.2f}]", fontsize=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("panels", nargs="+", metavar="TITLE=RESULTS.json")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.panels), figsize=(2.6 * len(args.panels), 3.2), sharey=True)
    for ax, spec in zip(list(axes) if len(args.panels) > 1 else [axes], args.panels):
        title, _, path = spec.rpartition("=")
        panel(ax, title, json.loads(Path(path).read_text()))
    axes_list = list(axes) if len(args.panels) > 1 else [axes]
    axes_list[0].set_ylabel("in-persona rate, mean over 8 attacks")
    fig.suptitle("sarcastic on the embedded 135M model, 16 held-out prompts (grey: no training)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    print(args.output)


if __name__ == "__main__":
    main()
