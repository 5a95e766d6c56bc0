"""Nearest-neighbour search over a catalog's 8-bit codes: text/image query -> top-k ids.

Queries are float embeddings in the same space as the catalog (unit vectors from the encoder +
head). Catalog rows are compared through their dequantized bucket centres, by inner product
(cosine similarity for unit vectors), so the search sees exactly what the codes keep.

* ``method="numpy"``: exact, in chunks (one chunk of float32 rows in memory at a time), top-k by
  ``argpartition``; fine up to a few million rows.
* ``method="faiss"``: an exact ``IndexFlatIP`` over the dequantized codes (built once, float32,
  128 B/item), which batches queries through BLAS; used by ``"auto"`` from ``faiss_min_rows`` rows.
Both give the same ids (up to ties) and scores; results are ordered by descending score, ties by
ascending id.
"""

from __future__ import annotations

import numpy as np

from ..engine._validation import check_codes
from .quantize import GlobalQuantizer

#: "auto" switches to faiss from this many catalog rows
FAISS_MIN_ROWS = 2_000_000


class NearestNeighbours:
    """Exact top-k search over uint8 ``codes`` for float queries; scores are cosine similarities
    between the query and each dequantized code.

    Parameters: codes (N, d) uint8; quantizer (default: the global map) used to dequantize;
    method "auto" | "numpy" | "faiss"; chunk_rows for the numpy path.
    """

    def __init__(self, codes, quantizer=None, *, method: str = "auto", chunk_rows: int = 262144,
                 faiss_min_rows: int = FAISS_MIN_ROWS):
        self.codes = check_codes(codes, name="codes")
        self.quantizer = quantizer if quantizer is not None else GlobalQuantizer()
        if method not in ("auto", "numpy", "faiss"):
            raise ValueError(f"method must be 'auto', 'numpy' or 'faiss'; got {method!r}")
        if method == "auto":
            method = "faiss" if self.codes.shape[0] >= faiss_min_rows else "numpy"
        self.method = method
        self.chunk_rows = int(chunk_rows)
        self._faiss_index = None

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
        if self.method == "faiss":
            ids, scores = self._search_faiss(q, k_eff + excluded.size)
        else:
            ids, scores = self._search_numpy(q, k_eff + excluded.size)
        if excluded.size:
            keep = ~np.isin(ids, excluded)
            ids = np.stack([row[m][:k_eff] for row, m in zip(ids, keep)])
            scores = np.stack([row[m][:k_eff] for row, m in zip(scores, keep)])
        return ids, scores

    def _unit_block(self, start: int) -> np.ndarray:
        """Dequantized codes of rows ``start .. start+chunk_rows`` scaled to unit length.

        Bucket centres are not unit vectors; without this a query would favour long codes over
        its own item's code, and scores would not be cosines (<= 1).
        """
        block = self.quantizer.dequantize(self.codes[start:start + self.chunk_rows]).astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(block)

    def _search_numpy(self, q, k):
        n = self.codes.shape[0]
        best_ids = np.zeros((q.shape[0], 0), np.int64)
        best_scores = np.zeros((q.shape[0], 0), np.float32)
        for start in range(0, n, self.chunk_rows):
            s = q @ self._unit_block(start).T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_ids = np.concatenate([best_ids, part + start], axis=1)
            best_scores = np.concatenate([best_scores, np.take_along_axis(s, part, axis=1)], axis=1)
            if best_ids.shape[1] > k:  # keep the running top k
                keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
                best_ids = np.take_along_axis(best_ids, keep, axis=1)
                best_scores = np.take_along_axis(best_scores, keep, axis=1)
        return _order(best_ids, best_scores)

    def _search_faiss(self, q, k):
        import faiss

        if self._faiss_index is None:
            index = faiss.IndexFlatIP(self.codes.shape[1])
            for start in range(0, self.codes.shape[0], self.chunk_rows):
                index.add(self._unit_block(start))
            self._faiss_index = index
        scores, ids = self._faiss_index.search(q, k)
        return _order(ids.astype(np.int64), scores.astype(np.float32))


def _order(ids, scores):
    """Sort each row by descending score, ties by ascending id."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
