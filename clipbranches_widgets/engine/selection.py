"""Cross-validation on a user's marks: held-out membership, the input of estimates and model choice.

``held_out_membership`` answers, for every training row, "would a model trained WITHOUT this row
call it positive?". The session turns that into an estimate of the answer's quality
(:func:`clipbranches_widgets.exploration.estimate_quality`) and picks, per refine, the model family
whose estimated F1 is highest. Folds are stratified so every fold trains on both classes.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_random_state

#: below this many positives the automatic choice takes the linear model without cross-validating:
#: folds then hold 1-4 positives each and cannot tell the families apart, and a linear model
#: generalises from a few examples where boxes cannot (digits, benchmarks/rounds.py: p = 4 / 8,
#: linear 0.71 / 0.80 vs ensemble 0.25 / 0.59 mean F1)
FEW_POSITIVES = 12


def stratified_folds(y: np.ndarray, n_splits: int, random_state=None) -> np.ndarray:
    """A fold number in 0..n_splits-1 per row, each class spread evenly over the folds."""
    rng = check_random_state(random_state)
    folds = np.empty(y.shape[0], np.int64)
    for cls in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == cls))
        folds[rows] = np.arange(rows.shape[0]) % n_splits
    return folds


def held_out_membership(make_model, X, y, sample_weight=None, *, n_splits: int = 4, random_state=None) -> np.ndarray:
    """For each row: 1 if a model fitted on the other folds predicts it positive, 0 if not, -1 when
    no fold could be fitted for it (a class missing from its training folds).

    make_model(seed) returns an unfitted model with ``fit(X, y, sample_weight)`` and ``predict(X)``
    (a boolean mask or 0/1 labels). ``n_splits`` is reduced to the smaller class size (>= 2 needed).
    """
    y = np.asarray(y).astype(np.int8)
    w = np.ones(y.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    rng = check_random_state(random_state)
    out = np.full(y.shape[0], -1, np.int8)
    k = min(int(n_splits), int((y == 1).sum()), int((y == 0).sum()))
    if k < 2:
        return out
    folds = stratified_folds(y, k, rng)
    for f in range(k):
        test = folds == f
        train = ~test
        if y[train].min() == y[train].max():
            continue
        model = make_model(int(rng.integers(2**31 - 1))).fit(X[train], y[train], sample_weight=w[train])
        out[test] = np.asarray(model.predict(X[test])).astype(bool)
    return out


def held_out_f1(held: np.ndarray, y: np.ndarray) -> float:
    """F1 of held-out predictions (rows with -1, never held out, are skipped)."""
    ok = held >= 0
    pred, truth = held[ok] == 1, np.asarray(y)[ok] == 1
    tp = int((pred & truth).sum())
    return 0.0 if tp == 0 else 2 * tp / (int(pred.sum()) + int(truth.sum()))


def f1_difference_se(held_a: np.ndarray, held_b: np.ndarray, y: np.ndarray, *, n_boot: int = 200,
                     random_state=None) -> float:
    """Bootstrap standard error of held_out_f1(held_a) - held_out_f1(held_b) over the rows both held out.

    The two families were cross-validated on the same rows, so the rows are resampled in pairs: the
    error is that of the difference, smaller than either F1's own error.
    """
    rng = check_random_state(random_state)
    ok = (held_a >= 0) & (held_b >= 0)
    a, b, truth = held_a[ok] == 1, held_b[ok] == 1, np.asarray(y)[ok] == 1
    if truth.shape[0] < 2:
        return 0.0
    rows = rng.integers(0, truth.shape[0], (n_boot, truth.shape[0]))

    def f1(pred, t):
        tp = (pred & t).sum(axis=1)
        return np.where(tp == 0, 0.0, 2 * tp / np.maximum(pred.sum(axis=1) + t.sum(axis=1), 1))

    return float(np.std(f1(a[rows], truth[rows]) - f1(b[rows], truth[rows]), ddof=1))


class BestFamily:
    """The model family with the best cross-validated F1 on the training rows, refitted on all.

    The same choice a search session makes for ``refine("auto")`` before any suggestion page has
    been marked, for use on plain ``X, y`` (benchmarks, notebooks).

    Parameters
    ----------
    families : dict name -> factory(seed) of an unfitted model, optional
        Default: linear, then ensemble (engine defaults); a "linear" entry is taken outright below
        FEW_POSITIVES positives.
    margin : float, default 0.03
        The first family listed wins unless a later one's held-out F1 is higher by more than this
        AND by more than ``n_se`` bootstrap standard errors of the difference
        (:func:`f1_difference_se`). (Measured on digits, ``benchmarks/rounds.py``: linear first. A
        search session orders the ensemble first, see ``session.AUTO_FAMILIES``: its first round
        holds about 60 positives of one narrow look, where the ensemble's answers are the better ones.)
    n_se : float, default 2.0
        How many standard errors a later family must win by: with 12-22 positives (4-7 a fold) a
        margin alone let noise pick the ensemble over a better linear model (digits, p = 12 / 22:
        0.805 / 0.832 vs linear 0.829 / 0.856; with the 2-SE rule 0.829 / 0.852).
    n_splits : int, default 3
    random_state : None, int or Generator

    Attributes: chosen_ (name), estimator_ (fitted), cv_f1_ (name -> held-out F1; empty when the
    few-positives rule chose).
    """

    def __init__(self, families=None, *, n_splits: int = 3, margin: float = 0.03, n_se: float = 2.0,
                 random_state=None):
        self.families = families
        self.margin = margin
        self.n_se = n_se
        self.n_splits = n_splits
        self.random_state = random_state

    @staticmethod
    def default_families() -> dict:
        from .ensemble import BranchEnsemble
        from .linear import LinearCodes

        return {"linear": lambda s: LinearCodes(random_state=s),
                "ensemble": lambda s: BranchEnsemble(random_state=s)}

    def fit(self, X, y, sample_weight=None) -> "BestFamily":
        families = self.default_families() if self.families is None else dict(self.families)
        if not families:
            raise ValueError("families must name at least one model factory")
        rng = check_random_state(self.random_state)
        seed = int(rng.integers(2**31 - 1))
        if "linear" in families and int((np.asarray(y) == 1).sum()) < FEW_POSITIVES:
            self.cv_f1_ = {}
            self.chosen_ = "linear"
        else:
            held = {name: held_out_membership(make, X, y, sample_weight, n_splits=self.n_splits, random_state=seed)
                    for name, make in families.items()}
            self.cv_f1_ = {name: held_out_f1(h, y) for name, h in held.items()}
            self.chosen_ = list(families)[0]
            for name in list(families)[1:]:  # a later family must win clearly: by the margin and n_se errors
                lead = self.cv_f1_[name] - self.cv_f1_[self.chosen_]
                if lead > self.margin and lead > self.n_se * f1_difference_se(held[name], held[self.chosen_], y,
                                                                              random_state=rng):
                    self.chosen_ = name
        self.estimator_ = families[self.chosen_](seed).fit(X, y, sample_weight=sample_weight)
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "estimator_"):
            raise ValueError("this BestFamily is not fitted yet; call fit(X, y) first")
        return np.asarray(self.estimator_.predict(X)).astype(bool)
