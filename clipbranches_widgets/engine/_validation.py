"""Input checks shared by the engine: clear ``ValueError``s that name the problem.

Every public entry point of the engine calls these before touching a Numba kernel, so a kernel
never sees a wrong dtype, shape or label (kernels do no checking of their own, for speed).
"""

from __future__ import annotations

import numpy as np

from .boxes import MAX_BOX_DIMS


def check_codes(X, *, name: str = "X", n_features: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """Return ``X`` as a C-contiguous ``uint8`` array of shape (n, d), or raise ``ValueError``.

    Accepts uint8 arrays as they are (no copy when already C-contiguous). Integer or float arrays
    are accepted only when every value is a whole number in [0, 255]; NaN, infinities and values out
    of range are rejected with the offending count, because silently casting them would corrupt
    the catalog.
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_items, n_features); got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 rows): need at least one item")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 features")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, expected {n_features}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name} must hold uint8 codes (0-255); got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr)
            if bad.any():
                raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite values; codes must be integers 0-255")
            if (arr != np.round(arr)).any():
                raise ValueError(f"{name} contains non-integer values; codes must be integers 0-255")
        out_of_range = (arr < 0) | (arr > 255)
        if out_of_range.any():
            raise ValueError(
                f"{name} contains {int(out_of_range.sum())} values outside 0-255 "
                f"(min {arr.min()}, max {arr.max()}); codes must be uint8"
            )
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def check_labels(y, n_rows: int) -> np.ndarray:
    """Return ``y`` as an int8 array of 0/1 labels with one label per row, or raise ``ValueError``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D; got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"y has {arr.shape[0]} labels but X has {n_rows} rows")
    if arr.dtype == bool:
        arr = arr.astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"y must hold 0/1 labels; got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        examples = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"y must hold only 0 (negative) and 1 (positive); found {examples}")
    arr = arr.astype(np.int8)
    n_pos = int(arr.sum())
    if n_pos == 0:
        raise ValueError("no positives: mark at least one item as positive before training")
    if n_pos == n_rows:
        raise ValueError("no negatives: mark at least one item negative or add random negatives before training")
    return arr


#: the widest range of positive sample weights a fit accepts (beyond it, float64 sums lose the small rows)
MAX_WEIGHT_RATIO = 1e6


def check_sample_weight(sample_weight, n_rows: int) -> np.ndarray:
    """Return per-row weights as float64 (ones when ``None``), or raise ``ValueError``."""
    if sample_weight is None:
        return np.ones(n_rows, dtype=np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},); got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinite values")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if not (w > 0).any():
        raise ValueError("sample_weight is zero everywhere")
    positive = w[w > 0]
    if positive.max() > MAX_WEIGHT_RATIO * positive.min() or not np.isfinite(positive.sum() * positive.max()):
        # sums and squares of such weights overflow or swamp every other row: a NaN or degenerate model
        raise ValueError(f"sample_weight spans {positive.min():.3g} .. {positive.max():.3g}; the largest may be at "
                         f"most {MAX_WEIGHT_RATIO:.0e} times the smallest positive weight")
    return np.ascontiguousarray(w)


def check_random_state(random_state) -> np.random.Generator:
    """A local ``np.random.Generator`` from ``None``, an int seed, a SeedSequence, a Generator or a
    legacy ``np.random.RandomState`` (scikit-learn's convention: a seed is drawn from it, so it
    advances, and refits with the same instance differ)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(int(random_state.randint(np.iinfo(np.int32).max)))
    if random_state is not None and not isinstance(random_state, (int, np.integer, np.random.SeedSequence)):
        raise ValueError(f"random_state must be None, an int or a numpy Generator; got {type(random_state).__name__}")
    return np.random.default_rng(random_state)


def check_binary_target(y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, y01)`` for a binary target of any label type, or a ``ValueError`` as scikit-learn gives.

    ``classes`` are the two distinct labels, sorted (``np.unique``); ``y01`` is int8, 1 where a row
    holds ``classes[1]``, the class the boxes describe (1, True, or the later string: scikit-learn's
    positive class). ``y`` must already be 1-D and as long as X (``validate_data`` sees to both).
    """
    from sklearn.utils.multiclass import check_classification_targets, type_of_target

    check_classification_targets(y)  # "Unknown label type" for a continuous target
    y_type = type_of_target(y, input_name="y")
    if y_type != "binary":
        raise ValueError(f"Only binary classification is supported. The type of the target is {y_type}: "
                         f"{name} learns boxes around one class against one other (found "
                         f"{len(np.unique(y))} classes).")
    classes, y01 = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        only = classes.tolist()[0]
        hint = ""
        if not isinstance(only, str) and only in (0, 1):  # the engine's 0/1 marks (or False / True)
            hint = ("no negatives: mark at least one item negative or add random negatives before training; "
                    if only == 1 else "no positives: mark at least one item as positive before training; ")
        raise ValueError(f"{hint}y holds only one class ({only!r}); {name} needs exactly two classes")
    return classes, y01.astype(np.int8)


def check_weighted_classes(y01: np.ndarray, w: np.ndarray, classes: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` when a class carries no sample weight (a one-class problem in disguise)."""
    for k, label in enumerate(classes.tolist()):
        if not (w[y01 == k] > 0).any():
            raise ValueError(f"sample_weight is zero on every row of class {label!r}; {name} needs both "
                             "classes weighted")


def check_subsets(subsets, n_features: int) -> list[tuple[int, ...]]:
    """Validate feature subsets: non-empty sorted tuples of distinct dims in [0, n_features)."""
    if subsets is None or len(subsets) == 0:
        raise ValueError("subsets must be a non-empty list of feature-index tuples")
    out = []
    for s in subsets:
        t = tuple(int(v) for v in s)
        if len(t) == 0:
            raise ValueError("a feature subset is empty")
        if len(t) > MAX_BOX_DIMS:
            raise ValueError(f"feature subset {t} has {len(t)} dims; at most {MAX_BOX_DIMS} are supported")
        if len(set(t)) != len(t):
            raise ValueError(f"feature subset {t} repeats a dimension")
        if min(t) < 0 or max(t) >= n_features:
            raise ValueError(f"feature subset {t} refers to a dimension outside 0..{n_features - 1}")
        out.append(tuple(sorted(t)))
    return out
