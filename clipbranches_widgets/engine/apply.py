"""One entry point to answer a fitted model over codes: every positive row, ranked.

Catalogs (one folder, shards, Dask workers) call :func:`apply_model` on each block of codes they
hold and merge the blocks' answers with :func:`merge_results`; the merged answer equals the answer
over all the codes at once (same ids, same scores, same order).
"""

from __future__ import annotations

import numpy as np

from .baselines import scan_sklearn
from .boxes import BoxSet, rank
from .branches import DecisionBranches
from .ensemble import BranchEnsemble
from .linear import LinearCodes
from .result import SearchResult
from .scan import scan_box_set


def is_box_model(model) -> bool:
    """True for the families answered by boxes (scan or BoxIndex)."""
    return isinstance(model, (DecisionBranches, BranchEnsemble, BoxSet))


def apply_model(codes, model, *, index=None) -> SearchResult:
    """Every row of ``codes`` that the fitted ``model`` calls positive, best first (ties by id).

    Box models (DecisionBranches, BranchEnsemble, a BoxSet) use ``index`` (a BoxIndex over these
    codes, which plans index vs scan) when given, else the fused scan; LinearCodes its one-pass
    search; any fitted binary scikit-learn classifier a chunked ``predict_proba``.
    """
    if is_box_model(model):
        return index.search(model) if index is not None else scan_box_set(codes, model)
    if isinstance(model, LinearCodes):
        return model.search(codes)
    return scan_sklearn(model, codes)


def merge_results(parts, offsets) -> SearchResult:
    """One answer from per-block answers: block ``j``'s ids are shifted by ``offsets[j]``, then ranked.

    Scores are per row, so ranking the union by (score desc, id asc) gives the single-block order.
    Each block's answer must be ranked (every apply path's is) and cover ids below the next
    block's offset.
    Stats: the blocks' counts summed, timings as the slowest block (blocks run side by side).
    """
    parts = list(parts)
    if not parts:
        return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float64), {"count": 0, "n_blocks": 0})
    offsets = [int(off) for off in offsets]
    ids = np.concatenate([p.ids.astype(np.int64) + off for p, off in zip(parts, offsets)])
    scores = np.concatenate([np.asarray(p.scores, np.float64) for p in parts])
    if all(a <= b for a, b in zip(offsets, offsets[1:])):
        # blocks in catalog order: each block is ranked and its ids precede the next block's, so a
        # stable sort by score keeps ties by ascending id; it merges the ranked runs (timsort) in
        # O(n log blocks) where the lexsort of rank() costs a full sort of both keys
        order = np.argsort(-scores, kind="stable")
        ids, scores = ids[order], scores[order]
    else:
        ids, scores = rank(ids, scores)
    stats = {"method": parts[0].stats.get("method"), "n_blocks": len(parts), "count": int(ids.shape[0])}
    for key in {k for p in parts for k in p.stats if k.endswith("_s")}:
        stats[key] = max(float(p.stats.get(key, 0.0)) for p in parts)
    for key in ("rows_checked", "rows_emitted", "nodes_visited", "leaves_visited"):
        if any(key in p.stats for p in parts):
            stats[key] = int(sum(p.stats.get(key, 0) for p in parts))
    return SearchResult(ids, scores, stats)
