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
from clipbranches_widgets.engine import BranchEnsemble, DecisionBranches, LinearCodes, apply_model
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
