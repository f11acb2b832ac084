"""Bootstrap confidence intervals and the way evaluations print them, shared by the drift, formats and traits
evaluations.

Every interval is a percentile bootstrap over rows (prompts, conversations, items): a row is resampled whole, so
the values within it (samples, turns) stay together. ``inpersona.bootstrap_rate`` is the same estimate for rates
(it lives with the in-persona detector; these generalise it to any values and to paired differences).
"""

from __future__ import annotations

import warnings

LEVEL = 0.95


def percentile_ci(draws, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``draws``."""
    import numpy as np

    tail = 100 * (1 - level) / 2
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def _array(matrix):
    import numpy as np

    return np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float).reshape(
        len(matrix), -1)


def _stat(x):
    import numpy as np

    with warnings.catch_warnings():  # a column with no value in one resample is skipped, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(x, axis=-2), axis=-1)


def bootstrap_mean(matrix: list[list[float | None]], n_boot: int, seed: int, level: float = LEVEL) -> dict:
    """``inpersona.bootstrap_rate`` for any values (a projection): the mean of column means with a percentile CI
    over resampled rows, to six decimals."""
    import numpy as np

    m = _array(matrix)
    if not m.size or not np.isfinite(m).any():
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = m[np.isfinite(m).any(axis=1)]
    lo = hi = None
    if n_boot > 0:
        draws = _stat(m[np.random.default_rng(seed).integers(0, len(m), size=(n_boot, len(m)))])
        draws = draws[np.isfinite(draws)]
        lo, hi = (round(x, 6) for x in percentile_ci(draws, level))
    return {"mean": round(float(_stat(m)), 6), "lo": lo, "hi": hi, "n": int(np.isfinite(m).sum())}


def paired_difference(a: list[list[float | None]], b: list[list[float | None]], n_boot: int, seed: int,
                      level: float = LEVEL) -> dict:
    """(mean of column means of ``b``) - (that of ``a``), rows paired (the same conversation or prompt in both),
    with a percentile bootstrap CI from resampling rows for both at once. Rows missing on either side are left
    out; ``n`` counts the rows kept."""
    import numpy as np

    none = {"delta": None, "lo": None, "hi": None, "n": 0}
    if not a or not b or len(a) != len(b):
        return none
    A, B = _array(a), _array(b)
    keep = np.isfinite(A).any(axis=1) & np.isfinite(B).any(axis=1)
    A, B = A[keep], B[keep]
    if not len(A):
        return none
    lo = hi = None
    if n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, len(A), size=(n_boot, len(A)))
        draws = _stat(B[idx]) - _stat(A[idx])
        draws = draws[np.isfinite(draws)]
        lo, hi = (round(x, 4) for x in percentile_ci(draws, level))
    return {"delta": round(float(_stat(B) - _stat(A)), 4), "lo": lo, "hi": hi, "n": int(len(A))}


def pct(cell: dict | None, key: str = "rate", ci: bool = False, digits: int = 2) -> str:
    """A cell's ``key`` (a rate, a mean) for a text table, with its CI when ``ci``; '-' when there is none."""
    if not cell or cell.get(key) is None:
        return "-"
    v = f"{cell[key]:.{digits}f}"
    if ci and cell.get("lo") is not None:
        return f"{v} [{cell['lo']:.{digits}f},{cell['hi']:.{digits}f}]"
    return v


def signed(cell: dict | None) -> str:
    """A paired difference with its sign and CI for a text table; '-' when there is none."""
    if not cell or cell.get("delta") is None:
        return "-"
    ci = f" [{cell['lo']:+.2f},{cell['hi']:+.2f}]" if cell.get("lo") is not None else ""
    return f"{cell['delta']:+.2f}{ci}"
