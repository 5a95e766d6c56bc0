"""Property-based tests (hypothesis): the engine's exactness contract on arbitrary data, a session that
never half-applies bad input, and open_catalog over mutated catalog folders (never a hang, never a
wrong answer: a whole catalog or one clear ValueError)."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clipbranches_widgets.catalog import open_catalog, write_catalog
from clipbranches_widgets.engine import BoxIndex, BranchEnsemble, DecisionBranches, LinearCodes, apply_model
from clipbranches_widgets.engine.boxes import Box, BoxSet, apply_boxes_numpy, rank
from clipbranches_widgets.engine.scan import hits_from_arrays, rank_hits, scan_box_set
from clipbranches_widgets.session import SearchSession

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@st.composite
def labelled_codes(draw):
    n = draw(st.integers(8, 120))
    dim = draw(st.sampled_from([4, 8, 32]))
    X = draw(arrays(np.uint8, (n, dim), elements=st.integers(0, 255)))
    y = draw(arrays(np.int8, n, elements=st.integers(0, 1)))
    y[0], y[1] = 1, 0  # both classes present
    return X, y


@SETTINGS
@given(data=labelled_codes(), seed=st.integers(0, 2**31 - 1))
def test_every_apply_path_equals_predict(data, seed):
    X, y = data
    for model in (DecisionBranches(random_state=seed), BranchEnsemble(3, random_state=seed), LinearCodes()):
        model.fit(X, y)
        found = apply_model(X, model)
        assert sorted(found.ids.tolist()) == np.flatnonzero(model.predict(X) == 1).tolist()  # labels 0 / 1 (or a mask)
        assert np.all(np.diff(found.scores) <= 1e-12)  # ranked best first


@st.composite
def codes_and_boxes(draw):
    """Codes of any width (the 32-d shuffle transpose and the plain copy of other widths) and a
    BoxSet of 1-5 estimators: boxes on 0-8 dims, dims repeated, bounds anywhere (empty, one value,
    the full range)."""
    dim = draw(st.sampled_from([3, 13, 32, 32, 40]))
    n = draw(st.integers(1, 300))
    codes = draw(arrays(np.uint8, (n, dim), elements=st.integers(0, 255)))
    if draw(st.booleans()):  # few distinct values: many ties in the ranking
        codes //= 64
        codes *= 64
    n_est = draw(st.sampled_from([1, 1, 2, 3, 5]))
    lists = []
    for _ in range(n_est):
        boxes = []
        for _ in range(draw(st.integers(0 if n_est > 1 else 1, 4))):
            k = draw(st.integers(0, 8))
            dims = tuple(draw(st.lists(st.integers(0, dim - 1), min_size=k, max_size=k)))
            a = draw(st.lists(st.integers(0, 255), min_size=k, max_size=k))
            b = draw(st.lists(st.integers(0, 255), min_size=k, max_size=k))
            boxes.append(Box(dims, np.minimum(a, b), np.maximum(a, b)))
        lists.append(boxes)
    return codes, BoxSet.from_estimators(lists)


@SETTINGS
@given(data=codes_and_boxes())
def test_scan_and_index_equal_the_reference_exactly(data):
    """The fused scan (strips, bit masks, counting sort) and the index give the numpy reference's
    ids, bit-identical scores and order, ties by ascending id included."""
    codes, box_set = data
    ids, scores = apply_boxes_numpy(codes, box_set)
    res = scan_box_set(codes, box_set)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.scores, scores)
    dims = sorted({int(d) for b in range(box_set.n_boxes) for d in box_set.dims[b, :box_set.ndims[b]]})
    if dims and codes.shape[1] >= 8:
        subsets = [tuple(dims[i:i + 8]) for i in range(0, len(dims), 8)]
        index = BoxIndex.build(codes, subsets, leaf_size=4)
        if index._box_subsets(box_set) is not None:
            found = index.search(box_set, method="index")
            np.testing.assert_array_equal(found.ids, ids)
            np.testing.assert_array_equal(found.scores, scores)


@SETTINGS
@given(keys=arrays(np.uint16, st.integers(0, 3000), elements=st.integers(0, 40)), seed=st.integers(0, 2**31 - 1))
def test_counting_sort_is_the_documented_order(keys, seed):
    """rank_hits orders any keys like a lexsort by (score descending, id ascending)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * len(keys) + 1, len(keys), replace=False)).astype(np.int64)
    values = np.sort(rng.random(41))
    got = rank_hits(hits_from_arrays(ids, keys, 41), values)
    want = rank(ids, values[keys])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    codes = np.random.default_rng(0).integers(0, 256, (300, 32)).astype(np.uint8)
    return write_catalog(root / "cat", codes, pa.table({"caption": [f"item {i}" for i in range(300)]}),
                         thumbnails=[bytes([i % 256]) * 20 for i in range(300)])


ids_strategy = st.one_of(st.integers(-5, 400), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3),
                         st.lists(st.one_of(st.integers(-5, 400), st.floats(), st.none()), max_size=6))


@SETTINGS
@given(ids=ids_strategy, label=st.sampled_from(["pos", "neg", "none", "maybe", 1]))
def test_bad_marks_are_refused_whole_and_change_nothing(small_catalog, ids, label):
    session = SearchSession(small_catalog)
    session.label([1, 2], "pos")
    before = dict(session.labels)
    try:
        session.label(ids, label)
    except ValueError:
        assert session.labels == before  # nothing half-applied
    else:
        as_list = [ids] if isinstance(ids, int) else ids
        assert all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 300 for i in as_list)


MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(["codes.npy", "items.parquet", "thumbs.bin", "thumbs.idx.npy"]),
              st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.sampled_from(["codes.npy", "items.parquet", "thumbs.bin", "thumbs.idx.npy"]),
              st.integers(0, 10_000)),
    st.tuples(st.just("delete"), st.sampled_from(["codes.npy", "items.parquet", "thumbs.bin", "manifest.json"]),
              st.just(0)),
    st.tuples(st.just("manifest"), st.sampled_from(["n_items", "dim", "files", "quantizer", "version", "format",
                                                    "encoder", "extra"]),
              st.one_of(st.none(), st.integers(-3, 10**6), st.text(max_size=5), st.just({}),
                        st.just({"codes.npy": {"bytes": 1}}), st.just({"../../etc/passwd": {"bytes": 1}}),
                        st.just({"/dev/zero": {"bytes": 0}}), st.just({"thumbnails": {"source": "x"}}))),
)


@SETTINGS
@given(mutation=MUTATIONS)
def test_a_mutated_catalog_opens_whole_or_fails_clearly(small_catalog, tmp_path_factory, mutation):
    folder = tmp_path_factory.mktemp("mut") / "cat"
    shutil.copytree(small_catalog.path, folder)
    kind, name, arg = mutation
    path = folder / name
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: arg % max(len(data), 1)])
    elif kind == "flip":
        data = bytearray(path.read_bytes())
        data[arg % len(data)] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind == "delete":
        path.unlink()
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest[name] = arg
        (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        cat = open_catalog(folder)
        ids = np.arange(300)
        # whatever opens answers exactly as the original: no silent damage got through
        assert np.array_equal(cat.rows(ids), small_catalog.rows(ids))
        assert cat.items_of(ids).column("caption").to_pylist() == small_catalog.items_of(ids).column("caption").to_pylist()
        assert cat.thumbnail(299) == small_catalog.thumbnail(299)
    except ValueError as exc:
        assert str(exc)  # a message, not a bare error
