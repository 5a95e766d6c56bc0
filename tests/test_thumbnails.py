"""Where tiles come from: stored JPEGs (pinned while open), the user's files under an image root,
a generator named in the manifest, or a text tile; a bad picture is shown as text, never an error."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipbranches_widgets.catalog import open_catalog, write_catalog
from clipbranches_widgets.catalog.thumbnails import CaptionTiles, ImageFiles, StoredThumbnails


def _codes(n):
    return np.random.default_rng(0).integers(0, 256, (n, 32)).astype(np.uint8)


def _decode(jpeg: bytes):
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def test_image_root_tiles_follow_the_files_and_fall_back_to_text(tmp_path):
    root = tmp_path / "pictures"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (400, 200), (250, 10, 10)).save(root / "sub" / "red.png")
    (root / "broken.jpg").write_bytes(b"not a picture")
    (tmp_path / "secret.png").write_bytes((root / "sub" / "red.png").read_bytes())
    items = pa.table({"caption": ["a red thing", "broken", "missing", "outside", None],
                      "image_path": ["sub/red.png", "broken.jpg", "gone.png", "../secret.png", None]})
    cat = write_catalog(tmp_path / "cat", _codes(5), items, extra={"image_root": "../pictures"})
    assert isinstance(cat.thumbnails, ImageFiles) and cat.has_thumbnails
    red = _decode(cat.thumbnail(0))
    assert red.size == (160, 80) and np.asarray(red)[40, 80, 0] > 200  # shrunk to a tile, aspect kept
    for i in (1, 2, 3, 4):  # broken, missing, outside the root, no path: the text tile
        assert _decode(cat.thumbnail(i)).size == (160, 160)
    assert cat.thumbnails.file(3) is None and cat.thumbnails.fallback.text(4) == "item 4"
    # the opener's image_root wins over the manifest's
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 50), (0, 0, 250)).save(other / "sub" / "red.png")
    blue = _decode(open_catalog(tmp_path / "cat", image_root=other).thumbnail(0))
    assert blue.size == (50, 50) and np.asarray(blue)[25, 25, 2] > 200


def test_image_root_errors_are_specific(tmp_path):
    items = pa.table({"caption": ["x"]})
    write_catalog(tmp_path / "a", _codes(1), items)
    with pytest.raises(ValueError, match="image_path column"):
        open_catalog(tmp_path / "a", image_root=tmp_path).thumbnails
    write_catalog(tmp_path / "b", _codes(1), pa.table({"image_path": ["x.png"]}))
    with pytest.raises(ValueError, match="is not a folder"):
        open_catalog(tmp_path / "b", image_root=tmp_path / "nowhere").thumbnails
    write_catalog(tmp_path / "c", _codes(1), items, extra={"thumbnails": {"source": "os.system"}})
    with pytest.raises(ValueError, match="unknown thumbnail generator 'os.system'"):
        open_catalog(tmp_path / "c").thumbnail(0)


def test_text_tiles_use_the_first_text_column():
    assert CaptionTiles(pa.table({"url": ["http://x/1.jpg"]})).text(0) == "http://x/1.jpg"
    assert CaptionTiles(pa.table({"width": [3]})).text(0) == "item 0"


def test_an_opened_catalog_keeps_its_thumbnails_through_an_in_place_rebuild(tmp_path):
    old = [bytes([1]) * 5, bytes([2]) * 7]
    cat = write_catalog(tmp_path / "cat", _codes(2), pa.table({"caption": ["a", "b"]}), thumbnails=old)
    # (no thumbnail asked for before the rebuild: the file is pinned when the catalog opens)
    write_catalog(tmp_path / "cat", _codes(2), pa.table({"caption": ["c", "d"]}), thumbnails=[b"\x09" * 3, b"\x08" * 9])
    assert [cat.thumbnail(0), cat.thumbnail(1)] == old  # the old files, matching the old captions
    assert isinstance(cat.thumbnails, StoredThumbnails) and cat.items.column("caption")[0].as_py() == "a"
    assert open_catalog(tmp_path / "cat").thumbnail(1) == b"\x08" * 9


def test_a_hostile_demo_world_spec_is_refused_before_allocating(tmp_path):
    for spec, message in [({"image_size": 200000, "seed": 1, "objects_per_image": {"1": 1.0}}, "image_size"),
                          ({"image_size": 64, "seed": "x", "objects_per_image": {"1": 1.0}}, "seed"),
                          ({"image_size": 64, "seed": 1, "objects_per_image": {"0": 1.0}}, "objects_per_image")]:
        write_catalog(tmp_path / "w", _codes(1), pa.table({"caption": ["x"]}), extra={"demo_world": spec})
        with pytest.raises(ValueError, match=message):
            open_catalog(tmp_path / "w").thumbnail(0)
