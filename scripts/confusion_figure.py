"""The multi-persona confusion figure, drawn from a results file only: one panel per condition, rows the persona
that wrote a held-out reply under the attacks, columns the persona the classifier named; colour the share of the
row, the count printed in each cell, the pooled macro-F1 and its 95% CI in the title.

    .venv/bin/python scripts/confusion_figure.py docs/results/cpu-personas.json -o docs/cpu-personas-confusion.png

Reads the ``multipersona`` part ``scripts/results.py collect`` keeps (``eval-robustness/personas/results.json``
of the run that scored the personas). Records the figure in docs/results/figures.json, which the README test reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from charter.results import record_figure


def plot(out: Path, mp: dict) -> None:
    """One panel per condition of ``mp['confusion']``, written to ``out`` as a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = mp["confusion"]
    labels, conds = conf["labels"], list(conf["counts"])
    fig = Figure(figsize=(1.2 + 3.1 * len(conds), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(conds), sharey=True))
    for ax, cond in zip(axes, conds):
        counts = np.array(conf["counts"][cond], dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Greens", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted persona", fontsize=8)
        f1 = ((mp.get("pooled") or {}).get(cond) or {}).get("attacks") or {}
        ci = f" [{f1['lo']:.2f}, {f1['hi']:.2f}]" if f1.get("lo") is not None else ""
        ax.set_title(f"{cond}\nmacro-F1 {f1['macro_f1']:.2f}{ci}" if f1.get("macro_f1") is not None else cond,
                     fontsize=9)
    axes[0].set_ylabel("true persona", fontsize=8)
    fig.suptitle(f"Which persona wrote the reply? {mp['n_heldout']} held-out prompts x {len(mp['attacks'])} "
                 f"attacks ({mp['encoder']} classifier)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results file holding a 'multipersona' part")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.results).read_text())
    mp = doc.get("multipersona") or {}
    if not (mp.get("confusion") or {}).get("counts"):
        sys.exit(f"confusion_figure: {args.results}: no multi-persona confusion matrices (collect the run after "
                 "`charter eval robustness ... robustness.personas=[...]`)")
    plot(Path(args.output), mp)
    args_line = shlex.join(sys.argv[1:] if argv is None else argv)
    record_figure(args.output, [args.results], "python scripts/confusion_figure.py " + args_line)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
