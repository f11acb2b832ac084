"""Small HTML and figure helpers the report's sections share (``report``, ``report_inpersona``).

Their own module so that the report and its split-off sections import them downwards instead of each other.
"""

from __future__ import annotations

import base64
import html
import io

from .conditions import all_conditions, colors as condition_colors


def esc(x) -> str:
    return html.escape(str(x))


def table(headers: list[str] | None, rows: list[list], left: int = 1) -> str:
    """An HTML table (no header row when ``headers`` is None); the first ``left`` columns are left-aligned
    text, cells are pre-escaped HTML."""
    width = len(headers) if headers else max((len(r) for r in rows), default=0)
    cls = [' class="l"' if i < left else "" for i in range(width)]
    head = "<tr>" + "".join(f"<th{c}>{esc(h)}</th>" for h, c in zip(headers, cls)) + "</tr>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td{cls[i] if i < len(cls) else ''}>{v}</td>" for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def interval(lo, hi, digits: int = 0) -> str:
    """``[lo, hi]`` with real minus signs, so a negative bound does not read as a dash."""
    def f(x):
        return "–" if x is None else f"{x:.{digits}f}".replace("-", "−")

    return "–" if lo is None and hi is None else f"[{f(lo)}, {f(hi)}]"


def num(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def png(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def bar_chart(labels: list[str], values: list[float], lo: list[float], hi: list[float], ylabel: str, title: str,
              ref: float | None = None, ref_label: str = "", colors: list[str] | None = None) -> bytes:
    """Vertical bars with asymmetric error bars, one colour per condition, the value printed on each bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    ax = fig.subplots()
    x = range(len(labels))
    err = [[v - a for v, a in zip(values, lo)], [b - v for v, b in zip(values, hi)]]
    palette = condition_colors()
    bars = ax.bar(x, values, yerr=err, capsize=6, color=[palette.get(c, "#6c8ebf") for c in colors or labels],
                  width=0.6)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=11, label_type="center",
                 color="white", fontweight="bold")
    if ref is not None:
        ax.axhline(ref, color="#444", linestyle="--", linewidth=1, label=ref_label)
        ax.legend(fontsize=10, loc="upper left")
    ax.set_xticks(list(x), labels, fontsize=12)
    pad = (max(len(labels), 4) - len(labels)) / 2  # a few bars stay bar-shaped, centred
    ax.set(ylim=(0, 1.05), xlim=(-0.6 - pad, len(labels) - 0.4 + pad))
    ax.set_ylabel(ylabel, fontsize=12)
    ax.set_title(title, fontsize=13)
    ax.tick_params(axis="y", labelsize=11)
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def ordered(conds) -> list[str]:
    conds = list(conds)
    known = all_conditions()
    return [c for c in known if c in conds] + [c for c in conds if c not in known]
