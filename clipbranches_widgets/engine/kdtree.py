"""The box index's trees: segment-local implicit k-d trees over uint8 codes, their build and query kernels.

:class:`~.index.BoxIndex` (persistence, planning, scoring) drives these; its module doc gives the
design. In short: the catalog is cut into segments of ``segment_size`` (<= 65,536) rows, and for
every (feature subset, segment) there is a complete binary tree over a permutation of the
segment's rows:

* ``perm[s, base:base + m]`` holds the permutation as uint16 *local* offsets (row ``base + perm``).
* Node ranges are implied: node 0 covers positions ``[0, m)``, and a node over ``len`` positions
  gives its left child (heap number ``2 node + 1``) the first ``len // 2`` and its right child
  (``2 node + 2``) the rest (:func:`_node_ranges`). Leaves are the nodes of the last level.
* ``bounds`` holds every node's TIGHT min and max of its points per subset dim: for subset ``s``
  with ``k`` dims on segment ``g``, node ``node`` stores ``k`` minima then ``k`` maxima from
  ``_bounds_start(...) + node * 2 k`` (:func:`layout` gives each subset's start).

Query: per segment (in parallel), per estimator, per box, descend the box's subset tree
(:func:`_descend`): a node outside the box is pruned, a node inside emits its rows without reading
codes, a leaf partly inside tests its rows. A row gets one vote per estimator (a stamp per row
says which estimator last voted for it), and rows with ``min_votes`` votes are collected.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .boxes import MAX_BOX_DIMS
from .scan import row_in_box

# _pack_keys packs a subset's bytes into one uint64 key, 8 bits a dim: wider boxes need another key
assert MAX_BOX_DIMS <= 8

#: depth of the descent stack (a segment of 65,536 rows has at most 17 levels; each pops one node
#: and pushes two, so the stack never holds more than depth + 1 entries)
_STACK_DEPTH = 64

# how a node's bounds meet a box (:func:`_node_vs_box`)
_DISJOINT = 0
_INSIDE = 1
_PARTIAL = 2


class Layout(NamedTuple):
    """Sizes and offsets of the trees of one catalog (what :func:`layout` returns)."""

    n_segments: int
    n_nodes_max: int  #: nodes of a full segment's tree; every (subset, segment) gets this many slots
    bounds_offset: np.ndarray  #: (n_subsets,) int64: where subset ``s``'s bounds start in ``bounds``
    n_bounds: int  #: total bytes of ``bounds``


# ---------------------------------------------------------------------------------------------
# layout


@njit(cache=True, nogil=True)
def _tree_depth(m, leaf_size):
    """Smallest depth d with ``m <= leaf_size * 2**d`` (leaves then hold <= leaf_size rows)."""
    d = 0
    while m > (leaf_size << d):
        d += 1
    return d


@njit(cache=True, nogil=True)
def _n_segments(n, segment_size):
    """Segments of a catalog of ``n`` rows (the last one may be short)."""
    return (n + segment_size - 1) // segment_size


@njit(cache=True, nogil=True)
def _segment(g, n, segment_size):
    """(first row, number of rows) of segment ``g`` of a catalog of ``n`` rows."""
    base = g * segment_size
    return base, min(segment_size, n - base)


@njit(cache=True, nogil=True)
def _bounds_start(bounds_offset, s, g, n_nodes_max, k):
    """Where node 0 of subset ``s``'s tree on segment ``g`` keeps its bounds in ``bounds``.

    Each (subset, segment) owns ``n_nodes_max`` node slots of ``2 k`` bytes (k minima, k maxima),
    segments in order after ``bounds_offset[s]``; a short last segment leaves slots unused.
    """
    return bounds_offset[s] + g * n_nodes_max * 2 * k


@njit(cache=True, nogil=True)
def _node_ranges(m, depth):
    """Row range [lo, hi) of every heap-numbered node of the implicit tree over ``m`` rows."""
    n_nodes = (1 << (depth + 1)) - 1
    node_lo = np.zeros(n_nodes, np.int64)
    node_hi = np.zeros(n_nodes, np.int64)
    node_hi[0] = m
    for node in range((1 << depth) - 1):
        mid = node_lo[node] + (node_hi[node] - node_lo[node]) // 2
        node_lo[2 * node + 1] = node_lo[node]
        node_hi[2 * node + 1] = mid
        node_lo[2 * node + 2] = mid
        node_hi[2 * node + 2] = node_hi[node]
    return node_lo, node_hi


def layout(n_items: int, subset_sizes, leaf_size: int, segment_size: int) -> Layout:
    """The :class:`Layout` of the trees over ``n_items`` rows for subsets of ``subset_sizes`` dims."""
    n_seg = int(_n_segments(n_items, segment_size))
    depth = int(_tree_depth(min(segment_size, n_items), leaf_size))
    n_nodes_max = (1 << (depth + 1)) - 1
    sizes = np.array(list(subset_sizes), np.int64) * n_seg * n_nodes_max * 2
    offsets = np.zeros(sizes.shape[0], np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return Layout(n_seg, n_nodes_max, offsets, int(sizes.sum()))


# ---------------------------------------------------------------------------------------------
# build


@njit(cache=True, nogil=True)
def _pack_keys(codes, base, m, dims, k, keys, idx):
    """``keys[i]``: the ``k`` subset bytes of row ``base + i`` packed into a uint64 (dim j in byte j);
    ``idx[i] = i``, the identity permutation."""
    for i in range(m):
        key = np.uint64(0)
        for j in range(k):
            key |= np.uint64(codes[base + i, dims[j]]) << np.uint64(8 * j)
        keys[i] = key
        idx[i] = i


@njit(cache=True, nogil=True)
def _node_bounds(keys, lo, hi, k, bounds, off):
    """Write the tight min/max of ``keys[lo:hi]`` per dim at ``bounds[off:off + 2k]``; return the dim
    with the largest spread (the first such), the one an internal node is split on."""
    best_axis = 0
    best_spread = -1
    for j in range(k):
        sh = np.uint64(8 * j)
        mn = 255
        mx = 0
        for i in range(lo, hi):
            v = np.int64((keys[i] >> sh) & np.uint64(255))
            mn = min(mn, v)
            mx = max(mx, v)
        bounds[off + j] = mn
        bounds[off + k + j] = mx
        if mx - mn > best_spread:
            best_spread = mx - mn
            best_axis = j
    return best_axis


@njit(cache=True, nogil=True)
def _split_node(keys, idx, tkeys, tidx, lo, hi, axis, hist):
    """Stable counting sort of positions ``lo:hi`` by byte ``axis`` into ``tkeys`` / ``tidx``: O(len),
    and the left child's ``len // 2`` positions then hold the smallest values on that dim."""
    sh = np.uint64(8 * axis)
    hist[:] = 0
    for i in range(lo, hi):
        hist[np.int64((keys[i] >> sh) & np.uint64(255)) + 1] += 1
    hist[0] = lo
    for v in range(1, 257):
        hist[v] += hist[v - 1]
    for i in range(lo, hi):
        v = np.int64((keys[i] >> sh) & np.uint64(255))
        p = hist[v]
        hist[v] = p + 1
        tkeys[p] = keys[i]
        tidx[p] = idx[i]


@njit(cache=True, nogil=True)
def _build_one(keys, idx, tkeys, tidx, k, depth, node_lo, node_hi, bounds, off0):
    """Build one tree in place from packed ``keys`` (:func:`_pack_keys`).

    Level by level, every node records its bounds and every internal node is split on its widest
    dim into the other buffer; the buffers swap after each level. Returns the buffer holding the
    final row order (``idx`` or ``tidx``).
    """
    hist = np.empty(257, np.int64)
    n_internal = (1 << depth) - 1
    level_start = 0
    for level in range(depth + 1):
        level_end = 2 * level_start + 1
        for node in range(level_start, level_end):
            axis = _node_bounds(keys, node_lo[node], node_hi[node], k, bounds, off0 + node * 2 * k)
            if node < n_internal:
                _split_node(keys, idx, tkeys, tidx, node_lo[node], node_hi[node], axis, hist)
        if level < depth:
            keys, tkeys = tkeys, keys
            idx, tidx = tidx, idx
        level_start = level_end
    return idx


@njit(parallel=True, cache=True, nogil=True)
def _build_all(codes, sub_dims, sub_k, segment_size, leaf_size, n_nodes_max, bounds_offset, perm, bounds):
    """Build every (subset, segment) tree; prange over segments (each thread works in cache)."""
    n = codes.shape[0]
    n_seg = _n_segments(n, segment_size)
    for g in prange(n_seg):
        base, m = _segment(g, n, segment_size)
        depth = _tree_depth(m, leaf_size)
        node_lo, node_hi = _node_ranges(m, depth)
        keys = np.empty(m, np.uint64)
        tkeys = np.empty(m, np.uint64)
        idx = np.empty(m, np.uint16)
        tidx = np.empty(m, np.uint16)
        for s in range(sub_dims.shape[0]):
            k = sub_k[s]
            _pack_keys(codes, base, m, sub_dims[s], k, keys, idx)
            off0 = _bounds_start(bounds_offset, s, g, n_nodes_max, k)
            perm[s, base:base + m] = _build_one(keys, idx, tkeys, tidx, k, depth, node_lo, node_hi, bounds, off0)


def build_trees(codes: np.ndarray, sub_dims: np.ndarray, sub_k: np.ndarray, leaf_size: int, segment_size: int,
                tree_layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """``(perm, bounds)`` of every (subset, segment) tree of ``codes`` (subsets as ``pad_subsets`` gives)."""
    perm = np.empty((sub_dims.shape[0], codes.shape[0]), np.uint16)
    bounds = np.zeros(tree_layout.n_bounds, np.uint8)
    _build_all(codes, sub_dims, sub_k, int(segment_size), int(leaf_size), tree_layout.n_nodes_max,
               tree_layout.bounds_offset, perm, bounds)
    return perm, bounds


# ---------------------------------------------------------------------------------------------
# query


@njit(cache=True, nogil=True)
def _node_vs_box(bounds, off, k, qlo, qhi, b):
    """How the node whose bounds start at ``bounds[off]`` meets box ``b`` (``qlo[b]`` / ``qhi[b]``,
    in the subset's dim order): ``_DISJOINT`` (no point can be inside: prune), ``_INSIDE`` (every
    point is: emit the node whole) or ``_PARTIAL``."""
    inside = True
    for j in range(k):
        bmin = bounds[off + j]
        bmax = bounds[off + k + j]
        if bmax < qlo[b, j] or bmin > qhi[b, j]:
            return _DISJOINT
        if bmin < qlo[b, j] or bmax > qhi[b, j]:
            inside = False
    return _INSIDE if inside else _PARTIAL


@njit(cache=True, nogil=True)
def _mark(r, stamp_value, stamp, votes, touched, n_touched):
    """Count one estimator's vote for local row ``r`` once; return the new touched-list length.

    ``stamp[r]`` remembers the estimator (``stamp_value``, 1-based) that last voted for ``r``, so
    overlapping boxes of one estimator vote once; ``touched`` lists the rows with votes, so the
    segment's scratch is collected and reset without sweeping it whole.
    """
    if stamp[r] != stamp_value:
        stamp[r] = stamp_value
        if votes[r] == 0:
            touched[n_touched] = r
            n_touched += 1
        votes[r] += 1
    return n_touched


@njit(cache=True, nogil=True)
def _emit_rows(perm_s, base, lo, hi, m, stamp_value, stamp, votes, touched, n_touched):
    """Vote for the rows at positions ``lo:hi`` of a node inside the box, without reading codes."""
    for i in range(lo, hi):
        r = np.int64(perm_s[base + i])
        if r < m:  # always true for a valid index; guards a damaged file
            n_touched = _mark(r, stamp_value, stamp, votes, touched, n_touched)
    return n_touched


@njit(cache=True, nogil=True)
def _test_rows(codes, perm_s, base, lo, hi, m, sub_dims, s, k, qlo, qhi, b, stamp_value, stamp, votes, touched,
               n_touched):
    """Vote for the rows at positions ``lo:hi`` of a leaf partly inside box ``b`` that are inside it."""
    for i in range(lo, hi):
        r = np.int64(perm_s[base + i])
        if r < m and row_in_box(codes, base + r, sub_dims, s, k, qlo, qhi, b):  # r < m: as in _emit_rows
            n_touched = _mark(r, stamp_value, stamp, votes, touched, n_touched)
    return n_touched


@njit(cache=True, nogil=True)
def _descend(codes, perm_s, bounds, off0, base, m, n_internal, sub_dims, s, k, qlo, qhi, b, stamp_value, stamp,
             votes, touched, n_touched, stack, counters):
    """Answer box ``b`` on one segment's tree of subset ``s`` (dims ``sub_dims[s, :k]``, permutation
    ``perm_s``, node 0's bounds at ``off0``).

    Depth first from the root, left child first. Adds to ``counters``: nodes visited, leaves
    scanned, rows checked (read from the codes), rows emitted wholesale. Returns the touched-list
    length.
    """
    stack[0, 0] = 0  # (node, lo, hi)
    stack[0, 1] = 0
    stack[0, 2] = m
    top = 1
    while top > 0:
        top -= 1
        node = stack[top, 0]
        lo = stack[top, 1]
        hi = stack[top, 2]
        if lo == hi:
            continue
        counters[0] += 1
        overlap = _node_vs_box(bounds, off0 + node * 2 * k, k, qlo, qhi, b)
        if overlap == _DISJOINT:
            continue
        if overlap == _INSIDE:
            counters[3] += hi - lo
            n_touched = _emit_rows(perm_s, base, lo, hi, m, stamp_value, stamp, votes, touched, n_touched)
        elif node >= n_internal:
            counters[1] += 1
            counters[2] += hi - lo
            n_touched = _test_rows(codes, perm_s, base, lo, hi, m, sub_dims, s, k, qlo, qhi, b, stamp_value, stamp,
                                   votes, touched, n_touched)
        else:
            mid = lo + (hi - lo) // 2
            stack[top, 0] = 2 * node + 2
            stack[top, 1] = mid
            stack[top, 2] = hi
            stack[top + 1, 0] = 2 * node + 1
            stack[top + 1, 1] = lo
            stack[top + 1, 2] = mid
            top += 2
    return n_touched


@njit(cache=True, nogil=True)
def _collect(touched, n_touched, votes, stamp, min_votes, base, out_ids, out_votes):
    """Write the touched rows with at least ``min_votes`` votes to ``out_*[base:]`` (in touch order),
    reset their scratch for the next segment, and return how many were written."""
    count = 0
    for t in range(n_touched):
        r = touched[t]
        if votes[r] >= min_votes:
            out_ids[base + count] = base + r
            out_votes[base + count] = votes[r]
            count += 1
        votes[r] = 0
        stamp[r] = 0
    return count


@njit(cache=True, nogil=True)
def _query_segment(codes, perm, bounds, bounds_offset, sub_dims, sub_k, leaf_size, n_nodes_max, g, base, m,
                   box_sub, qlo, qhi, est_start, min_votes, stamp, votes, touched, stack, out_ids, out_votes,
                   counters):
    """Every box on segment ``g`` (rows ``base:base + m``), estimator by estimator; returns the
    number of positives written to ``out_*[base:]``."""
    n_internal = (1 << _tree_depth(m, leaf_size)) - 1
    n_touched = 0
    for e in range(est_start.shape[0] - 1):
        for b in range(est_start[e], est_start[e + 1]):
            s = box_sub[b]
            k = sub_k[s]
            off0 = _bounds_start(bounds_offset, s, g, n_nodes_max, k)
            n_touched = _descend(codes, perm[s], bounds, off0, base, m, n_internal, sub_dims, s, k, qlo, qhi, b,
                                 e + 1, stamp, votes, touched, n_touched, stack, counters)
    return _collect(touched, n_touched, votes, stamp, min_votes, base, out_ids, out_votes)


@njit(parallel=True, cache=True, nogil=True)
def _query_all(codes, perm, bounds, bounds_offset, sub_dims, sub_k, segment_size, leaf_size, n_nodes_max,
               box_sub, qlo, qhi, est_start, min_votes, n_blocks, seg_step, out_ids, out_votes, seg_count, counters):
    """Answer all boxes on every segment; positives of segment g go to ``out_*[base_g:base_g+count]``.

    Blocks of segments run in parallel, each with its own scratch (a block's segments take turns
    with the other blocks', ``g = blk, blk + n_blocks, ...``, which balances dense and sparse parts
    of the catalog). ``counters[g]``: nodes visited, leaves scanned, rows checked, rows emitted.
    """
    n = codes.shape[0]
    n_seg = _n_segments(n, segment_size)
    for blk in prange(n_blocks):
        stamp = np.zeros(segment_size, np.int32)
        votes = np.zeros(segment_size, np.uint16)
        touched = np.empty(segment_size, np.int32)
        stack = np.empty((_STACK_DEPTH, 3), np.int64)
        for g in range(blk * seg_step, n_seg, n_blocks * seg_step):
            base, m = _segment(g, n, segment_size)
            seg_count[g] = _query_segment(codes, perm, bounds, bounds_offset, sub_dims, sub_k, leaf_size,
                                          n_nodes_max, g, base, m, box_sub, qlo, qhi, est_start, min_votes, stamp,
                                          votes, touched, stack, out_ids, out_votes, counters[g])


def query_trees(codes: np.ndarray, perm: np.ndarray, bounds: np.ndarray, tree_layout: Layout, sub_dims: np.ndarray,
                sub_k: np.ndarray, leaf_size: int, segment_size: int, box_sub: np.ndarray, qlo: np.ndarray,
                qhi: np.ndarray, est_start: np.ndarray, min_votes: int, out_ids: np.ndarray, out_votes: np.ndarray,
                seg_step: int = 1):
    """``(ids, votes, counters)`` of the rows with at least ``min_votes`` votes, by tree descent.

    Box ``b`` is answered by subset ``box_sub[b]``'s trees with bounds ``qlo[b]`` / ``qhi[b]`` in that
    subset's dim order (unconstrained dims [0, 255]); ``est_start`` groups the boxes by estimator
    (:func:`~.boxes.estimator_starts`). ids ascend by segment, in no particular order within one;
    ``counters`` sums nodes visited, leaves scanned, rows checked and rows emitted wholesale.
    ``out_ids`` (int64) / ``out_votes`` (uint16), one entry a row: scratch where segment ``g`` writes
    its positives at its own rows (no race); the answer is copied out of it. ``seg_step``: answer
    only every ``seg_step``-th segment (the planner's probe).
    """
    n = codes.shape[0]
    n_seg = tree_layout.n_segments
    n_blocks = max(1, min(-(-n_seg // seg_step), 4 * numba.get_num_threads()))
    seg_count = np.zeros(n_seg, np.int64)
    counters = np.zeros((n_seg, 4), np.int64)
    _query_all(codes, perm, bounds, tree_layout.bounds_offset, sub_dims, sub_k, segment_size, leaf_size,
               tree_layout.n_nodes_max, box_sub, qlo, qhi, est_start, min_votes, n_blocks, seg_step, out_ids,
               out_votes, seg_count, counters)
    starts = np.arange(n_seg) * segment_size
    take = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, seg_count)]) if n_seg else np.zeros(0)
    take = take.astype(np.int64)
    return out_ids[take], out_votes[take], counters.sum(axis=0)
