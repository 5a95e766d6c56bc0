"""The catalog pipeline end to end: demo CLIP training, reducers, query encoding, CLI, folders."""

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from clipbranches_widgets import open_catalog
from clipbranches_widgets.__main__ import main
from clipbranches_widgets.catalog import write_catalog
from clipbranches_widgets.demo import ShapesWorld, world_of
from clipbranches_widgets.embedding.reducers import PCAReducer


def test_package_exports_open_catalog_without_torch():
    import subprocess
    import sys

    code = ("import sys, clipbranches_widgets as cb; assert cb.open_catalog; "
            "assert 'torch' not in sys.modules, 'importing the package pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_catalog_answers_text_and_image_queries(tiny_catalog):
    cat = tiny_catalog
    spec = cat.manifest["encoder"]
    assert spec["model"] == "local-dir" and spec["reducer"] == "head-koleo"
    assert cat.codes.dtype == np.uint8 and cat.codes.shape == (3000, 32)
    assert {"id", "caption", "background", "objects"} <= set(cat.items.column_names)
    ids, scores = cat.search_text("a red star", k=60)
    assert ids.shape == (60,) and len(set(ids.tolist())) == 60
    assert np.all(np.diff(scores) <= 0)
    by_id, id_scores = cat.search_image(7, k=10)
    by_pil, _ = cat.search_image(cat.image(7), k=10)
    assert by_id.shape == by_pil.shape == (10,)
    assert by_id[0] == 7 or id_scores[0] == id_scores[1]  # the item itself (or an exact tie)
    assert id_scores[0] <= 1 + 1e-6
    # the thumbnail is rendered from the demo world: the same pixels as the generator's image
    world = world_of(cat)
    assert world is not None and world.seed == cat.manifest["extra"]["demo_world"]["seed"]
    assert np.abs(np.asarray(cat.image(7), np.int16) - world.image(7).astype(np.int16)).mean() < 8
    # the query side reproduces the stored codes from the picture (same encoder + reducer)
    q = cat.query_encoder().encode_images(world.images(0, 20))
    assert (np.abs(cat.quantizer.quantize(q).astype(int) - cat.codes[:20]) <= 1).mean() > 0.99


@pytest.mark.parametrize("bad, msg", [("", "non-empty"), ("   ", "non-empty"), (None, "non-empty")])
def test_bad_text_queries(tiny_catalog, bad, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_catalog.search_text(bad)


def test_bad_k_and_image_arguments(tiny_catalog):
    with pytest.raises(ValueError, match="k must be"):
        tiny_catalog.search_text("a red star", k=0)
    with pytest.raises(ValueError, match="unknown item id"):
        tiny_catalog.search_image(3000)
    with pytest.raises(ValueError, match="item id or a PIL image"):
        tiny_catalog.search_image("a red star")
    ids, _ = tiny_catalog.search_text("a blue ring", k=10**6)  # k larger than the catalog: all rows
    assert ids.shape == (3000,)


def test_catalog_without_encoder_says_so(tmp_path):
    codes = np.random.default_rng(0).integers(0, 256, (50, 32), dtype=np.uint8)
    cat = write_catalog(tmp_path / "c", codes, {"caption": ["x"] * 50})
    with pytest.raises(ValueError, match="records no query encoder"):
        cat.search_text("a red star")
    assert cat.search_image(3, k=5)[0].shape == (5,)  # by item id still works


def test_corrupt_encoder_weights_are_named(tiny_catalog_path, tmp_path):
    copy = tmp_path / "cat"
    shutil.copytree(tiny_catalog_path, copy)
    weights = copy / "encoder" / "open_clip_pytorch_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="open_clip_pytorch_model.bin does not match its checksum"):
        open_catalog(copy)


def test_pca_reducer_matches_sklearn():
    from sklearn.decomposition import PCA

    # well-separated variances, so that every component is defined (up to sign)
    x = (np.random.default_rng(1).normal(size=(400, 64)) * np.linspace(3, 0.1, 64)).astype(np.float32)
    ours = PCAReducer(32).fit(x).embed_images(x)
    ref = PCA(32, svd_solver="full").fit_transform(x)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    signs = np.sign((ours * ref).sum(0))  # components are defined up to sign
    assert np.allclose(ours, ref * signs, atol=1e-4)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="not fitted"):
        PCAReducer(32).embed_texts(x)
    with pytest.raises(ValueError, match="needs at least 33 pictures; got 20"):  # never a silent 20-dim catalog
        PCAReducer(32).fit(x[:20])


def test_train_demo_clip_is_deterministic_and_validates():
    import torch

    from clipbranches_widgets.demo.train_clip import train_demo_clip

    world = ShapesWorld(seed=3)
    images = world.images(0, 256)
    a, hist = train_demo_clip(world, n_images=256, steps=3, batch_size=32, images=images, progress=False)
    b, _ = train_demo_clip(world, n_images=256, steps=3, batch_size=32, images=images, progress=False)
    for (name, pa_), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa_, pb), name
    assert hist[-1]["step"] == 3 and np.isfinite(hist[-1]["loss"])
    with pytest.raises(ValueError, match="n_images >= batch_size"):
        train_demo_clip(world, n_images=10, steps=3, batch_size=32, images=images)
    with pytest.raises(ValueError, match="hard_negatives"):
        train_demo_clip(world, n_images=256, steps=3, hard_negatives=2.0, images=images)


def test_cli_builds_demo_catalog_from_saved_encoder_and_searches(tiny_catalog_path, tmp_path, capsys):
    out = tmp_path / "small"
    rc = main(["build-catalog", str(out), "--items", "400", "--encoder-dir",
               str(tiny_catalog_path / "encoder"), "--reducer", "pca", "--quantizer", "per-dim"])
    assert rc == 0
    cat = open_catalog(out)
    assert cat.n_items == 400 and cat.manifest["encoder"]["reducer"] == "pca"
    assert cat.manifest["encoder"]["name"] == "cb-shapes-rn16"  # not the folder it came from
    assert cat.manifest["quantizer"]["kind"] == "per_dim"
    assert cat.manifest["extra"]["demo_world"]["seed"] == 777
    capsys.readouterr()
    assert main(["search", str(out), "a green heart", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split()) >= 3 for line in lines)
    assert main(["search", str(out), ""]) == 2  # empty query: a message, not a traceback
    assert "non-empty" in capsys.readouterr().err


def _write_folder(folder, n=70):
    world = ShapesWorld(seed=5)
    folder.mkdir()
    rows = []
    for i in range(n):
        name = f"img{i:03d}." + ("png" if i % 2 else "jpg")
        Image.fromarray(world.image(i)).save(folder / name)
        rows.append({"filename": name, "caption": world.caption(i)})
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    with open(folder / "captions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["filename", "caption"])
        w.writeheader()
        w.writerows(rows)


def test_folder_catalog_skips_broken_files_and_answers_queries(tiny_catalog_path, tmp_path, capsys):
    src = tmp_path / "photos"
    _write_folder(src)
    rc = main(["build-catalog", str(tmp_path / "mine"), "--folder", str(src), "--captions",
               str(src / "captions.csv"), "--model", "local-dir:" + str(tiny_catalog_path / "encoder"),
               "--head-epochs", "2"])
    assert rc == 0
    report = capsys.readouterr().out
    assert "70 images ingested" in report and "broken.jpg" in report and "notes.txt" in report
    cat = open_catalog(tmp_path / "mine")
    assert cat.n_items == 70 and cat.manifest["encoder"]["reducer"] == "head-koleo"
    assert cat.items.column("source").to_pylist()[:2] == ["img000.jpg", "img001.png"]
    assert sorted(cat.manifest["extra"]["build"]["skipped"]) == ["broken.jpg", "notes.txt"]
    assert Image.open(io.BytesIO(cat.thumbnail(3))).size[0] > 0
    assert cat.search_text("a red star", k=5)[0].shape == (5,)


def test_folder_catalog_errors(tiny_catalog_path, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junk.png").write_bytes(b"nope")
    rc = main(["build-catalog", str(tmp_path / "x"), "--folder", str(empty), "--model",
               "local-dir:" + str(tiny_catalog_path / "encoder")])
    assert rc == 2 and "no usable image" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    rc = main(["build-catalog", str(tmp_path / "y"), "--folder", str(tmp_path / "missing")])
    assert rc == 2 and "is not a folder" in capsys.readouterr().err
