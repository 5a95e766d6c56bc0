"""scikit-learn baselines for the model selector: a decision tree and a 25-tree random forest.

They cannot use the box index, so they are applied to the whole catalog by a chunked scan: each
chunk of uint8 codes is converted to float32 (what sklearn trees work in) only while it is being
predicted, so memory stays at one chunk per thread however large the catalog is. Chunks run in a
thread pool (sklearn's tree traversal releases the GIL). The result is a :class:`SearchResult` like
the branch models': ids whose positive-class probability is above 0.5, ranked by that probability
(ties by ascending id).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._validation import check_codes
from .boxes import rank
from .result import SearchResult

BASELINES = ("tree", "forest")


def make_baseline(kind: str, *, random_state=None, class_weight=None, n_jobs=None):
    """An unfitted scikit-learn classifier: ``"tree"`` (DecisionTreeClassifier, sklearn defaults) or
    ``"forest"`` (RandomForestClassifier with 25 trees, as in the original app)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if kind == "tree":
        return DecisionTreeClassifier(random_state=random_state, class_weight=class_weight)
    if kind == "forest":
        return RandomForestClassifier(n_estimators=25, random_state=random_state, class_weight=class_weight,
                                      n_jobs=n_jobs)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES}")


def scan_sklearn(model, codes, *, chunk_rows: int = 131072, n_jobs: int | None = None) -> SearchResult:
    """Apply a fitted binary sklearn classifier to every row of ``codes``; return the positives, ranked."""
    if not hasattr(model, "classes_"):
        raise ValueError(f"{type(model).__name__} is not fitted yet; call fit(X, y) first")
    if list(model.classes_) != [0, 1]:
        raise ValueError(f"the classifier must be trained on labels 0 and 1; it knows {list(model.classes_)}")
    codes = check_codes(codes, name="codes", n_features=getattr(model, "n_features_in_", None), allow_empty=True)
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    t0 = time.perf_counter()
    starts = range(0, codes.shape[0], chunk_rows)

    def predict_chunk(start):
        proba = model.predict_proba(codes[start:start + chunk_rows].astype(np.float32))[:, 1]
        hit = np.flatnonzero(proba > 0.5)
        return hit + start, proba[hit]

    workers = os.cpu_count() if n_jobs is None else max(1, n_jobs)
    if workers == 1 or len(starts) <= 1:
        parts = [predict_chunk(s) for s in starts]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(predict_chunk, starts))
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float64) if parts else np.zeros(0)
    t1 = time.perf_counter()
    ids, scores = rank(ids, scores)
    t2 = time.perf_counter()
    return SearchResult(ids, scores, {"method": "sklearn-scan", "count": int(ids.shape[0]), "n_rows": int(codes.shape[0]),
                                      "query_s": t1 - t0, "rank_s": t2 - t1, "total_s": t2 - t0})
