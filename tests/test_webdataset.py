"""Catalogs from img2dataset webdataset shards: reading, skips, metadata, resuming, bad input."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from clipbranches_widgets import open_catalog
from clipbranches_widgets.build import build_webdataset_catalog
from clipbranches_widgets.embedding.encoders import Encoder

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def _picture(i: int, fmt: str) -> tuple[bytes, tuple[int, int], str]:
    """A coloured square or circle on grey, encoded as ``fmt``: (bytes, size, caption)."""
    name = list(COLORS)[i % len(COLORS)]
    shape = "square" if i % 2 == 0 else "circle"
    size = (72 + 4 * i, 64)
    im = Image.new("RGB", size, (128, 128, 128))
    box = (12, 10, 12 + 40, 10 + 40)
    draw = ImageDraw.Draw(im)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[name])
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue(), size, f"a {name} {shape}"


def _write_shard(folder, shard: int, samples: list) -> None:
    """One img2dataset-style shard: ``NNNNN.tar`` (image, .txt, .json per key) and ``NNNNN.parquet``.

    samples: dicts with ``key`` and optional ``image`` (bytes), ``ext``, ``caption`` (None: no .txt),
    ``json`` (False: no .json member), ``url``.
    """
    rows = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tf:
        for s in samples:
            meta = {"url": s.get("url", f"https://example.org/{s['key']}.jpg"), "key": s["key"],
                    "caption": s.get("meta_caption", s.get("caption")), "status": "success"}
            members = []
            if "image" in s:
                members.append((f"{s['key']}.{s.get('ext', 'jpg')}", s["image"]))
            if s.get("caption") is not None:
                members.append((f"{s['key']}.txt", s["caption"].encode()))
            if s.get("json", True):
                members.append((f"{s['key']}.json", json.dumps(meta).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            rows.append(meta)
    rows.append({"url": "https://example.org/gone.jpg", "key": f"{shard:04d}99999", "caption": "never fetched",
                 "status": "failed_to_download"})
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")


def _sample(key: str, i: int, fmt: str = "JPEG", ext: str = "jpg", **kw) -> dict:
    data, size, caption = _picture(i, fmt)
    return {"key": key, "image": data, "ext": ext, "caption": caption, "size": size, **kw}


@pytest.fixture
def shards(tmp_path):
    """Three shards: 15 samples, of which one holds a corrupt picture and one has no picture."""
    folder = tmp_path / "shards"
    folder.mkdir()
    s0 = [_sample(f"0000{i:05d}", i) for i in range(6)]
    s0[3] = {"key": "000000003", "image": b"\xff\xd8\xff\xe0 not really a jpeg", "caption": "broken"}
    s1 = [_sample(f"0001{i:05d}", 10 + i, "PNG", "png") for i in range(5)]
    s1[2] = {"key": "000100002", "caption": "a caption without a picture"}
    s2 = [_sample(f"0002{i:05d}", 20 + i, "WEBP", "webp") for i in range(4)]
    s2[1]["caption"] = None  # no .txt: the .json caption is used
    s2[1]["meta_caption"] = "caption from the json"
    s2[2]["json"] = False  # no .json: url and caption fall back to the shard's parquet
    s2[2]["url"] = "https://example.org/from-parquet.webp"
    for n, samples in enumerate((s0, s1, s2)):
        _write_shard(folder, n, samples)
    kept = [s for s in s0 + s1 + s2 if "size" in s]
    return folder, kept


@pytest.fixture
def model(tiny_catalog_path):
    """The tiny demo CLIP stored in the tiny catalog, as an open_clip local-dir model name."""
    return "local-dir:" + str(tiny_catalog_path / "encoder")


@pytest.fixture
def count_encoder_calls(monkeypatch):
    """Counts Encoder.encode_images calls; ``fail_on`` (a call number) makes that call raise, like a kill."""
    state = {"calls": 0, "fail_on": None}
    original = Encoder.encode_images

    def counting(self, images, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == state["fail_on"]:
            raise KeyboardInterrupt("killed")
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode_images", counting)
    return state


def test_build_keeps_metadata_thumbnails_and_reports_skips(shards, model, tmp_path):
    folder, kept = shards
    out = tmp_path / "cat"
    cat, found = build_webdataset_catalog(folder, out, model=model, batch_size=4, progress=False, thumb_side=48, reducer="head")
    assert cat.n_items == len(kept) == found.n_items == 13
    items = cat.items.to_pydict()
    assert items["id"] == list(range(13))
    assert items["key"] == [s["key"] for s in kept]
    assert items["shard"] == ["00000.tar"] * 5 + ["00001.tar"] * 4 + ["00002.tar"] * 4
    assert [(w, h) for w, h in zip(items["width"], items["height"])] == [s["size"] for s in kept]
    captions = dict(zip(items["key"], items["caption"]))
    assert captions["000000000"] == kept[0]["caption"] and captions["000200001"] == "caption from the json"
    urls = dict(zip(items["key"], items["url"]))
    assert urls["000000000"] == "https://example.org/000000000.jpg"
    assert urls["000200002"] == "https://example.org/from-parquet.webp"
    assert captions["000200002"] == kept[-2]["caption"]  # its .txt

    assert found.shards == ["00000.tar", "00001.tar", "00002.tar"] and found.reused == []
    reasons = {s.path: s.reason for s in found.skipped}
    assert set(reasons) == {"00000.tar:000000003", "00001.tar:000100002"}
    assert "unreadable image" in reasons["00000.tar:000000003"]
    assert "no image" in reasons["00001.tar:000100002"] and ".txt" in reasons["00001.tar:000100002"]
    assert "2 samples skipped" in found.report() and "00000.tar:000000003" in found.report()

    assert not (tmp_path / "cat.work").exists()  # removed after success
    assert cat.has_thumbnails
    for i, sample in enumerate(kept):  # each item's own thumbnail, in order
        expected = Image.new("RGB", sample["size"])
        expected.thumbnail((48, 48))
        assert cat.image(i).size == expected.size, (i, sample["key"])
    spec = cat.manifest["encoder"]
    assert spec["model"] == "local-dir" and spec["reducer"] == "head"
    reopened = open_catalog(out)  # self-contained: text queries use the stored encoder and reducer
    ids, scores = reopened.search_text("a red square", k=5)
    assert len(ids) == 5 and len(set(ids.tolist())) == 5 and np.all(np.diff(scores) <= 1e-6)
    ids, _ = reopened.search_image(7, k=3)
    assert ids[0] == 7


def test_rerun_after_a_kill_reuses_finished_tars(shards, model, tmp_path, count_encoder_calls):
    folder, kept = shards
    fresh, _ = build_webdataset_catalog(folder, tmp_path / "fresh", model=model, progress=False, reducer="head")
    assert count_encoder_calls["calls"] == 3  # one batch per tar

    out = tmp_path / "resumed"
    count_encoder_calls.update(calls=0, fail_on=2)  # killed while embedding the second tar
    with pytest.raises(KeyboardInterrupt):
        build_webdataset_catalog(folder, out, model=model, progress=False, reducer="head")
    work = tmp_path / "resumed.work"
    assert sorted(p.name for p in work.glob("0*")) == ["00000.tar.json", "00000.tar.npy", "00000.tar.parquet"]
    assert not out.exists()

    count_encoder_calls.update(calls=0, fail_on=None)
    cat, found = build_webdataset_catalog(folder, out, model=model, progress=False, reducer="head")
    assert count_encoder_calls["calls"] == 2  # the first tar came from the work folder
    assert found.reused == ["00000.tar"] and len(found.skipped) == 2  # its skips are still reported
    assert np.array_equal(cat.codes, fresh.codes)
    assert cat.items.equals(fresh.items)
    assert [cat.thumbnail(i) for i in range(cat.n_items)] == [fresh.thumbnail(i) for i in range(fresh.n_items)]
    assert not work.exists()


def test_work_folder_of_other_settings_or_a_changed_tar_is_not_reused(shards, model, tmp_path, count_encoder_calls):
    folder, _ = shards
    out = tmp_path / "cat"
    count_encoder_calls["fail_on"] = 3
    with pytest.raises(KeyboardInterrupt):
        build_webdataset_catalog(folder, out, model=model, progress=False, reducer="head")
    count_encoder_calls.update(calls=0, fail_on=3)
    with pytest.raises(KeyboardInterrupt):  # another thumbnail size: the saved thumbnails do not fit
        build_webdataset_catalog(folder, out, model=model, progress=False, thumb_side=64, reducer="head")
    assert count_encoder_calls["calls"] == 3
    with open(folder / "00001.tar", "ab") as f:  # tar 00001 changes after it was embedded
        f.write(b"\0" * 10240)
    count_encoder_calls.update(calls=0, fail_on=None)
    _, found = build_webdataset_catalog(folder, out, model=model, progress=False, thumb_side=64, reducer="head")
    assert found.reused == ["00000.tar"] and count_encoder_calls["calls"] == 2


def test_bad_input_is_named(shards, model, tmp_path):
    folder, _ = shards
    with pytest.raises(ValueError, match="is not a folder"):
        build_webdataset_catalog(tmp_path / "missing", tmp_path / "o", model=model, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "00000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="no .tar shards"):
        build_webdataset_catalog(empty, tmp_path / "o", model=model, progress=False)
    with pytest.raises(ValueError, match="unknown reducer"):
        build_webdataset_catalog(folder, tmp_path / "o", model=model, reducer="tsne", progress=False)
    with pytest.raises(ValueError, match="PCA to 32 dims needs at least 33 pictures; got 13"):  # not a 13-d catalog
        build_webdataset_catalog(folder, tmp_path / "p", model=model, reducer="pca", progress=False)

    no_pictures = tmp_path / "no-pictures"
    no_pictures.mkdir()
    _write_shard(no_pictures, 0, [_sample("000000000", 0)])
    _write_shard(no_pictures, 1, [{"key": "000010000", "caption": "text only"},
                                  {"key": "000010001", "image": b"garbage", "caption": "broken"}])
    with pytest.raises(ValueError, match=r"00001.tar holds no usable picture \(2 samples skipped\)"):
        build_webdataset_catalog(no_pictures, tmp_path / "o", model=model, progress=False)
    assert (tmp_path / "o.work" / "00000.tar.json").exists()  # the good tar is kept for the rerun

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    _write_shard(truncated, 0, [_sample(f"0000{i:05d}", i) for i in range(3)])
    data = (truncated / "00000.tar").read_bytes()
    (truncated / "00000.tar").write_bytes(data[:700])
    with pytest.raises(ValueError, match="00000.tar is not a readable tar file"):
        build_webdataset_catalog(truncated, tmp_path / "t", model=model, progress=False)


def test_cli_builds_from_webdataset_tars(shards, model, tmp_path, capsys):
    from clipbranches_widgets.__main__ import main

    folder, kept = shards
    out = tmp_path / "cli-cat"
    assert main(["build-catalog", str(out), "--webdataset", str(folder), "--model", model, "--reducer", "head"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(kept)} images from 3 tars" in printed and "wrote" in printed
    assert open_catalog(out).n_items == len(kept)
    assert main(["build-catalog", str(out), "--webdataset", str(folder), "--folder", str(folder)]) == 2
    assert "give one of --folder, --embeddings, --webdataset" in capsys.readouterr().err
