"""Ratings from pairwise comparisons: reference Elo, Bradley-Terry, bootstrap, comparing two runs."""

import math
import random

import numpy as np
import pytest

from charter.eval import elo


def simulate(n: int, seed: int = 0, traits: int = 12) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """Comparisons drawn from known Bradley-Terry strengths (natural-log units)."""
    rng = random.Random(seed)
    names = [f"t{i:02d}" for i in range(traits)]
    true = {t: 0.3 * i for i, t in enumerate(names)}
    comps = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p = 1 / (1 + math.exp(-(true[a] - true[b])))
        comps.append((a, b) if rng.random() < p else (b, a))
    return comps, true


def test_elo_matches_hand_computed_updates():
    # 1) A beats B, both at 1000: expected 0.5, so A = 1000 + 32 * 0.5 = 1016 and B = 984.
    r = elo.elo_ratings([("A", "B")])
    assert r == {"A": 1016.0, "B": 984.0}
    # 2) B beats A: B's expected score is 1 / (1 + 10^((1016 - 984) / 400)) = 1 / (1 + 10^0.08) = 0.454077,
    #    so B gains 32 * (1 - 0.454077) = 17.46955 and A loses as much.
    r = elo.elo_ratings([("A", "B"), ("B", "A")])
    assert r["B"] == pytest.approx(984 + 17.46955, abs=1e-4)
    assert r["A"] == pytest.approx(1016 - 17.46955, abs=1e-4)
    # A third trait enters at the start rating; K and the start are parameters.
    r = elo.elo_ratings([("A", "B"), ("C", "A")], k=16, start=1500)
    assert r["A"] == pytest.approx(1508 - 16 / (1 + 10 ** ((1500 - 1508) / 400)), abs=1e-9)
    assert sum(r.values()) == pytest.approx(3 * 1500)  # Elo conserves the total


def test_elo_depends_on_order_but_bradley_terry_does_not():
    comps, _ = simulate(300, seed=1)
    shuffled = comps[:]
    random.Random(5).shuffle(shuffled)
    e1, e2 = elo.elo_ratings(comps), elo.elo_ratings(shuffled)
    assert max(abs(e1[t] - e2[t]) for t in e1) > 1  # the reference's single pass is order-dependent
    b1, b2 = elo.bradley_terry(comps), elo.bradley_terry(shuffled)
    assert b1.keys() == b2.keys()
    assert max(abs(b1[t] - b2[t]) for t in b1) < 1e-6
    b3 = elo.bradley_terry(list(reversed(comps)))
    assert max(abs(b1[t] - b3[t]) for t in b1) < 1e-6


def test_bradley_terry_recovers_strengths_on_elo_scale():
    # Two traits, A wins 3 of 4: the maximum-likelihood gap is ln 3 in log-strength = 400*log10(3) Elo points.
    r = elo.bradley_terry([("A", "B")] * 3 + [("B", "A")], prior=1e-4)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), rel=1e-3)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000)
    # With many comparisons the ranking follows the true strengths.
    comps, true = simulate(3000, seed=2)
    r = elo.bradley_terry(comps)
    from scipy.stats import spearmanr

    names = sorted(true)
    assert spearmanr([r[t] for t in names], [true[t] for t in names]).statistic > 0.9
    assert np.mean(list(r.values())) == pytest.approx(1000)


def test_bradley_terry_keeps_unbeaten_traits_finite():
    r = elo.bradley_terry([("A", "B")] * 20 + [("A", "C")] * 5)
    assert all(math.isfinite(v) for v in r.values())
    assert r["A"] > r["C"] > r["B"]  # C lost less often than B
    assert r["A"] - 1000 < 800  # the prior stops it from running away
    assert elo.bradley_terry([]) == {}
    with pytest.raises(ValueError):
        elo.bradley_terry([("A", "B")], prior=0)


def test_tally_counts_wins_and_losses():
    t = elo.tally([("A", "B"), ("A", "C"), ("C", "A")])
    assert t["A"] == {"wins": 2, "losses": 1, "comparisons": 3}
    assert t["B"] == {"wins": 0, "losses": 1, "comparisons": 1}


def test_bootstrap_cis_contain_point_and_shrink_with_more_data():
    small, _ = simulate(150, seed=3)
    large, _ = simulate(1500, seed=3)
    widths = []
    for comps in (small, large):
        point = elo.bradley_terry(comps)
        ci = elo.bootstrap(comps, elo.bradley_terry, n=200, seed=7)
        assert ci.keys() == point.keys()
        for t, (lo, hi) in ci.items():
            assert lo <= point[t] <= hi, t
        widths.append(np.median([hi - lo for lo, hi in ci.values()]))
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(10) in theory


def test_bootstrap_is_reproducible_and_works_for_elo():
    comps, _ = simulate(100, seed=4)
    a = elo.bootstrap(comps, elo.elo_ratings, n=50, seed=1)
    assert a == elo.bootstrap(comps, elo.elo_ratings, n=50, seed=1)
    assert a != elo.bootstrap(comps, elo.elo_ratings, n=50, seed=2)
    draws = elo.bootstrap_draws([("A", "B"), ("C", "D")], n=40, seed=0)
    assert all(len(v) == 40 for v in draws.values())
    assert any(np.isnan(v).any() for v in draws.values())  # a trait can be missing from a resample


def test_compare_reports_deltas_rises_falls_and_spearman():
    before = {"kind": 1000.0, "rude": 1050.0, "calm": 990.0, "shy": 960.0}
    after = {"kind": 1100.0, "rude": 950.0, "calm": 1000.0, "shy": 960.0, "new": 1000.0}
    c = elo.compare(before, after, top=5)
    assert c["rises"] == ["kind", "calm"]
    assert c["falls"] == ["rude"]
    assert c["deltas"]["kind"]["delta"] == 100
    assert c["deltas"]["kind"]["lo"] is None  # no draws given, no CI
    assert c["only_after"] == ["new"]
    assert c["spearman"]["n"] == 4
    same = elo.compare(before, dict(before))
    assert same["spearman"]["rho"] == pytest.approx(1.0)
    assert same["rises"] == same["falls"] == []


def test_compare_delta_cis_from_bootstrap_draws():
    comps_a, _ = simulate(800, seed=5)
    comps_b = [(loser, winner) for winner, loser in comps_a]  # every result flipped: ranks reverse
    ra, rb = elo.bradley_terry(comps_a), elo.bradley_terry(comps_b)
    da = elo.bootstrap_draws(comps_a, n=100, seed=1)
    db = elo.bootstrap_draws(comps_b, n=100, seed=2)
    c = elo.compare(ra, rb, da, db, top=3)
    assert c["spearman"]["rho"] == pytest.approx(-1.0)
    assert len(c["rises"]) == len(c["falls"]) == 3
    for t in c["rises"] + c["falls"]:
        d = c["deltas"][t]
        assert d["lo"] <= d["delta"] <= d["hi"]
    top = c["rises"][0]
    assert c["deltas"][top]["lo"] > 0  # the weakest trait's large rise is clearly non-zero
