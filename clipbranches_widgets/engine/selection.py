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
        The first family listed wins unless a later one's held-out F1 is higher by more than this.
        (Measured on digits, ``benchmarks/rounds.py``: linear first. A search session orders the
        ensemble first, see ``session.AUTO_FAMILIES``: its first round holds about 60 positives of
        one narrow look, where the ensemble's answers are the better ones.)
    n_splits : int, default 3
    random_state : None, int or Generator

    Attributes: chosen_ (name), estimator_ (fitted), cv_f1_ (name -> held-out F1; empty when the
    few-positives rule chose).
    """

    def __init__(self, families=None, *, n_splits: int = 3, margin: float = 0.03, random_state=None):
        self.families = families
        self.margin = margin
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
            self.cv_f1_ = {name: held_out_f1(held_out_membership(make, X, y, sample_weight, n_splits=self.n_splits,
                                                                 random_state=seed), y)
                           for name, make in families.items()}
            best = max(self.cv_f1_.values())
            self.chosen_ = next(n for n in families if self.cv_f1_[n] >= best - self.margin)
        self.estimator_ = families[self.chosen_](seed).fit(X, y, sample_weight=sample_weight)
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "estimator_"):
            raise ValueError("this BestFamily is not fitted yet; call fit(X, y) first")
        return np.asarray(self.estimator_.predict(X)).astype(bool)
