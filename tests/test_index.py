"""BoxIndex: index == scan == numpy reference exactly; persistence; validation."""

import json
import os

import numpy as np
import pytest

from clipbranches_widgets.engine.boxes import Box, BoxSet, apply_boxes_numpy
from clipbranches_widgets.engine.index import BoxIndex

from _boxgen import SUBSETS, catalog, random_box_set

METHODS = ("index", "scan", "auto")


def assert_all_methods_match(index, codes, box_set):
    ids, scores = apply_boxes_numpy(codes, box_set)
    for method in METHODS:
        res = index.search(box_set, method=method)
        np.testing.assert_array_equal(res.ids, ids, err_msg=method)
        np.testing.assert_array_equal(res.scores, scores, err_msg=method)
        assert res.stats["count"] == len(ids)
        if method != "auto":
            assert res.stats["method"] == method


# (n, kind, leaf_size, segment_size): tiny catalogs, short last segments, deep trees (leaf 1-3)
CASES = [
    (1, "uniform", 256, 65536),
    (7, "dups", 1, 65536),
    (999, "clustered", 3, 65536),
    (999, "uniform", 16, 100),
    (65535, "clustered", 256, 65536),
    (65537, "dups", 256, 65536),
    (140000, "clustered", 256, 65536),
]


@pytest.mark.parametrize("n,kind,leaf_size,segment_size", CASES)
def test_index_matches_reference(n, kind, leaf_size, segment_size):
    codes = catalog(n, kind, seed=n)
    index = BoxIndex.build(codes, SUBSETS, leaf_size=leaf_size, segment_size=segment_size)
    rng = np.random.default_rng(n + leaf_size)
    for _ in range(3 if n > 60000 else 6):
        assert_all_methods_match(index, codes, random_box_set(codes, rng))


def test_index_selective_query_uses_index_and_prunes():
    codes = catalog(140000, "clustered", seed=1)
    index = BoxIndex.build(codes, SUBSETS)
    dims = SUBSETS[0]
    centre = codes[17, list(dims)].astype(int)
    box_set = BoxSet.from_estimators([[Box(dims, np.clip(centre - 2, 0, 255), np.clip(centre + 2, 0, 255))]])
    res = index.search(box_set)
    assert res.stats["method"] == "index"
    assert res.stats["rows_checked"] < codes.shape[0] // 4
    assert 17 in res.ids
    for key in ("selectivity", "n_boxes", "n_estimators", "nodes_visited", "leaves_visited", "rows_checked",
                "rows_emitted", "plan_s", "query_s", "score_s", "total_s", "count"):
        assert key in res.stats
    everything = BoxSet.from_estimators([[Box(dims, [0] * 4, [255] * 4)]])
    full = index.search(everything, method="index")
    assert len(full) == codes.shape[0] and full.stats["rows_emitted"] == codes.shape[0]
    assert full.stats["rows_checked"] == 0  # emitted wholesale from the root, codes never read
    assert index.search(everything).stats["method"] == "scan"


def test_find_opens_a_saved_index_and_never_builds(tmp_path):
    codes = catalog(3000, "clustered", seed=3)
    assert BoxIndex.find(codes, SUBSETS[:5], tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # nothing built
    built = BoxIndex.build(codes, SUBSETS[:5], tmp_path)
    found = BoxIndex.find(codes, SUBSETS[:5], tmp_path)
    assert found.loaded and found.folder == built.folder
    assert BoxIndex.find(codes, SUBSETS[:5], tmp_path, codes_hash="other") is None
    assert BoxIndex.find(codes, SUBSETS[:4], tmp_path) is None
    assert_all_methods_match(found, codes, random_box_set(codes, np.random.default_rng(3), dims_pool=SUBSETS[:5]))


def test_planner_probes_large_catalogs():
    """With enough segments the planner probes a few segments' trees: the index answers when the
    probe's rows (extrapolated) are few, the scan otherwise; a wide model is not probed. Answers
    always equal the reference."""
    from clipbranches_widgets.engine.index import PROBE_MAX_ROWS, PROBE_MIN_SEGMENTS

    codes = catalog(20000, "clustered", seed=8)
    index = BoxIndex.build(codes, SUBSETS, segment_size=128, leaf_size=8)  # 157 segments
    assert index._layout.n_segments >= PROBE_MIN_SEGMENTS
    rng = np.random.default_rng(8)
    seen = set()
    for half in (0, 1, 2, 4, 8, 16, 40, 90):
        dims = SUBSETS[int(rng.integers(len(SUBSETS)))]
        centre = codes[int(rng.integers(codes.shape[0])), list(dims)].astype(int)
        box_set = BoxSet.from_estimators([[Box(dims, np.clip(centre - half, 0, 255), np.clip(centre + half, 0, 255))]])
        res = index.search(box_set)
        probe = res.stats["probe_rows_frac"]
        if np.isnan(probe):
            assert res.stats["method"] == "scan" and res.stats["est_cost"] > index.auto_threshold
        else:
            assert res.stats["method"] == ("index" if probe <= PROBE_MAX_ROWS else "scan")
        seen.add((res.stats["method"], bool(np.isnan(probe))))
        ids, scores = apply_boxes_numpy(codes, box_set)
        np.testing.assert_array_equal(res.ids, ids)
        np.testing.assert_array_equal(res.scores, scores)
    assert ("index", False) in seen and ("scan", True) in seen


def test_index_size_target():
    codes = catalog(140000, "uniform", seed=2)
    index = BoxIndex.build(codes, SUBSETS)
    assert index.perm.dtype == np.uint16 and index.perm.shape == (104, 140000)
    assert index.bytes_per_item <= 232


def test_boxes_on_unindexed_or_partial_dims():
    codes = catalog(3000, "clustered", seed=4)
    index = BoxIndex.build(codes, SUBSETS[:10])
    rng = np.random.default_rng(4)
    # dims that are a strict part of an indexed subset: answered by that subset's tree
    partial = [SUBSETS[3][:2], SUBSETS[5][1:]]
    box_set = random_box_set(codes, rng, dims_pool=partial)
    assert_all_methods_match(index, codes, box_set)
    # dims no indexed subset covers: index refuses, auto scans
    other = [tuple(s) for s in SUBSETS[60:64] if not any(set(s) <= set(t) for t in SUBSETS[:10])]
    box_set = random_box_set(codes, rng, dims_pool=other)
    with pytest.raises(ValueError, match="indexed"):
        index.search(box_set, method="index")
    res = index.search(box_set, method="auto")
    assert res.stats["method"] == "scan"
    np.testing.assert_array_equal(res.ids, apply_boxes_numpy(codes, box_set)[0])


def test_empty_model_and_empty_result():
    codes = catalog(500, "uniform", seed=6)
    index = BoxIndex.build(codes, SUBSETS[:4])
    for method in METHODS:
        assert len(index.search(BoxSet.from_estimators([[]]), method=method)) == 0
        assert len(index.search(BoxSet.from_estimators([[], []]), method=method)) == 0


def test_persistence_round_trip(tmp_path):
    codes = catalog(70000, "clustered", seed=7)
    subsets = SUBSETS[:12]
    built = BoxIndex.build(codes, subsets, tmp_path)
    assert not built.loaded and built.folder.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.folder.name]  # no temp folder left
    loaded = BoxIndex.build(codes, subsets, tmp_path)
    assert loaded.loaded and loaded.folder == built.folder
    assert isinstance(loaded.perm, np.ndarray) and not loaded.perm.flags.writeable  # memory-mapped
    np.testing.assert_array_equal(loaded.perm, built.perm)
    box_set = random_box_set(codes, np.random.default_rng(7), dims_pool=subsets)
    assert_all_methods_match(loaded, codes, box_set)
    # codes_hash replaces hashing; different codes / params => different key, never a stale reuse
    assert BoxIndex.build(codes, subsets, tmp_path, codes_hash="abc").folder != built.folder
    changed = codes.copy()
    changed[5, 0] ^= 1
    other = BoxIndex.build(changed, subsets, tmp_path)
    assert not other.loaded and other.folder != built.folder
    assert BoxIndex.build(codes, subsets, tmp_path, leaf_size=128).folder != built.folder
    assert BoxIndex.build(codes, subsets[:11], tmp_path).folder != built.folder
    opened = BoxIndex.open(built.folder, codes)
    assert opened.loaded
    with pytest.raises(ValueError, match="shape"):
        BoxIndex.open(built.folder, codes[:100])


def test_corrupt_files_raise(tmp_path):
    codes = catalog(2000, "uniform", seed=8)
    folder = BoxIndex.build(codes, SUBSETS[:3], tmp_path).folder
    perm = folder / "perm.npy"
    data = perm.read_bytes()
    perm.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="perm.npy"):
        BoxIndex.build(codes, SUBSETS[:3], tmp_path)
    perm.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="perm.npy"):
        BoxIndex.open(folder, codes)
    perm.write_bytes(data)
    (folder / "bounds.npy").unlink()
    with pytest.raises(ValueError, match="bounds.npy"):
        BoxIndex.open(folder, codes)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json"):
        BoxIndex.open(folder, codes)
    meta = {"format": "clipbranches.BoxIndex", "version": 2, "n_items": 2000, "n_features": 32,
            "subsets": [[0, 99]], "leaf_size": 256, "segment_size": 65536}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="meta.json"):
        BoxIndex.open(folder, codes)


def test_flipped_bytes_of_the_right_size_are_caught_on_load(tmp_path):
    codes = catalog(3000, "clustered", seed=8)
    folder = BoxIndex.build(codes, SUBSETS[:3], tmp_path).folder
    for name in ("perm.npy", "bounds.npy", "sample.npy"):
        original = (folder / name).read_bytes()
        flipped = bytearray(original)
        flipped[-5] ^= 0xFF  # same size, a wrong row id / bound: silently wrong answers if trusted
        (folder / name).write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=f"{name} does not match its checksum"):
            BoxIndex.build(codes, SUBSETS[:3], tmp_path)
        (folder / name).write_bytes(original)
    assert BoxIndex.build(codes, SUBSETS[:3], tmp_path).loaded
    meta = json.loads((folder / "meta.json").read_text())
    del meta["sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lists no checksums"):
        BoxIndex.open(folder, codes)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    codes = catalog(500, "uniform", seed=9)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        BoxIndex.build(codes, SUBSETS[:3], tmp_path)
    assert os.listdir(tmp_path) == []


def test_validation_errors():
    codes = catalog(100, "uniform")
    with pytest.raises(ValueError, match="empty"):
        BoxIndex.build(np.zeros((0, 32), np.uint8), SUBSETS)
    with pytest.raises(ValueError, match="uint8"):
        BoxIndex.build(np.zeros((10, 32), np.complex64), SUBSETS)
    with pytest.raises(ValueError, match="outside"):
        BoxIndex.build(codes[:, :16], SUBSETS)
    with pytest.raises(ValueError, match="subsets"):
        BoxIndex.build(codes, [])
    with pytest.raises(ValueError, match="leaf_size"):
        BoxIndex.build(codes, SUBSETS[:2], leaf_size=0)
    with pytest.raises(ValueError, match="segment_size"):
        BoxIndex.build(codes, SUBSETS[:2], segment_size=70000)
    index = BoxIndex.build(codes[:, :16], [(0, 1, 2, 3)])
    with pytest.raises(ValueError, match="dim"):
        index.search(BoxSet.from_estimators([[Box((0, 31), [0, 0], [5, 5])]]))
    with pytest.raises(ValueError, match="not a fitted"):
        index.search(object())
    with pytest.raises(ValueError, match="method"):
        index.search(BoxSet.from_estimators([[]]), method="fast")


def test_planner_sample_fractions_match_numpy_twin():
    """The planner's estimate (per-box and any-box fractions of the sample inside) equals its
    plain-numpy twin exactly: random models, repeated dims, no box, an empty sample."""
    from clipbranches_widgets.engine.index import _sample_fractions, sample_fractions_numpy

    rng = np.random.default_rng(21)
    codes = catalog(20000, "clustered", seed=21)
    index = BoxIndex.build(codes, SUBSETS[:20])
    samples = [index._sample_codes, codes[:0], codes[:1], catalog(500, "dups", seed=3)]
    models = [random_box_set(codes, rng) for _ in range(20)]
    models += [BoxSet.from_estimators([[Box((3, 3, 7), [10, 50, 0], [100, 200, 128])], [Box((0,), [7], [7])]]),
               BoxSet.from_estimators([[]])]
    for sample in samples:
        for box_set in models:
            args = (sample, box_set.dims, box_set.ndims, box_set.low, box_set.high)
            frac, union = _sample_fractions(*args)
            frac2, union2 = sample_fractions_numpy(*args)
            np.testing.assert_array_equal(frac, frac2)
            assert frac.dtype == frac2.dtype == np.float64
            assert union == union2
