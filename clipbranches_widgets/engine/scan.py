"""Fused parallel scan: apply a whole BoxSet to a uint8 catalog in one pass, plus the score kernel.

:func:`scan_box_set` returns exactly what :func:`~.boxes.apply_boxes_numpy` returns (same ids,
bit-identical scores, same order), at close to memory bandwidth.

Two pass-1 kernels, chosen by :func:`scan_votes` from the number of boxes. For few boxes (single
models) each 32-byte row is tested against each box as one 256-bit vector (``_misses``): no
transpose, ~3 instructions a box. For many boxes (ensembles) the row-vector cost grows past the
transposed kernel's. Why the transposed layout: testing boxes row by row with a loop over dims
and an early branch out does not vectorise and costs ~1.4 s on 10M x 32 codes. Instead each thread walks its block of rows
in chunks of a few thousand; a chunk's *used* dims (or the 8-byte words holding them) are
transposed into a column-major buffer (in L1/L2), and every box test becomes a straight loop of uint8 compares and ANDs over a
column, which LLVM turns into SIMD. Per chunk we AND the dims of a box, OR the boxes of an
estimator and add the estimators into a vote count. Votes of positive rows are written to an
(N,) array; a second parallel pass compacts them into ids with per-block prefix sums.

:func:`score_hits` is shared with the index path (:mod:`.index`) so that both give bit-identical
float64 scores: vote fraction for ensembles, depth (``box_depth_numpy``'s float64 operations, in
the same order) for single models.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

from ._validation import check_codes
from .boxes import MAX_ESTIMATORS, BoxSet, estimator_starts, rank
from .result import SearchResult

#: rows per chunk: the transposed chunk (32 dims x CHUNK bytes) plus masks stay in L1/L2
CHUNK = 2048
#: row stride of the transposed buffer; a power-of-two stride maps every column to the same cache
#: sets and made a 30-dim transpose ~10x slower (measured), so pad it by one cache line
_BUF_STRIDE = CHUNK + 64


@njit(cache=True, nogil=True)
def _chunk_votes(buf, m, dims, ndims, low, width, est_start, inbox, union, votes):
    """Votes of the first ``m`` rows of the transposed chunk ``buf`` (``buf[dim, row]``).

    ``width = high - low`` per box dim: ``uint8(x - low) <= width`` is ``low <= x <= high`` in one
    unsigned compare (values below ``low`` wrap around above ``width``).
    """
    for r in range(m):
        votes[r] = 0
    for e in range(est_start.shape[0] - 1):
        for r in range(m):
            union[r] = 0
        for b in range(est_start[e], est_start[e + 1]):
            for r in range(m):
                inbox[r] = 1
            for j in range(ndims[b]):
                col = buf[dims[b, j]]
                lo = low[b, j]
                w = width[b, j]
                for r in range(m):
                    inbox[r] &= np.uint8(np.uint8(col[r] - lo) <= w)
            for r in range(m):
                union[r] |= inbox[r]
        for r in range(m):
            votes[r] += union[r]


@njit(cache=True, nogil=True)
def _transpose_chunk(codes, words, c0, m, used_dims, used_words, buf):
    """Copy the used dims of rows ``c0 .. c0+m`` into ``buf[dim, row]``.

    When the rows are whole uint64 words (``words`` non-empty) a used word is unpacked into its 8
    dims with shifts: a vectorised load-and-shuffle that moves all 32 dims of 10M rows in about one
    streaming pass (measured ~40 ms), 3x faster than copying the used bytes one by one.
    """
    if words.shape[0] > 0:
        for qi in range(used_words.shape[0]):
            q = used_words[qi]
            for r in range(m):
                wv = words[c0 + r, q]
                for t in range(8):
                    buf[8 * q + t, r] = np.uint8((wv >> np.uint64(8 * t)) & np.uint64(255))
    else:
        for c in range(used_dims.shape[0]):
            d = used_dims[c]
            for r in range(m):
                buf[d, r] = codes[c0 + r, d]


@njit(cache=True, nogil=True)
def _misses(row, lo32, width32, b):
    """0 iff the 32-byte ``row`` is inside box ``b`` (``lo32`` / ``width32``: the box over all 32 dims).

    A code row is exactly one 256-bit vector: per byte ``uint8(x - lo)`` minus ``min(that, width)``
    (a saturating subtract) is 0 iff ``lo <= x <= high``; OR-ing the 32 bytes and testing for zero
    compiles to vpsubb + vpsubusb + vptest (checked with ``inspect_asm``). Dims a box leaves free have
    lo 0 and width 255. Every variable is cast back to uint8, else Numba widens to int64 and LLVM
    emits byte-to-qword extensions instead.
    """
    bad = np.uint8(0)
    for j in range(32):
        x = np.uint8(row[j] - lo32[b, j])
        bad = np.uint8(bad | np.uint8(x - min(x, width32[b, j])))
    return bad


@njit(cache=True, nogil=True)
def _row_votes(codes, i, lo32, width32, est_start):
    """Votes of row ``i`` (number of estimators whose union of boxes holds it), one row at a time."""
    row = codes[i]
    v = np.uint16(0)
    for e in range(est_start.shape[0] - 1):
        hit = False
        for b in range(est_start[e], est_start[e + 1]):
            hit |= _misses(row, lo32, width32, b) == 0
        v += np.uint16(hit)
    return v


@njit(cache=True, nogil=True)
def _chunk_votes_rows(codes, c0, m, lo32, width32, est_start, votes):
    """Votes of rows ``c0 .. c0+m`` tested row by row (32-d codes only), four rows at a time.

    Four rows share each box's ``lo`` / ``width`` loads and give the CPU four independent
    compare chains (measured at 10M rows, 5 boxes: 58 ms one row at a time, 42 ms two, 37 ms four).
    No early exit on a hit: branches on the data cost more than the boxes left (few boxes here).
    """
    m4 = m - m % 4
    for r in range(0, m4, 4):
        row0 = codes[c0 + r]
        row1 = codes[c0 + r + 1]
        row2 = codes[c0 + r + 2]
        row3 = codes[c0 + r + 3]
        v0 = v1 = v2 = v3 = np.uint16(0)
        for e in range(est_start.shape[0] - 1):
            h0 = h1 = h2 = h3 = False
            for b in range(est_start[e], est_start[e + 1]):
                h0 |= _misses(row0, lo32, width32, b) == 0
                h1 |= _misses(row1, lo32, width32, b) == 0
                h2 |= _misses(row2, lo32, width32, b) == 0
                h3 |= _misses(row3, lo32, width32, b) == 0
            v0 += np.uint16(h0)
            v1 += np.uint16(h1)
            v2 += np.uint16(h2)
            v3 += np.uint16(h3)
        votes[r] = v0
        votes[r + 1] = v1
        votes[r + 2] = v2
        votes[r + 3] = v3
    for r in range(m4, m):
        votes[r] = _row_votes(codes, c0 + r, lo32, width32, est_start)


@njit(cache=True, nogil=True)
def _keep_positives(votes, m, min_votes, out_votes, c0):
    """Write the chunk's votes to ``out_votes`` (0 where below ``min_votes``); return the positives."""
    count = 0
    for r in range(m):
        v = votes[r] if votes[r] >= min_votes else np.uint16(0)
        out_votes[c0 + r] = v
        count += v != 0
    return count


@njit(parallel=True, cache=True, nogil=True)
def _scan_votes_rows(codes, lo32, width32, est_start, min_votes, rows_per_block, out_votes, block_counts):
    """Pass 1, row by row (few boxes): ``out_votes[i]`` = votes of row i if positive else 0."""
    n = codes.shape[0]
    for blk in prange(block_counts.shape[0]):
        votes = np.empty(CHUNK, np.uint16)
        start = blk * rows_per_block
        stop = min(n, start + rows_per_block)
        count = 0
        for c0 in range(start, stop, CHUNK):
            m = min(CHUNK, stop - c0)
            _chunk_votes_rows(codes, c0, m, lo32, width32, est_start, votes)
            count += _keep_positives(votes, m, min_votes, out_votes, c0)
        block_counts[blk] = count


@njit(parallel=True, cache=True, nogil=True)
def _scan_votes(codes, words, used_dims, used_words, dims, ndims, low, width, est_start, min_votes, rows_per_block,
                out_votes, block_counts):
    """Pass 1, transposed (many boxes): ``out_votes[i]`` = votes of row i if positive else 0."""
    n = codes.shape[0]
    n_rows_buf = ((codes.shape[1] + 7) // 8) * 8
    for blk in prange(block_counts.shape[0]):
        buf = np.empty((n_rows_buf, _BUF_STRIDE), np.uint8)
        inbox = np.empty(CHUNK, np.uint8)
        union = np.empty(CHUNK, np.uint8)
        votes = np.empty(CHUNK, np.uint16)
        start = blk * rows_per_block
        stop = min(n, start + rows_per_block)
        count = 0
        for c0 in range(start, stop, CHUNK):
            m = min(CHUNK, stop - c0)
            _transpose_chunk(codes, words, c0, m, used_dims, used_words, buf)
            _chunk_votes(buf, m, dims, ndims, low, width, est_start, inbox, union, votes)
            count += _keep_positives(votes, m, min_votes, out_votes, c0)
        block_counts[blk] = count


@njit(parallel=True, cache=True, nogil=True)
def _compact(out_votes, rows_per_block, block_offsets, ids, votes):
    """Pass 2: ids (ascending) and votes of the rows with non-zero ``out_votes``.

    Branch-free: every row is written at the next free slot and the slot advances only for a
    positive, so the next positive overwrites a negative; a branch per row mispredicts at result
    rates of a few % and more. The slot after a block's last may be the next block's, so a block
    stops writing once its slots are full (no race).
    """
    n = out_votes.shape[0]
    for blk in prange(block_offsets.shape[0] - 1):
        pos = block_offsets[blk]
        end = block_offsets[blk + 1]
        i = blk * rows_per_block
        while pos < end:
            v = out_votes[i]
            ids[pos] = i
            votes[pos] = v
            pos += v != 0
            i += 1


@njit(nogil=True)
def row_in_box(x, i, dims, s, k, low, high, b):
    """True when row ``i`` of ``x`` lies inside box ``b``: ``low[b, j] <= x[i, dims[s, j]] <= high[b, j]``
    for every ``j < k`` (closed, uint8 bounds). ``s`` is the row of ``dims`` naming the box's dims:
    ``b`` itself for a BoxSet's arrays, the indexed subset answering the box for the index's trees.

    The one row-by-row box test of the engine's kernels: the index's partly covered leaves, the
    planner's sample fractions and the single-model depth scores all call it. It stops at the first
    dim outside, which pays off there (rows mostly fail early); the fused scan's pass 1 uses the
    branch-free forms instead (``_misses``, ``_chunk_votes``), which vectorise. A plain ``njit``
    function that LLVM inlines into each caller: the three kernels time as with the loop written
    out (``inline="always"`` measured no faster). Arrays and row numbers are passed rather than
    row and box slices, which measured a few % slower in the planner.

    Not cached itself: it is compiled into each caller, and the callers in other files (``kdtree``,
    ``index``) keep their own on-disk cache, which Numba does not invalidate when this file changes.
    After editing it, delete ``clipbranches_widgets/engine/__pycache__``.
    """
    for j in range(k):
        v = x[i, dims[s, j]]
        if v < low[b, j] or v > high[b, j]:
            return False
    return True


@njit(parallel=True, cache=True, nogil=True)
def _depth_scores(codes, ids, dims, ndims, low, high):
    """Single-model score of each row ``ids[i]``: max depth over the boxes that contain it.

    Same float64 operations as ``box_depth_numpy`` (margins are exact small integers, the only
    rounding is ``margin / half``), so the result is bit-identical to the numpy reference.
    """
    out = np.zeros(ids.shape[0], np.float64)
    for i in prange(ids.shape[0]):
        row = codes[ids[i]]
        best = 0.0
        for b in range(ndims.shape[0]):
            if not row_in_box(codes, ids[i], dims, b, ndims[b], low, high, b):
                continue
            depth = 1.0
            for j in range(ndims[b]):
                lo = np.int64(low[b, j])
                hi = np.int64(high[b, j])
                x = np.float64(row[dims[b, j]])
                half = (hi - lo) / 2.0 + 1.0
                margin = np.inf
                if lo > 0:
                    margin = min(margin, x - lo + 1.0)
                if hi < 255:
                    margin = min(margin, hi - x + 1.0)
                depth = min(depth, min(margin / half, 1.0))
            best = max(best, depth)
        out[i] = best
    return out


def score_hits(codes: np.ndarray, ids: np.ndarray, votes: np.ndarray, box_set: BoxSet) -> np.ndarray:
    """float64 scores of the positive rows ``ids`` (with their estimator ``votes``), as the reference.

    Ensembles: ``votes / n_estimators``. Single models: depth in the best containing box.
    """
    if box_set.scores_are_votes:
        return votes.astype(np.int64) / box_set.n_estimators
    return _depth_scores(codes, ids, box_set.dims, box_set.ndims, box_set.low, box_set.high)


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


def apply_post_trees(model, codes: np.ndarray, ids: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, votes)`` of the hits that ``model``'s per-box post trees keep (a DecisionBranches with
    ``post_tree=True``, :meth:`~.branches.DecisionBranches.refine_hits`); unchanged for any other
    model. Scan and index answer the boxes, this step the trees, so both equal ``predict_mask``."""
    refine = getattr(model, "refine_hits", None)
    if refine is None:
        return ids, votes
    keep = refine(codes, ids)
    return ids[keep], votes[keep]


#: the row-by-row kernel wins up to this many boxes (32-d codes); see :func:`scan_votes`
ROW_SCAN_MAX_BOXES = 12


def scan_votes(codes: np.ndarray, box_set: BoxSet) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, votes) of every positive row, by the fused parallel scan. No checks.

    Two pass-1 kernels, chosen by the number of boxes (measured at 10M clustered 32-d rows on 2
    cores, one streaming pass ~19 ms; ``benchmarks/bench_scan.py``):

    * ``"rows"`` tests each 32-byte row against each box as one vector (3 instructions a box),
      no transpose: cost grows with the boxes, not their dims (~22 ms + ~4 ms a box);
    * ``"columns"`` transposes the used dims of a chunk first (~15-17 ms a used 8-byte word, up to
      ~70 ms for all 32 dims) and then tests 32 rows at a time per box dim (~0.15 ms a box dim):
      better for ensembles (75 boxes: ~130 ms against ~440 ms row by row).
    """
    strategy = "rows" if codes.shape[1] == 32 and box_set.n_boxes <= ROW_SCAN_MAX_BOXES else "columns"
    return _scan_votes_by(codes, box_set, strategy)


def _scan_votes_by(codes: np.ndarray, box_set: BoxSet, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_votes` with the pass-1 kernel named (``"rows"`` needs 32-d codes)."""
    n, d = codes.shape
    est_start = estimator_starts(box_set.estimator, box_set.n_estimators)
    width = (box_set.high.astype(np.int64) - box_set.low.astype(np.int64)).astype(np.uint8)
    # a few blocks per thread balance the load; each block a whole number of chunks
    n_blocks = max(1, min(-(-n // CHUNK), 4 * numba.get_num_threads()))
    rows_per_block = -(-(-(-n // n_blocks)) // CHUNK) * CHUNK
    n_blocks = -(-n // rows_per_block)
    out_votes = np.empty(n, np.uint16)
    block_counts = np.zeros(n_blocks, np.int64)
    if strategy == "rows":
        if d != 32:
            raise ValueError("the row-by-row scan needs 32-d codes")
        # each box over all 32 dims; free dims accept everything (lo 0, width 255). A dim that a
        # box names twice keeps the intersection, as the per-dim test of the reference does.
        lo32 = np.zeros((box_set.n_boxes, 32), np.int64)
        hi32 = np.full((box_set.n_boxes, 32), 255, np.int64)
        for b in range(box_set.n_boxes):
            for j in range(int(box_set.ndims[b])):
                dim = int(box_set.dims[b, j])
                lo32[b, dim] = max(lo32[b, dim], int(box_set.low[b, j]))
                hi32[b, dim] = min(hi32[b, dim], int(box_set.high[b, j]))
        # a box naming one dim twice with disjoint ranges holds nothing, and lo / width cannot say
        # so: drop it (its estimator keeps its other boxes; one with none gets no votes)
        keep = (lo32 <= hi32).all(axis=1)
        lo32, hi32 = lo32[keep], hi32[keep]
        est_start = estimator_starts(box_set.estimator[keep], box_set.n_estimators)
        width32 = (hi32 - lo32).astype(np.uint8)
        _scan_votes_rows(codes, lo32.astype(np.uint8), width32, est_start, box_set.min_votes, rows_per_block,
                         out_votes, block_counts)
    else:
        used = np.array(sorted({int(box_set.dims[b, j]) for b in range(box_set.n_boxes)
                                for j in range(int(box_set.ndims[b]))}), np.int64)
        used_words = np.unique(used // 8).astype(np.int64)
        # Rows of whole uint64 words allow the unpacking transpose (32-d codes: 4 words a row). It
        # costs ~4x a single-byte column per word (measured at 10M rows: ~10 ms a word, ~2.5 ms a
        # byte column), so it pays when the used dims fill their words at least a quarter.
        use_words = d % 8 == 0 and len(used) >= 4 * len(used_words)
        words = codes.view(np.uint64) if use_words else np.zeros((0, 1), np.uint64)
        _scan_votes(codes, words, used, used_words, box_set.dims, box_set.ndims, box_set.low, width, est_start,
                    box_set.min_votes, rows_per_block, out_votes, block_counts)
    offsets = np.zeros(n_blocks + 1, np.int64)
    np.cumsum(block_counts, out=offsets[1:])
    ids = np.empty(offsets[-1], np.int64)
    votes = np.empty(offsets[-1], np.uint16)
    _compact(out_votes, rows_per_block, offsets, ids, votes)
    return ids, votes


def scan_box_set(codes, model) -> SearchResult:
    """Apply a model (or BoxSet) to ``codes`` by a fused parallel scan; ranked like ``apply_boxes_numpy``.

    A DecisionBranches with post trees is answered like :meth:`BoxIndex.search` and ``predict_mask``:
    the boxes' hits are filtered by the trees.

    ``stats``: method ``"scan"``, ``n_boxes``, ``n_estimators``, ``count`` and timings
    ``query_s`` (the scan), ``score_s`` (scores + ranking), ``total_s``.
    """
    t0 = time.perf_counter()
    box_set = BoxSet.from_model(model)
    codes = check_codes(codes, name="codes")
    check_box_set(box_set, codes.shape[1])
    t1 = time.perf_counter()
    ids, votes = scan_votes(codes, box_set)
    ids, votes = apply_post_trees(model, codes, ids, votes)
    t2 = time.perf_counter()
    ids, scores = rank(ids, score_hits(codes, ids, votes, box_set))
    t3 = time.perf_counter()
    stats = {"method": "scan", "n_boxes": box_set.n_boxes, "n_estimators": box_set.n_estimators,
             "rows_checked": int(codes.shape[0]), "count": int(ids.shape[0]),
             "query_s": t2 - t1, "score_s": t3 - t2, "total_s": t3 - t0}
    return SearchResult(ids, scores, stats)
