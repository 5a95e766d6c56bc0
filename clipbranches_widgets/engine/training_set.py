"""From a user's marks to a training set: labelled rows plus random negatives, with weights.

Fixes the original's negative sampling (reference section 7.3): random negatives are drawn from the
WHOLE catalog for every request (seeded), never from a small fixed pool; every labelled id and any
``exclude_ids`` (for example the query's own top-ranked neighbourhood, where unlabelled positives
are dense) are excluded; user negatives are weighted by a real sample weight instead of being
repeated; the result says how many random negatives were used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._validation import check_codes, check_random_state


@dataclass
class TrainingSet:
    """X (n, d) uint8 (None until the rows are fetched), y (n,) int8, sample_weight (n,) float64, ids (n,) catalog ids of the rows,
    source (n,) str array: "positive", "negative" (user-marked) or "random" (sampled), and
    n_random (how many random negatives were drawn)."""

    X: np.ndarray
    y: np.ndarray
    sample_weight: np.ndarray
    ids: np.ndarray
    source: np.ndarray
    n_random: int

    def with_rows(self, X) -> "TrainingSet":
        """This training set with ``X``: the codes of ``ids``, in order."""
        X = check_codes(X, name="X")
        if X.shape[0] != self.ids.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows for {self.ids.shape[0]} training ids")
        return replace(self, X=np.ascontiguousarray(X))


def check_ids(ids, n_items: int, name: str = "ids") -> np.ndarray:
    """Return ``ids`` as a unique, sorted int64 array of valid row ids, or raise ``ValueError``."""
    if isinstance(ids, (set, frozenset)):
        ids = sorted(ids)
    arr = np.asarray([] if ids is None else ids)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D list of ids; got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integer catalog ids; got {arr[:3].tolist()}")
    as_int = arr.astype(np.float64)
    if not np.isfinite(as_int).all() or (as_int != np.round(as_int)).any():
        raise ValueError(f"{name} must be integer catalog ids")
    out = as_int.astype(np.int64)
    bad = out[(out < 0) | (out >= n_items)]
    if bad.size:
        raise ValueError(f"{name} contains {bad.size} id(s) outside the catalog (0..{n_items - 1}), e.g. {bad[:5].tolist()}")
    return np.unique(out)


def make_training_set(codes, positive_ids, negative_ids=(), *, n_random_negatives: int = 500,
                      negative_weight: float = 1.0, exclude_ids=(), random_state=None) -> TrainingSet:
    """Training rows for a branch model from marked catalog ids: :func:`draw_training_rows` over
    ``codes.shape[0]`` rows, then the rows' codes.
    """
    codes = check_codes(codes, name="codes")
    drawn = draw_training_rows(codes.shape[0], positive_ids, negative_ids, n_random_negatives=n_random_negatives,
                               negative_weight=negative_weight, exclude_ids=exclude_ids, random_state=random_state)
    return drawn.with_rows(codes[drawn.ids])


def draw_training_rows(n_items: int, positive_ids, negative_ids=(), *, n_random_negatives: int = 500,
                       negative_weight: float = 1.0, exclude_ids=(), random_state=None) -> TrainingSet:
    """Which catalog rows to train on, their labels and weights (``X`` is None: fetch the rows'
    codes and call :meth:`TrainingSet.with_rows`, as a sharded or distributed catalog does).

    positive_ids / negative_ids: the user's marks (must not overlap). n_random_negatives: unlabelled
    catalog rows drawn uniformly without replacement and labelled 0 (fewer if the catalog has fewer
    candidates; 0 allowed when there are user negatives). negative_weight (>= 1 typical): sample
    weight of each USER negative relative to a random one. exclude_ids: never drawn as random
    negatives (e.g. the query's top neighbourhood).
    """
    n = int(n_items)
    pos = check_ids(positive_ids, n, "positive_ids")
    neg = check_ids(negative_ids, n, "negative_ids")
    excl = check_ids(exclude_ids, n, "exclude_ids")
    if pos.size == 0:
        raise ValueError("no positives: mark at least one item as positive")
    both = np.intersect1d(pos, neg)
    if both.size:
        raise ValueError(f"{both.size} id(s) are marked both positive and negative, e.g. {both[:5].tolist()}")
    if not (isinstance(n_random_negatives, (int, np.integer)) and not isinstance(n_random_negatives, bool)
            and n_random_negatives >= 0):
        raise ValueError(f"n_random_negatives must be an int >= 0; got {n_random_negatives!r}")
    if not (np.isfinite(negative_weight) and negative_weight > 0):
        raise ValueError(f"negative_weight must be a positive number; got {negative_weight!r}")
    rng = check_random_state(random_state)
    blocked = np.zeros(n, bool)
    blocked[pos] = blocked[neg] = blocked[excl] = True
    n_free = n - int(blocked.sum())
    k = min(int(n_random_negatives), n_free)
    if k and n_free:
        # rejection sampling is O(k) when few rows are blocked; fall back to an explicit pool otherwise
        if n_free > 4 * k:
            chosen = np.zeros(0, np.int64)
            while chosen.size < k:
                draw = rng.integers(0, n, size=2 * (k - chosen.size) + 16)
                draw = draw[~blocked[draw]]
                chosen = np.unique(np.r_[chosen, draw])
            rand = rng.permutation(chosen)[:k]
        else:
            rand = rng.choice(np.flatnonzero(~blocked), size=k, replace=False)
        rand = np.sort(rand)
    else:
        rand = np.zeros(0, np.int64)
    if neg.size == 0 and rand.size == 0:
        raise ValueError("no negatives: mark some items negative or allow random negatives")
    ids = np.r_[pos, neg, rand].astype(np.int64)
    y = np.r_[np.ones(pos.size, np.int8), np.zeros(neg.size + rand.size, np.int8)]
    w = np.r_[np.ones(pos.size), np.full(neg.size, float(negative_weight)), np.ones(rand.size)]
    source = np.array(["positive"] * pos.size + ["negative"] * neg.size + ["random"] * rand.size)
    return TrainingSet(None, y, w, ids, source, int(rand.size))
