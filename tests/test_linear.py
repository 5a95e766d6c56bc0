"""LinearCodes (logistic regression on the codes, applied by one pass) and the cross-validation behind
estimates and the automatic choice (engine.selection)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clipbranches_widgets.engine import BranchEnsemble
from clipbranches_widgets.engine.linear import LinearCodes, centred
from clipbranches_widgets.engine.selection import (FEW_POSITIVES, BestFamily, f1_difference_se, held_out_f1,
                                                  held_out_membership, stratified_folds)


def _task(seed=0, n=800):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, 32)).astype(np.uint8)
    score = X[:, 0].astype(int) - X[:, 5] + rng.normal(0, 30, n)
    return X, (score > 60).astype(np.int8), rng.uniform(0.5, 2.0, n)


@pytest.mark.parametrize("class_weight", ["balanced", None, {0: 1.0, 1: 3.0}])
def test_newton_fit_matches_scikit_learn(class_weight):
    X, y, w = _task()
    ours = LinearCodes(C=0.5, class_weight=class_weight).fit(X, y, sample_weight=w)
    ref = LogisticRegression(C=0.5, class_weight=class_weight, tol=1e-10, max_iter=10000).fit(centred(X).astype(np.float64), y, sample_weight=w)
    assert np.abs(ours.coef_ - ref.coef_[0]).max() < 2e-3
    assert abs(ours.intercept_ - ref.intercept_[0]) < 2e-2
    assert np.mean(ours.predict(X) == ref.predict(centred(X)).astype(bool)) > 0.995


def test_search_is_one_pass_equal_to_predict_and_ranked_by_probability():
    X, y, _ = _task(1)
    model = LinearCodes().fit(X, y)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (5000, 32)).astype(np.uint8)
    found = model.search(codes, chunk_rows=777)  # several chunks
    assert np.array_equal(np.sort(found.ids), np.flatnonzero(model.predict(codes)))
    assert np.allclose(found.scores, model.predict_proba(codes[found.ids])[:, 1], atol=1e-5)
    assert np.all(np.diff(found.scores) <= 0) and found.stats["count"] == found.count
    assert model.search(codes[:0]).count == 0
    rules = model.to_rules()
    assert rules[0].startswith("score = ") and "f0" in rules[0] and "f5" in rules[0]


def test_bad_input_gets_a_clear_error():
    X, y, _ = _task()
    with pytest.raises(ValueError, match="not fitted"):
        LinearCodes().predict(X)
    with pytest.raises(ValueError, match="no negatives"):
        LinearCodes().fit(X, np.ones(len(y)))
    with pytest.raises(ValueError, match="'C' parameter of LinearCodes must be"):
        LinearCodes(C=0).fit(X, y)
    with pytest.raises(ValueError, match="'C' parameter of LinearCodes must be"):
        LinearCodes(C=np.inf).fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        LinearCodes(class_weight="sqrt").fit(X, y)
    with pytest.raises(ValueError, match="Invalid parameter 'alpha'"):
        LinearCodes().set_params(alpha=1)


def test_float_input_is_quantized_and_codes_are_answered_by_search():
    """Non-uint8 X goes through a per-dim quantizer fitted in fit; uint8 X is used as codes unchanged,
    and on codes predict_mask is exactly the rows search returns."""
    X, y, _ = _task(8)
    model = LinearCodes().fit(X, y)
    assert model.quantizer_ is None and model.n_features_in_ == 32 and model.classes_.tolist() == [0, 1]
    assert model.n_iter_ < 15
    rng = np.random.default_rng(9)
    Xf = rng.normal(size=(600, 7))
    yf = np.where(Xf[:, 0] - 2 * Xf[:, 3] > 0.3, "yes", "no")
    fm = LinearCodes().fit(Xf[:400], yf[:400])
    assert fm.quantizer_ is not None and fm.classes_.tolist() == ["no", "yes"]
    assert np.mean(fm.predict(Xf[400:]) == yf[400:]) > 0.9
    found = fm.search(fm.quantizer_.quantize(Xf))  # the engine's path: the catalog stores the codes
    assert np.array_equal(np.sort(found.ids), np.flatnonzero(fm.predict_mask(Xf)))
    assert np.allclose(found.scores, fm.predict_proba(Xf[found.ids])[:, 1], atol=1e-5)
    assert np.array_equal(fm.predict(Xf), fm.classes_[fm.predict_mask(Xf).astype(int)])


class _Memoriser:
    """Predicts positive exactly the rows it was trained on as positive: held-out rows never are."""

    def __init__(self, seed):
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        self.known = {bytes(row) for row in X[y == 1]}
        return self

    def predict(self, X):
        return np.array([bytes(row) in self.known for row in X])


def test_held_out_membership_never_predicts_a_row_with_a_model_trained_on_it():
    X, y, _ = _task(3, 300)
    held = held_out_membership(_Memoriser, X, y, n_splits=3, random_state=0)
    assert (held[y == 1] == 0).all() and set(np.unique(held)) <= {0, 1}
    # in sample, the memoriser would call every positive positive
    assert _Memoriser(0).fit(X, y).predict(X)[y == 1].all()
    folds = stratified_folds(y, 3, random_state=0)
    for f in range(3):  # each class spread evenly over the folds
        assert abs((y[folds == f] == 1).sum() - (y == 1).sum() / 3) <= 1


def test_held_out_membership_needs_two_rows_of_each_class():
    X, y, _ = _task(4, 50)
    y[:] = 0
    y[0] = 1
    assert (held_out_membership(lambda s: LinearCodes(), X, y) == -1).all()


def test_best_family_picks_by_held_out_f1_with_a_margin():
    X, y, _ = _task(5)
    auto = BestFamily(random_state=0).fit(X, y)
    assert set(auto.cv_f1_) == {"ensemble", "linear"}
    assert list(BestFamily.default_families()) == ["linear", "ensemble"]
    # a linear concept: the linear family is clearly better held out and gets chosen
    assert auto.chosen_ == "linear" and auto.cv_f1_["linear"] > auto.cv_f1_["ensemble"] + 0.03
    assert np.array_equal(auto.predict(X), auto.estimator_.predict(X))
    only = BestFamily({"ensemble": lambda s: BranchEnsemble(5, random_state=s)}, random_state=0).fit(X, y)
    assert only.chosen_ == "ensemble" and 0 <= held_out_f1(np.array([1, 0, -1]), np.array([1, 1, 0])) <= 1


def test_best_family_takes_the_linear_model_below_few_positives():
    X, y, _ = _task(6)
    few = np.flatnonzero(y == 1)[:FEW_POSITIVES - 1]
    keep = np.r_[few, np.flatnonzero(y == 0)]
    auto = BestFamily(random_state=0).fit(X[keep], y[keep])
    assert auto.chosen_ == "linear" and auto.cv_f1_ == {}


def test_a_later_family_must_win_by_the_margin_and_by_its_standard_errors():
    rng = np.random.default_rng(7)
    X = rng.integers(0, 256, (900, 32)).astype(np.uint8)
    y = ((X[:, 3] > 100) & (X[:, 3] < 160) & (X[:, 9] > 80)).astype(np.int8)  # a box: no half-space fits it
    boxes = BestFamily(random_state=0).fit(X, y)
    assert boxes.chosen_ == "ensemble" and boxes.cv_f1_["ensemble"] > boxes.cv_f1_["linear"] + 0.03
    # the same lead held to an absurd number of standard errors keeps the first family
    assert BestFamily(n_se=1e6, random_state=0).fit(X, y).chosen_ == "linear"
    assert BestFamily(margin=1.0, random_state=0).fit(X, y).chosen_ == "linear"


def test_f1_difference_se_is_zero_for_equal_predictions_and_grows_with_disagreement():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(np.int8)
    a = np.where(rng.random(400) < 0.85, y, 1 - y).astype(np.int8)
    assert f1_difference_se(a, a, y, random_state=0) == 0.0
    b_close = np.where(rng.random(400) < 0.97, a, 1 - a).astype(np.int8)
    b_far = np.where(rng.random(400) < 0.7, a, 1 - a).astype(np.int8)
    close, far = (f1_difference_se(a, b, y, random_state=0) for b in (b_close, b_far))
    assert 0 < close < far < 0.2
    b_far[:10] = -1  # rows never held out by one family are left out of both
    assert f1_difference_se(a, b_far, y, random_state=0) > 0
