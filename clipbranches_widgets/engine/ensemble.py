"""``BranchEnsemble``: bagged decision-branch models; the score is the fraction of estimators voting yes.

Unlike the original app (which counted boxes, so one estimator with overlapping boxes voted many
times, and started a process pool per request), votes are counted once per estimator and the
estimators train in a thread pool: the Numba kernels release the GIL, so 25 models fit in parallel
without process start-up or pickling.

Bootstrap samples are drawn as per-row counts and passed as sample weights (a row drawn twice
weighs 2), which is exactly bagging without copying rows.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, RealNotInt
from sklearn.utils.validation import check_is_fitted

from ._validation import check_random_state
from .boxes import BoxSet
from .branches import (BRANCH_PARAMETER_CONSTRAINTS, DecisionBranches, check_split_not_bool, class_weight_factors,
                       encode_class_weight, prepare_fit, transform_codes)


class BranchEnsemble(ClassifierMixin, BaseEstimator):
    """Bagging of :class:`~.branches.DecisionBranches`; positive when more than half the estimators agree.

    A binary scikit-learn classifier with the inputs of :class:`~.branches.DecisionBranches` (uint8
    codes as they are, any other numeric X quantized per dim into ``quantizer_``; any two labels,
    the boxes describing ``classes_[1]``). ``predict_proba`` is the fraction of estimators voting
    for ``classes_[1]``, the score the engine ranks an ensemble's hits by.

    Parameters
    ----------
    n_estimators : int, default 25
    subsets : list of tuples, optional
        As in :class:`DecisionBranches` (default: :func:`~.subsets.default_subsets` for the width of X).
    max_samples : None, int or float in (0, 1], default None
        Bootstrap sample size (None = as many rows as the training set).
    bootstrap_positives : bool, default False
        True resamples the positives too (classic bagging, the original). False keeps every
        positive once in every sample and resamples only the negatives, so the user's few
        positives are never lost.
    max_boxes, min_samples_in_box, early_stopping, retry_limit : as in :class:`DecisionBranches`
        (defaults 30, 1, True, 5), for every estimator.
    max_evals : default 0.5
        Subsets tried per box in each estimator (the original's ensemble setting).
    stop_infinite : bool, default True
        Close open sides part-way (see DecisionBranches). The original's ensemble used False (open
        sides extend to 0 / 255): on digits F1 0.71 / 0.70 vs 0.74 / 0.78 at p = 32 / 64, on the
        app's task 0.93 vs 0.94 (benchmarks/figure3_study.py, table 2).
    stop_infinite_split, split_scale : as in :class:`DecisionBranches`; defaults "auto" and 4:
        open sides closed ``min(0.5, 4 / (p + 1))`` of the way, at least 0.25 for a box without a
        training negative. With a constant 0.25 the ensemble is flat from p = 32 on digits and lower
        at few positives (p = 4 / 8 / 64: 0.12 / 0.55 / 0.75 vs 0.24 / 0.60 / 0.78; table 2).
    class_weight, min_pts, n_sweeps, seed_positive : as in :class:`DecisionBranches`; defaults
        "tapered", None, 1, "random" (the original used None, "auto", 1, random seeds). "tapered"
        keeps the few-positive gain of balanced weights and stops boxes over-growing as positives
        grow: on digits (figure3_digits.py, 5 draws per class) F1 at p = 8 / 32 / 48 / 64 is
        0.589 / 0.755 / 0.781 / 0.784 vs 0.386 / 0.753 / 0.713 / 0.680 with the previous "sqrt"
        weights (which weigh a positive 2.8 random negatives at p = 64) and 0.25 split; nearest
        neighbours score 0.486 at p = 8. Centroid seeds make the estimators alike (table 3: 0.72 / 0.77 vs
        0.74 / 0.78 at p = 32 / 64).
    n_jobs : int or None, default None
        Threads training estimators: None or -1 = all cores, -2 = all but one (joblib's convention).
        Each estimator grows its candidate boxes serially.
    random_state : None, int, numpy Generator, SeedSequence or RandomState
        One seed per estimator is drawn from it up front, so results do not depend on thread timing.

    Post trees (``DecisionBranches(post_tree=True)``) are not offered: the vote is answered from the
    boxes alone, by the scan and the index as by ``predict``.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    quantizer_ : PerDimQuantizer or None
    estimators_ : list of DecisionBranches
        Fitted on the ensemble's codes; each also answers raw X (same ``classes_`` and ``quantizer_``).
    box_set_ : :class:`~.boxes.BoxSet`
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X was a DataFrame with string column names.
    subsets_ : list of tuples
    """

    _parameter_constraints: dict = {
        **BRANCH_PARAMETER_CONSTRAINTS,
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [None, Interval(Integral, 1, None, closed="left"), Interval(RealNotInt, 0, 1, closed="right")],
        "bootstrap_positives": ["boolean"],
        "n_jobs": [None, Integral],
    }

    #: the DecisionBranches parameters every estimator takes from the ensemble
    _BRANCH_PARAMS = ("max_boxes", "max_evals", "min_pts", "min_samples_in_box", "early_stopping", "stop_infinite",
                      "stop_infinite_split", "split_scale", "n_sweeps", "class_weight", "seed_positive", "retry_limit")

    def __init__(self, n_estimators=25, subsets=None, *, max_samples=None, bootstrap_positives=False, max_boxes=30,
                 max_evals=0.5, min_pts=None, min_samples_in_box=1, early_stopping=True, stop_infinite=True,
                 stop_infinite_split="auto", split_scale=4.0, n_sweeps=1, class_weight="tapered",
                 seed_positive="random", retry_limit=5, n_jobs=None, random_state=None):
        self.n_estimators = n_estimators
        self.subsets = subsets
        self.max_samples = max_samples
        self.bootstrap_positives = bootstrap_positives
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
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # boxes around one class, against the other
        return tags

    def _bootstrap_size(self, n: int) -> int:
        m = self.max_samples
        if m is None:
            return n
        if isinstance(m, Integral):
            return int(m)
        return max(1, int(round(m * n)))

    def _n_workers(self) -> int:
        cpus = os.cpu_count() or 1
        if self.n_jobs is None:
            return cpus
        return int(self.n_jobs) if self.n_jobs >= 1 else max(1, cpus + 1 + int(self.n_jobs))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None) -> "BranchEnsemble":
        """Fit ``n_estimators`` branch models on bootstrap samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            uint8 codes, or any numeric data (quantized per dim); no NaN or infinity.
        y : array-like of shape (n_samples,)
            Two distinct labels.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights; a bootstrap sample multiplies them by each row's draw count.

        Returns
        -------
        self : BranchEnsemble
        """
        check_split_not_bool(self.stop_infinite_split)
        X, y, w, subsets = prepare_fit(self, X, y, sample_weight)
        class_weight = encode_class_weight(self.class_weight, self.classes_)
        rng = check_random_state(self.random_state)
        n, m = X.shape[0], self._bootstrap_size(X.shape[0])
        seeds = rng.integers(0, 2**63 - 1, size=self.n_estimators)
        branch_params = {name: getattr(self, name) for name in self._BRANCH_PARAMS}

        def fit_one(seed):
            est_rng = np.random.default_rng(seed)
            while True:  # redraw until the sample holds both classes
                counts = np.bincount(est_rng.integers(0, n, size=m), minlength=n)
                if not self.bootstrap_positives:
                    counts[y == 1] = 1
                rows = np.flatnonzero(counts)
                if 0 < y[rows].sum() < rows.shape[0]:
                    break
            yb = y[rows]
            wb = w[rows] * counts[rows]
            wb = wb * class_weight_factors(class_weight, yb, wb)
            est = DecisionBranches(subsets, n_jobs=1, random_state=est_rng, **branch_params)
            est._fit_weighted(X[rows], yb, wb, subsets, est_rng)
            est.classes_, est.quantizer_ = self.classes_, self.quantizer_  # so it answers raw X as well
            if hasattr(self, "feature_names_in_"):
                est.feature_names_in_ = self.feature_names_in_
            return est

        workers = self._n_workers()
        if workers == 1:
            self.estimators_ = [fit_one(s) for s in seeds]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                self.estimators_ = list(pool.map(fit_one, seeds))
        self.subsets_ = subsets
        self.box_set_ = BoxSet.from_estimators([e.boxes_ for e in self.estimators_])
        return self

    def _votes(self, X) -> np.ndarray:
        """Per row of X: how many estimators' boxes contain it (int64)."""
        codes = transform_codes(self, X)
        votes = np.zeros(codes.shape[0], np.int64)
        for est in self.estimators_:
            votes += est._mask_codes(codes)
        return votes

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2) array; column 1 = the fraction of ESTIMATORS whose boxes contain the row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, 2), columns in the order of ``classes_``
        """
        p = self._votes(X) / len(self.estimators_)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X) -> np.ndarray:
        """The vote margin: (votes for ``classes_[1]`` - votes against) / n_estimators, in [-1, 1].

        Positive exactly where :meth:`predict` says ``classes_[1]``; ``2 * predict_proba(X)[:, 1] - 1``.
        """
        return 2.0 * self._votes(X) / len(self.estimators_) - 1.0

    def predict_mask(self, X) -> np.ndarray:
        """Boolean mask: True where more than half of the estimators vote for ``classes_[1]``.

        On uint8 codes exactly the rows the engine's scan, index and :func:`~.apply.apply_model` return.
        """
        return 2 * self._votes(X) > len(self.estimators_)

    def predict(self, X) -> np.ndarray:
        """``classes_[1]`` where more than half of the estimators vote for it, else ``classes_[0]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,), labels from ``classes_``
        """
        mask = self.predict_mask(X)  # checks that the model is fitted
        return self.classes_[mask.astype(np.intp)]

    @property
    def boxes(self):
        """All boxes of all estimators (use ``estimators_[i].boxes`` for one estimator's)."""
        check_is_fitted(self)
        return [b for e in self.estimators_ for b in e.boxes_]

    def to_dict(self) -> dict:
        """JSON-friendly description of every estimator's boxes."""
        check_is_fitted(self)
        return {"type": "BranchEnsemble", "n_features": self.n_features_in_,
                "estimators": [e.to_dict() for e in self.estimators_]}
