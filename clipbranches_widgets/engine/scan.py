"""Fused parallel scan: apply a whole BoxSet to a uint8 catalog in one pass, scored and ranked.

:func:`scan_box_set` returns exactly what :func:`~.boxes.apply_boxes_numpy` returns (same ids,
bit-identical scores, same order). Measured at 10M rows on 2 cores (benchmarks/results/scan.md,
engine.md), scores and ranking included: trained single models 2.5-3.6x one (vectorised)
streaming pass over the codes, trained 25-estimator ensembles 4.5-6.7x; the previous scan took
4-10x and 10-15x in the same runs.

Pass 1 (:func:`scan_hits`, parallel over blocks of rows) walks each block in chunks of 16 strips
of 64 rows. A strip is transposed into 32 vectors of 64 bytes, one a dim
(:func:`~.simd.transpose_strip`), so a box dim is one vector compare whose 64 result bits are the
strip's mask for that dim; a box ANDs its dims' masks in mask registers, for two strips at once
(:func:`~.simd.box_pair`), and a single model ORs its boxes. An ensemble adds each estimator's OR
into bit-sliced vote counters (bit ``s`` of every row's count in ``slices[s]``: a ripple-carry add
of a 64-row mask is a few ANDs and XORs) and compares them with ``min_votes`` the same way. Only
the hits of a strip are then visited (a loop over set bits): each gets its *ranking key*, and the
block counts its keys in a histogram (:class:`StripHits`).

Ranking (:func:`rank_hits`) is a counting sort on those keys, O(hits + keys), instead of a lexsort
of float scores (which cost 4-6 streaming passes for 500k hits). A key is the rank of a hit's score
among the scores the model can give, so equal scores have equal keys and the sort by key
descending, stable over ascending ids, is exactly the documented order (score descending, ties by
id ascending); the scores are then looked up from the key (:func:`ranking`):

* ensembles: the key is the vote count, the score ``votes / n_estimators``;
* single models: a box's depth is the smallest of its dims' ``min(margin / half, 1)``, each of
  which depends only on the box dim and the code value, so a table per box dim maps every code
  value to the key of that float64 (0 outside the box), computed with ``box_depth_numpy``'s
  operations: the key of a hit is the max over the boxes that hold it of the min over their dims
  of table lookups, and the score looked up from it is bit-identical to the reference.

The BoxIndex (:mod:`.index`) answers the boxes by tree descent and ranks its hits with the same
keys and counting sort (:func:`hit_keys`, :func:`hits_from_arrays`), so scan and index agree exactly.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

from ._validation import check_codes
from .boxes import MAX_BOX_DIMS, MAX_ESTIMATORS, BoxSet, estimator_starts
from .result import SearchResult
from .simd import STRIP, STRIP_DIMS, box_pair, prefetch_strip, transpose_strip

_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
#: strips a chunk: the unit of pass 1's loops (32 KB of transposed 32-d codes, in L1/L2)
_STRIPS = 16
#: rows a chunk
CHUNK = _STRIPS * STRIP


class Ranking(NamedTuple):
    """How a model's hits are keyed and scored (:func:`ranking`).

    ``values[key]``: the float64 score of key ``key`` (ascending in the key). ``by_votes``: the key
    is the vote count (ensembles). Single models: ``keytab[b, j, x]`` is the key of box ``b``'s dim
    ``j`` depth term at code value ``x`` (0 outside the box's range), ``key_one`` the key of 1.0.
    """

    values: np.ndarray
    by_votes: bool
    keytab: np.ndarray
    key_one: int


class Hits(NamedTuple):
    """Positive rows as arrays, by blocks: block ``i`` holds ``counts[i]`` hits from ``starts[i]`` of
    ``ids`` (ascending) and ``keys`` (ranking keys), and ``hist[i, key]`` counts its keys. The
    index's answer and the hits left by post trees (:func:`hits_from_arrays`)."""

    ids: np.ndarray
    keys: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    hist: np.ndarray

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, keys) of every hit, blocks concatenated."""
        parts = [slice(int(s), int(s + c)) for s, c in zip(self.starts, self.counts)]
        return (np.concatenate([self.ids[p] for p in parts]) if parts else self.ids[:0],
                np.concatenate([self.keys[p] for p in parts]) if parts else self.keys[:0])


class StripHits(NamedTuple):
    """The scan's positive rows, by 64-row strips: bit ``r`` of ``masks[g]`` is set when row
    ``64 g + r`` is a hit, and then ``keys[64 g + r]`` is its ranking key (other entries are
    stale). Block ``i`` is strips ``i * strips_per_block ..``; ``hist[i, key]`` counts its keys.

    Ids are implicit, so pass 1 writes 1/8 byte a row plus 2 bytes a hit, not 10 bytes a hit."""

    masks: np.ndarray
    keys: np.ndarray
    strips_per_block: int
    hist: np.ndarray

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, keys) of every hit."""
        ids = np.empty(self.count, np.int64)
        keys = np.empty(self.count, np.uint16)
        _strip_arrays(self.masks, self.keys, ids, keys)
        return ids, keys


# ---------------------------------------------------------------------------------------------
# ranking keys


def ranking(box_set: BoxSet) -> Ranking:
    """The keys and scores of ``box_set``'s hits (module doc). Single models: every box dim's
    ``min(margin / half, 1)`` at every code value, with ``box_depth_numpy``'s float64 operations,
    numbered by ``np.unique``; at most ~20k distinct values (fractions ``2 m / (w + 2)`` with
    ``w <= 255``), so keys fit uint16."""
    if box_set.scores_are_votes:
        return Ranking(np.arange(box_set.n_estimators + 1) / box_set.n_estimators, True,
                       np.zeros((0, MAX_BOX_DIMS, 256), np.uint16), 0)
    x = np.arange(256, dtype=np.float64)
    lo = box_set.low.astype(np.int64)[:, :, None]
    hi = box_set.high.astype(np.int64)[:, :, None]
    half = (hi - lo) / 2.0 + 1.0
    margin = np.full((box_set.n_boxes, MAX_BOX_DIMS, 256), np.inf)
    margin = np.where(lo > 0, np.minimum(margin, x - lo + 1.0), margin)
    margin = np.where(hi < 255, np.minimum(margin, hi - x + 1.0), margin)
    term = np.minimum(margin / half, 1.0)
    inside = (x >= lo) & (x <= hi) & (np.arange(MAX_BOX_DIMS)[None, :, None] < box_set.ndims[:, None, None])
    # 1.0 always has a key: a box on no dims has depth 1 everywhere
    values, inverse = np.unique(np.concatenate([term[inside], [1.0]]), return_inverse=True)
    keytab = np.zeros(term.shape, np.uint16)
    keytab[inside] = inverse[:-1] + 1
    return Ranking(np.concatenate([[0.0], values]), False, keytab, int(inverse[-1]) + 1)


@njit(cache=True, nogil=True)
def _depth_key(x, base, dim_step, r, dims, ndims, keytab, key_one, in_box, q, bit):
    """Key of the depth of a row whose dim ``d`` value is ``x[base + d * dim_step + r]`` (a strip of
    the scan's buffer: ``dim_step`` 64 and ``r`` the row; the flat codes: ``dim_step`` 1 and ``r``
    the row's first byte): the max over boxes of the min over the box's dims of ``keytab`` (0
    outside a box). Only boxes ``b`` with ``in_box[q, b] & bit`` are looked at (the scan knows
    which boxes hold the row); a box stops once it cannot beat the best so far."""
    key = 0
    for b in range(ndims.shape[0]):
        if in_box[q, b] & bit == 0:
            continue
        kb = key_one
        for j in range(ndims[b]):
            kb = min(kb, np.int64(keytab[b, j, x[base + dims[b, j] * dim_step + r]]))
            if kb <= key:
                break
        key = max(key, kb)
    return key


@njit(parallel=True, cache=True, nogil=True)
def _depth_keys(flat, width, ids, dims, ndims, keytab, key_one):
    out = np.empty(ids.shape[0], np.uint16)
    every = np.full((1, ndims.shape[0]), _ALL)
    for i in prange(ids.shape[0]):
        out[i] = _depth_key(flat, 0, 1, ids[i] * width, dims, ndims, keytab, key_one, every, 0, np.uint64(1))
    return out


def hit_keys(codes: np.ndarray, ids: np.ndarray, votes: np.ndarray, box_set: BoxSet, rk: Ranking) -> np.ndarray:
    """uint16 ranking keys of the positive rows ``ids`` with their estimator ``votes`` (the index's hits)."""
    if rk.by_votes:
        return votes.astype(np.uint16)
    return _depth_keys(codes.reshape(-1), codes.shape[1], ids, box_set.dims, box_set.ndims, rk.keytab, rk.key_one)


# ---------------------------------------------------------------------------------------------
# pass 1


@njit(cache=True, nogil=True)
def _load_chunk(codes, c0, stop, used, buf, stride, valid):
    """Rows ``c0 .. min(c0 + CHUNK, stop)`` into strips: strip ``s`` (rows ``c0 + 64 s ..``) at
    ``buf[s * stride + dim * 64 + row]``, all 32 dims of a full strip of 32-d codes by the shuffle
    network, otherwise the used dims one byte at a time. ``valid[s]``: the strip's rows (bits).
    Returns the number of strips."""
    n_strips = 0
    for s0 in range(c0, min(c0 + CHUNK, stop), STRIP):
        m = min(STRIP, stop - s0)
        off = n_strips * stride
        if m == STRIP and codes.shape[1] == STRIP_DIMS:
            if s0 + CHUNK + STRIP <= codes.shape[0]:  # the strip one chunk on: measured 2x faster at 10M rows
                prefetch_strip(codes, s0 + CHUNK)
            transpose_strip(codes, s0, buf, off)
        else:
            for c in range(used.shape[0]):
                d = used[c]
                for r in range(m):
                    buf[off + d * STRIP + r] = codes[s0 + r, d]
        valid[n_strips] = _ALL if m == STRIP else (np.uint64(1) << np.uint64(m)) - np.uint64(1)
        n_strips += 1
    return n_strips


@njit(cache=True, nogil=True)
def _add_votes(slices, mask):
    """Add one vote to the rows of ``mask``: a ripple-carry add on the bit slices (branch-free)."""
    carry = mask
    for s in range(slices.shape[0]):
        t = slices[s] & carry
        slices[s] ^= carry
        carry = t


@njit(cache=True, nogil=True)
def _at_least(slices, min_votes, valid):
    """Mask of the rows with at least ``min_votes`` votes: compare the slices with the constant from
    the top bit down (``gt``: already greater, ``eq``: equal so far)."""
    gt = np.uint64(0)
    eq = valid
    for s in range(slices.shape[0] - 1, -1, -1):
        if (min_votes >> s) & 1:
            eq &= slices[s]
        else:
            gt |= eq & slices[s]
            eq &= ~slices[s]
    return gt | eq


@njit(cache=True, nogil=True)
def _votes_of(slices, r):
    v = 0
    for s in range(slices.shape[0]):
        v |= np.int64((slices[s] >> np.uint64(r)) & np.uint64(1)) << s
    return v


@njit(cache=True, nogil=True)
def _emit(hit, g, buf, base, slices, by_votes, dims, ndims, keytab, key_one, in_box, q, blk, masks, keys, hist):
    """Record strip ``g``'s hits ``hit`` (its rows at ``buf[base:]``) and their keys; returns how many.
    Arrays are passed whole with offsets: a view per strip (slice, reshape) costs reference
    counting and measured ~30% of pass 1 for a one-box model."""
    masks[g] = hit
    count = 0
    while hit != 0:
        r = np.int64(trailing_zeros(hit))
        hit &= hit - np.uint64(1)
        if by_votes:
            key = _votes_of(slices, r)
        else:
            key = _depth_key(buf, base, STRIP, r, dims, ndims, keytab, key_one, in_box, q, np.uint64(1) << np.uint64(r))
        keys[g * STRIP + r] = key
        hist[blk, key] += 1
        count += 1
    return count


@njit(cache=True, nogil=True)
def _scan_block(codes, start, stop, used, test_off, test_low, test_width, box_first, est_start, min_votes, n_slices,
                by_votes, dims, ndims, keytab, key_one, blk, masks, keys, hist):
    """Pass 1 on rows ``start .. stop`` (block ``blk``, ``start`` a multiple of 64): the hits of
    every strip into ``masks`` / ``keys`` (:class:`StripHits`), their keys counted in ``hist[blk]``.
    See :func:`_scan_hits`."""
    n_boxes = ndims.shape[0]
    stride = max(codes.shape[1], STRIP_DIMS) * STRIP
    buf = np.zeros(_STRIPS * stride, np.uint8)
    valid = np.zeros(_STRIPS, np.uint64)
    slices0 = np.zeros(n_slices, np.uint64)  # votes of the pair's strips, bit-sliced
    slices1 = np.zeros(n_slices, np.uint64)
    in_box = np.zeros((2, n_boxes), np.uint64)
    for c0 in range(start, stop, CHUNK):
        n_strips = _load_chunk(codes, c0, stop, used, buf, stride, valid)
        for s in range(n_strips, _STRIPS):
            valid[s] = 0  # the pair partner of a last, odd strip: no rows
        for s in range(0, n_strips, 2):
            base = s * stride
            if not by_votes:
                hit0 = hit1 = np.uint64(0)
                for b in range(n_boxes):
                    m0, m1 = box_pair(buf, base, stride, test_off, test_low, test_width, box_first[b],
                                      box_first[b + 1], valid[s], valid[s + 1])
                    in_box[0, b] = m0
                    in_box[1, b] = m1
                    hit0 |= m0
                    hit1 |= m1
            else:
                slices0[:] = 0
                slices1[:] = 0
                for e in range(est_start.shape[0] - 1):
                    u0 = u1 = np.uint64(0)
                    for b in range(est_start[e], est_start[e + 1]):
                        m0, m1 = box_pair(buf, base, stride, test_off, test_low, test_width, box_first[b],
                                          box_first[b + 1], valid[s], valid[s + 1])
                        u0 |= m0
                        u1 |= m1
                    _add_votes(slices0, u0)
                    _add_votes(slices1, u1)
                hit0 = _at_least(slices0, min_votes, valid[s])
                hit1 = _at_least(slices1, min_votes, valid[s + 1])
            for q in range(2):
                if s + q < n_strips:
                    _emit(hit1 if q else hit0, (c0 + (s + q) * STRIP) // STRIP, buf, base + q * stride,
                          slices1 if q else slices0, by_votes, dims, ndims, keytab, key_one, in_box, q, blk, masks,
                          keys, hist)


@njit(parallel=True, cache=True, nogil=True)
def _scan_hits(codes, used, test_off, test_low, test_width, box_first, est_start, min_votes, n_slices, by_votes,
               dims, ndims, keytab, key_one, rows_per_block, masks, keys, hist):
    """Pass 1, blocks of ``rows_per_block`` rows in parallel (:func:`_scan_block`).

    A box's dim tests are ``box_first[b] .. box_first[b + 1]`` of ``test_*`` (offset of the dim in
    a strip, low, width). ``by_votes``: an ensemble (bit-sliced votes, keyed by votes); else a single
    model (a hit is in any box, keyed by its depth in the boxes that hold it: ``dims`` / ``ndims`` /
    ``keytab``, see :func:`ranking`). The block is a function of its own: written inline in the
    parallel loop the same code measured ~15% slower.

    No early exit once no row of a strip can reach ``min_votes`` any more: checking after every
    estimator saved 10% on the most selective trained ensembles and cost 25% on the others.
    """
    n = codes.shape[0]
    for blk in prange(hist.shape[0]):
        start = blk * rows_per_block
        _scan_block(codes, start, min(n, start + rows_per_block), used, test_off, test_low, test_width, box_first,
                    est_start, min_votes, n_slices, by_votes, dims, ndims, keytab, key_one, blk, masks, keys, hist)


def _blocks(n: int) -> tuple[int, int]:
    """(blocks, rows per block) for ``n`` rows: a few blocks a thread balance the load; each block
    a whole number of chunks."""
    n_blocks = max(1, min(-(-n // CHUNK), 4 * numba.get_num_threads()))
    rows_per_block = -(-(-(-n // n_blocks)) // CHUNK) * CHUNK
    return -(-n // rows_per_block), rows_per_block


def scan_hits(codes: np.ndarray, box_set: BoxSet, rk: Ranking, scratch=None) -> StripHits:
    """Pass 1 of the fused scan (module doc): every positive row with its ranking key. No checks
    (:func:`scan_box_set` makes them).

    ``scratch``: a :class:`Scratch` to hold the answer (reused memory: the answer is valid until
    the scratch's next use); by default fresh arrays.
    """
    n, d = codes.shape
    n_blocks, rows_per_block = _blocks(n)
    n_strips = -(-n // STRIP)
    masks, keys = (scratch or Scratch()).strips(n_strips)
    hist = np.zeros((n_blocks, rk.values.shape[0]), np.int64)
    hits = StripHits(masks, keys, rows_per_block // STRIP, hist)
    if box_set.min_votes > box_set.n_estimators:  # no row can get the votes
        masks[:] = 0
        return hits
    est_start = estimator_starts(box_set.estimator, box_set.n_estimators)
    k = box_set.ndims
    box_first = np.zeros(box_set.n_boxes + 1, np.int64)
    np.cumsum(k, out=box_first[1:])
    inside = np.arange(MAX_BOX_DIMS)[None, :] < k[:, None]  # the box dims, box by box
    test_low = box_set.low[inside]
    test_width = (box_set.high[inside].astype(np.int64) - test_low).astype(np.uint8)
    used = np.unique(box_set.dims[inside]).astype(np.int64)
    _scan_hits(codes, used, box_set.dims[inside] * STRIP, test_low, test_width, box_first, est_start,
               int(box_set.min_votes), max(1, int(box_set.n_estimators).bit_length()), rk.by_votes, box_set.dims,
               box_set.ndims, rk.keytab, rk.key_one, rows_per_block, masks, keys, hist)
    return hits


class Scratch:
    """Memory that pass 1 reuses from call to call (one per thread: :func:`thread_scratch`).

    Why: writing freshly allocated pages from several threads at once measured 20-30 ms on the
    2-core benchmark VM (the first touch of each page goes to the host), more than the whole scan
    of 10M rows; pages that stay allocated cost nothing. Holds 2.125 bytes a row of the largest
    catalog scanned (and 10 more once a BoxIndex has answered: :meth:`rows`)."""

    def __init__(self):
        self._masks = np.zeros(0, np.uint64)
        self._keys = np.zeros(0, np.uint16)
        self._ids = np.zeros(0, np.int64)
        self._votes = np.zeros(0, np.uint16)

    def strips(self, n_strips: int) -> tuple[np.ndarray, np.ndarray]:
        """(masks, keys) for ``n_strips`` strips; the keys' pages are touched here, in one thread."""
        if self._masks.shape[0] < n_strips:
            self._masks = fresh(n_strips, np.uint64)
            self._keys = fresh(n_strips * STRIP, np.uint16)
        return self._masks[:n_strips], self._keys[:n_strips * STRIP]

    def rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 ids, uint16 votes), one entry a row: the index's answer by segments (10 bytes a
        row, held only once an index has answered in this thread)."""
        if self._ids.shape[0] < n:
            self._ids = fresh(n, np.int64)
            self._votes = fresh(n, np.uint16)
        return self._ids[:n], self._votes[:n]


_THREAD = threading.local()


def thread_scratch() -> Scratch:
    """This thread's :class:`Scratch` (a scan is ranked in the thread that ran it)."""
    if not hasattr(_THREAD, "scratch"):
        _THREAD.scratch = Scratch()
    return _THREAD.scratch


def fresh(n: int, dtype) -> np.ndarray:
    """``np.empty(n, dtype)`` with every page touched in the calling thread, for kernels that write
    it from several threads (see :class:`Scratch`): ~0.2 us a 4 KB page."""
    out = np.empty(n, dtype)
    out.view(np.uint8)[::4096] = 0
    return out


# ---------------------------------------------------------------------------------------------
# ranking


@njit(parallel=True, cache=True, nogil=True)
def _key_histograms(keys, starts, counts, n_keys):
    hist = np.zeros((counts.shape[0], n_keys), np.int64)
    for blk in prange(counts.shape[0]):
        for i in range(starts[blk], starts[blk] + counts[blk]):
            hist[blk, keys[i]] += 1
    return hist


def hits_from_arrays(ids: np.ndarray, keys: np.ndarray, n_keys: int) -> Hits:
    """:class:`Hits` of hits given as arrays (ids ascending), cut into blocks ranked in parallel."""
    n_blocks, per_block = _blocks(max(int(ids.shape[0]), 1))
    starts = np.minimum(np.arange(n_blocks, dtype=np.int64) * per_block, ids.shape[0])
    counts = np.minimum(starts + per_block, ids.shape[0]) - starts
    keys = np.ascontiguousarray(keys, np.uint16)
    return Hits(np.ascontiguousarray(ids, np.int64), keys, starts, counts,
                _key_histograms(keys, starts, counts, n_keys))


@njit(parallel=True, cache=True, nogil=True)
def _place(hit_ids, keys, starts, counts, offsets, values, ids, scores):
    """Counting sort, second half: block ``blk``'s hits with key ``k`` go, in their (ascending id)
    order, from ``offsets[blk, k]``; scores are looked up from the key."""
    for blk in prange(counts.shape[0]):
        pos = offsets[blk].copy()
        for i in range(starts[blk], starts[blk] + counts[blk]):
            k = keys[i]
            dst = pos[k]
            pos[k] = dst + 1
            ids[dst] = hit_ids[i]
            scores[dst] = values[k]


@njit(parallel=True, cache=True, nogil=True)
def _place_strips(masks, keys, strips_per_block, offsets, values, ids, scores):
    """:func:`_place` for :class:`StripHits`: block ``blk`` is strips ``blk * strips_per_block ..``."""
    for blk in prange(offsets.shape[0]):
        pos = offsets[blk].copy()
        for g in range(blk * strips_per_block, min(masks.shape[0], (blk + 1) * strips_per_block)):
            m = masks[g]
            while m != 0:
                i = g * STRIP + np.int64(trailing_zeros(m))
                m &= m - np.uint64(1)
                k = keys[i]
                dst = pos[k]
                pos[k] = dst + 1
                ids[dst] = i
                scores[dst] = values[k]


@njit(cache=True, nogil=True)
def _strip_arrays(masks, keys, out_ids, out_keys):
    pos = 0
    for g in range(masks.shape[0]):
        m = masks[g]
        while m != 0:
            i = g * STRIP + np.int64(trailing_zeros(m))
            m &= m - np.uint64(1)
            out_ids[pos] = i
            out_keys[pos] = keys[i]
            pos += 1


def rank_hits(hits, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of :class:`Hits` or :class:`StripHits`, ranked by score descending, ties by
    ascending id: the keys' counting sort.

    ``offsets[blk, k]`` is the number of hits with a greater key, plus those with key ``k`` in the
    blocks before ``blk`` (blocks hold ascending, consecutive id ranges, so that is the id order).
    """
    n_blocks, n_keys = hits.hist.shape
    by_key_then_block = hits.hist[:, ::-1].T.reshape(-1)  # keys descending, blocks ascending within a key
    first = np.zeros(by_key_then_block.shape[0], np.int64)
    np.cumsum(by_key_then_block[:-1], out=first[1:])
    offsets = np.ascontiguousarray(first.reshape(n_keys, n_blocks)[::-1].T)
    h = hits.count
    ids = fresh(h, np.int64)
    scores = fresh(h, np.float64)
    if isinstance(hits, StripHits):
        _place_strips(hits.masks, hits.keys, hits.strips_per_block, offsets, values, ids, scores)
    else:
        _place(hits.ids, hits.keys, hits.starts, hits.counts, offsets, values, ids, scores)
    return ids, scores


# ---------------------------------------------------------------------------------------------
# the row-by-row box test of the index


@njit(nogil=True)
def row_in_box(x, i, dims, s, k, low, high, b):
    """True when row ``i`` of ``x`` lies inside box ``b``: ``low[b, j] <= x[i, dims[s, j]] <= high[b, j]``
    for every ``j < k`` (closed, uint8 bounds). ``s`` is the row of ``dims`` naming the box's dims:
    ``b`` itself for a BoxSet's arrays, the indexed subset answering the box for the index's trees.

    The row-by-row box test of the index's partly covered leaves and the planner's sample
    fractions. It stops at the first dim outside, which pays off there (rows mostly fail early);
    the fused scan tests 64 rows at once instead (:func:`~.simd.box_pair`). A plain ``njit``
    function that LLVM inlines into each caller (``inline="always"`` measured no faster). Arrays
    and row numbers are passed rather than row and box slices, which measured a few % slower in the
    planner.

    Not cached itself: it is compiled into each caller, and the callers in other files (``kdtree``,
    ``index``) keep their own on-disk cache, which Numba does not invalidate when this file changes.
    After editing it, delete ``clipbranches_widgets/engine/__pycache__``.
    """
    for j in range(k):
        v = x[i, dims[s, j]]
        if v < low[b, j] or v > high[b, j]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# the whole apply


def check_box_set(box_set: BoxSet, n_features: int) -> None:
    """Raise ``ValueError`` when a box refers to a dim the codes do not have, or when the model has
    more estimators than the kernels' uint16 vote counts hold (``MAX_ESTIMATORS``)."""
    used = [int(box_set.dims[b, j]) for b in range(box_set.n_boxes) for j in range(int(box_set.ndims[b]))]
    if used and (max(used) >= n_features or min(used) < 0):
        raise ValueError(
            f"the model uses dim {max(used)} but the codes have {n_features} dims (0..{n_features - 1}); "
            "was it trained on other codes?"
        )
    if box_set.n_estimators > MAX_ESTIMATORS:
        raise ValueError(f"at most {MAX_ESTIMATORS} estimators are supported; got {box_set.n_estimators}")


def apply_post_trees(model, codes: np.ndarray, hits, n_keys: int):
    """The hits that ``model``'s per-box post trees keep (a DecisionBranches with ``post_tree=True``,
    :meth:`~.branches.DecisionBranches.refine_hits`); unchanged for any other model. Scan and index
    answer the boxes, this step the trees, so both equal ``predict_mask``."""
    trees = getattr(model, "post_trees_", None)
    if trees is None or all(t is None for t in trees):
        return hits
    ids, keys = hits.arrays()
    keep = model.refine_hits(codes, ids)
    return hits if keep.all() else hits_from_arrays(ids[keep], keys[keep], n_keys)


def scan_box_set(codes, model) -> SearchResult:
    """Apply a model (or BoxSet) to ``codes`` by the fused parallel scan; ranked like ``apply_boxes_numpy``.

    A DecisionBranches with post trees is answered like :meth:`BoxIndex.search` and ``predict_mask``:
    the boxes' hits are filtered by the trees.

    ``stats``: method ``"scan"``, ``n_boxes``, ``n_estimators``, ``count`` and timings ``query_s``
    (pass 1: the boxes, each hit's ranking key, post trees), ``score_s`` (the counting sort and the
    scores), ``total_s``.
    """
    t0 = time.perf_counter()
    box_set = BoxSet.from_model(model)
    codes = check_codes(codes, name="codes")
    check_box_set(box_set, codes.shape[1])
    rk = ranking(box_set)
    t1 = time.perf_counter()
    hits = apply_post_trees(model, codes, scan_hits(codes, box_set, rk, thread_scratch()), rk.values.shape[0])
    t2 = time.perf_counter()
    ids, scores = rank_hits(hits, rk.values)
    t3 = time.perf_counter()
    stats = {"method": "scan", "n_boxes": box_set.n_boxes, "n_estimators": box_set.n_estimators,
             "rows_checked": int(codes.shape[0]), "count": int(ids.shape[0]),
             "query_s": t2 - t1, "score_s": t3 - t2, "total_s": t3 - t0}
    return SearchResult(ids, scores, stats)
