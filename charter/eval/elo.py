"""Ratings from pairwise comparisons: reference Elo, Bradley-Terry, bootstrap CIs, and comparing two runs.

A comparison is a ``(winner, loser)`` pair of trait names. Pure Python/numpy (scipy for Spearman only;
threadpoolctl, when installed, to pin BLAS to one thread), so it imports fast and needs no torch.

- ``elo_ratings`` is the reference's Elo exactly (start 1000, K 32, one sequential pass in data order), kept
  for comparability with the paper. Its values depend on the order of the comparisons.
- ``bradley_terry`` is the order-independent estimate we report beside it: the maximum-likelihood
  Bradley-Terry strengths on the Elo scale (a 400-point gap means 10:1 odds), centred at 1000. A small
  symmetric prior (``prior`` virtual wins and losses against an average opponent) keeps a trait that never
  lost (or never won) finite instead of drifting to infinity.
- ``bootstrap`` resamples comparisons with replacement and returns percentile confidence intervals.
- ``compare`` gives per-trait deltas between two rating sets with CIs, the largest rises and falls, and the
  Spearman rank correlation.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence

import numpy as np

Comparison = tuple[str, str]  # (winner, loser)
Ratings = dict[str, float]

ELO_SCALE = 400 / math.log(10)  # natural-log strength -> Elo points


def elo_ratings(comparisons: Sequence[Comparison], k: float = 32, start: float = 1000) -> Ratings:
    """The reference Elo: every trait starts at ``start``; one pass in the given order; both ratings of a
    comparison are updated from their values before it."""
    ratings: Ratings = {}
    for winner, loser in comparisons:
        rw, rl = ratings.get(winner, start), ratings.get(loser, start)
        expected_w = 1 / (1 + 10 ** ((rl - rw) / 400))
        ratings[winner] = rw + k * (1 - expected_w)
        ratings[loser] = rl - k * (1 - expected_w)
    return ratings


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # stable for large |x|


def _bt_objective(s, w, l, prior):
    d = s[w] - s[l]
    return -np.logaddexp(0, -d).sum() - prior * (np.logaddexp(0, -s) + np.logaddexp(0, s)).sum()


def _one_blas_thread():
    """BLAS threads spin against other processes on a shared CPU: a 144x144 solve took 40x longer with 2
    OpenBLAS threads than with 1 on our 2-core machine, and one thread is enough for matrices this small."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: present wherever scikit-learn is
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def bt_strengths(w: np.ndarray, l: np.ndarray, n: int, prior: float = 1.0, tol: float = 1e-9,
                 max_iter: int = 100) -> np.ndarray:
    """Penalised Bradley-Terry log-strengths for ``n`` items from winner/loser index arrays.

    Maximises sum log sigmoid(s_w - s_l) + prior * sum_i [log sigmoid(s_i) + log sigmoid(-s_i)] by damped
    Newton steps. The prior term is strictly concave, so the optimum is unique for any data (also for an
    item that never lost, and for items with no comparisons, which stay at 0).
    """
    if prior <= 0:
        raise ValueError("prior must be > 0 (it keeps unbeaten traits finite)")
    s = np.zeros(n)
    f = _bt_objective(s, w, l, prior)
    for _ in range(max_iter):
        d = s[w] - s[l]
        g_m = _sigmoid(-d)
        h_m = g_m * (1 - g_m)
        p = _sigmoid(s)
        grad = np.bincount(w, g_m, n) - np.bincount(l, g_m, n) + prior * (1 - 2 * p)
        hess = np.zeros((n, n))  # the negative Hessian: positive definite
        np.add.at(hess, (w, w), h_m)
        np.add.at(hess, (l, l), h_m)
        np.add.at(hess, (w, l), -h_m)
        np.add.at(hess, (l, w), -h_m)
        hess[np.diag_indices(n)] += 2 * prior * p * (1 - p)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # halve the step until the objective does not decrease (Newton can overshoot early on)
            s_new = s + t * step
            f_new = _bt_objective(s_new, w, l, prior)
            if f_new >= f - 1e-12 or t < 1e-6:
                break
            t /= 2
        s, f = s_new, f_new
        if np.max(np.abs(t * step)) < tol:
            break
    return s


def bradley_terry(comparisons: Sequence[Comparison], prior: float = 1.0, start: float = 1000) -> Ratings:
    """Order-independent ratings: Bradley-Terry maximum likelihood on the Elo scale, mean ``start``."""
    names = sorted({t for c in comparisons for t in c})
    if not names:
        return {}
    index = {t: i for i, t in enumerate(names)}
    w = np.fromiter((index[a] for a, _ in comparisons), int, len(comparisons))
    l = np.fromiter((index[b] for _, b in comparisons), int, len(comparisons))
    with _one_blas_thread():
        s = bt_strengths(w, l, len(names), prior)
    r = start + ELO_SCALE * (s - s.mean())
    return {t: float(v) for t, v in zip(names, r)}


def tally(comparisons: Sequence[Comparison]) -> dict[str, dict[str, int]]:
    """Wins, losses and comparisons per trait."""
    out: dict[str, dict[str, int]] = {}
    for winner, loser in comparisons:
        out.setdefault(winner, {"wins": 0, "losses": 0})["wins"] += 1
        out.setdefault(loser, {"wins": 0, "losses": 0})["losses"] += 1
    for v in out.values():
        v["comparisons"] = v["wins"] + v["losses"]
    return out


def bootstrap_draws(comparisons: Sequence[Comparison], fn: Callable[[list], Ratings] = bradley_terry,
                    n: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` ratings per trait, each from ``fn`` on a resample (with replacement) of the comparisons.

    A trait missing from a resample gets NaN in that draw. Draws are reproducible from ``seed``.
    """
    comparisons = list(comparisons)
    names = sorted({t for c in comparisons for t in c})
    out = {t: np.full(n, np.nan) for t in names}
    if not comparisons:
        return out
    rng = random.Random(seed)
    m = len(comparisons)
    for b in range(n):
        sample = [comparisons[rng.randrange(m)] for _ in range(m)]
        for t, v in fn(sample).items():
            out[t][b] = v
    return out


def percentile_ci(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile interval per trait (NaN draws ignored; (nan, nan) when a trait has no draws)."""
    tail = 100 * (1 - level) / 2
    out = {}
    for t, x in draws.items():
        x = x[~np.isnan(x)]
        out[t] = (float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))) if x.size else (math.nan,) * 2
    return out


def bootstrap(comparisons: Sequence[Comparison], fn: Callable[[list], Ratings] = bradley_terry, n: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of ``fn``'s ratings, per trait."""
    return percentile_ci(bootstrap_draws(comparisons, fn, n, seed), level)


def spearman(a: Ratings, b: Ratings) -> dict:
    """Spearman rank correlation over the traits both rating sets share (rho/p None when undefined)."""
    common = sorted(set(a) & set(b))
    rho = p = None
    if len(common) >= 3:
        from scipy.stats import spearmanr

        res = spearmanr([a[t] for t in common], [b[t] for t in common])
        if not (math.isnan(res.statistic) or math.isnan(res.pvalue)):
            rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": rho, "p": p, "n": len(common)}


def compare(before: Ratings, after: Ratings, before_draws: dict[str, np.ndarray] | None = None,
            after_draws: dict[str, np.ndarray] | None = None, top: int = 5, level: float = 0.95) -> dict:
    """How ratings moved from ``before`` to ``after`` (e.g. base -> trained).

    With bootstrap draws for both (from independent resamples of independent runs), the CI of a delta is the
    percentile interval of draw-by-draw differences. Returns ``deltas`` (per shared trait: before, after,
    delta, lo, hi), ``rises`` and ``falls`` (the ``top`` largest moves up and down, as lists of trait
    names), ``spearman`` and ``only_before``/``only_after`` (traits rated in one set only).
    """
    common = sorted(set(before) & set(after))
    ci: dict[str, tuple[float, float]] = {}
    if before_draws is not None and after_draws is not None:
        diffs = {t: after_draws[t] - before_draws[t] for t in common if t in before_draws and t in after_draws}
        ci = percentile_ci(diffs, level)
    deltas = {}
    for t in common:
        lo, hi = ci.get(t, (None, None))
        nan = lo is not None and (math.isnan(lo) or math.isnan(hi))
        deltas[t] = {"before": before[t], "after": after[t], "delta": after[t] - before[t],
                     "lo": None if nan else lo, "hi": None if nan else hi}
    by_delta = sorted(common, key=lambda t: (deltas[t]["delta"], t))
    rises = [t for t in reversed(by_delta) if deltas[t]["delta"] > 0][:top]
    falls = [t for t in by_delta if deltas[t]["delta"] < 0][:top]
    return {"deltas": deltas, "rises": rises, "falls": falls, "spearman": spearman(before, after),
            "level": level, "only_before": sorted(set(before) - set(after)),
            "only_after": sorted(set(after) - set(before))}
