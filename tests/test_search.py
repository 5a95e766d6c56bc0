import numpy as np
import pytest

from clipbranches_widgets.catalog.quantize import GlobalQuantizer, PerDimQuantizer
from clipbranches_widgets.catalog.search import NearestNeighbours


def unit(n, d=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("quantizer", [GlobalQuantizer(), None])
def test_numpy_and_faiss_agree_with_brute_force(quantizer):
    emb = unit(20000)
    qz = quantizer or PerDimQuantizer().fit(emb)
    codes = qz.quantize(emb)
    queries = unit(5, seed=1)
    deq = qz.dequantize(codes)
    brute = queries @ (deq / np.linalg.norm(deq, axis=1, keepdims=True)).T  # cosine similarity
    for method in ("numpy", "faiss"):
        nn = NearestNeighbours(codes, qz, method=method, chunk_rows=3000)
        ids, scores = nn.search(queries, k=60)
        assert ids.shape == (5, 60)
        for r in range(5):
            expected = np.sort(brute[r])[::-1][:60]
            np.testing.assert_allclose(scores[r], expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(brute[r, ids[r]], scores[r], rtol=1e-5, atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_query_finds_its_own_item_and_exclude_works():
    emb = unit(5000)
    codes = GlobalQuantizer().quantize(emb)
    nn = NearestNeighbours(codes)
    ids, _ = nn.search(emb[42], k=5)
    assert ids[0, 0] == 42
    ids, _ = nn.search(emb[42], k=5, exclude=[42])
    assert 42 not in ids[0] and ids.shape == (1, 5)
    ids, _ = nn.search(emb[42], k=10**6)  # k above the catalog size returns everything, ranked
    assert sorted(ids[0].tolist()) == list(range(5000))


def test_search_errors():
    nn = NearestNeighbours(GlobalQuantizer().quantize(unit(100)))
    with pytest.raises(ValueError, match="32 dims"):
        nn.search(np.zeros(8), k=5)
    with pytest.raises(ValueError, match="NaN"):
        nn.search(np.full(32, np.nan), k=5)
    with pytest.raises(ValueError, match="k must be"):
        nn.search(unit(1), k=0)
    with pytest.raises(ValueError, match="outside the catalog"):
        nn.search(unit(1), k=5, exclude=[100])
    with pytest.raises(ValueError, match="method"):
        NearestNeighbours(np.zeros((3, 32), np.uint8), method="annoy")
    with pytest.raises(ValueError, match="empty"):
        NearestNeighbours(np.zeros((0, 32), np.uint8))
