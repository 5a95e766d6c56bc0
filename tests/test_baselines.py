import numpy as np
import pytest

from clipbranches_widgets.engine.baselines import make_baseline, scan_sklearn


@pytest.mark.parametrize("kind", ["tree", "forest"])
def test_chunked_scan_equals_plain_predict(kind):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (5003, 32)).astype(np.uint8)
    y = (codes[:, 0] > 150).astype(int)
    model = make_baseline(kind, random_state=0).fit(codes[:800], y[:800])
    res = scan_sklearn(model, codes, chunk_rows=997)
    proba = model.predict_proba(codes.astype(np.float32))[:, 1]
    expected = np.flatnonzero(proba > 0.5)
    assert sorted(res.ids.tolist()) == expected.tolist()
    np.testing.assert_allclose(res.scores, proba[res.ids])
    assert (np.diff(res.scores) <= 0).all()  # ranked by probability
    assert res.stats["count"] == len(expected) and res.stats["method"] == "sklearn-scan"
    assert scan_sklearn(model, codes, chunk_rows=10**6, n_jobs=1).ids.tolist() == res.ids.tolist()


def test_baseline_errors():
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("svm")
    with pytest.raises(ValueError, match="not fitted"):
        scan_sklearn(make_baseline("tree"), np.zeros((3, 32), np.uint8))
    m = make_baseline("tree").fit(np.zeros((2, 32)), [0, 2])
    with pytest.raises(ValueError, match="labels 0 and 1"):
        scan_sklearn(m, np.zeros((3, 32), np.uint8))
    m = make_baseline("tree").fit(np.arange(64).reshape(2, 32), [0, 1])
    with pytest.raises(ValueError, match="expected 32"):
        scan_sklearn(m, np.zeros((3, 8), np.uint8))
    assert len(scan_sklearn(m, np.zeros((0, 32), np.uint8))) == 0
