"""Random catalogs and BoxSets shared by the scan and index property tests."""

import numpy as np

from clipbranches_widgets.engine.boxes import Box, BoxSet
from clipbranches_widgets.engine.subsets import feature_subsets

SUBSETS = feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)


def catalog(n: int, kind: str, seed: int = 0) -> np.ndarray:
    """uint8 (n, 32) codes: 'uniform', 'clustered' (few tight clusters) or 'dups' (many duplicate rows)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 256, (n, 32), dtype=np.uint8)
    if kind == "clustered":
        centres = rng.integers(20, 236, (8, 32))
        lab = rng.integers(0, 8, n)
        return np.clip(centres[lab] + rng.normal(0, 6, (n, 32)), 0, 255).astype(np.uint8)
    if kind == "dups":
        base = rng.integers(0, 256, (max(1, n // 50), 32), dtype=np.uint8)
        base[0] = 0
        base[-1] = 255
        return base[rng.integers(0, base.shape[0], n)]
    raise ValueError(kind)


def random_box(codes: np.ndarray, rng, dims=None) -> Box:
    """A box on one of the paper subsets (or ``dims``): around a row, full range, empty or edge-touching."""
    dims = tuple(SUBSETS[rng.integers(len(SUBSETS))]) if dims is None else tuple(dims)
    k = len(dims)
    kind = rng.integers(6)
    if kind == 0:  # covers everything
        return Box(dims, np.zeros(k), np.full(k, 255))
    if kind == 1:  # a single point nobody is likely to hit, or far corner: covers (almost) nothing
        v = rng.integers(0, 256, k)
        return Box(dims, v, v)
    centre = codes[rng.integers(codes.shape[0]), list(dims)].astype(int)
    half = rng.integers(0, 90, k)
    low = np.clip(centre - half, 0, 255)
    high = np.clip(centre + half, 0, 255)
    if kind == 2:  # touch the domain edges
        low[rng.random(k) < 0.5] = 0
        high[rng.random(k) < 0.5] = 255
    return Box(dims, low, high)


def random_box_set(codes: np.ndarray, rng, *, n_estimators: int | None = None, dims_pool=None) -> BoxSet:
    """A single model (1 estimator) or an ensemble (3-7 estimators) with 1-30 boxes in all."""
    if n_estimators is None:
        n_estimators = 1 if rng.random() < 0.5 else int(rng.integers(3, 8))
    n_boxes = int(rng.integers(max(1, n_estimators), 31))
    owner = np.concatenate([np.arange(n_estimators), rng.integers(0, n_estimators, n_boxes - n_estimators)])
    lists = [[] for _ in range(n_estimators)]
    for e in owner:
        dims = None if dims_pool is None else dims_pool[rng.integers(len(dims_pool))]
        lists[e].append(random_box(codes, rng, dims))
    return BoxSet.from_estimators(lists)
