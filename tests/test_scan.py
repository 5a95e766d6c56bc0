"""Fused scan == numpy reference, exactly (ids, float64 scores, order)."""

import numpy as np
import pytest

from clipbranches_widgets.engine.boxes import Box, BoxSet, apply_boxes_numpy
from clipbranches_widgets.engine.scan import scan_box_set, score_hits

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


def test_score_hits_votes_and_depth():
    codes = catalog(300, "uniform", seed=1)
    box_set = BoxSet.from_estimators([[Box((0,), [10], [200])], [Box((1,), [0], [255])], [Box((2,), [50], [60])]])
    res = scan_box_set(codes, box_set)
    assert set(np.unique(res.scores)) <= {2 / 3, 1.0}
    single = BoxSet.from_estimators([[Box((0, 3), [10, 0], [200, 255]), Box((0,), [100], [255])]])
    ids = np.flatnonzero(codes[:, 0] >= 10)
    scores = score_hits(codes, ids, np.ones(len(ids), np.uint16), single)
    ref_ids, ref_scores = apply_boxes_numpy(codes, single)
    np.testing.assert_array_equal(scores[np.argsort(ids)][np.argsort(np.argsort(ref_ids))], ref_scores)


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


@pytest.mark.parametrize("strategy", ["rows", "columns"])
@pytest.mark.parametrize("n", [1, 5, 2048, 4099])
def test_both_pass1_kernels_match_reference(strategy, n):
    """Whichever kernel the planner picks, both give the reference's ids and votes exactly."""
    from clipbranches_widgets.engine.scan import _scan_votes_by

    codes = catalog(n, "clustered", seed=n + 11)
    rng = np.random.default_rng(n)
    for n_est in (1, 1, 3, 25):
        box_set = random_box_set(codes, rng, n_estimators=n_est)
        ids, votes = _scan_votes_by(codes, box_set, strategy)
        ref_ids, _ = apply_boxes_numpy(codes, box_set)
        np.testing.assert_array_equal(ids, np.sort(ref_ids))
        assert ids.dtype == np.int64 and votes.dtype == np.uint16
        # votes: the number of estimators whose union holds the row
        ref_votes = np.zeros(len(ids), np.int64)
        for e in range(n_est):
            in_union = np.zeros(len(ids), bool)
            for b in np.flatnonzero(box_set.estimator == e):
                k = int(box_set.ndims[b])
                in_union |= Box(tuple(box_set.dims[b, :k]), box_set.low[b, :k], box_set.high[b, :k]).contains(codes[ids])
            ref_votes += in_union
        np.testing.assert_array_equal(votes, ref_votes)


@pytest.mark.parametrize("strategy", ["rows", "columns"])
def test_kernels_repeated_dims_all_and_none(strategy):
    """A box naming one dim twice (intersection; disjoint ranges = empty), every row, no row, last row."""
    from clipbranches_widgets.engine.scan import _scan_votes_by

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
        ids, votes = _scan_votes_by(codes, box_set, strategy)
        ref_ids, _ = apply_boxes_numpy(codes, box_set)
        np.testing.assert_array_equal(ids, np.sort(ref_ids))
        assert_same(scan_box_set(codes, box_set), codes, box_set)
