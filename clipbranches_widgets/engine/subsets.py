"""Fixed random feature subsets: the dims each box (and each index) may constrain."""

from __future__ import annotations

import numpy as np

from .boxes import MAX_BOX_DIMS

#: The paper's layout for 32-d codes: 64 subsets of 4 dims, 32 of 6, 8 of 8 (104 in all).
PAPER_SUBSET_SIZES = {4: 64, 6: 32, 8: 8}


def default_subsets(n_features: int) -> list[tuple[int, ...]]:
    """The feature subsets a box model (and a catalog's BoxIndex) uses when none are given, for any width.

    * 32 dims: the paper's layout, ``{4: 64, 6: 32, 8: 8}`` (104 subsets, seed 42); each dim lies in
      16 subsets on average.
    * Narrower: the same counts, capped at the number of distinct subsets that exist, sizes wider
      than ``n_features`` dropped; fewer than 4 dims get the single subset of all dims.
    * Wider: every count scaled by ``n_features / 32`` (rounded up), so each dim still lies in about
      16 subsets (a fixed 104 subsets would leave dims unused: 784-d pixels would get 512 dim slots
      for 784 dims). Training tries ``max_evals`` of them per box, so its cost grows with the width
      unless ``max_evals`` is a number.

    No subset is wider than ``MAX_BOX_DIMS`` (8), the widest box the kernels hold.
    """
    from math import ceil, comb

    scale = max(1.0, n_features / 32)
    sizes = {k: min(ceil(v * scale), comb(n_features, k)) for k, v in PAPER_SUBSET_SIZES.items()
             if k <= min(n_features, MAX_BOX_DIMS)}
    if not sizes:
        return [tuple(range(n_features))]
    return feature_subsets(n_features, sizes, seed=42)


def feature_subsets(n_features: int = 32, sizes: dict[int, int] | None = None, seed: int = 42) -> list[tuple[int, ...]]:
    """Draw distinct random feature subsets, e.g. ``feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)``.

    For each ``size: count`` pair (in key order) draw subsets of ``size`` distinct dims uniformly
    until ``count`` distinct ones exist. Each subset is a sorted tuple; the list is grouped by size
    and lexicographically sorted inside a group, so it is the same for the same arguments on any
    machine (a local ``np.random.Generator`` is used, never the global RNG).

    Raises ``ValueError`` when a size is out of range or more distinct subsets are asked for than exist.
    """
    from math import comb

    sizes = PAPER_SUBSET_SIZES if sizes is None else sizes
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1; got {n_features}")
    if not sizes:
        raise ValueError("sizes must name at least one subset size")
    rng = np.random.default_rng(seed)
    out: list[tuple[int, ...]] = []
    for size, count in sorted(sizes.items()):
        size, count = int(size), int(count)
        if not 1 <= size <= min(MAX_BOX_DIMS, n_features):
            raise ValueError(f"subset size {size} must be between 1 and min({MAX_BOX_DIMS}, n_features={n_features})")
        if count < 1 or count > comb(n_features, size):
            raise ValueError(f"cannot draw {count} distinct subsets of size {size} from {n_features} features")
        group: set[tuple[int, ...]] = set()
        while len(group) < count:
            group.add(tuple(sorted(int(v) for v in rng.choice(n_features, size=size, replace=False))))
        out.extend(sorted(group))
    return out


def pad_subsets(subsets: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """``(dims, sizes)``: the subsets as a zero-padded (S, MAX_BOX_DIMS) int64 array plus each one's
    size (S,) int64, the layout the growth and index kernels take (row ``s`` uses ``dims[s, :sizes[s]]``)."""
    dims = np.zeros((len(subsets), MAX_BOX_DIMS), np.int64)
    sizes = np.zeros(len(subsets), np.int64)
    for i, s in enumerate(subsets):
        dims[i, : len(s)] = s
        sizes[i] = len(s)
    return dims, sizes
