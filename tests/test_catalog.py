"""Catalog folders: round trip, atomic replace, and clear errors naming the bad file."""

import json

import numpy as np
import pyarrow as pa
import pytest

from clipbranches_widgets.catalog import open_catalog, write_catalog
from clipbranches_widgets.engine import DecisionBranches


def make(tmp_path, n=300, thumbs=True):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n, 32)).astype(np.uint8)
    items = pa.table({"caption": [f"item {i}" for i in range(n)], "color": ["red" if i % 3 else "blue" for i in range(n)]})
    jpegs = [bytes([i % 256]) * (i % 7 + 1) for i in range(n)] if thumbs else None
    return write_catalog(tmp_path / "cat", codes, items, thumbnails=jpegs, encoder={"name": "test"}), codes, jpegs


def test_round_trip(tmp_path):
    cat, codes, jpegs = make(tmp_path)
    again = open_catalog(tmp_path / "cat")
    np.testing.assert_array_equal(again.codes, codes)
    assert again.items.column_names == ["id", "caption", "color"] and again.items.num_rows == 300
    assert again.thumbnail(5) == jpegs[5] and again.thumbnail(299) == jpegs[299]
    assert len(again) == 300 and again.dim == 32 and again.manifest["encoder"] == {"name": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cat.lock", "cat"]  # no temporary folders left


def test_rewrite_replaces_whole_catalog_and_index_is_keyed(tmp_path):
    cat, codes, _ = make(tmp_path)
    index = cat.box_index()
    assert not index.loaded and cat.box_index() is index  # built once, then cached
    assert open_catalog(tmp_path / "cat").box_index().loaded  # a new opener reuses the saved index
    X, y = codes[:60], np.r_[np.ones(10, int), np.zeros(50, int)]
    m = DecisionBranches(random_state=0).fit(X, y)
    assert sorted(cat.box_index().search(m).ids.tolist()) == np.flatnonzero(m.predict_mask(codes)).tolist()
    new_codes = np.ascontiguousarray(codes[::-1])
    cat2 = write_catalog(tmp_path / "cat", new_codes, pa.table({"caption": ["x"] * 300}))
    np.testing.assert_array_equal(cat2.codes, new_codes)
    assert not cat2.has_thumbnails
    assert not cat2.box_index().loaded  # new codes -> new key -> no stale index


@pytest.mark.parametrize("damage, msg", [
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json is corrupt"),
    (lambda p: (p / "codes.npy").unlink(), "codes.npy is missing"),
    (lambda p: (p / "codes.npy").write_bytes((p / "codes.npy").read_bytes()[:-10]), "codes.npy has .* bytes"),
    (lambda p: (p / "items.parquet").write_bytes(b"x" * (p / "items.parquet").stat().st_size), "items.parquet does not match its checksum"),
    (lambda p: (p / "thumbs.bin").write_bytes(b"\0" * (p / "thumbs.bin").stat().st_size), "thumbs.bin does not match"),
])
def test_damaged_catalog_names_the_file(tmp_path, damage, msg):
    make(tmp_path)
    damage(tmp_path / "cat")
    with pytest.raises(ValueError, match=msg):
        open_catalog(tmp_path / "cat")


def test_mismatched_manifest_and_bad_input(tmp_path):
    make(tmp_path)
    mpath = tmp_path / "cat" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["n_items"] = 301
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="codes.npy holds"):
        open_catalog(tmp_path / "cat")
    m["format"] = "something else"
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="does not describe a clipbranches catalog"):
        open_catalog(tmp_path / "cat")
    with pytest.raises(ValueError, match="not a folder"):
        open_catalog(tmp_path / "nowhere")
    codes = np.zeros((3, 32), np.uint8)
    with pytest.raises(ValueError, match="items has 2 rows"):
        write_catalog(tmp_path / "c2", codes, pa.table({"caption": ["a", "b"]}))
    with pytest.raises(ValueError, match="0..N-1"):
        write_catalog(tmp_path / "c2", codes, pa.table({"id": [0, 2, 1], "caption": ["a", "b", "c"]}))
    cat = write_catalog(tmp_path / "c3", codes, pa.table({"caption": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="unknown item id 3"):
        cat.thumbnail(3)
    # no pictures: a text tile with the caption, never an error
    assert not cat.has_thumbnails and cat.thumbnails.text(1) == "b"
    assert cat.image(0).size == (160, 160)


def test_stale_folder_from_a_crashed_write_is_not_used(tmp_path):
    stale = tmp_path / "cat.new"
    stale.mkdir()
    (stale / "junk").write_text("from a crash")
    cat, codes, _ = make(tmp_path)
    np.testing.assert_array_equal(cat.codes, codes)
    assert not (tmp_path / "cat" / "junk").exists() and not stale.exists()


def test_more_like_this(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 32))
    lab = np.repeat(np.arange(5), 100)
    z = centres[lab] + 0.05 * rng.normal(size=(500, 32))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    cat = write_catalog(tmp_path / "c", np.clip(np.floor(127.5 * z + 128), 0, 255).astype(np.uint8),
                        pa.table({"caption": [str(v) for v in lab]}))
    ids, scores = cat.search_similar(7, k=50)
    assert 7 not in ids and len(ids) == 50 and (np.diff(scores) <= 1e-7).all()
    assert (lab[ids] == lab[7]).all()  # its own cluster first
    assert cat.search_similar(7, k=1, include_self=True)[0].tolist() == [7]
    with pytest.raises(ValueError, match="unknown item id"):
        cat.search_similar(500)


def test_two_writers_on_one_folder_one_clear_error_and_a_whole_catalog(tmp_path):
    import subprocess
    import sys
    import time

    codes = np.random.default_rng(0).integers(0, 256, (50, 32)).astype(np.uint8)
    write_catalog(tmp_path / "cat", codes, pa.table({"caption": ["old"] * 50}))
    # another process holds the folder's writer lock (as a running build-catalog does)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from clipbranches_widgets._atomic import writer_lock\n"
                               f"with writer_lock({str(tmp_path / 'cat')!r}):\n"
                               "    print('locked', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"another process \({holder.pid}\) is writing"):
            write_catalog(tmp_path / "cat", codes[::-1], pa.table({"caption": ["new"] * 50}))
        assert open_catalog(tmp_path / "cat").items.column("caption")[0].as_py() == "old"  # untouched
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    # the killed writer's lock died with it
    assert write_catalog(tmp_path / "cat", codes, pa.table({"caption": ["new"] * 50})).items.column("caption")[0].as_py() == "new"


def test_apply_scans_until_an_index_is_built_on_request(tmp_path, monkeypatch, caplog):
    """Applying never builds a box index; once box_index() built one (this or an earlier opener), apply
    uses it through its planner; a damaged saved index is skipped with a warning, and the scan answers."""
    import logging

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cat, codes, _ = make(tmp_path)
    X, y = codes[:60], np.r_[np.ones(10, int), np.zeros(50, int)]
    m = DecisionBranches(random_state=0).fit(X, y)
    want = np.flatnonzero(m.predict_mask(codes)).tolist()
    assert sorted(cat.apply(m).ids.tolist()) == want
    assert cat.saved_box_index() is None and not (tmp_path / "cat" / "index").exists()
    index = cat.box_index()
    assert cat.saved_box_index() is index
    again = open_catalog(tmp_path / "cat")
    assert sorted(again.apply(m).ids.tolist()) == want and again.saved_box_index().loaded
    for f in index.folder.iterdir():
        if f.name == "perm.npy":
            f.write_bytes(f.read_bytes()[:-7])
    damaged = open_catalog(tmp_path / "cat")
    with caplog.at_level(logging.WARNING):
        assert sorted(damaged.apply(m).ids.tolist()) == want
    assert damaged.saved_box_index() is None and "ignoring the saved box index" in caplog.text


def test_box_index_falls_back_to_the_cache_then_memory(tmp_path, monkeypatch):
    from clipbranches_widgets.engine import BoxIndex

    cat, codes, _ = make(tmp_path)
    real_build = BoxIndex.build
    tried = []

    def build(codes, subsets, path=None, **kw):
        tried.append(path)
        if path is not None:
            raise PermissionError(13, "read-only", str(path))
        return real_build(codes, subsets, path=None, **kw)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(BoxIndex, "build", staticmethod(build))
    index = open_catalog(tmp_path / "cat").box_index()
    assert tried == [tmp_path / "cat" / "index", tmp_path / "cache" / "clipbranches" / "index", None]
    X, y = codes[:60], np.r_[np.ones(10, int), np.zeros(50, int)]
    m = DecisionBranches(random_state=0).fit(X, y)
    assert sorted(index.search(m).ids.tolist()) == np.flatnonzero(m.predict_mask(codes)).tolist()


def test_items_are_read_by_row_group_and_pinned(tmp_path):
    n = 150_000  # three row groups of 65,536 rows
    codes = np.zeros((n, 32), np.uint8)
    write_catalog(tmp_path / "c", codes, pa.table({"caption": [f"old {i}" for i in range(n)]}))
    cat = open_catalog(tmp_path / "c")
    ids = np.array([149_999, 3, 65_536, 3, 70_000, 0])
    page = cat.items_of(ids)
    assert page.column("caption").to_pylist() == [f"old {i}" for i in ids] and page.column("id").to_pylist() == ids.tolist()
    assert cat._items._table is None  # a page never loads the whole table
    assert cat.items_of([]).num_rows == 0 and cat.items_of([]).column_names == ["id", "caption"]
    write_catalog(tmp_path / "c", codes, pa.table({"caption": [f"new {i}" for i in range(n)]}))
    assert cat.items_of([5]).column("caption")[0].as_py() == "old 5"  # the file it opened, not the rebuild
    assert cat.items.num_rows == n and cat.items.column("caption")[7].as_py() == "old 7"
    assert open_catalog(tmp_path / "c").items_of([5]).column("caption")[0].as_py() == "new 5"
