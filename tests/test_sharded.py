"""Sharded catalogs answer exactly as one folder does; their writer resumes, locks and never leaves a
half catalog in place."""

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.ensemble import RandomForestClassifier

from clipbranches_widgets.catalog import ShardedCatalog, ShardedCatalogWriter, open_catalog, write_catalog
from clipbranches_widgets.engine import BranchEnsemble, DecisionBranches, LinearCodes
from clipbranches_widgets.testing.synthetic import clustered_catalog
from clipbranches_widgets.session import SearchSession

N, SHARD = 1000, 300


def _data():
    codes, labels = clustered_catalog(N, n_clusters=12, seed=3)
    items = pa.table({"caption": [f"item {i} of cluster {c}" for i, c in enumerate(labels)],
                      "cluster": labels.astype(np.int64)})
    return codes, labels, items


def _write_sharded(path, codes, items, *, block=170, build_id="b1", **kw):
    with ShardedCatalogWriter(path, shard_rows=SHARD, build_id=build_id, **kw) as writer:
        for start in range(writer.n_written, codes.shape[0], block):
            writer.add(codes[start:start + block], items.slice(start, block))
    return writer.catalog


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    codes, labels, items = _data()
    one = write_catalog(root / "one", codes, items)
    sharded = _write_sharded(root / "many", codes, items)
    return one, sharded, labels


def test_layout_and_rows(pair):
    one, sharded, _ = pair
    assert isinstance(sharded, ShardedCatalog) and isinstance(open_catalog(sharded.path), ShardedCatalog)
    assert sharded.n_items == N and sharded.n_shards == 4 and sharded.offsets.tolist() == [0, 300, 600, 900, 1000]
    ids = np.array([999, 0, 300, 299, 5, 600, 5])
    assert np.array_equal(sharded.rows(ids), one.rows(ids))
    page = sharded.items_of(ids)
    assert page.column("id").to_pylist() == ids.tolist()
    assert page.column("caption").to_pylist() == one.items_of(ids).column("caption").to_pylist()
    assert not sharded.has_thumbnails and sharded.image(301).size == (160, 160)  # a caption tile
    with pytest.raises(ValueError, match="unknown item id 1000"):
        sharded.rows([1000])


def test_nearest_neighbours_equal_one_folder(pair):
    one, sharded, _ = pair
    queries = one.quantizer.dequantize(one.rows([10, 450, 920]))
    for k in (1, 7, 60, 2000):
        a, b = one.search_vectors(queries, k=k), sharded.search_vectors(queries, k=k)
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    a, b = one.search_similar(305, k=20), sharded.search_similar(305, k=20)
    assert np.array_equal(a[0], b[0]) and 305 not in b[0].tolist()


def test_every_model_family_answers_the_same(pair):
    one, sharded, labels = pair
    X = one.rows(np.arange(0, N, 3))
    y = (labels[::3] == 2).astype(int)
    models = [DecisionBranches(random_state=0).fit(X, y), BranchEnsemble(n_estimators=5, random_state=0).fit(X, y),
              LinearCodes().fit(X, y), RandomForestClassifier(10, random_state=0).fit(X, y)]
    for model in models:
        a, b = one.apply(model), sharded.apply(model)
        assert a.count > 0 and a.ids.tolist() == b.ids.tolist(), type(model).__name__
        assert np.allclose(a.scores, b.scores)
        assert b.stats["n_blocks"] == 4


def test_a_session_gives_the_same_answers_on_both(pair):
    one, sharded, labels = pair
    results = []
    for cat in (one, sharded):
        session = SearchSession(cat, random_state=5)
        shown = session.image_search(int(np.flatnonzero(labels == 4)[0]), k=40).ids
        session.label([int(i) for i in shown if labels[i] == 4], "pos")
        session.label([int(i) for i in shown if labels[i] != 4], "neg")
        refined = session.refine("auto", n_random_negatives=200, exclude_top=100)
        results.append((shown.tolist(), refined.ids.tolist(), refined.model_name,
                        session.suggest(30, random_state=1).ids.tolist(), session.export_text("json")))
    assert results[0] == results[1]


def test_a_killed_build_resumes_and_never_publishes_half(tmp_path):
    codes, _, items = _data()
    out = tmp_path / "cat"

    class Killed(Exception):
        pass

    with pytest.raises(Killed):
        with ShardedCatalogWriter(out, shard_rows=SHARD, build_id="b1") as writer:
            writer.add(codes[:650], items.slice(0, 650))
            raise Killed
    assert not out.exists() and (tmp_path / "cat.partial").is_dir()
    with ShardedCatalogWriter(out, shard_rows=SHARD, build_id="b1") as writer:
        assert writer.n_written == 600  # two complete shards kept; the 50 buffered rows are redone
        writer.add(codes[600:], items.slice(600))
    resumed = writer.catalog
    assert np.array_equal(resumed.rows(np.arange(N)), codes)
    assert not (tmp_path / "cat.partial").exists()
    # another build id starts clean; the old catalog stays whole until the new one replaces it
    with ShardedCatalogWriter(out, shard_rows=SHARD, build_id="b2") as writer:
        assert writer.n_written == 0
        writer.add(codes[:10], items.slice(0, 10))
        assert open_catalog(out).n_items == N
    assert open_catalog(out).n_items == 10


def test_one_writer_at_a_time_and_empty_builds(tmp_path):
    codes, _, items = _data()
    with ShardedCatalogWriter(tmp_path / "cat", shard_rows=SHARD) as first:
        with pytest.raises(ValueError, match="another process .* is writing"):
            ShardedCatalogWriter(tmp_path / "cat", shard_rows=SHARD).__enter__()
        first.add(codes[:5], items.slice(0, 5))
    with pytest.raises(ValueError, match="no rows were added"):
        with ShardedCatalogWriter(tmp_path / "empty"):
            pass
    with pytest.raises(ValueError, match="items has 3 rows"):
        with ShardedCatalogWriter(tmp_path / "bad") as writer:
            writer.add(codes[:4], items.slice(0, 3))


def test_damaged_shards_are_named(tmp_path):
    codes, _, items = _data()
    cat = _write_sharded(tmp_path / "cat", codes, items)
    manifest = tmp_path / "cat" / "shard-00002" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["extra"] = {"tampered": True}
    manifest.write_text(json.dumps(data))
    fresh = open_catalog(tmp_path / "cat")
    assert fresh.rows([5]).shape == (1, 32)  # untouched shards still answer
    with pytest.raises(ValueError, match="shard-00002 does not match the catalog's manifest"):
        fresh.rows([650])
    top = json.loads((tmp_path / "cat" / "manifest.json").read_text())
    top["shards"][0]["n_items"] = 7
    (tmp_path / "cat" / "manifest.json").write_text(json.dumps(top))
    with pytest.raises(ValueError, match="do not add up"):
        open_catalog(tmp_path / "cat")
    # the fingerprint follows the content: the same rows give the same one, other rows another
    same = _write_sharded(tmp_path / "same", codes, items)
    other = _write_sharded(tmp_path / "other", codes[::-1].copy(), items)
    assert same.fingerprint == cat.fingerprint != other.fingerprint
