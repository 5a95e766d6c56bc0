import numpy as np
import pytest

from clipbranches_widgets.catalog.quantize import GlobalQuantizer, PerDimQuantizer, quantizer_from_dict


def unit_vectors(n, d=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_global_map_matches_the_contract():
    q = GlobalQuantizer()
    x = np.array([[-1.0, -0.5, 0.0, 0.5, 1.0, 0.999]])
    assert q.quantize(x).tolist() == [[0, 64, 128, 191, 255, 255]]
    assert q.quantize(x).dtype == np.uint8
    codes = q.quantize(unit_vectors(1000))
    np.testing.assert_array_equal(q.quantize(q.dequantize(codes)), codes)  # bucket centres round-trip
    assert np.abs(q.dequantize(codes) - unit_vectors(1000)).max() <= 1 / 127.5 + 1e-6
    assert q.quantize(x[0]).shape == (1, 6)  # one vector -> one row (queries)


def test_per_dim_uses_the_full_range_and_round_trips():
    emb = unit_vectors(5000)
    g = GlobalQuantizer().quantize(emb)
    p = PerDimQuantizer().fit(emb)
    codes = p.quantize(emb)
    spread = lambda c: np.percentile(c, 99, axis=0) - np.percentile(c, 1, axis=0)  # noqa: E731
    assert spread(codes).mean() > 1.8 * spread(g).mean()  # finer codes than the global map
    np.testing.assert_array_equal(p.quantize(p.dequantize(codes)), codes)
    again = quantizer_from_dict(p.to_dict())
    np.testing.assert_array_equal(again.quantize(emb[:10]), codes[:10])
    assert isinstance(quantizer_from_dict(GlobalQuantizer().to_dict()), GlobalQuantizer)


def test_quantizer_errors():
    with pytest.raises(ValueError, match="NaN"):
        GlobalQuantizer().quantize([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="2-D"):
        GlobalQuantizer().quantize(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        PerDimQuantizer().quantize([[0.0]])
    with pytest.raises(ValueError, match="made for 32"):
        PerDimQuantizer().fit(unit_vectors(10)).quantize(np.zeros((1, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        PerDimQuantizer().fit(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="unknown quantizer"):
        quantizer_from_dict({"kind": "pq"})
    with pytest.raises(ValueError, match="high > low"):
        PerDimQuantizer([0.0, 1.0], [1.0, 1.0])
    const = PerDimQuantizer().fit(np.ones((5, 3)))  # constant dims still give a defined map
    assert const.quantize(np.ones((1, 3))).shape == (1, 3)
