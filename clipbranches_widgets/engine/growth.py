"""Growing one box around a seed positive: the inner step of decision-branch training.

This is the VLDB'23 procedure restated for uint8 codes, where every bound is an integer and a box
is closed: ``lo <= x <= hi``.

1. Start with the box that holds just the seed (and its exact duplicates on the subset).
2. Sweep the subset's dims in a given (shuffled) order. For each dim, look at the *slab*: rows inside
   the box on every other dim but outside on this one. First below the box, then above it, add the
   slab's distinct values nearest first (at most ``min_pts`` of them) and keep the prefix with the
   strictly lowest weighted Gini impurity of the in/out split. With ``early_stopping`` a side that
   holds no positive is not expanded.
3. Where the new bound goes: half-way between the last included value and the next excluded one (so
   unseen items close to the box are kept); when nothing lies beyond, the side is *open*: with
   ``stop_infinite`` the bound goes ``split`` of the way from the farthest positive (or the box edge,
   whichever is farther out) to the training data's extreme, otherwise to the domain edge (0 / 255).
4. Repeat sweeps up to ``n_sweeps`` times while a bound changed (the original does one sweep).
5. Score = weighted Gini of the final box; ``inf`` when it holds fewer than ``min_in`` rows.

Bounds use the included *data* extreme (not the previous bound) so repeated sweeps do not creep.

Two implementations with the same contract: :func:`grow_box` (Numba, used for training) and
:func:`grow_box_numpy` (plain numpy, written independently; tests compare them on random input).
Weights are real sample weights (class weights already multiplied in), never row duplication.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

INF = np.inf


@njit(cache=True, nogil=True)
def gini_split(wp_in, wn_in, wp_tot, wn_tot):
    """Weighted Gini impurity of an in/out split (lower is better); an empty side counts 0."""
    total = wp_tot + wn_tot
    w_in = wp_in + wn_in
    impurity = 0.0
    if w_in > 0.0:
        impurity += 2.0 * wp_in * wn_in / w_in
    wp_out = max(wp_tot - wp_in, 0.0)
    wn_out = max(wn_tot - wn_in, 0.0)
    w_out = wp_out + wn_out
    if w_out > 0.0:
        impurity += 2.0 * wp_out * wn_out / w_out
    return impurity / total


@njit(cache=True, nogil=True)
def _lower_cut(included, excluded):
    """Smallest value kept when ``included`` is in and ``excluded`` (< included) is out: the midpoint, exclusive."""
    return (included + excluded) // 2 + 1


@njit(cache=True, nogil=True)
def _upper_cut(included, excluded):
    """Largest value kept when ``included`` is in and ``excluded`` (> included) is out: the midpoint, exclusive."""
    return (included + excluded + 1) // 2 - 1


@njit(cache=True, nogil=True)
def _open_bound(direction, edge, pos_extreme, data_extreme, stop_infinite, split):
    """Bound for a side with nothing beyond it (see module doc, step 3)."""
    if direction < 0:
        if not stop_infinite:
            return 0
        anchor = min(edge, pos_extreme)
        return int(np.ceil(anchor - split * (anchor - data_extreme)))
    if not stop_infinite:
        return 255
    anchor = max(edge, pos_extreme)
    return int(np.floor(anchor + split * (data_extreme - anchor)))


@njit(cache=True, nogil=True)
def _expand_side(hist_pos, hist_neg, direction, bound, data_edge, wp_in, wn_in, wp_tot, wn_tot,
                 min_pts, early_stopping, stop_infinite, split, pos_extreme, data_extreme):
    """Move one side of one dim. Returns (new bound, new in-box positive and negative weight).

    ``hist_pos/hist_neg`` hold the slab's weights per value; candidates are the values beyond
    ``bound`` (below it when ``direction`` is -1), visited nearest first. ``data_edge`` is the
    extreme value of the rows currently inside the box on this dim.
    """
    step = direction
    start = bound + step
    stop = -1 if direction < 0 else 256
    nearest = -1
    has_pos = False
    v = start
    while v != stop:
        if hist_pos[v] + hist_neg[v] > 0.0:
            if nearest < 0:
                nearest = v
            if hist_pos[v] > 0.0:
                has_pos = True
        v += step
    if nearest < 0:  # nothing beyond: open side
        return _open_bound(direction, data_edge, pos_extreme, data_extreme, stop_infinite, split), wp_in, wn_in
    if early_stopping and not has_pos:
        cut = _lower_cut(data_edge, nearest) if direction < 0 else _upper_cut(data_edge, nearest)
        return cut, wp_in, wn_in

    best = gini_split(wp_in, wn_in, wp_tot, wn_tot)
    best_v = -1
    best_p = wp_in
    best_n = wn_in
    cum_p = wp_in
    cum_n = wn_in
    taken = 0
    v = start
    while v != stop:
        if hist_pos[v] + hist_neg[v] > 0.0:
            if min_pts > 0 and taken >= min_pts:
                break
            cum_p += hist_pos[v]
            cum_n += hist_neg[v]
            taken += 1
            score = gini_split(cum_p, cum_n, wp_tot, wn_tot)
            if score < best:
                best = score
                best_v = v
                best_p = cum_p
                best_n = cum_n
        v += step
    if best_v < 0:  # no prefix improves: stay, with a margin towards the nearest excluded value
        cut = _lower_cut(data_edge, nearest) if direction < 0 else _upper_cut(data_edge, nearest)
        return cut, wp_in, wn_in
    v = best_v + step  # the next distinct value beyond the best prefix, anywhere
    while v != stop:
        if hist_pos[v] + hist_neg[v] > 0.0:
            break
        v += step
    if v == stop:
        return _open_bound(direction, best_v, pos_extreme, data_extreme, stop_infinite, split), best_p, best_n
    cut = _lower_cut(best_v, v) if direction < 0 else _upper_cut(best_v, v)
    return cut, best_p, best_n


@njit(cache=True, nogil=True)
def grow_box(X, y, w, dims, order, seed, min_pts, early_stopping, stop_infinite, split, n_sweeps, min_in,
             pos_min, pos_max, data_min, data_max, lo, hi):
    """Grow a box on feature subset ``dims`` around row ``seed``; fill ``lo``/``hi``; return its score.

    X (n, F) uint8 working rows; y (n,) int8 0/1; w (n,) float64 weights; dims (d,) feature ids;
    order (d,) processing order of the local dims 0..d-1; pos_min/pos_max/data_min/data_max (F,):
    extremes of the working positives and of all training rows per feature. ``lo``/``hi`` (d,)
    int64 are outputs, aligned with ``dims``.
    """
    n = X.shape[0]
    d = dims.shape[0]
    for j in range(d):
        lo[j] = X[seed, dims[j]]
        hi[j] = lo[j]
    outside = np.zeros(n, np.int32)  # how many dims of the subset each row is outside on
    wp_tot = 0.0
    wn_tot = 0.0
    wp_in = 0.0
    wn_in = 0.0
    for i in range(n):
        for j in range(d):
            v = X[i, dims[j]]
            if v < lo[j] or v > hi[j]:
                outside[i] += 1
        if y[i] == 1:
            wp_tot += w[i]
            if outside[i] == 0:
                wp_in += w[i]
        else:
            wn_tot += w[i]
            if outside[i] == 0:
                wn_in += w[i]

    hist_pos = np.empty(256, np.float64)
    hist_neg = np.empty(256, np.float64)
    for _sweep in range(n_sweeps):
        changed = False
        for k in range(d):
            j = order[k]
            f = dims[j]
            hist_pos[:] = 0.0
            hist_neg[:] = 0.0
            in_min = 255
            in_max = 0
            for i in range(n):
                v = X[i, f]
                if outside[i] == 0:
                    in_min = min(in_min, v)
                    in_max = max(in_max, v)
                elif outside[i] == 1 and (v < lo[j] or v > hi[j]):
                    if y[i] == 1:
                        hist_pos[v] += w[i]
                    else:
                        hist_neg[v] += w[i]
            new_lo, wp_in, wn_in = _expand_side(hist_pos, hist_neg, -1, lo[j], in_min, wp_in, wn_in, wp_tot, wn_tot,
                                                min_pts, early_stopping, stop_infinite, split, pos_min[f], data_min[f])
            new_hi, wp_in, wn_in = _expand_side(hist_pos, hist_neg, 1, hi[j], in_max, wp_in, wn_in, wp_tot, wn_tot,
                                                min_pts, early_stopping, stop_infinite, split, pos_max[f], data_max[f])
            if new_lo != lo[j] or new_hi != hi[j]:
                changed = True
                for i in range(n):
                    v = X[i, f]
                    was_out = v < lo[j] or v > hi[j]
                    now_out = v < new_lo or v > new_hi
                    if was_out != now_out:
                        outside[i] += 1 if now_out else -1
                lo[j] = new_lo
                hi[j] = new_hi
        if not changed:
            break

    n_in = 0
    for i in range(n):
        if outside[i] == 0:
            n_in += 1
    if n_in < min_in:
        return INF
    return gini_split(wp_in, wn_in, wp_tot, wn_tot)


def _best_box_impl(X, y, w, sub_dims, sub_sizes, orders, seed, min_pts, early_stopping, stop_infinite, split,
                   n_sweeps, min_in, pos_min, pos_max, data_min, data_max, out_lo, out_hi, out_score):
    """Grow one box per candidate subset (row s of ``sub_dims``, ``sub_sizes[s]`` dims used)."""
    for s in prange(sub_dims.shape[0]):
        k = sub_sizes[s]
        lo = np.empty(k, np.int64)
        hi = np.empty(k, np.int64)
        out_score[s] = grow_box(X, y, w, sub_dims[s, :k], orders[s, :k], seed, min_pts, early_stopping,
                                stop_infinite, split, n_sweeps, min_in, pos_min, pos_max, data_min, data_max, lo, hi)
        out_lo[s, :k] = lo
        out_hi[s, :k] = hi


#: Candidate boxes grown in parallel over subsets (one model trained alone) ...
grow_candidates_parallel = njit(parallel=True, cache=True, nogil=True)(_best_box_impl)
#: ... or serially (one model of an ensemble, whose estimators already run in parallel threads).
grow_candidates_serial = njit(cache=True, nogil=True)(_best_box_impl)


# ---------------------------------------------------------------------------------------------
# Plain-numpy twin: the same contract, written with masks and sorted unique values instead of
# histograms and violation counters, and without any of the kernel's helpers (its Gini, cuts and
# open bounds are restated here from the module doc), so the test compares two implementations.
# Slow; used only by tests.
# ---------------------------------------------------------------------------------------------

def _gini_numpy(wp_in, wn_in, wp_tot, wn_tot):
    """Weighted Gini of the split: per side (in, out) ``2 p n / (p + n)``, an empty side 0, summed and
    divided by the total weight. The out side's weights are clamped at 0 (float rounding)."""
    p = np.array([wp_in, max(wp_tot - wp_in, 0.0)])
    n = np.array([wn_in, max(wn_tot - wn_in, 0.0)])
    w = p + n
    side = np.divide(2.0 * p * n, w, out=np.zeros(2), where=w > 0.0)
    return float(side[0] + side[1]) / (wp_tot + wn_tot)


def _open_bound_numpy(direction, edge, pos_extreme, data_extreme, stop_infinite, split):
    """Module doc, step 3: an open side ends at the domain edge, or with ``stop_infinite`` ``split``
    of the way from the farther out of ``edge`` and the farthest positive to the data's extreme,
    rounded outwards to a whole code."""
    if not stop_infinite:
        return 0 if direction < 0 else 255
    anchor = min(edge, pos_extreme) if direction < 0 else max(edge, pos_extreme)
    target = anchor - split * (anchor - data_extreme)
    return int(np.ceil(target)) if direction < 0 else int(np.floor(target))


def grow_box_numpy(X, y, w, dims, order, seed, min_pts, early_stopping, stop_infinite, split, n_sweeps, min_in,
                   pos_min, pos_max, data_min, data_max):
    """Reference version of :func:`grow_box`; returns (lo, hi, score)."""
    cols = X[:, list(dims)].astype(np.int64)
    pos = y == 1
    wp_tot, wn_tot = float(w[pos].sum()), float(w[~pos].sum())
    lo = cols[seed].copy()
    hi = cols[seed].copy()

    def inside_except(skip):
        keep = np.ones(len(cols), bool)
        for j in range(len(dims)):
            if j != skip:
                keep &= (cols[:, j] >= lo[j]) & (cols[:, j] <= hi[j])
        return keep

    for _ in range(n_sweeps):
        changed = False
        for j in order:
            f = dims[j]
            slab = inside_except(j)
            inside = slab & (cols[:, j] >= lo[j]) & (cols[:, j] <= hi[j])
            wp_in, wn_in = float(w[inside & pos].sum()), float(w[inside & ~pos].sum())
            new = {}
            for direction in (-1, 1):
                bound = lo[j] if direction < 0 else hi[j]
                beyond = slab & ((cols[:, j] < bound) if direction < 0 else (cols[:, j] > bound))
                edge = cols[inside, j].min() if direction < 0 else cols[inside, j].max()
                values = np.unique(cols[beyond, j])
                if direction < 0:
                    values = values[::-1]
                pos_extreme = pos_min[f] if direction < 0 else pos_max[f]
                data_extreme = data_min[f] if direction < 0 else data_max[f]
                cut = (lambda a, b: (a + b) // 2 + 1) if direction < 0 else (lambda a, b: (a + b + 1) // 2 - 1)
                if len(values) == 0:
                    new[direction] = _open_bound_numpy(direction, edge, pos_extreme, data_extreme, stop_infinite, split)
                    continue
                if early_stopping and not (beyond & pos).any():
                    new[direction] = cut(edge, values[0])
                    continue
                window = values if min_pts <= 0 else values[:min_pts]
                best, best_i = _gini_numpy(wp_in, wn_in, wp_tot, wn_tot), -1
                for i, v in enumerate(window):
                    taken = beyond & ((cols[:, j] >= v) if direction < 0 else (cols[:, j] <= v))
                    s = _gini_numpy(wp_in + float(w[taken & pos].sum()), wn_in + float(w[taken & ~pos].sum()), wp_tot, wn_tot)
                    if s < best:
                        best, best_i = s, i
                if best_i < 0:
                    new[direction] = cut(edge, values[0])
                    continue
                taken = beyond & ((cols[:, j] >= values[best_i]) if direction < 0 else (cols[:, j] <= values[best_i]))
                wp_in += float(w[taken & pos].sum())
                wn_in += float(w[taken & ~pos].sum())
                if best_i + 1 < len(values):
                    new[direction] = cut(values[best_i], values[best_i + 1])
                else:
                    new[direction] = _open_bound_numpy(direction, values[best_i], pos_extreme, data_extreme, stop_infinite,
                                                       split)
            if new[-1] != lo[j] or new[1] != hi[j]:
                changed = True
                lo[j], hi[j] = new[-1], new[1]
        if not changed:
            break
    inside = inside_except(-1)
    if inside.sum() < min_in:
        return lo, hi, np.inf
    return lo, hi, _gini_numpy(float(w[inside & pos].sum()), float(w[inside & ~pos].sum()), wp_tot, wn_tot)
