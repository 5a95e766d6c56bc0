"""Boxes, the flat ``BoxSet`` that kernels consume, and the plain-numpy reference answer.

A decision-branch model is a union of axis-aligned boxes. A :class:`Box` constrains a few dims
(``dims``) to closed uint8 ranges ``[low, high]``. An ensemble is several such unions; an item is
positive when more than half of the estimators contain it.

Every way of applying a model to a catalog (fused scan, index, ``predict_mask``) must return exactly what
:func:`apply_boxes_numpy` returns: the ids it calls positive, each with the score defined here.

Scores (what results are ranked by, highest first, ties by ascending id):

* ensemble (more than one estimator): the fraction of estimators whose union contains the item;
* single model: the *depth* of the item in the box that holds it most centrally (max over its boxes).
  For one constrained dim with bounds ``[l, h]`` and value ``x`` the margin is
  ``min(x - l + 1, h - x + 1) / ((h - l) / 2 + 1)``, capped at 1, where a side at the domain edge
  (``l == 0`` or ``h == 255``) is open and does not count. The depth is the smallest margin over the
  box's dims (1 when every side is open). It is 1 at the centre of a closed box and ``1 / half-width``
  on its boundary, so items deep inside a box rank above items on its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import re

import numpy as np

MAX_BOX_DIMS = 8  #: boxes constrain at most this many dims (the widest paper subset)
#: a model may have at most this many estimators: every kernel counts a row's votes in a uint16
MAX_ESTIMATORS = int(np.iinfo(np.uint16).max)


def sql_identifier(name: str) -> str:
    """``name`` as an SQL identifier: plain names (letters, digits, _) as they are, anything else
    double-quoted with quotes doubled, so a table or column name can never inject SQL. Dotted
    names (``schema.table``) are quoted part by part."""
    parts = str(name).split(".")
    if not all(parts):
        raise ValueError(f"not an SQL name: {name!r}")
    return ".".join(p if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) else '"' + p.replace('"', '""') + '"'
                    for p in parts)


@dataclass(frozen=True)
class Box:
    """One axis-aligned box: ``low[j] <= x[dims[j]] <= high[j]`` for every j (inclusive, uint8)."""

    dims: tuple[int, ...]
    low: np.ndarray
    high: np.ndarray

    def __post_init__(self):
        low = np.asarray(self.low, dtype=np.uint8).copy()
        high = np.asarray(self.high, dtype=np.uint8).copy()
        if not (len(self.dims) == low.shape[0] == high.shape[0]):
            raise ValueError("a box needs one low and one high bound per dim")
        if (low > high).any():
            raise ValueError(f"box on dims {self.dims} has low > high")
        low.flags.writeable = False
        high.flags.writeable = False
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def contains(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows of uint8 ``X`` inside this box."""
        cols = X[:, list(self.dims)]
        return np.all((cols >= self.low) & (cols <= self.high), axis=1)

    def to_rule(self, feature_names=None) -> str:
        """Human-readable conjunction, e.g. ``"12 <= f3 <= 80 AND f7 >= 140"`` (open sides omitted)."""
        parts = []
        for d, lo, hi in zip(self.dims, self.low.tolist(), self.high.tolist()):
            name = feature_names[d] if feature_names is not None else f"f{d}"
            if lo > 0 and hi < 255:
                parts.append(f"{lo} <= {name} <= {hi}")
            elif lo > 0:
                parts.append(f"{name} >= {lo}")
            elif hi < 255:
                parts.append(f"{name} <= {hi}")
        return " AND ".join(parts) if parts else "TRUE"

    def to_sql_condition(self, column_prefix: str = "f") -> str:
        """SQL condition for this box, one ``BETWEEN`` per dim (inclusive bounds, as in the box)."""
        return " AND ".join(
            f"{sql_identifier(f'{column_prefix}{d}')} BETWEEN {lo} AND {hi}"
            for d, lo, hi in zip(self.dims, self.low.tolist(), self.high.tolist())
        )

    def to_dict(self) -> dict:
        return {"dims": list(self.dims), "low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Box":
        return cls(tuple(d["dims"]), np.asarray(d["low"], np.uint8), np.asarray(d["high"], np.uint8))


@dataclass(frozen=True)
class BoxSet:
    """All boxes of a model (or ensemble) as flat arrays, the form every kernel reads.

    Attributes (``n`` boxes, padded to ``MAX_BOX_DIMS`` columns; padding is dim 0 with [0, 255],
    which every value satisfies):
      dims (n, 8) int64, ndims (n,) int64, low / high (n, 8) uint8,
      estimator (n,) int64 (which estimator a box belongs to, ascending), n_estimators,
      min_votes: estimators needed for a positive (1 for a single model, E // 2 + 1 for E > 1).
    """

    dims: np.ndarray
    ndims: np.ndarray
    low: np.ndarray
    high: np.ndarray
    estimator: np.ndarray
    n_estimators: int
    min_votes: int

    @property
    def n_boxes(self) -> int:
        return int(self.ndims.shape[0])

    @property
    def scores_are_votes(self) -> bool:
        return self.n_estimators > 1

    @classmethod
    def from_estimators(cls, box_lists: list[list[Box]]) -> "BoxSet":
        """Build from one list of boxes per estimator (a single model is one list)."""
        if len(box_lists) == 0:
            raise ValueError("a model needs at least one estimator")
        boxes = [(e, b) for e, lst in enumerate(box_lists) for b in lst]
        n = len(boxes)
        dims = np.zeros((n, MAX_BOX_DIMS), np.int64)
        low = np.zeros((n, MAX_BOX_DIMS), np.uint8)
        high = np.full((n, MAX_BOX_DIMS), 255, np.uint8)
        ndims = np.zeros(n, np.int64)
        est = np.zeros(n, np.int64)
        for i, (e, b) in enumerate(boxes):
            k = len(b.dims)
            dims[i, :k] = b.dims
            low[i, :k] = b.low
            high[i, :k] = b.high
            ndims[i] = k
            est[i] = e
        n_est = len(box_lists)
        return cls(dims, ndims, low, high, est, n_est, 1 if n_est == 1 else n_est // 2 + 1)

    @classmethod
    def from_model(cls, model) -> "BoxSet":
        """Accept a fitted DecisionBranches / BranchEnsemble (anything with ``box_set_``) or a BoxSet."""
        if isinstance(model, BoxSet):
            return model
        bs = getattr(model, "box_set_", None)
        if bs is None:
            raise ValueError(f"{type(model).__name__} is not a fitted branch model (no boxes); call fit first")
        return bs


def box_depth_numpy(X: np.ndarray, dims, ndim: int, low, high) -> np.ndarray:
    """Depth (see module doc) of every row of ``X`` in one box, assuming the rows are inside it."""
    depth = np.ones(X.shape[0], np.float64)
    for j in range(ndim):
        lo, hi = int(low[j]), int(high[j])
        x = X[:, dims[j]].astype(np.float64)
        half = (hi - lo) / 2.0 + 1.0
        margin = np.full(X.shape[0], np.inf)
        if lo > 0:
            margin = np.minimum(margin, x - lo + 1.0)
        if hi < 255:
            margin = np.minimum(margin, hi - x + 1.0)
        depth = np.minimum(depth, np.minimum(margin / half, 1.0))
    return depth


def apply_boxes_numpy(codes: np.ndarray, box_set: BoxSet) -> tuple[np.ndarray, np.ndarray]:
    """Reference answer: (ids, scores) of every positive row, ranked. Plain numpy, O(N x boxes)."""
    n = codes.shape[0]
    votes = np.zeros(n, np.int64)
    depth = np.zeros(n, np.float64)
    for e in range(box_set.n_estimators):
        in_union = np.zeros(n, bool)
        for b in np.flatnonzero(box_set.estimator == e):
            k = int(box_set.ndims[b])
            dims = box_set.dims[b, :k]
            inside = np.all((codes[:, dims] >= box_set.low[b, :k]) & (codes[:, dims] <= box_set.high[b, :k]), axis=1)
            in_union |= inside
            if not box_set.scores_are_votes and inside.any():
                rows = np.flatnonzero(inside)
                depth[rows] = np.maximum(depth[rows], box_depth_numpy(codes[rows], dims, k, box_set.low[b], box_set.high[b]))
        votes += in_union
    ids = np.flatnonzero(votes >= box_set.min_votes).astype(np.int64)
    scores = votes[ids] / box_set.n_estimators if box_set.scores_are_votes else depth[ids]
    return rank(ids, scores.astype(np.float64))


def estimator_starts(estimator: np.ndarray, n_estimators: int) -> np.ndarray:
    """int64 ``starts`` of length ``n_estimators + 1``: boxes ``starts[e]:starts[e + 1]`` belong to
    estimator ``e`` (``estimator``, each box's estimator, ascending as in a BoxSet). An estimator
    without boxes gets an empty range. Every kernel loops over the boxes estimator by estimator
    this way, to count a row's vote once per estimator."""
    return np.searchsorted(estimator, np.arange(n_estimators + 1)).astype(np.int64)


def rank(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by descending score, ties by ascending id (the documented result order)."""
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]
