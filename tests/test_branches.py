"""DecisionBranches and BranchEnsemble: API contract, determinism, semantics, bad input."""

import numpy as np
import pytest

from clipbranches_widgets.engine import LinearCodes, Box, BranchEnsemble, DecisionBranches, default_subsets, feature_subsets


def clustered_codes(n, n_clusters=8, dim=32, noise=0.12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    z = centers[labels] + noise * rng.normal(size=(n, dim))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return np.clip(np.floor(127.5 * z + 128), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def task():
    codes, labels = clustered_codes(20000)
    rng = np.random.default_rng(1)
    pos = rng.choice(np.flatnonzero(labels == 2), 60, replace=False)
    neg = rng.choice(np.setdiff1d(np.arange(len(codes)), pos), 500, replace=False)
    X = codes[np.r_[pos, neg]]
    y = np.r_[np.ones(60, int), np.zeros(500, int)]
    return codes, labels, X, y


SUBSETS = feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)


def test_feature_subsets_contract():
    assert len(SUBSETS) == 104
    assert [len(s) for s in SUBSETS].count(4) == 64 and [len(s) for s in SUBSETS].count(8) == 8
    assert all(list(s) == sorted(set(s)) and max(s) < 32 for s in SUBSETS)
    assert len(set(SUBSETS)) == 104
    assert SUBSETS == feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)  # deterministic
    assert SUBSETS != feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=43)
    assert default_subsets(32) == SUBSETS
    assert default_subsets(3) == [(0, 1, 2)]
    with pytest.raises(ValueError, match="distinct subsets"):
        feature_subsets(5, {4: 6})


def test_fit_returns_self_and_boxes_cover_training_positives(task):
    codes, labels, X, y = task
    m = DecisionBranches(subsets=SUBSETS, random_state=0)
    assert m.fit(X, y) is m
    assert 1 <= len(m.boxes) <= 30
    for b in m.boxes:
        assert b.dims in SUBSETS and b.low.dtype == np.uint8 and (b.low <= b.high).all()
    pred = m.predict_mask(X)
    assert pred.dtype == bool and pred.shape == (len(X),)
    assert m.classes_.tolist() == [0, 1] and np.array_equal(m.predict(X), pred.astype(int))  # labels of y
    assert pred[y == 1].mean() > 0.9  # boxes cover (almost) every training positive
    truth = labels == 2
    p = m.predict_mask(codes)
    precision, recall = (p & truth).sum() / p.sum(), (p & truth).sum() / truth.sum()
    assert precision > 0.5 and recall > 0.5


def test_deterministic_and_seed_dependent(task):
    _, _, X, y = task
    a = DecisionBranches(subsets=SUBSETS, random_state=5).fit(X, y)
    b = DecisionBranches(subsets=SUBSETS, random_state=5).fit(X, y)
    c = DecisionBranches(subsets=SUBSETS, random_state=6).fit(X, y)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    serial = DecisionBranches(subsets=SUBSETS, random_state=5, n_jobs=1).fit(X, y)
    assert serial.to_dict() == a.to_dict()  # parallel and serial kernels agree


def test_no_global_rng_used(task):
    _, _, X, y = task
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    DecisionBranches(subsets=SUBSETS, random_state=1).fit(X, y)
    BranchEnsemble(5, subsets=SUBSETS, random_state=1).fit(X, y)
    assert np.array_equal(before, np.random.get_state()[1])


def test_sql_and_rules(task):
    _, _, X, y = task
    m = DecisionBranches(subsets=SUBSETS, random_state=0).fit(X, y)
    sql = m.to_sql("items")
    assert sql.startswith("SELECT id FROM items\nWHERE (") and sql.count(" OR ") == len(m.boxes) - 1
    assert m.to_sql("t", per_box=True).count("SELECT id FROM t") == len(m.boxes)
    # names are identifiers, never SQL: a hostile table name is quoted, plain ones stay readable
    hostile = m.to_sql('items; DROP TABLE users; --', id_column='my id', column_prefix='dim "')
    assert 'FROM "items; DROP TABLE users; --"' in hostile and 'SELECT "my id"' in hostile
    assert '"dim ""' in hostile and "SELECT id FROM main.items" in m.to_sql("main.items")
    b = m.boxes[0]
    assert f"f{b.dims[0]} BETWEEN {b.low[0]} AND {b.high[0]}" in sql
    # the SQL WHERE clause evaluated by sqlite gives exactly predict()
    import sqlite3
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE items (id INTEGER, " + ", ".join(f"f{i} INTEGER" for i in range(32)) + ")")
    con.executemany(f"INSERT INTO items VALUES ({','.join('?' * 33)})", [(i, *map(int, r)) for i, r in enumerate(X)])
    got = sorted(r[0] for r in con.execute(sql))
    assert got == np.flatnonzero(m.predict_mask(X)).tolist()
    assert len(m.to_rules()) == len(m.boxes)


def test_box_rule_omits_open_sides():
    b = Box((3, 7), np.array([0, 12], np.uint8), np.array([80, 255], np.uint8))
    assert b.to_rule() == "f3 <= 80 AND f7 >= 12"


def test_ensemble_votes_per_estimator(task):
    codes, labels, X, y = task
    e = BranchEnsemble(n_estimators=9, subsets=SUBSETS, random_state=0).fit(X, y)
    assert len(e.estimators_) == 9
    proba = e.predict_proba(codes)[:, 1]
    manual = np.mean([est.predict_mask(codes) for est in e.estimators_], axis=0)
    np.testing.assert_allclose(proba, manual)
    assert proba.max() <= 1.0
    assert np.array_equal(e.predict_mask(codes), proba > 0.5)
    assert np.array_equal(e.predict(codes), (proba > 0.5).astype(int))
    np.testing.assert_allclose(e.decision_function(codes), 2 * proba - 1)
    again = BranchEnsemble(n_estimators=9, subsets=SUBSETS, random_state=0, n_jobs=1).fit(X, y)
    assert again.to_dict() == e.to_dict()  # threads do not change the result


def test_sample_weight_moves_boxes(task):
    """Heavier negatives shrink boxes: directly without class weights; on average with "sqrt"
    class weights, which re-balance the class totals and so absorb part of a uniform weight."""
    _, _, X, y = task

    def covered_negatives(weight, class_weight, seeds):
        w = np.where(y == 0, float(weight), 1.0)
        return [int(DecisionBranches(subsets=SUBSETS, random_state=s, class_weight=class_weight)
                    .fit(X, y, sample_weight=w).predict_mask(X)[y == 0].sum()) for s in seeds]

    light, heavy = covered_negatives(1, None, [0]), covered_negatives(50, None, [0])
    assert heavy[0] < light[0]
    assert np.mean(covered_negatives(50, "sqrt", range(5))) < np.mean(covered_negatives(1, "sqrt", range(5)))
    balanced = DecisionBranches(subsets=SUBSETS, random_state=0, class_weight="balanced").fit(X, y)
    assert len(balanced.boxes) >= 1


def separable_task(n=5000, p=60, seed=3):
    """One tight cluster as positives, negatives from the other clusters only: every box is pure."""
    codes, labels = clustered_codes(n, noise=0.05, seed=seed)
    rng = np.random.default_rng(1)
    pos = rng.choice(np.flatnonzero(labels == 2), p, replace=False)
    neg = rng.choice(np.flatnonzero(labels != 2), 500, replace=False)
    return codes[np.r_[pos, neg]], np.r_[np.ones(p, int), np.zeros(500, int)]


def test_tapered_class_weights():
    from clipbranches_widgets.engine.branches import TAPER_POSITIVES, class_weight_factors
    for p in (1, 3, 5, 10, 64):
        y = np.r_[np.ones(p, int), np.zeros(500, int)]
        f = class_weight_factors("tapered", y, np.ones(len(y)))
        # positives' total = negatives' total x min(1, 5 / p); negatives keep weight 1
        np.testing.assert_allclose(f[y == 0], 1.0)
        np.testing.assert_allclose(f[y == 1].sum(), 500 * min(1.0, TAPER_POSITIVES / p))
    w = np.r_[np.ones(10), np.full(500, 3.0)]  # negatives' own weights count in their total
    f = class_weight_factors("tapered", np.r_[np.ones(10, int), np.zeros(500, int)], w)
    np.testing.assert_allclose((f * w)[:10].sum(), 1500 * 0.5)
    y = np.r_[np.ones(10, int), np.zeros(5, int)]
    assert (class_weight_factors("tapered", y, np.r_[np.zeros(10), np.ones(5)]) == 1).all()  # no positive weight


def test_tapered_rebalances_a_weight_on_every_negative(task):
    """Under "tapered" a weight given to EVERY negative is balanced away: the same model."""
    _, _, X, y = task
    for s in range(3):
        a = DecisionBranches(subsets=SUBSETS, random_state=s).fit(X, y)
        b = DecisionBranches(subsets=SUBSETS, random_state=s).fit(X, y, sample_weight=np.where(y == 0, 50.0, 1.0))
        assert a.to_dict() == b.to_dict()


def test_auto_split_rule():
    from clipbranches_widgets.engine.branches import resolve_split
    assert resolve_split(0.3, 4.0, 10) == (0.3, 0.3)
    assert resolve_split("auto", 4.0, 1) == (0.5, 0.5)  # capped at 0.5
    assert resolve_split("auto", 4.0, 7) == (0.5, 0.5)
    assert resolve_split("auto", 4.0, 15) == (0.25, 0.25)
    clean, mixed = resolve_split("auto", 4.0, 63)
    assert clean == 0.25 and mixed == pytest.approx(4 / 64)  # clean boxes keep at least 0.25
    with pytest.raises(ValueError, match="auto"):
        resolve_split("half", 4.0, 3)


def test_auto_split_keeps_clean_boxes_and_regrows_mixed_ones(task):
    Xs, ys = separable_task()
    for s in range(3):  # p = 60, every box clean: exactly the constant 0.25 model
        auto = DecisionBranches(subsets=SUBSETS, random_state=s).fit(Xs, ys)
        assert all(st["n_neg"] == 0 for st in auto.box_stats_)
        assert auto.to_dict() == DecisionBranches(subsets=SUBSETS, random_state=s, stop_infinite_split=0.25).fit(Xs, ys).to_dict()
    _, _, X, y = task  # p = 60, first box holds training negatives: same choice, grown again with 0.1
    auto = DecisionBranches(subsets=SUBSETS, random_state=0, split_scale=6.1).fit(X, y)
    const = DecisionBranches(subsets=SUBSETS, random_state=0, stop_infinite_split=0.25).fit(X, y)
    assert const.box_stats_[0]["n_neg"] > 0
    assert auto.boxes[0].dims == const.boxes[0].dims
    assert auto.boxes[0].to_dict() != const.boxes[0].to_dict()


def test_centroid_seed_positive(task):
    _, _, X, y = task
    P = X[y == 1].astype(float)
    central = np.flatnonzero(y == 1)[np.argmin(((P - P.mean(0)) ** 2).sum(1))]
    for s in range(3):
        m = DecisionBranches(subsets=SUBSETS, random_state=s).fit(X, y)
        assert m.boxes[0].contains(X[central:central + 1])[0]
    r = DecisionBranches(subsets=SUBSETS, random_state=0, seed_positive="random").fit(X, y)
    assert r.to_dict() != DecisionBranches(subsets=SUBSETS, random_state=0).fit(X, y).to_dict()


def test_equally_pure_candidates_tie_whatever_the_class_weight():
    """Pure candidate boxes all score 0; rounding noise of the weighted sums must not pick among them."""
    X, y = separable_task()
    for s in range(4):
        ref = DecisionBranches(subsets=SUBSETS, random_state=s, class_weight={0: 1, 1: 1.0}).fit(X, y).to_dict()
        for r in (0.5, 0.64, 0.87, 3.0):  # 0.64 picked another box when scores were compared to the last bit
            assert DecisionBranches(subsets=SUBSETS, random_state=s, class_weight={0: 1, 1: r}).fit(X, y).to_dict() == ref


def test_ensemble_passes_its_parameters(task):
    _, _, X, y = task
    e = BranchEnsemble(3, subsets=SUBSETS, random_state=0, stop_infinite_split=0.3, split_scale=2.0,
                       seed_positive="centroid", class_weight=None).fit(X, y)
    params = e.get_params()
    assert (params["stop_infinite_split"], params["split_scale"], params["seed_positive"]) == (0.3, 2.0, "centroid")
    for est in e.estimators_:
        assert (est.stop_infinite_split, est.split_scale, est.seed_positive, est.class_weight) == (0.3, 2.0, "centroid", None)
    d = BranchEnsemble().get_params()
    assert (d["class_weight"], d["stop_infinite_split"], d["split_scale"], d["seed_positive"]) == ("tapered", "auto", 4.0, "random")


def test_post_tree_filters_boxes(task):
    codes, _, X, y = task
    m = DecisionBranches(subsets=SUBSETS, random_state=0, post_tree=True).fit(X, y)
    plain = DecisionBranches(subsets=SUBSETS, random_state=0).fit(X, y)
    assert [b.to_dict() for b in m.boxes] == [b.to_dict() for b in plain.boxes]
    assert len(m.post_trees_) == len(m.boxes)
    p, q = m.predict_mask(codes), plain.predict_mask(codes)
    assert not (p & ~q).any()  # trees only remove
    ids = np.flatnonzero(q)
    assert np.array_equal(ids[m.refine_hits(codes, ids)], np.flatnonzero(p))
    assert "decision tree" in m.to_sql() or all(t is None for t in m.post_trees_)


@pytest.mark.parametrize("X, y, msg", [
    (np.zeros((5, 32), np.float32) + np.nan, [1, 0, 0, 0, 0], "NaN"),
    (np.full((5, 32), np.inf), [1, 0, 0, 0, 0], "infinity"),
    (np.zeros((5, 32, 1), np.uint8), [1, 0, 0, 0, 0], "dim 3"),
    (np.zeros((0, 32), np.uint8), [], "0 sample"),
    (np.zeros((5, 32), np.uint8), [0, 0, 0, 0, 0], "no positives"),
    (np.zeros((5, 32), np.uint8), [1, 1, 1, 1, 1], "no negatives"),
    (np.zeros((1, 32), np.uint8), [1], "no negatives"),
    (np.zeros((5, 32), np.uint8), [1, 0, 2, 0, 0], "Only binary classification"),
    (np.zeros((5, 32), np.uint8), [1, 0, 0], "inconsistent numbers of samples"),
    (np.array([["a"] * 32] * 2), [1, 0], "dtype"),
    (np.zeros((5, 32), np.uint8), [0.5, 0.7, 0.1, 0.2, 0.3], "Unknown label type"),
])
def test_bad_training_input(X, y, msg):
    with pytest.raises(ValueError, match=msg):
        DecisionBranches(subsets=SUBSETS).fit(X, y)
    with pytest.raises(ValueError, match=msg):
        BranchEnsemble(3, subsets=SUBSETS).fit(X, y)


@pytest.mark.parametrize("X, msg", [(np.full((2, 32), 300), "outside 0-255"), (np.full((2, 32), 1.5), "non-integer"),
                                    (np.full((2, 32), np.nan), "NaN")])
def test_bad_codes_for_a_model_fitted_on_codes(task, X, msg):
    """A model fitted on uint8 codes takes codes: whole numbers in 0..255 (any other X is quantized
    only when the model was fitted on it)."""
    _, _, Xc, y = task
    for model in (DecisionBranches(subsets=SUBSETS, random_state=0),
                  BranchEnsemble(3, subsets=SUBSETS, random_state=0)):
        model.fit(Xc, y)
        with pytest.raises(ValueError, match=msg):
            model.predict(X)
        assert np.array_equal(model.predict(Xc[:5].astype(np.int64)), model.predict(Xc[:5]))  # whole numbers are codes


def test_bad_parameters_and_unfitted(task):
    _, _, X, y = task
    for kw, msg in [({"max_boxes": 0}, "max_boxes"),
                    ({"max_evals": 2.0}, r"max_evals.*a float in the range \(0.0, 1.0\]"),
                    ({"max_evals": "x"}, "max_evals"),
                    ({"min_pts": -1}, "min_pts"), ({"stop_infinite_split": 2}, "stop_infinite_split"),
                    ({"class_weight": "x"}, "class_weight"), ({"subsets": [(0, 40)]}, "outside"),
                    ({"stop_infinite_split": "half"}, "stop_infinite_split"), ({"stop_infinite_split": True}, "stop_infinite_split"),
                    ({"split_scale": 0}, "split_scale"), ({"seed_positive": "first"}, "seed_positive"),
                    ({"random_state": "x"}, "random_state")]:
        with pytest.raises(ValueError, match=msg):
            DecisionBranches(**kw).fit(X, y)
    with pytest.raises(ValueError, match="sample_weight"):
        DecisionBranches(subsets=SUBSETS).fit(X, y, sample_weight=np.ones(3))
    huge = np.where(y == 0, 1e307, 1.0)  # overflowing weights: a clear error, never a NaN model
    for model in (DecisionBranches(subsets=SUBSETS), BranchEnsemble(3, subsets=SUBSETS), LinearCodes()):
        with pytest.raises(ValueError, match="sample_weight spans"):
            model.fit(X, y, sample_weight=huge)
    with pytest.raises(ValueError, match="not fitted"):
        DecisionBranches().predict(X)
    with pytest.raises(ValueError, match="not fitted"):
        BranchEnsemble().predict(X)
    with pytest.raises(ValueError, match="X has 5 features, but DecisionBranches is expecting 32 features"):
        DecisionBranches(subsets=SUBSETS, random_state=0).fit(X, y).predict(X[:, :5])
    with pytest.raises(TypeError):
        BranchEnsemble(bogus=1)


def test_tiny_training_sets():
    X = np.array([[10] * 32, [200] * 32], np.uint8)
    m = DecisionBranches(random_state=0).fit(X, [1, 0])
    assert m.predict_mask(X).tolist() == [True, False] and m.predict(X).tolist() == [1, 0]
    e = BranchEnsemble(5, random_state=0).fit(X, [1, 0])
    assert e.predict_mask(X).tolist() == [True, False] and e.predict(X).tolist() == [1, 0]
    # duplicate rows with conflicting labels do not break training
    Xd = np.repeat(X, 3, axis=0)
    DecisionBranches(random_state=0).fit(Xd, [1, 1, 0, 0, 0, 1])


def test_index_search_applies_post_trees(task):
    from clipbranches_widgets.engine import BoxIndex
    codes, _, X, y = task
    m = DecisionBranches(subsets=SUBSETS, random_state=0, post_tree=True).fit(X, y)
    index = BoxIndex.build(codes, SUBSETS)
    expected = np.flatnonzero(m.predict_mask(codes))
    for method in ("index", "scan"):
        assert sorted(index.search(m, method=method).ids.tolist()) == expected.tolist()
    # the plain scan and the one apply entry point answer the same (the scan used to skip the trees)
    from clipbranches_widgets.engine import apply_model
    from clipbranches_widgets.engine.scan import scan_box_set
    by_index = index.search(m)
    for found in (scan_box_set(codes, m), apply_model(codes, m), apply_model(codes, m, index=index)):
        assert found.ids.tolist() == by_index.ids.tolist() and np.allclose(found.scores, by_index.scores)


@pytest.mark.parametrize("n, dup", [(300, False), (3000, True), (70000, False)])
def test_trained_models_index_scan_numpy_predict_agree(n, dup):
    """Real trained models (not random boxes) give one answer through every path."""
    from clipbranches_widgets.engine import BoxIndex, apply_boxes_numpy
    codes, labels = clustered_codes(n, seed=n)
    if dup:  # duplicate rows and values at both ends of the range
        codes[n // 2:] = codes[: n - n // 2]
        codes[:50, :8] = 0
        codes[50:100, :8] = 255
    index = BoxIndex.build(codes, SUBSETS)
    rng = np.random.default_rng(n)
    pos = rng.choice(np.flatnonzero(labels == 1), min(40, (labels == 1).sum()), replace=False)
    neg = rng.choice(np.setdiff1d(np.arange(n), pos), min(200, n - len(pos)), replace=False)
    X, y = codes[np.r_[pos, neg]], np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    for model in (DecisionBranches(subsets=SUBSETS, random_state=1).fit(X, y),
                  BranchEnsemble(7, subsets=SUBSETS, random_state=1).fit(X, y)):
        ref_ids, ref_scores = apply_boxes_numpy(codes, model.box_set_)
        assert sorted(ref_ids.tolist()) == np.flatnonzero(model.predict_mask(codes)).tolist()
        for method in ("index", "scan", "auto"):
            hits = index.search(model, method=method)
            np.testing.assert_array_equal(hits.ids, ref_ids)
            np.testing.assert_array_equal(hits.scores, ref_scores)


def test_engine_imports_no_torch_or_widgets():
    import subprocess
    import sys
    code = ("import sys, clipbranches_widgets.engine as e; "
            "bad = [m for m in ('torch', 'ipywidgets', 'anywidget', 'open_clip') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
