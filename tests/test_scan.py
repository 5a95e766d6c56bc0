"""Fused scan == numpy reference, exactly (ids, float64 scores, order); its intrinsics, keys and counting sort."""

import numba
import numpy as np
import pytest

from clipbranches_widgets.engine.boxes import Box, BoxSet, apply_boxes_numpy, rank
from clipbranches_widgets.engine.scan import (hit_keys, hits_from_arrays, rank_hits, ranking, scan_box_set,
                                              scan_hits)
from clipbranches_widgets.engine.simd import box_pair, transpose_strip

from _boxgen import catalog, random_box_set


def assert_same(result, codes, box_set):
    ids, scores = apply_boxes_numpy(codes, box_set)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)  # bit-identical, not approximately equal
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float64


@pytest.mark.parametrize("n", [1, 7, 999, 2049, 65537])
@pytest.mark.parametrize("kind", ["uniform", "clustered", "dups"])
def test_scan_matches_reference(n, kind):
    codes = catalog(n, kind, seed=n)
    rng = np.random.default_rng(n + len(kind))
    for _ in range(4):
        box_set = random_box_set(codes, rng)
        res = scan_box_set(codes, box_set)
        assert_same(res, codes, box_set)
        assert res.stats["method"] == "scan" and res.stats["count"] == len(res)


def test_scan_single_and_ensemble_nonempty():
    codes = catalog(5000, "clustered", seed=3)
    rng = np.random.default_rng(3)
    for n_est in (1, 2, 5):
        box_set = random_box_set(codes, rng, n_estimators=n_est)
        assert_same(scan_box_set(codes, box_set), codes, box_set)
    everything = BoxSet.from_estimators([[Box((0, 5), [0, 0], [255, 255])]])
    res = scan_box_set(codes, everything)
    assert len(res) == 5000 and (res.scores == 1.0).all()


def test_scan_empty_model_and_empty_result():
    codes = catalog(100, "uniform")
    res = scan_box_set(codes, BoxSet.from_estimators([[]]))
    assert len(res) == 0
    nothing = BoxSet.from_estimators([[Box((1, 2), [255, 0], [255, 0])]])
    codes[:, 1] = 3
    assert len(scan_box_set(codes, nothing)) == 0


def test_hit_keys_votes_and_depth():
    """Keys of given hits (the index's path) look up the reference's scores: vote fractions, depths."""
    codes = catalog(300, "uniform", seed=1)
    box_set = BoxSet.from_estimators([[Box((0,), [10], [200])], [Box((1,), [0], [255])], [Box((2,), [50], [60])]])
    res = scan_box_set(codes, box_set)
    assert set(np.unique(res.scores)) <= {2 / 3, 1.0}
    single = BoxSet.from_estimators([[Box((0, 3), [10, 0], [200, 255]), Box((0,), [100], [255])]])
    ids = np.flatnonzero(codes[:, 0] >= 10)
    rk = ranking(single)
    keys = hit_keys(codes, ids, np.ones(len(ids), np.uint16), single, rk)
    ref_ids, ref_scores = apply_boxes_numpy(codes, single)
    np.testing.assert_array_equal(rk.values[keys][np.searchsorted(ids, ref_ids)], ref_scores)
    votes = np.array([1, 3, 2, 3], np.uint16)
    np.testing.assert_array_equal(hit_keys(codes, np.arange(4), votes, box_set, ranking(box_set)), votes)


def test_ranking_keys_order_the_scores():
    """values ascend strictly in the key; every box dim's table gives each code value inside the box
    the key of its depth term, 0 outside; a box on no dims has depth 1 everywhere."""
    codes = catalog(4000, "dups", seed=9)
    rng = np.random.default_rng(9)
    for _ in range(10):
        box_set = random_box_set(codes, rng, n_estimators=1)
        rk = ranking(box_set)
        assert not rk.by_votes and rk.values[0] == 0.0 and np.all(np.diff(rk.values) > 0)
        assert rk.values[rk.key_one] == 1.0 and rk.keytab.dtype == np.uint16
        for b in range(box_set.n_boxes):
            for j in range(int(box_set.ndims[b])):
                lo, hi = int(box_set.low[b, j]), int(box_set.high[b, j])
                x = np.arange(256)
                inside = (x >= lo) & (x <= hi)
                assert (rk.keytab[b, j, ~inside] == 0).all() and (rk.keytab[b, j, inside] > 0).all()
                terms = rk.values[rk.keytab[b, j, inside]]
                ref = [box_depth_term(v, lo, hi) for v in x[inside]]
                np.testing.assert_array_equal(terms, ref)
    everything = BoxSet.from_estimators([[Box((), [], []), Box((2,), [9], [9])]])
    assert_same(scan_box_set(codes, everything), codes, everything)
    ensemble = ranking(BoxSet.from_estimators([[], [], []]))
    assert ensemble.by_votes
    np.testing.assert_array_equal(ensemble.values, np.arange(4) / 3)


def box_depth_term(x, lo, hi):
    """One dim's depth term, as ``box_depth_numpy`` computes it for one value."""
    from clipbranches_widgets.engine.boxes import box_depth_numpy

    return box_depth_numpy(np.array([[x]], np.uint8), [0], 1, [lo], [hi])[0]


@pytest.mark.parametrize("n_keys", [1, 2, 26, 5000])
def test_counting_sort_equals_lexsort_with_ties(n_keys):
    """rank_hits: keys descending, ties by ascending id, across blocks; empty input too."""
    rng = np.random.default_rng(n_keys)
    for h in (0, 1, 63, 1000, 70001):
        ids = np.sort(rng.choice(10 * h + 1, h, replace=False)).astype(np.int64)
        keys = rng.integers(0, n_keys, h).astype(np.uint16)
        values = np.sort(rng.random(n_keys))
        got_ids, got_scores = rank_hits(hits_from_arrays(ids, keys, n_keys), values)
        ref_ids, ref_scores = rank(ids, values[keys])
        np.testing.assert_array_equal(got_ids, ref_ids)
        np.testing.assert_array_equal(got_scores, ref_scores)


def test_scan_errors():
    box_set = BoxSet.from_estimators([[Box((0, 31), [0, 0], [9, 9])]])
    with pytest.raises(ValueError, match="features|dims"):
        scan_box_set(np.zeros((10, 16), np.uint8), box_set)
    with pytest.raises(ValueError, match="empty"):
        scan_box_set(np.zeros((0, 32), np.uint8), box_set)
    with pytest.raises(ValueError, match="uint8"):
        scan_box_set(np.zeros((10, 32), np.complex64), box_set)
    with pytest.raises(ValueError, match="2-D"):
        scan_box_set(np.zeros(32, np.uint8), box_set)

    class Unfitted:
        pass

    with pytest.raises(ValueError, match="not a fitted"):
        scan_box_set(np.zeros((10, 32), np.uint8), Unfitted())


def test_scan_accepts_integer_codes_and_memmap(tmp_path):
    codes = catalog(3000, "dups", seed=5)
    box_set = random_box_set(codes, np.random.default_rng(5))
    assert_same(scan_box_set(codes.astype(np.int32), box_set), codes, box_set)
    np.save(tmp_path / "c.npy", codes)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    assert_same(scan_box_set(mm, box_set), codes, box_set)


def test_scan_codes_not_a_multiple_of_8_dims():
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 256, (5000, 13), dtype=np.uint8)
    for _ in range(3):
        lists = [[Box(tuple(rng.choice(13, 4, replace=False)), [40] * 4, [220] * 4) for _ in range(6)]
                 for _ in range(int(rng.integers(1, 4)))]
        box_set = BoxSet.from_estimators(lists)
        assert_same(scan_box_set(codes, box_set), codes, box_set)


def ref_votes(codes, ids, box_set):
    """The number of estimators whose union of boxes holds each row ``ids``."""
    votes = np.zeros(len(ids), np.int64)
    for e in range(box_set.n_estimators):
        in_union = np.zeros(len(ids), bool)
        for b in np.flatnonzero(box_set.estimator == e):
            k = int(box_set.ndims[b])
            in_union |= Box(tuple(box_set.dims[b, :k]), box_set.low[b, :k], box_set.high[b, :k]).contains(codes[ids])
        votes += in_union
    return votes


@pytest.mark.parametrize("width", [32, 13, 64])
@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 2048, 4099, 70000])
def test_pass1_hits_and_keys_match_reference(width, n):
    """Pass 1 alone, on 32-d codes (the shuffle transpose) and other widths (a plain copy), at
    sizes around the 64-row strips and the blocks: ids ascend within each block, the blocks in
    order; ensembles' keys are their votes, single models' keys look up the reference depth."""
    rng = np.random.default_rng(n + width)
    codes = rng.integers(0, 256, (n, width), dtype=np.uint8) if width != 32 else catalog(n, "clustered", seed=n + 11)
    pool = [tuple(rng.choice(width, 4, replace=False)) for _ in range(12)]
    for n_est in (1, 1, 3, 25):
        box_set = random_box_set(codes, rng, n_estimators=n_est, dims_pool=pool)
        rk = ranking(box_set)
        hits = scan_hits(codes, box_set, rk)
        assert hits.hist.sum() == hits.count
        ids, keys = hits.arrays()
        ref_ids, ref_scores = apply_boxes_numpy(codes, box_set)
        np.testing.assert_array_equal(ids, np.sort(ref_ids))
        assert ids.dtype == np.int64 and keys.dtype == np.uint16
        if rk.by_votes:
            np.testing.assert_array_equal(keys, ref_votes(codes, ids, box_set))
        else:
            np.testing.assert_array_equal(rk.values[keys], ref_scores[np.argsort(ref_ids)])
        assert_same(scan_box_set(codes, box_set), codes, box_set)


def test_kernels_repeated_dims_all_and_none():
    """A box naming one dim twice (intersection; disjoint ranges = empty), every row, no row, last row."""
    codes = catalog(3000, "uniform", seed=5)
    codes[-1] = 255
    cases = [
        [[Box((3, 3, 7), [10, 50, 0], [100, 200, 128])]],
        [[Box((3, 3), [0, 200], [100, 255])], [Box((1,), [0], [255])], [Box((2,), [0], [255])]],
        [[Box((3, 3), [0, 200], [100, 255]), Box((4,), [0], [60])]],
        [[Box((0,), [0], [255])]],
        [[Box((0, 31), [255, 255], [255, 255])]],
        [[Box((0,), [7], [7])]] * 3,
    ]
    for lists in cases:
        box_set = BoxSet.from_estimators(lists)
        ids, keys = scan_hits(codes, box_set, ranking(box_set)).arrays()
        ref_ids, _ = apply_boxes_numpy(codes, box_set)
        np.testing.assert_array_equal(ids, np.sort(ref_ids))
        assert_same(scan_box_set(codes, box_set), codes, box_set)


def test_ties_rank_by_ascending_id():
    """Duplicate rows tie on every score: the answer lists them by ascending id, single and ensemble."""
    codes = catalog(20000, "dups", seed=2)
    rng = np.random.default_rng(2)
    for n_est in (1, 5):
        box_set = random_box_set(codes, rng, n_estimators=n_est)
        res = scan_box_set(codes, box_set)
        assert_same(res, codes, box_set)
        same = res.scores[1:] == res.scores[:-1]
        assert (res.ids[1:][same] > res.ids[:-1][same]).all()


@numba.njit
def _transpose(codes, row0, buf, off):
    transpose_strip(codes, row0, buf, off)


@numba.njit
def _box(buf, base, stride, off, low, width, first, last, m0, m1):
    return box_pair(buf, base, stride, off, low, width, first, last, m0, m1)


def test_simd_intrinsics():
    """transpose_strip is the strip's transpose; box_pair the closed range tests of a box on two
    strips, ANDed with the given masks, edges included."""
    codes = np.random.default_rng(4).integers(0, 256, (200, 32), dtype=np.uint8)
    buf = np.zeros(3 * 2048, np.uint8)
    for row0, off in ((0, 0), (1, 2048), (64, 7), (136, 4096)):
        _transpose(codes, row0, buf, off)
        np.testing.assert_array_equal(buf[off:off + 2048].reshape(32, 64), codes[row0:row0 + 64].T)
    rng = np.random.default_rng(5)
    strips = rng.integers(0, 256, (2, 32, 64), dtype=np.uint8)
    strips[:, 3] = np.arange(64) * 4  # every value class, edges 0 and 252 included
    buf = strips.reshape(-1)
    for dims, low, high in (((3,), [0], [255]), ((3,), [0], [0]), ((3,), [252], [255]), ((3, 5), [10, 0], [200, 90]),
                            ((3, 3, 9), [8, 40, 0], [100, 255, 255]), ((), [], [])):
        off = np.array(dims, np.int64) * 64
        lo = np.array(low, np.uint8)
        width = (np.array(high, np.int64) - lo).astype(np.uint8)
        for m0, m1 in ((2**64 - 1, 2**64 - 1), (0x0F0F0F0F0F0F0F0F, 1)):
            got = _box(buf, 0, 2048, off, lo, width, 0, len(dims), np.uint64(m0), np.uint64(m1))
            for q, m in enumerate((m0, m1)):
                inside = np.ones(64, bool)
                for d, a, b in zip(dims, low, high):
                    inside &= (strips[q, d] >= a) & (strips[q, d] <= b)
                want = sum(1 << r for r in range(64) if inside[r]) & m
                assert got[q] == np.uint64(want)


def test_scratch_is_reused_and_answers_stay_whole():
    """A thread's scratch serves call after call (smaller and larger catalogs); an answer handed out
    never aliases it; a scan without scratch gets fresh arrays."""
    from clipbranches_widgets.engine.scan import Scratch, thread_scratch

    rng = np.random.default_rng(8)
    first = None
    for n in (5000, 300, 9000, 5000):
        codes = catalog(n, "clustered", seed=n)
        box_set = random_box_set(codes, rng)
        res = scan_box_set(codes, box_set)
        assert_same(res, codes, box_set)
        if first is None:
            first = (res, codes, box_set)
    assert_same(*first)  # untouched by the later scans
    assert thread_scratch() is thread_scratch()
    codes = catalog(3000, "dups", seed=1)
    box_set = random_box_set(codes, rng, n_estimators=3)
    own = scan_hits(codes, box_set, ranking(box_set), Scratch())
    alone = scan_hits(codes, box_set, ranking(box_set))
    for a, b in zip(own.arrays(), alone.arrays()):
        np.testing.assert_array_equal(a, b)


def test_merge_results_of_blocks_equals_the_whole_answer():
    """Per-block answers merged (the sharded and distributed catalogs) equal the answer over all the
    codes, ties across blocks included; blocks given out of catalog order too."""
    from clipbranches_widgets.engine import merge_results

    codes = catalog(9000, "dups", seed=12)
    rng = np.random.default_rng(12)
    cuts = [0, 2000, 2001, 6500, 9000]
    for n_est in (1, 4):
        box_set = random_box_set(codes, rng, n_estimators=n_est)
        parts = [scan_box_set(codes[a:b], box_set) for a, b in zip(cuts, cuts[1:])]
        whole = scan_box_set(codes, box_set)
        for order in ([0, 1, 2, 3], [2, 0, 3, 1]):
            merged = merge_results([parts[i] for i in order], [cuts[i] for i in order])
            np.testing.assert_array_equal(merged.ids, whole.ids)
            np.testing.assert_array_equal(merged.scores, whole.scores)
