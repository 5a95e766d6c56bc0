import numpy as np
import pytest

from clipbranches_widgets.catalog import search
from clipbranches_widgets.catalog.quantize import GlobalQuantizer, PerDimQuantizer
from clipbranches_widgets.catalog.search import NearestNeighbours, affine_map


def unit(n, d=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(codes, qz, queries):
    """float64 cosine of every (query, row) pair, from the quantizer's own dequantize."""
    deq = qz.dequantize(codes).astype(np.float64)
    deq /= np.linalg.norm(deq, axis=1, keepdims=True)
    q = np.asarray(queries, np.float64).reshape(-1, codes.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ deq.T


def assert_valid_top_k(ids, scores, truth, tol=1e-5):
    """Each row is a correct top-k of ``truth``: scores match, best first, nothing better left out."""
    for r in range(ids.shape[0]):
        np.testing.assert_allclose(scores[r], truth[r, ids[r]], atol=tol, rtol=0)
        assert (np.diff(scores[r]) <= 1e-7).all()
        assert len(set(ids[r].tolist())) == ids.shape[1]
        left_out = np.delete(truth[r], ids[r])
        if left_out.size:
            assert left_out.max() <= truth[r, ids[r]].min() + tol


def assert_same_results(a, b, truth, tol=2e-6):
    """Same ids and scores (to 1e-5), except that ids may swap between scores within ``tol``."""
    (ids_a, s_a), (ids_b, s_b) = a, b
    assert ids_a.shape == ids_b.shape
    np.testing.assert_allclose(s_a, s_b, atol=1e-5, rtol=0)
    for r in range(ids_a.shape[0]):
        differ = ids_a[r] != ids_b[r]
        assert np.abs(truth[r, ids_a[r][differ]] - truth[r, ids_b[r][differ]]).max(initial=0) <= tol


@pytest.mark.parametrize("quantizer", [GlobalQuantizer(), None])
def test_numba_and_numpy_agree_with_brute_force(quantizer):
    emb = unit(20000)
    qz = quantizer or PerDimQuantizer().fit(emb)
    codes = qz.quantize(emb)
    queries = unit(5, seed=1)
    truth = brute_force(codes, qz, queries)
    results = {}
    for method in ("numba", "numpy"):
        nn = NearestNeighbours(codes, qz, method=method, chunk_rows=3000)
        ids, scores = results[method] = nn.search(queries, k=60)
        assert ids.shape == (5, 60)
        assert_valid_top_k(ids, scores, truth)
        for r in range(5):
            np.testing.assert_allclose(scores[r], np.sort(truth[r])[::-1][:60], atol=1e-5, rtol=0)
    assert_same_results(results["numba"], results["numpy"], truth)


@pytest.mark.parametrize("dim", [1, 5, 32, 33, 64])
@pytest.mark.parametrize("kind", ["global", "per_dim"])
def test_kernel_matches_numpy_twin(dim, kind, monkeypatch):
    # many small blocks of odd sizes: exercises the per-block heaps, the merge and the odd last row
    monkeypatch.setattr(search, "MIN_BLOCK_ROWS", 97)
    emb = unit(3001, dim, seed=dim)
    qz = GlobalQuantizer() if kind == "global" else PerDimQuantizer().fit(emb)
    codes = qz.quantize(emb)
    queries = np.r_[unit(3, dim, seed=7), emb[[0, 3000]]]  # free queries and two catalog items
    truth = brute_force(codes, qz, queries)
    for k in (1, 10, 200):
        kernel = NearestNeighbours(codes, qz, method="numba").search(queries, k=k)
        twin = NearestNeighbours(codes, qz, method="numpy", chunk_rows=500).search(queries, k=k)
        assert_valid_top_k(*kernel, truth)
        assert_same_results(kernel, twin, truth)


def test_ties_are_broken_by_ascending_id(monkeypatch):
    monkeypatch.setattr(search, "MIN_BLOCK_ROWS", 50)
    # 40 distinct codes, each repeated at scattered positions: every score is an exact tie group
    rng = np.random.default_rng(3)
    base = GlobalQuantizer().quantize(unit(40, seed=3))
    codes = base[rng.integers(0, 40, 2000)]
    queries = unit(4, seed=4)
    kernel = NearestNeighbours(codes, method="numba").search(queries, k=150)
    twin = NearestNeighbours(codes, method="numpy", chunk_rows=333).search(queries, k=150)
    np.testing.assert_array_equal(kernel[0], twin[0])
    np.testing.assert_allclose(kernel[1], twin[1], atol=1e-6, rtol=0)
    for ids, scores in zip(*kernel):
        for s in np.unique(scores):
            group = ids[scores == s]
            assert (np.diff(group) > 0).all()  # ascending ids within a tie
            # identical codes score bit-identically in the kernel, wherever they sit
            assert len(np.unique(codes[group], axis=0)) == 1
        # the cut falls inside a tie group: its smallest ids are the ones kept
        last = ids[scores == scores[-1]]
        same_code = np.flatnonzero((codes == codes[last[0]]).all(axis=1))
        np.testing.assert_array_equal(last, same_code[:len(last)])


def test_k_above_rows_and_exclude(monkeypatch):
    monkeypatch.setattr(search, "MIN_BLOCK_ROWS", 64)
    emb = unit(1001)
    codes = GlobalQuantizer().quantize(emb)
    for method in ("numba", "numpy"):
        nn = NearestNeighbours(codes, method=method, chunk_rows=300)
        ids, scores = nn.search(emb[:2], k=10**6)  # k above the catalog size: everything, ranked
        assert ids.shape == (2, 1001) and all(sorted(r.tolist()) == list(range(1001)) for r in ids)
        assert (np.diff(scores, axis=1) <= 0).all()
        ids, _ = nn.search(emb[42], k=5, exclude=[42, 7])
        assert 42 not in ids[0] and 7 not in ids[0] and ids.shape == (1, 5)
        ids, _ = nn.search(emb[42], k=2000, exclude=np.arange(0, 1001, 2))
        assert ids.shape == (1, 500) and (ids % 2 == 1).all()
        ids, scores = nn.search(emb[42], k=5, exclude=np.arange(1001))
        assert ids.shape == (1, 0) and scores.shape == (1, 0)


def test_query_finds_its_own_item_and_batches_match_single_queries():
    emb = unit(5000)
    codes = GlobalQuantizer().quantize(emb)
    nn = NearestNeighbours(codes)
    ids, _ = nn.search(emb[42], k=5)
    assert ids[0, 0] == 42
    # 70 queries: two passes of the kernel (QUERY_BLOCK = 64)
    batch_ids, batch_scores = nn.search(emb[:70], k=20)
    assert batch_ids.shape == (70, 20)
    for r in (0, 63, 64, 69):
        single_ids, single_scores = nn.search(emb[r], k=20)
        np.testing.assert_array_equal(batch_ids[r], single_ids[0])
        np.testing.assert_array_equal(batch_scores[r], single_scores[0])


def test_memmap_codes_are_searched_in_place(tmp_path):
    emb = unit(4000)
    qz = PerDimQuantizer().fit(emb)
    codes = qz.quantize(emb)
    np.save(tmp_path / "codes.npy", codes)
    mapped = np.load(tmp_path / "codes.npy", mmap_mode="r")
    nn = NearestNeighbours(mapped, qz)
    assert np.shares_memory(nn.codes, mapped)  # no copy of the catalog
    ids, scores = nn.search(emb[:3], k=30)
    expected = NearestNeighbours(codes, qz).search(emb[:3], k=30)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(scores, expected[1])


def test_auto_picks_the_numba_scan_and_its_only_extra_memory_is_the_norms():
    codes = GlobalQuantizer().quantize(unit(3000))
    nn = NearestNeighbours(codes)
    assert nn.method == "numba" and nn.extra_nbytes == 0
    nn.prepare()
    assert nn.extra_nbytes == 4 * 3000
    assert NearestNeighbours(codes, method="numpy").prepare().extra_nbytes == 0


def test_affine_map_of_both_quantizers():
    emb = unit(500, 8)
    for qz in (GlobalQuantizer(), PerDimQuantizer().fit(emb)):
        mid, step = affine_map(qz, 8)
        c = np.arange(256, dtype=np.uint8)[:, None].repeat(8, axis=1)
        np.testing.assert_allclose(mid + step * (c - 128.0), qz.dequantize(c), rtol=1e-6, atol=1e-7)


def test_search_errors():
    nn = NearestNeighbours(GlobalQuantizer().quantize(unit(100)))
    with pytest.raises(ValueError, match="32 dims"):
        nn.search(np.zeros(8), k=5)
    with pytest.raises(ValueError, match="NaN"):
        nn.search(np.full(32, np.nan), k=5)
    with pytest.raises(ValueError, match="all-zero"):
        nn.search(np.zeros(32), k=5)
    with pytest.raises(ValueError, match="k must be"):
        nn.search(unit(1), k=0)
    with pytest.raises(ValueError, match="outside the catalog"):
        nn.search(unit(1), k=5, exclude=[100])
    with pytest.raises(ValueError, match="method"):
        NearestNeighbours(np.zeros((3, 32), np.uint8), method="annoy")
    with pytest.raises(ValueError, match="chunk_rows"):
        NearestNeighbours(np.zeros((3, 32), np.uint8), chunk_rows=0)
    with pytest.raises(ValueError, match="empty"):
        NearestNeighbours(np.zeros((0, 32), np.uint8))

    class Squares:  # a dequantize that is not affine in the code
        def dequantize(self, q):
            return (np.asarray(q, np.float32) / 255.0) ** 2

    with pytest.raises(ValueError, match="not affine"):
        NearestNeighbours(np.zeros((3, 4), np.uint8), Squares())
    assert NearestNeighbours(np.zeros((3, 4), np.uint8), Squares(), method="numpy").search(np.ones(4), k=2)[0].shape == (1, 2)
