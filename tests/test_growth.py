"""The Numba box-growing kernel against its plain-numpy twin, on random inputs."""

import numpy as np
import pytest

from clipbranches_widgets.engine.growth import gini_split, grow_box, grow_box_numpy


def _random_case(rng):
    n, F = int(rng.integers(2, 120)), 10
    spread = int(rng.choice([3, 20, 256]))
    X = (rng.integers(0, spread, (n, F)) + rng.integers(0, 256 - spread + 1)).astype(np.uint8)
    y = (rng.random(n) < 0.3).astype(np.int8)
    y[0] = 1
    w = rng.integers(1, 4, n).astype(np.float64)  # whole numbers: sums are exact in both versions
    d = int(rng.integers(1, 7))
    dims = np.sort(rng.choice(F, d, replace=False)).astype(np.int64)
    params = dict(
        order=rng.permutation(d).astype(np.int64), seed=int(rng.choice(np.flatnonzero(y))),
        min_pts=int(rng.choice([0, 1, 3, 50])), early_stopping=bool(rng.integers(2)),
        stop_infinite=bool(rng.integers(2)), split=float(rng.choice([0.0, 0.5, 1.0])),
        n_sweeps=int(rng.integers(1, 4)), min_in=int(rng.choice([1, 1, 3])),
    )
    pos = y == 1
    extremes = [a.astype(np.int64) for a in (X[pos].min(0), X[pos].max(0), X.min(0), X.max(0))]
    return X, y, w, dims, params, extremes


def _run_kernel(X, y, w, dims, p, extremes):
    lo = np.empty(len(dims), np.int64)
    hi = np.empty(len(dims), np.int64)
    score = grow_box(X, y, w, dims, p["order"], p["seed"], p["min_pts"], p["early_stopping"], p["stop_infinite"],
                     p["split"], p["n_sweeps"], p["min_in"], *extremes, lo, hi)
    return lo, hi, score


@pytest.mark.parametrize("chunk", range(4))
def test_kernel_matches_numpy_twin(chunk):
    rng = np.random.default_rng(1000 + chunk)
    for _ in range(150):
        X, y, w, dims, p, ext = _random_case(rng)
        lo, hi, score = _run_kernel(X, y, w, dims, p, ext)
        lo2, hi2, score2 = grow_box_numpy(X, y, w, dims, p["order"], p["seed"], p["min_pts"], p["early_stopping"],
                                          p["stop_infinite"], p["split"], p["n_sweeps"], p["min_in"], *ext)
        np.testing.assert_array_equal(lo, lo2)
        np.testing.assert_array_equal(hi, hi2)
        assert score == pytest.approx(score2) or (np.isinf(score) and np.isinf(score2))


def test_box_holds_seed_and_bounds_are_valid():
    rng = np.random.default_rng(7)
    for _ in range(200):
        X, y, w, dims, p, ext = _random_case(rng)
        lo, hi, score = _run_kernel(X, y, w, dims, p, ext)
        seed_vals = X[p["seed"], dims]
        assert ((0 <= lo) & (lo <= seed_vals) & (seed_vals <= hi) & (hi <= 255)).all()


def test_weight_equals_row_duplication():
    """A row of weight k grows the same box as k copies of it (weights are real sample weights)."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        X, y, w, dims, p, ext = _random_case(rng)
        reps = w.astype(np.int64)
        Xd, yd = np.repeat(X, reps, axis=0), np.repeat(y, reps)
        pd = dict(p, seed=int(np.cumsum(reps)[p["seed"]] - 1), min_in=1)
        p1 = dict(p, min_in=1)
        lo, hi, s = _run_kernel(X, y, w, dims, p1, ext)
        lo2, hi2, s2 = _run_kernel(Xd, yd, np.ones(len(yd)), dims, pd, ext)
        np.testing.assert_array_equal(lo, lo2)
        np.testing.assert_array_equal(hi, hi2)
        assert s == pytest.approx(s2)


def test_gini_split_values():
    assert gini_split(5.0, 0.0, 5.0, 5.0) == 0.0  # perfect split
    assert gini_split(5.0, 5.0, 5.0, 5.0) == pytest.approx(0.5)  # everything inside, 50/50
    assert gini_split(0.0, 0.0, 3.0, 1.0) == pytest.approx(2 * 3 * 1 / 4 / 4)  # empty inside


def test_pure_cluster_is_captured_exactly():
    """Positives at 100..110 on one dim, negatives far away: the box keeps all positives, no negative."""
    X = np.array([[v] for v in range(100, 111)] + [[v] for v in (10, 20, 200, 250)], np.uint8)
    y = np.array([1] * 11 + [0] * 4, np.int8)
    lo, hi = np.empty(1, np.int64), np.empty(1, np.int64)
    ext = [np.array([100]), np.array([110]), np.array([10]), np.array([250])]
    score = grow_box(X, y, np.ones(15), np.array([0]), np.array([0]), 5, 0, True, True, 0.5, 1, 1, *ext, lo, hi)
    assert score == 0.0
    assert 20 < lo[0] <= 100 and 110 <= hi[0] < 200
    assert lo[0] == (100 + 20) // 2 + 1 and hi[0] == (110 + 200 + 1) // 2 - 1  # half-way margins


def test_twin_helpers_match_the_kernel_helpers():
    """The twin restates the kernel's Gini and open-side bound; both agree to the bit on random input
    (the whole-box test above draws splits of 0, 0.5 and 1 only)."""
    from clipbranches_widgets.engine.growth import _gini_numpy, _open_bound, _open_bound_numpy

    rng = np.random.default_rng(5)
    for _ in range(2000):
        wp_tot, wn_tot = rng.random(2) * rng.choice([1.0, 10.0, 1e3], 2) + 1e-3
        wp_in, wn_in = wp_tot * rng.choice([0.0, rng.random(), 1.0]), wn_tot * rng.choice([0.0, rng.random(), 1.0])
        assert gini_split(wp_in, wn_in, wp_tot, wn_tot) == _gini_numpy(wp_in, wn_in, wp_tot, wn_tot)
        edge, pos_extreme = (int(v) for v in rng.integers(0, 256, 2))
        direction = int(rng.choice([-1, 1]))
        data_extreme = int(rng.integers(0, min(edge, pos_extreme) + 1) if direction < 0
                           else rng.integers(max(edge, pos_extreme), 256))
        stop_infinite, split = bool(rng.integers(2)), float(rng.choice([0.0, rng.random(), 1.0]))
        args = (direction, edge, pos_extreme, data_extreme, stop_infinite, split)
        assert _open_bound(*args) == _open_bound_numpy(*args), args
