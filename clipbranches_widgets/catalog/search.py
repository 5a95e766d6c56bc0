"""Nearest-neighbour search over a catalog's 8-bit codes: text/image query -> top-k ids.

Queries are float embeddings in the same space as the catalog (unit vectors from the encoder +
head). A row's score is the cosine between the query and the row's dequantized code (its bucket
centres), so the search sees exactly what the codes keep; results are ordered by descending
score, ties by ascending id.

* ``method="numba"`` (what ``"auto"`` picks): one parallel pass straight over the uint8 codes, no
  float copy. Both quantizers dequantize each dim affinely, ``x_j = mid_j + step_j * (c_j - 128)``,
  so ``q . x = q . mid + sum_j (q_j step_j) (c_j - 128)``: a dot product of the code bytes with
  per-query weights, scaled by the row's inverse norm. The inverse norms (float32, 4 B/item) are
  computed once per object and cached; they are the only extra memory. Computing each row's norm
  from its code instead made a query's pass ~60% slower (measured at 1M rows).
* ``method="numpy"``: the plain reference (the kernel's twin, which the tests compare against):
  chunks of rows dequantized to float32 and normalised, scored, top k kept per chunk.

Both agree on ids (up to scores within float32 rounding, ~1e-7) and on scores to ~1e-6. Measured
speeds and the alternatives that were tried (faiss ``IndexScalarQuantizer`` over the same codes,
the former ``IndexFlatIP`` float copy at 128 B/item): ``benchmarks/results/nn.md``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..engine._validation import check_codes
from .quantize import GlobalQuantizer

#: the parallel scan gives each block at least this many rows (smaller catalogs get one block)
MIN_BLOCK_ROWS = 16384
#: queries scored per pass over the codes: their weights (64 x d float32) stay in L1
QUERY_BLOCK = 64
#: a per-dim map whose 256 levels stray further than this from a line is not affine
_AFFINE_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _worse(s_a, i_a, s_b, i_b):
    """True when candidate a ranks below candidate b: a lower score, or the same and a larger id."""
    return s_a < s_b or (s_a == s_b and i_a > i_b)


@njit(cache=True, nogil=True)
def _replace_worst(heap_s, heap_i, s, i):
    """Replace the root of the heap (its worst candidate) by (s, i) and sift it down.

    ``heap_s`` / ``heap_i`` hold a query's best k candidates as a binary heap whose root is the
    worst one under :func:`_worse`, so "does this row enter the top k" is one compare with the root.
    """
    k = heap_s.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and _worse(heap_s[child + 1], heap_i[child + 1], heap_s[child], heap_i[child]):
            child += 1
        if not _worse(heap_s[child], heap_i[child], s, i):
            break
        heap_s[pos] = heap_s[child]
        heap_i[pos] = heap_i[child]
        pos = child
    heap_s[pos] = s
    heap_i[pos] = i


# "reassoc" lets LLVM split each dot product over the dims into SIMD partial sums (without it every
# row is a chain of d dependent adds, several times slower); this changes rounding by ~1e-7 only.
# Every row goes through the same instructions, so identical codes get bit-identical scores and
# exact ties stay ties (broken by id).
@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _scan_top_k(codes, weights, bias, inv_norm, rows_per_block, top_s, top_i):
    """Per block of rows, the top k rows of each query, into ``top_s`` / ``top_i`` (blocks, queries, k).

    Score of row i for query q: ``(bias[q] + sum_j weights[q, j] * (codes[i, j] - 128)) * inv_norm[i]``.
    Blocks run in parallel, each with its own heaps (no sharing); the caller merges them. Rows are
    read two at a time so that each weight load serves two independent dot products (~15% faster
    than one row at a time, single-threaded at 1M rows); a block's odd last row is paired with
    itself. Within a block rows arrive in ascending id order, so a row enters only with a score
    strictly above the worst kept: on a tie the kept row has the smaller id. Unused heap slots stay
    at (-inf, -1).
    """
    n, d = codes.shape
    n_queries = weights.shape[0]
    for blk in prange(top_s.shape[0]):
        start = blk * rows_per_block
        stop = min(n, start + rows_per_block)
        heap_s = top_s[blk]
        heap_i = top_i[blk]
        heap_s[:] = -np.inf
        heap_i[:] = -1
        for i0 in range(start, stop, 2):
            i1 = min(i0 + 1, stop - 1)
            row0 = codes[i0]
            row1 = codes[i1]
            for q in range(n_queries):
                w = weights[q]
                acc0 = np.float32(0.0)
                acc1 = np.float32(0.0)
                for j in range(d):
                    # centred in float32 (exact for bytes): integer arithmetic would widen to int64
                    acc0 += w[j] * (np.float32(row0[j]) - np.float32(128.0))
                    acc1 += w[j] * (np.float32(row1[j]) - np.float32(128.0))
                s0 = (bias[q] + acc0) * inv_norm[i0]
                s1 = (bias[q] + acc1) * inv_norm[i1]
                if s0 > heap_s[q, 0]:
                    _replace_worst(heap_s[q], heap_i[q], s0, i0)
                if i1 != i0 and s1 > heap_s[q, 0]:
                    _replace_worst(heap_s[q], heap_i[q], s1, i1)


@njit(parallel=True, cache=True, nogil=True)
def _inverse_norms(codes, mid, step, out):
    """``out[i] = 1 / ||mid + step * (codes[i] - 128)||`` (float64 sums, stored as float32).

    The floor of 1e-12 on the norm is the numpy path's, for a code whose centres are all zero.
    """
    n, d = codes.shape
    for i in prange(n):
        ss = 0.0
        for j in range(d):
            x = mid[j] + step[j] * (np.float64(codes[i, j]) - 128.0)
            ss += x * x
        out[i] = np.float32(1.0 / max(np.sqrt(ss), 1e-12))


def affine_map(quantizer, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mid, step)`` (float64, (dim,)) with ``quantizer.dequantize(c) == mid + step * (c - 128)`` per dim.

    Read off the quantizer's own ``dequantize`` (levels 0 and 255), so any per-dim affine map works,
    and checked on all 256 levels; raises ``ValueError`` for a map that is not affine.
    """
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], dim, axis=1)
    centres = np.asarray(quantizer.dequantize(levels), np.float64)
    if centres.shape != (256, dim):
        raise ValueError(f"the quantizer dequantizes {dim}-dim codes to shape {centres.shape}; expected (256, {dim})")
    step = (centres[255] - centres[0]) / 255.0
    mid = centres[0] + 128.0 * step
    fitted = mid + step * (np.arange(256)[:, None] - 128.0)
    scale = np.maximum(np.abs(centres).max(axis=0), 1e-30)
    if not (np.abs(fitted - centres) <= _AFFINE_TOL * scale).all():
        raise ValueError("the quantizer's dequantize is not affine per dim (mid + step * code); "
                         "use method='numpy' for it")
    return mid, step


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------

class NearestNeighbours:
    """Exact top-k search over uint8 ``codes`` for float queries; scores are cosine similarities
    between the query and each dequantized code.

    Parameters: codes (N, d) uint8, e.g. a catalog's read-only memory map (never copied when
    C-contiguous uint8); quantizer (default: the global map) used to dequantize; method "auto" |
    "numba" | "numpy" ("auto" is "numba": within the issue's targets, the fastest from 10M rows and
    the least extra memory, ``benchmarks/results/nn.md``); chunk_rows: rows dequantized at a time by
    the numpy path.

    Memory: the numba path keeps one float32 inverse norm per row (4 B/item, computed by the first
    search or :meth:`prepare`); nothing else outlives a call.
    """

    def __init__(self, codes, quantizer=None, *, method: str = "auto", chunk_rows: int = 262144):
        self.codes = check_codes(codes, name="codes")
        self.quantizer = quantizer if quantizer is not None else GlobalQuantizer()
        if method not in ("auto", "numba", "numpy"):
            raise ValueError(f"method must be 'auto', 'numba' or 'numpy'; got {method!r}")
        self.method = "numba" if method == "auto" else method
        self.chunk_rows = int(chunk_rows)
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1; got {chunk_rows!r}")
        self._affine = affine_map(self.quantizer, self.codes.shape[1]) if self.method == "numba" else None
        self._inv_norm = None

    def prepare(self) -> "NearestNeighbours":
        """Compute the numba path's per-row inverse norms now (else the first search does); returns self."""
        if self.method == "numba" and self._inv_norm is None:
            inv = np.empty(self.codes.shape[0], np.float32)
            _inverse_norms(self.codes, *self._affine, inv)
            self._inv_norm = inv
        return self

    @property
    def extra_nbytes(self) -> int:
        """Bytes this object holds beyond the codes (the cached inverse norms, once computed)."""
        return 0 if self._inv_norm is None else int(self._inv_norm.nbytes)

    def _queries(self, queries) -> np.ndarray:
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.codes.shape[1]:
            raise ValueError(f"queries must have {self.codes.shape[1]} dims; got shape {np.shape(queries)}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("queries must not be all-zero vectors")
        return np.ascontiguousarray(q / norms)

    def search(self, queries, k: int = 60, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (n_queries, k'), k' = min(k, rows not excluded); best first.

        ``exclude``: catalog ids never returned (e.g. the query item itself for "more like this").
        """
        q = self._queries(queries)
        if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"k must be an int >= 1; got {k!r}")
        excluded = np.zeros(0, np.int64) if exclude is None else np.unique(np.asarray(exclude, np.int64))
        if excluded.size and (excluded.min() < 0 or excluded.max() >= self.codes.shape[0]):
            raise ValueError(f"exclude holds ids outside the catalog (0..{self.codes.shape[0] - 1})")
        k_eff = min(int(k), self.codes.shape[0] - excluded.size)
        if k_eff <= 0:
            return np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32)
        if self.method == "numba":
            ids, scores = self._search_numba(q, k_eff + excluded.size)
        else:
            ids, scores = self._search_numpy(q, k_eff + excluded.size)
        if excluded.size:
            keep = ~np.isin(ids, excluded)
            ids = np.stack([row[m][:k_eff] for row, m in zip(ids, keep)])
            scores = np.stack([row[m][:k_eff] for row, m in zip(scores, keep)])
        return ids, scores

    def _search_numba(self, q, k):
        """Top k of every query by :func:`_scan_top_k`, QUERY_BLOCK queries per pass."""
        self.prepare()
        n = self.codes.shape[0]
        mid, step = self._affine
        # a few blocks per thread balance the load; every block keeps k candidates per query
        n_blocks = max(1, min(4 * numba.get_num_threads(), n // MIN_BLOCK_ROWS))
        rows_per_block = -(-n // n_blocks)
        n_blocks = -(-n // rows_per_block)
        heap_k = min(k, rows_per_block)
        out_ids, out_scores = [], []
        for q0 in range(0, q.shape[0], QUERY_BLOCK):
            qb = q[q0:q0 + QUERY_BLOCK].astype(np.float64)
            weights = np.ascontiguousarray(qb * step, dtype=np.float32)
            bias = (qb @ mid).astype(np.float32)
            top_s = np.empty((n_blocks, qb.shape[0], heap_k), np.float32)
            top_i = np.empty((n_blocks, qb.shape[0], heap_k), np.int64)
            _scan_top_k(self.codes, weights, bias, self._inv_norm, rows_per_block, top_s, top_i)
            # merge the blocks: each holds its own top min(k, rows) rows, so the best k are among them
            # and the (-inf, -1) fillers of small blocks sort last
            ids, scores = _order(top_i.transpose(1, 0, 2).reshape(qb.shape[0], -1),
                                 top_s.transpose(1, 0, 2).reshape(qb.shape[0], -1))
            out_ids.append(ids[:, :k])
            out_scores.append(scores[:, :k])
        return np.concatenate(out_ids), np.concatenate(out_scores)

    def _unit_block(self, start: int) -> np.ndarray:
        """Dequantized codes of rows ``start .. start+chunk_rows`` scaled to unit length.

        Bucket centres are not unit vectors; without this a query would favour long codes over
        its own item's code, and scores would not be cosines (<= 1).
        """
        block = self.quantizer.dequantize(self.codes[start:start + self.chunk_rows]).astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(block)

    def _search_numpy(self, q, k):
        """The reference: score a chunk of rows at a time, keep each query's running top k.

        Each score is ``einsum`` over the row's own dims, summed in the same order for every row, so
        identical codes score bit-identically wherever they sit and ties go to the smaller id. A BLAS
        product of the chunk with all queries is faster for batches but not tie-exact: rows at a
        chunk's edge went through another kernel and differed from their duplicates in the last bit.
        """
        n = self.codes.shape[0]
        best = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * q.shape[0]
        for start in range(0, n, self.chunk_rows):
            block = self._unit_block(start)
            ids = np.arange(start, start + block.shape[0])
            best = [_top_k(np.concatenate([b_ids, ids]), np.concatenate([b_s, np.einsum("ij,j->i", block, qv)]), k)
                    for (b_ids, b_s), qv in zip(best, q)]
        return np.stack([b[0] for b in best]), np.stack([b[1] for b in best])


def _top_k(ids, scores, k):
    """The k best of one query's candidates, by descending score, ties by ascending id.

    Everything tied with the k-th score is kept before ordering, so a tie at the cut goes to the
    smaller id (``argpartition`` alone would pick among them arbitrarily).
    """
    if ids.shape[0] > k:
        kth = np.partition(scores, ids.shape[0] - k)[ids.shape[0] - k]
        keep = scores >= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


def _order(ids, scores):
    """Sort each row by descending score, ties by ascending id."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
