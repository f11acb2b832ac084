"""The revealed-preference figures: largest rating rises and falls per model against the first, and the
distribution of every trait's rating. Written with Agg, atomically, without touching pyplot's global state."""

from __future__ import annotations

from pathlib import Path


def _save(fig, path: Path) -> None:
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def plot_rises_falls(path: Path, comparison: dict) -> None:
    """One panel per compared model: its largest rating rises and falls against the baseline, with CIs."""
    from matplotlib.figure import Figure

    against = comparison["against"]
    rows = max((len(c["rises"]) + len(c["falls"]) for c in against.values()), default=1)
    fig = Figure(figsize=(7, len(against) * (0.35 * max(rows, 2) + 1.2)), layout="constrained")
    for ax, (label, c) in zip(fig.subplots(len(against), 1, squeeze=False)[:, 0], against.items()):
        names = c["rises"] + c["falls"][::-1]  # largest rise on top, largest fall at the bottom
        d = [c["deltas"][t] for t in names]
        delta = [x["delta"] for x in d]
        err = [[x["delta"] - x["lo"] if x["lo"] is not None else 0 for x in d],
               [x["hi"] - x["delta"] if x["hi"] is not None else 0 for x in d]]
        y = list(range(len(names)))[::-1]
        ax.barh(y, delta, xerr=err, capsize=3, color=["#2a9d8f" if v > 0 else "#e76f51" for v in delta])
        ax.set_yticks(y, names)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("rating change (Bradley-Terry, Elo points)")
        ax.set_title(f"{label} vs {comparison['baseline']}: largest rises and falls "
                     f"({comparison['level']:.0%} bootstrap CI)", fontsize=10)
        if not names:
            ax.text(0.5, 0.5, "no trait rated in both", ha="center", transform=ax.transAxes)
    _save(fig, path)


def plot_histogram(path: Path, rated: dict[str, dict[str, float]]) -> None:
    """Distribution of all trait ratings per model (before vs after)."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    values = [v for r in rated.values() for v in r.values()]
    bins = np.histogram_bin_edges(values or [1000], bins=20)
    for label, r in rated.items():
        ax.hist(list(r.values()), bins=bins, alpha=0.5, label=f"{label} ({len(r)} traits)")
    ax.set_xlabel("trait rating (Bradley-Terry, Elo scale, mean 1000 per model)")
    ax.set_ylabel("traits")
    ax.set_title("Revealed-preference ratings of all traits", fontsize=10)
    ax.legend()
    _save(fig, path)
