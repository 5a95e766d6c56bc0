"""``DecisionBranches``: a union of boxes learnt from positive/negative marks (VLDB'23 algorithm).

Training covers the positives box by box: pick a seed positive (by default the remaining positive
nearest the remaining positives' centroid), grow one candidate box around it on each of
``max_evals`` random feature subsets (:mod:`.growth`), keep the purest (scores rounded to 12
decimals; ties: fewer dims, then first drawn), remove every training row it covers, repeat until no
positive is left, ``max_boxes`` boxes exist, or ``retry_limit`` seeds in a row gave no valid box.

Differences from the original code (the authors' implementation):
weights are real sample weights (``sample_weight``, ``class_weight``), not duplicated rows; all
randomness comes from a local ``np.random.Generator`` built from ``random_state``; bounds are exact
uint8 integers; optional extra sweeps (``n_sweeps``) let a box revisit dims.

Defaults were chosen by measurement (``benchmarks/figure3_digits.py``, the paper's Figure-3
protocol on scikit-learn's digits; ``benchmarks/figure3_study.py``, one table per factor against
digits and the app's fine-tuning task): "tapered" class weights, open sides closed
``min(0.5, 4 / (p + 1))`` of the way (at least 0.25 for a box without a training negative), seeds
nearest the positives' centroid, 3 sweeps, an unlimited ``min_pts`` window. On digits (5 draws per
class) the mean F1 at p = 16 / 22 / 32 / 48 / 64 is 0.527 / 0.550 / 0.585 / 0.608 / 0.605 (the
previous "sqrt" defaults: 0.540 / 0.564 / 0.582 / 0.540 / 0.527, falling after p = 32); a single
model saturates near 0.60 from p = 32-48, where steps of +-0.01 are noise (figure3_study.py, table 10).
These defaults were measured for p <= 64. Over several rounds of the app's loop (100-180 positives,
broad concepts; table 11) "tapered" weights and the fading split shrink the boxes (ensemble, round 3,
median F1 0.73 vs 0.85 with "sqrt" and 0.25), so ``SearchSession`` keeps those for its box models.
``DecisionBranches(**ORIGINAL_PARAMS)`` reproduces the original app's ``db`` configuration.

``DecisionBranches`` is a binary scikit-learn classifier (labels of any type, any numeric X: non-uint8
input is quantized per dim onto uint8 codes in ``fit``); ``predict_mask`` is the boolean box
membership that the engine's scan and index compute over a catalog's codes.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ..catalog.quantize import PerDimQuantizer
from ._validation import (check_binary_target, check_codes, check_random_state, check_sample_weight, check_subsets,
                          check_weighted_classes)
from .boxes import MAX_BOX_DIMS, Box, BoxSet, sql_identifier
from .growth import grow_candidates_parallel, grow_candidates_serial
from .subsets import default_subsets, pad_subsets


#: The original app's settings for a single model (``db``, without its post tree).
ORIGINAL_PARAMS = {"max_evals": "all", "min_pts": "auto", "n_sweeps": 1, "class_weight": None, "stop_infinite": True,
                   "stop_infinite_split": 0.5, "seed_positive": "random"}

#: "tapered" class weights: the positives weigh as much in total as the negatives up to this many
#: positives, then their total falls as TAPER_POSITIVES / p of the negatives' (benchmarks/figure3_study.py).
TAPER_POSITIVES = 5.0
#: stop_infinite_split="auto": open sides are closed min(AUTO_SPLIT_MAX, split_scale / (p + 1)) of the
#: way to the data's extreme, never less than AUTO_SPLIT_CLEAN for a box that holds no training negative.
AUTO_SPLIT_MAX = 0.5
AUTO_SPLIT_CLEAN = 0.25
#: candidate scores are rounded to this many decimals before comparing (ties: fewer dims, then first
#: drawn); None compares every bit, which let rounding noise in the weighted sums (~1e-16) pick among
#: equally pure boxes (benchmarks/figure3_study.py, table 9).
SCORE_TIE_DECIMALS = 12


def resolve_max_evals(max_evals, n_subsets: int) -> int:
    """How many subsets to try per box: "all" (or None), "sqrt", "log2", a fraction in (0, 1] or an int
    (values the estimators' ``_parameter_constraints`` have checked)."""
    if max_evals == "all" or max_evals is None:
        k = n_subsets
    elif max_evals == "sqrt":
        k = math.ceil(math.sqrt(n_subsets))
    elif max_evals == "log2":
        k = math.ceil(math.log2(n_subsets)) if n_subsets > 1 else 1
    elif isinstance(max_evals, Integral):
        k = int(max_evals)
    else:
        k = math.ceil(max_evals * n_subsets)
    return max(1, min(k, n_subsets))


def resolve_min_pts(min_pts, n_pos: int) -> int:
    """Distinct values examined per side when growing ("auto" = min(50, 1.5 x positives); None = all, as 0)."""
    if min_pts == "auto":
        return max(1, min(50, int(1.5 * n_pos)))
    return 0 if min_pts is None else int(min_pts)


def n_positives(y: np.ndarray, w: np.ndarray) -> int:
    """How many positive rows carry weight (the p of the "tapered" and "auto" rules)."""
    return int(((y == 1) & (w > 0)).sum())


def resolve_split(split, split_scale, n_pos: int) -> tuple[float, float]:
    """``(split for a clean box, split for a box holding a training negative)`` for ``n_pos`` positives.

    A float is used for both. "auto": ``s = min(AUTO_SPLIT_MAX, split_scale / (n_pos + 1))`` (beyond
    the farthest of p random members of a class lies about 1 / (p + 1) of it, so the less the
    positives have explored, the farther an open side reaches), but a clean box keeps at least
    ``AUTO_SPLIT_CLEAN``: nothing in the training data says its class stops there.
    """
    if isinstance(split, str):
        if split != "auto":
            raise ValueError(f"stop_infinite_split must be a number in [0, 1] or 'auto'; got {split!r}")
        s = min(AUTO_SPLIT_MAX, float(split_scale) / (n_pos + 1.0))
        return max(AUTO_SPLIT_CLEAN, s), s
    return float(split), float(split)


def class_weight_factors(class_weight, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row multipliers for ``class_weight`` (None, "tapered", "sqrt", "balanced" or ``{0: w0, 1: w1}``)."""
    if class_weight is None:
        return np.ones_like(w)
    if isinstance(class_weight, str) and class_weight == "tapered":
        # positives' total = negatives' total x min(1, TAPER_POSITIVES / p); negatives keep their weights
        p = n_positives(y, w)
        w_neg, w_pos = float(w[y == 0].sum()), float(w[y == 1].sum())
        if w_pos <= 0.0 or w_neg <= 0.0:  # a class with no weight: nothing to balance
            return np.ones_like(w)
        factors = np.array([1.0, w_neg * min(1.0, TAPER_POSITIVES / max(p, 1)) / w_pos])
        return factors[y]
    if class_weight in ("balanced", "sqrt"):
        total = w.sum()
        per_class = np.array([w[y == 0].sum(), w[y == 1].sum()])
        factors = total / (2.0 * per_class)
        if class_weight == "sqrt":  # half-way (geometrically) between no weighting and "balanced"
            factors = np.sqrt(factors)
    elif isinstance(class_weight, dict) and set(class_weight) <= {0, 1}:
        factors = np.array([float(class_weight.get(0, 1.0)), float(class_weight.get(1, 1.0))])
        if (factors <= 0).any() or not np.isfinite(factors).all():
            raise ValueError(f"class_weight values must be positive; got {class_weight}")
    else:
        raise ValueError(f"class_weight must be None, 'tapered', 'sqrt', 'balanced' or a dict {{0: w0, 1: w1}}; "
                         f"got {class_weight!r}")
    return factors[y]


def encode_class_weight(class_weight, classes: np.ndarray):
    """``class_weight`` as :func:`class_weight_factors` takes it: a dict keyed by class labels becomes
    ``{0: w, 1: w}`` (0 = ``classes[0]``, 1 = ``classes[1]``); anything else is returned as it is."""
    if not isinstance(class_weight, dict):
        return class_weight
    labels = classes.tolist()
    unknown = [k for k in class_weight if k not in labels]
    if unknown:
        raise ValueError(f"class_weight names {unknown!r}, which are not classes of y ({labels!r})")
    return {i: class_weight[c] for i, c in enumerate(labels) if c in class_weight}


#: scikit-learn parameter constraints shared by DecisionBranches and BranchEnsemble (checked by ``fit``)
BRANCH_PARAMETER_CONSTRAINTS = {
    "subsets": [None, "array-like"],
    "max_boxes": [Interval(Integral, 1, None, closed="left")],
    "max_evals": [StrOptions({"all", "sqrt", "log2"}), Interval(RealNotInt, 0, 1, closed="right"),
                  Interval(Integral, 1, None, closed="left"), None],
    "min_pts": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left"), None],
    "min_samples_in_box": [Interval(Integral, 1, None, closed="left")],
    "early_stopping": ["boolean"],
    "stop_infinite": ["boolean"],
    "stop_infinite_split": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
    "split_scale": [Interval(Real, 0, None, closed="neither")],
    "n_sweeps": [Interval(Integral, 1, None, closed="left")],
    "class_weight": [StrOptions({"tapered", "sqrt", "balanced"}), dict, None],
    "seed_positive": [StrOptions({"centroid", "random"})],
    "retry_limit": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state", np.random.Generator, np.random.SeedSequence],
}


def check_split_not_bool(split) -> None:
    """scikit-learn's intervals take ``True`` as 1; a bool here is a mix-up with ``stop_infinite``."""
    if isinstance(split, (bool, np.bool_)):
        raise ValueError(f"stop_infinite_split must be a number in [0, 1] or 'auto', not {split!r} "
                         "(did you mean stop_infinite?)")


def prepare_fit(estimator, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Training input as the kernels take it: ``(codes, y01, w, subsets)``, or a clear ``ValueError``
    (:func:`validate_fit_input`, then the estimator's feature subsets, a default for any width)."""
    codes, y01, w = validate_fit_input(estimator, X, y, sample_weight)
    d = codes.shape[1]
    subsets = default_subsets(d) if estimator.subsets is None else check_subsets(estimator.subsets, d)
    return codes, y01, w, subsets


def validate_fit_input(estimator, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, y01, w)`` for an estimator on the uint8 codes, or a clear ``ValueError``.

    Validates like any scikit-learn estimator (``validate_data``: a 2-D numeric X without NaN or
    infinity, one label per row) and sets ``n_features_in_`` (``feature_names_in_`` for a
    DataFrame), ``classes_`` and ``quantizer_`` on ``estimator``. uint8 X is used as codes
    unchanged (``quantizer_`` None); any other numeric X is quantized per dim
    (:class:`~clipbranches_widgets.catalog.quantize.PerDimQuantizer`, fitted here).
    """
    name = type(estimator).__name__
    X, y = validate_data(estimator, X, y)
    classes, y01 = check_binary_target(y, name)
    w = check_sample_weight(sample_weight, X.shape[0])
    check_weighted_classes(y01, w, classes, name)
    if X.dtype == np.uint8:
        quantizer, codes = None, np.ascontiguousarray(X)
    else:
        quantizer = PerDimQuantizer().fit(X)
        codes = quantizer.quantize(X)
    estimator.classes_, estimator.quantizer_ = classes, quantizer
    return codes, y01, w


def transform_codes(estimator, X) -> np.ndarray:
    """``X`` as the uint8 codes the fitted ``estimator``'s boxes live in (its ``quantizer_`` applied).

    Checked against the fit (same width and feature names, numeric, finite). A model fitted on uint8
    codes takes uint8 codes, or numbers that are whole and in 0..255; empty X gives no rows.
    """
    check_is_fitted(estimator)
    X = validate_data(estimator, X, reset=False, ensure_min_samples=0)
    if estimator.quantizer_ is None:
        return check_codes(X, allow_empty=True)
    return estimator.quantizer_.quantize(X)


class DecisionBranches(ClassifierMixin, BaseEstimator):
    """Decision-branch classifier: a row is in the positive class when it lies inside a learnt box.

    A binary scikit-learn classifier (``clone``, ``cross_val_score``, ``GridSearchCV``, pipelines).
    The boxes live in uint8 code space, the catalog's:

    * uint8 ``X`` is taken as codes, unchanged: what a catalog stores and what the engine's scan,
      :class:`~.index.BoxIndex` and :func:`~.apply.apply_model` answer;
    * any other numeric ``X`` (floats, ints, bools; any width) is quantized per dimension in ``fit``:
      each dim's 0.1%..99.9% quantile range onto the 256 levels, values beyond clipped (the
      catalog's :class:`~clipbranches_widgets.catalog.quantize.PerDimQuantizer`). The fitted map is
      ``quantizer_`` and every prediction applies it. It is affine per dim, so scaling the input
      first (``StandardScaler``) changes the model only by rounding.

    Labels: any two distinct values (ints, bools, strings). ``classes_`` holds them sorted and the
    boxes describe ``classes_[1]`` (1, True, or the later string: scikit-learn's positive class);
    the engine's apply paths return the rows of that class. One class or more than two: ValueError.

    Parameters
    ----------
    subsets : list of tuples, optional
        Feature subsets a box may use (each box constrains exactly one subset, at most 8 dims).
        Default: :func:`~.subsets.default_subsets` for the width of X: the paper's 104 random
        subsets for 32 dims (4, 6 and 8 dims each), the same sizes with counts scaled by d / 32 for
        wider data (each dim lies in about 16 subsets), capped at what exists for narrower data, and
        one subset of all dims below 4 dims. Use the same list as the :class:`~.index.BoxIndex` so
        every box can be answered by the index.
    max_boxes : int, default 30
        Upper bound on the number of boxes.
    max_evals : "all", "sqrt", "log2", float in (0, 1], int or None, default "all"
        Subsets tried per box (drawn without replacement, fresh for every box); None = "all".
    min_pts : "auto", None or int, default None
        Distinct values examined per side when growing; None = all, "auto" = min(50, 1.5 x
        #positives) (the original's setting, which lets a box from one positive grow by one value).
    min_samples_in_box : int, default 1
        A box must hold at least this many training rows.
    early_stopping : bool, default True
        Do not grow a side that holds no positive.
    stop_infinite : bool, default True
        Close open sides part-way towards the training data's extreme instead of at 0 / 255.
    stop_infinite_split : float in [0, 1] or "auto", default "auto"
        How far towards that extreme an open side goes (the original drew it at random in [0, 1)).
        With a few hundred random negatives most sides of a box have no training row beyond them,
        so this decides how far boxes generalise. "auto" (p = number of positives):
        ``min(0.5, split_scale / (p + 1))`` (beyond the farthest of p members of a class lies about
        1 / (p + 1) of it), but at least 0.25 for a box that holds no training negative. Measured
        (benchmarks/figure3_study.py, table 2): a constant split trades few positives against many
        (ensemble on digits, p = 8 / 64: 0.25 gives 0.55 / 0.75, 0.5 gives 0.60 / 0.71, "auto"
        0.60 / 0.78); on the app's task (60 positives, boxes without training negatives) anything
        below 0.25 costs F1 (0.1: 0.81 vs 0.86 here, 0.89 vs 0.94 for the ensemble), hence the floor.
    split_scale : float > 0, default 4
        The scale of ``stop_infinite_split="auto"`` (8 measured the same within noise, table 2).
    n_sweeps : int, default 3
        Sweeps over a box's dims while bounds still change (1 = the original algorithm).
    class_weight : None, "tapered", "sqrt", "balanced" or dict, default "tapered"
        Multiplies sample weights per class. "balanced": both classes weigh the same in total;
        "sqrt": the square root of the balanced factors; a dict: ``{label: weight}`` for the labels
        of y (missing labels weigh 1); None: the original. "tapered" (p = number
        of positives): balanced up to 5 positives, then the positives' total weight is 5 / p of the
        negatives' (negatives keep their own weights), so one positive weighs ``n_neg * 5 / p**2``
        random negatives ((50 / p)**2 with 500). Why: the Gini growth admits a region when its
        weighted positives outweigh its negatives, so a positive's weight is how many negatives it
        can pull into a box; a few positives need a large one to grow a box beyond the seed, many
        need a small one or boxes over-grow. The best fixed weight on digits (ensemble; figure3_study
        table 1a) was 64 at p = 4-8, 8 at p = 16, 4 at p = 32 and 1 (the smallest tried) at p = 64,
        about 1 / p**2; under "sqrt" it falls only as 1 / sqrt(p) (2.8 at p = 64), and F1 fell after
        p = 32 (branches 0.58 -> 0.53 at p = 64, ensemble 0.75 -> 0.68). Class factors are computed
        from the weighted class totals, so a weight given to EVERY negative is re-balanced away
        (under "sqrt": partly); weights on some rows (e.g. user-marked negatives among random ones)
        act as expected.
    seed_positive : "centroid" or "random", default "centroid"
        The positive each box is grown from: the remaining positive nearest the remaining
        positives' (weighted) centroid (ties: the first row), or one drawn at random (the
        original; the ensemble's estimators keep it, their diversity needs it). Measured
        (figure3_study.py, tables 3 and 10): the app's task 0.86 vs 0.83 with random seeds; on
        digits the same within noise.
    retry_limit : int, default 5
        Stop after this many seeds in a row gave no valid box.
    post_tree : bool, default False
        Refine each impure box with a scikit-learn decision tree on the training rows it holds
        (the original's "postTree"); predictions then need the trees as well as the boxes.
    n_jobs : int or None, default None
        1 grows candidate boxes serially; anything else lets Numba use all its threads.
    random_state : None, int, numpy Generator, SeedSequence or RandomState
        Seeds every random choice (seed positives, subset draws, dim orders, post trees).

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels, sorted; the boxes describe ``classes_[1]``.
    quantizer_ : PerDimQuantizer or None
        The per-dim map from X to codes (None when X was uint8 codes).
    boxes_ (alias ``boxes``) : list of :class:`~.boxes.Box`
        The learnt boxes, in code space.
    box_set_ : :class:`~.boxes.BoxSet`
        The boxes as the scan and index kernels read them.
    box_stats_ : list of dict
        Per box: training positives / negatives covered (weight and count) and impurity.
    post_trees_ : list or None
        One sklearn tree or None per box when ``post_tree``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X was a DataFrame with string column names.
    subsets_ : list of tuples
        The feature subsets used.
    n_boxes_tried_ : int
        Seed iterations run.
    """

    _parameter_constraints: dict = {**BRANCH_PARAMETER_CONSTRAINTS, "post_tree": ["boolean"],
                                    "n_jobs": [None, Integral]}

    def __init__(self, subsets=None, *, max_boxes=30, max_evals="all", min_pts=None, min_samples_in_box=1,
                 early_stopping=True, stop_infinite=True, stop_infinite_split="auto", split_scale=4.0, n_sweeps=3,
                 class_weight="tapered", seed_positive="centroid", retry_limit=5, post_tree=False, n_jobs=None,
                 random_state=None):
        self.subsets = subsets
        self.max_boxes = max_boxes
        self.max_evals = max_evals
        self.min_pts = min_pts
        self.min_samples_in_box = min_samples_in_box
        self.early_stopping = early_stopping
        self.stop_infinite = stop_infinite
        self.stop_infinite_split = stop_infinite_split
        self.split_scale = split_scale
        self.n_sweeps = n_sweeps
        self.class_weight = class_weight
        self.seed_positive = seed_positive
        self.retry_limit = retry_limit
        self.post_tree = post_tree
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # boxes around one class, against the other
        return tags

    # -- training ------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> "DecisionBranches":
        """Learn boxes around the rows of ``classes_[1]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            uint8 codes, or any numeric data (quantized per dim, see the class docs); no NaN or infinity.
        y : array-like of shape (n_samples,)
            Two distinct labels.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights (``class_weight`` multiplies them); both classes need some.

        Returns
        -------
        self : DecisionBranches
        """
        check_split_not_bool(self.stop_infinite_split)
        codes, y01, w, subsets = prepare_fit(self, X, y, sample_weight)
        w = w * class_weight_factors(encode_class_weight(self.class_weight, self.classes_), y01, w)
        rng = check_random_state(self.random_state)
        self._fit_weighted(codes, y01, w, subsets, rng)
        if self.post_tree:
            self._fit_post_trees(codes, y01, w, rng)
        return self

    def _fit_weighted(self, X, y, w, subsets, rng):
        """Box-covering loop on validated inputs (shared with the ensemble, which skips validation)."""
        sub_dims, sub_sizes = pad_subsets(subsets)
        n_eval = resolve_max_evals(self.max_evals, len(subsets))
        min_pts = resolve_min_pts(self.min_pts, int((y == 1).sum()))
        split_clean, split_mixed = resolve_split(self.stop_infinite_split, self.split_scale, n_positives(y, w))
        grow = grow_candidates_serial if self.n_jobs == 1 else grow_candidates_parallel
        data_min = X.min(axis=0).astype(np.int64)
        data_max = X.max(axis=0).astype(np.int64)

        active = np.arange(X.shape[0])
        boxes, stats = [], []
        retries = tries = 0
        out_lo = np.zeros((n_eval, MAX_BOX_DIMS), np.int64)
        out_hi = np.zeros((n_eval, MAX_BOX_DIMS), np.int64)
        out_score = np.zeros(n_eval, np.float64)
        while len(boxes) < self.max_boxes and active.shape[0] > 1:
            yw = y[active]
            pos_rows = np.flatnonzero(yw == 1)
            if pos_rows.shape[0] == 0:
                break
            tries += 1
            Xw, ww = X[active], w[active]
            Xp = Xw[pos_rows]
            if self.seed_positive == "centroid":  # nearest the (weighted) centroid; ties: first row
                centre = np.average(Xp.astype(np.float64), axis=0, weights=ww[pos_rows])
                seed = int(pos_rows[np.argmin(((Xp - centre) ** 2).sum(axis=1))])
            else:
                seed = int(rng.choice(pos_rows))
            chosen = rng.choice(len(subsets), size=n_eval, replace=False)
            keys = rng.random((n_eval, MAX_BOX_DIMS))
            keys[np.arange(MAX_BOX_DIMS)[None, :] >= sub_sizes[chosen][:, None]] = np.inf
            orders = np.argsort(keys, axis=1).astype(np.int64)
            pos_min, pos_max = Xp.min(axis=0).astype(np.int64), Xp.max(axis=0).astype(np.int64)
            grow(Xw, yw, ww, sub_dims[chosen], sub_sizes[chosen], orders, seed, min_pts, self.early_stopping,
                 self.stop_infinite, split_clean, self.n_sweeps, self.min_samples_in_box,
                 pos_min, pos_max, data_min, data_max, out_lo, out_hi, out_score)
            if not np.isfinite(out_score).any():
                retries += 1
                if retries >= self.retry_limit:
                    break
                continue
            retries = 0
            # lowest impurity (rounding noise counts as a tie), then fewer dims, then first drawn
            best = np.lexsort((np.arange(n_eval), sub_sizes[chosen], out_score if SCORE_TIE_DECIMALS is None else np.round(out_score, SCORE_TIE_DECIMALS)))[0]
            k = int(sub_sizes[chosen[best]])
            box = Box(tuple(sub_dims[chosen[best], :k]), np.clip(out_lo[best, :k], 0, 255), np.clip(out_hi[best, :k], 0, 255))
            inside = box.contains(Xw)
            if split_mixed != split_clean and self.stop_infinite and (inside & (yw == 0)).any():
                # a box holding a training negative: grow it again with the (smaller) mixed-box split
                one = np.array([best])
                lo1, hi1, score1 = out_lo[one].copy(), out_hi[one].copy(), out_score[one].copy()
                grow_candidates_serial(Xw, yw, ww, sub_dims[chosen[one]], sub_sizes[chosen[one]], orders[one], seed,
                                       min_pts, self.early_stopping, self.stop_infinite, split_mixed, self.n_sweeps,
                                       self.min_samples_in_box, pos_min, pos_max, data_min, data_max, lo1, hi1, score1)
                if np.isfinite(score1[0]):
                    out_score[best] = score1[0]
                    box = Box(box.dims, np.clip(lo1[0, :k], 0, 255), np.clip(hi1[0, :k], 0, 255))
                    inside = box.contains(Xw)
            stats.append({
                "impurity": float(out_score[best]),
                "n_pos": int((inside & (yw == 1)).sum()), "n_neg": int((inside & (yw == 0)).sum()),
                "w_pos": float(ww[inside & (yw == 1)].sum()), "w_neg": float(ww[inside & (yw == 0)].sum()),
            })
            boxes.append(box)
            active = active[~inside]

        self.subsets_ = subsets
        self.n_features_in_ = X.shape[1]
        self.boxes_ = boxes
        self.box_stats_ = stats
        self.n_boxes_tried_ = tries
        self.post_trees_ = None
        self.box_set_ = BoxSet.from_estimators([boxes])
        return self

    def _fit_post_trees(self, X, y, w, rng):
        """One unconstrained decision tree per impure box, on all training rows inside it."""
        from sklearn.tree import DecisionTreeClassifier

        trees = []
        for box in self.boxes_:
            inside = box.contains(X)
            yi = y[inside]
            if yi.min() == yi.max():
                trees.append(None)
                continue
            tree = DecisionTreeClassifier(random_state=int(rng.integers(2**31 - 1)))
            trees.append(tree.fit(X[inside], yi, sample_weight=w[inside]))
        self.post_trees_ = trees

    # -- using the model -----------------------------------------------------------------------
    @property
    def boxes(self) -> list[Box]:
        """The learnt boxes (after ``fit``)."""
        check_is_fitted(self)
        return self.boxes_

    def predict(self, X) -> np.ndarray:
        """``classes_[1]`` for the rows inside the model (see :meth:`predict_mask`), else ``classes_[0]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,), labels from ``classes_``
        """
        mask = self.predict_mask(X)  # checks that the model is fitted
        return self.classes_[mask.astype(np.intp)]

    def predict_mask(self, X) -> np.ndarray:
        """Boolean mask: True where a row lies inside at least one box (and its post tree accepts it).

        The rows ``predict`` labels ``classes_[1]``; on uint8 codes exactly the rows the engine's
        scan, index and :func:`~.apply.apply_model` return.
        """
        return self._mask_codes(transform_codes(self, X))

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2) array, columns in the order of ``classes_``: column 1 is 1.0 inside the model
        (:meth:`predict_mask`) and 0.0 outside.

        A single branch model is a hard classifier: a row is in a box or not, and the training
        statistics of a box (``box_stats_``) describe the rows it was grown on, not the rows it
        generalises to. (The engine ranks a single model's hits by their depth in the best box,
        :mod:`.boxes`: a ranking score, not a probability.) For graded probabilities use
        :class:`~.ensemble.BranchEnsemble`, the fraction of its estimators voting yes.
        """
        p = self.predict_mask(X).astype(np.float64)
        return np.column_stack([1.0 - p, p])

    def _mask_codes(self, codes: np.ndarray) -> np.ndarray:
        """:meth:`predict_mask` on validated uint8 codes (the ensemble calls it once per estimator)."""
        out = np.zeros(codes.shape[0], bool)
        for i, box in enumerate(self.boxes_):
            out |= self._box_members(i, box, codes)
        return out

    def _box_members(self, i: int, box: Box, X: np.ndarray) -> np.ndarray:
        inside = box.contains(X)
        tree = self.post_trees_[i] if self.post_trees_ is not None else None
        if tree is not None and inside.any():
            rows = np.flatnonzero(inside)
            inside[rows] = tree.predict(X[rows]) == 1
        return inside

    def refine_hits(self, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Keep the ids (rows of ``codes`` inside the union of boxes) that a box's post tree accepts.

        Identity without post trees. Index and scan answer the boxes; this step applies the trees,
        box by box, to the rows each box returned, so the result equals :meth:`predict_mask`.
        """
        if self.post_trees_ is None or all(t is None for t in self.post_trees_) or ids.shape[0] == 0:
            return np.ones(ids.shape[0], bool)
        rows = np.asarray(codes[ids])
        keep = np.zeros(ids.shape[0], bool)
        for i, box in enumerate(self.boxes_):
            keep |= self._box_members(i, box, rows)
        return keep

    def to_rules(self, feature_names=None) -> list[str]:
        """One readable rule per box, e.g. ``"12 <= f3 <= 80 AND f7 >= 140"``.

        Bounds are codes (0..255); for a model fitted on non-uint8 X, ``quantizer_.dequantize``
        gives the X value at the centre of a code's bucket.
        """
        return [b.to_rule(feature_names) for b in self.boxes]

    def to_sql(self, table: str = "items", *, id_column: str = "id", column_prefix: str = "f",
               per_box: bool = False) -> str:
        """The model as SQL over a table with one column per code dim (``f0`` .. ``f31``).

        Default: one ``SELECT`` whose ``WHERE`` ORs one parenthesised conjunction per box.
        ``per_box=True``: one statement per box, separated by ``;`` (what the original showed).
        Post trees, if any, are not expressible in SQL; the text says so in a comment.
        """
        boxes = self.boxes
        head = f"SELECT {sql_identifier(id_column)} FROM {sql_identifier(table)}"
        note = ""
        if self.post_trees_ is not None and any(t is not None for t in self.post_trees_):
            note = "-- note: this model also filters each box with a decision tree, which SQL does not show\n"
        if not boxes:
            return note + f"{head}\nWHERE FALSE;"
        conds = [b.to_sql_condition(column_prefix) for b in boxes]
        if per_box:
            return note + ";\n".join(f"{head}\nWHERE {c}" for c in conds) + ";"
        return note + head + "\nWHERE " + "\n   OR ".join(f"({c})" for c in conds) + ";"

    def to_dict(self) -> dict:
        """JSON-friendly description of the fitted boxes (post trees are not included)."""
        return {"type": "DecisionBranches", "n_features": self.n_features_in_, "boxes": [b.to_dict() for b in self.boxes]}
