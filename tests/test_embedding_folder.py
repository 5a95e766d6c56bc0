"""clip-retrieval / LAION embedding folders -> sharded catalogs: validation up front, ids in part
order, streaming that equals a one-shot reduction, refine on the result, resume after a kill, the
CLI."""

import json
import os
import shutil
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbranches_widgets import open_catalog
from clipbranches_widgets.__main__ import main
from clipbranches_widgets.build import embeddings as emb
from clipbranches_widgets.build.embeddings import (build_embedding_catalog, read_embedding_folder,
                                                   write_embedding_folder)
from clipbranches_widgets.catalog import ShardedCatalog
from clipbranches_widgets.embedding.reducers import load_reducer
from clipbranches_widgets.session import SearchSession

N_BIG = 100_000


def _rename_part(folder, old: str, new: str) -> None:
    """Rename part ``old`` to ``new`` in all three sub-folders (as a folder merged from runs would be)."""
    for sub, prefix, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                             ("metadata", "metadata", "parquet")):
        path = folder / sub / f"{prefix}_{old}.{ext}"
        if path.exists():
            path.rename(folder / sub / f"{prefix}_{new}.{ext}")


def _all_rows(folder, which="img_emb"):
    src = read_embedding_folder(folder)
    key = "img" if which == "img_emb" else "text"
    return np.concatenate([np.load(getattr(p, key)).astype(np.float32) for p in src.parts])


def _f1(found, truth) -> float:
    tp = np.intersect1d(found, truth).size
    return 2 * tp / (len(found) + len(truth))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """100k rows, float16, 512-d, with text_emb, 4 parts renamed 0, 1, 2, 10; built once, timed."""
    root = tmp_path_factory.mktemp("emb")
    t0 = time.perf_counter()
    gen = write_embedding_folder(root / "emb", N_BIG, dim=512, rows_per_part=30_000, dtype=np.float16)
    _rename_part(root / "emb", "3", "10")  # numeric order 0, 1, 2, 10; name order would put 10 before 2
    t1 = time.perf_counter()
    cat = build_embedding_catalog(root / "emb", root / "cat", sample_rows=20_000, progress=False)
    t2 = time.perf_counter()
    print(f"\n100k x 512 float16 folder: generated in {t1 - t0:.1f} s, built in {t2 - t1:.1f} s")
    return gen, cat, {"generate_s": t1 - t0, "build_s": t2 - t1}


def test_reads_the_folder_from_headers(big):
    gen, _, _ = big
    src = read_embedding_folder(gen.path)
    assert [p.label for p in src.parts] == ["0", "1", "2", "10"]
    assert [p.rows for p in src.parts] == [30_000, 30_000, 30_000, 10_000]
    assert src.n_rows == N_BIG and src.dim == 512 and src.text_dim == 512 and src.dtypes == ["float16"]
    assert src.columns == ["image_path", "caption", "url", "key", "width", "height", "cluster"]
    assert src.offsets.tolist() == [0, 30_000, 60_000, 90_000, 100_000]


def test_big_folder_becomes_a_catalog_in_part_order(big):
    gen, cat, timing = big
    assert isinstance(cat, ShardedCatalog) and cat.n_items == N_BIG and cat.n_shards == 1
    assert timing["build_s"] < 60
    ids = np.array([0, 29_999, 30_000, 89_999, 90_000, 99_999])
    page = cat.items_of(ids)
    # the generator's keys are its row numbers: part "10" (written as part 3) must come last
    assert page.column("key").to_pylist() == [f"{i:09d}" for i in ids]
    assert page.column_names == ["id", "image_path", "caption", "url", "key", "width", "height", "cluster"]
    spec = cat.manifest["encoder"]
    assert "model" not in spec and spec["reducer"] == "pca" and "--model/--pretrained" in spec["text_search"]
    build = cat.manifest["extra"]["build"]
    assert build["parts"] == ["0", "1", "2", "10"] and build["n_sample"] == 20_000 and build["text_emb"]
    assert not cat.has_thumbnails  # no image root: caption tiles
    assert cat.image(7).size == (160, 160)


def test_refine_finds_a_cluster(big):
    gen, cat, _ = big
    truth = cat.items_of(np.arange(N_BIG)).column("cluster").to_numpy()
    rng = np.random.default_rng(0)
    for c in (3, 10):
        members = np.flatnonzero(truth == c)
        session = SearchSession(cat, random_state=0)
        session.label(rng.choice(members, 20, replace=False), "pos")
        session.label(rng.choice(np.flatnonzero(truth != c), 20, replace=False), "neg")
        result = session.refine()
        assert _f1(result.ids, members) > 0.85, (gen.cluster_names[c], result.count, members.size)


def test_search_by_item_and_no_text_search_without_a_model(big, capsys):
    _, cat, _ = big
    truth = cat.items_of(np.arange(N_BIG)).column("cluster").to_numpy()
    ids, scores = cat.search_image(1234, k=20)
    assert ids[0] == 1234 and np.all(np.diff(scores) <= 0)
    assert np.mean(truth[ids] == truth[1234]) >= 0.9
    with pytest.raises(ValueError, match="not by text.*--model/--pretrained"):
        cat.search_text("a red car")
    assert main(["search", str(cat.path), "a red car"]) == 2
    assert "--model NAME --pretrained TAG" in capsys.readouterr().err
    assert main(["search", str(cat.path), "--item", "1234", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1234"


def test_streaming_equals_one_shot_reduction_float32(tmp_path, monkeypatch):
    """Small chunks, shards and parts that do not line up: the codes equal reducing every row at once."""
    gen = write_embedding_folder(tmp_path / "emb", 5_000, dim=64, rows_per_part=1_800, dtype=np.float32,
                                 with_text=False, n_clusters=8, random_state=1)
    monkeypatch.setattr(emb, "CHUNK_BYTES", 4 * 64 * 700)  # 700-row chunks
    src = read_embedding_folder(gen.path)
    assert src.dtypes == ["float32"] and not src.has_text and [p.label for p in src.parts] == ["0", "1", "2"]
    cat = build_embedding_catalog(gen.path, tmp_path / "cat", shard_rows=1_300, progress=False,
                                  quantizer="per-dim")
    assert cat.n_shards == 4 and cat.offsets.tolist() == [0, 1_300, 2_600, 3_900, 5_000]
    reducer = load_reducer("pca", cat.path / "reducer-pca.npz")
    expected = cat.quantizer.quantize(reducer.embed_images(_all_rows(gen.path)))
    assert np.array_equal(cat.rows(np.arange(5_000)), expected)
    assert cat.manifest["quantizer"]["kind"] == "per_dim"
    assert cat.items_of([4_999]).column("key").to_pylist() == ["000004999"]


def test_metadata_rows_start_anywhere(tmp_path):
    """A resume starts reading a part's metadata mid-file, from the row group that holds its row."""
    path = tmp_path / "m.parquet"
    table = pa.table({"key": [f"{i:04d}" for i in range(1_000)], "n": np.arange(1_000)})
    pq.write_table(table, path, row_group_size=96)
    for start, takes in ((0, [1_000]), (250, [7, 300, 443]), (288, [712]), (999, [1])):
        rows = emb._MetadataRows(path, start, batch_rows=50)
        at = start
        for n in takes:
            got = rows.take(n)
            assert got.column("n").to_pylist() == list(range(at, at + n))
            at += n


class _Kill(Exception):
    pass


def _kill_after(rows):
    def callback(done, total):
        if done >= rows:
            raise _Kill(f"stopped at {done} of {total}")
    return callback


def _shard_bytes(cat):
    return [((cat.path / name / "codes.npy").read_bytes(), (cat.path / name / "items.parquet").read_bytes())
            for name in cat.shard_names]


def test_killed_build_resumes_with_the_same_reducer(tmp_path, monkeypatch):
    gen = write_embedding_folder(tmp_path / "emb", 6_000, dim=64, rows_per_part=2_500, n_clusters=8)
    monkeypatch.setattr(emb, "CHUNK_BYTES", 4 * 64 * 700)
    kw = dict(shard_rows=1_000, sample_rows=3_000, progress=False)
    straight = build_embedding_catalog(gen.path, tmp_path / "a", **kw)

    out = tmp_path / "b"
    with pytest.raises(_Kill):
        build_embedding_catalog(gen.path, out, callback=_kill_after(2_600), **kw)
    partial = out.with_name("b.partial")
    assert not out.exists() and json.loads((partial / "progress.json").read_text())["shards"][1]["n_items"] == 1_000
    saved = (partial / "reducer-pca.npz").read_bytes()

    calls = []
    real_fit = emb._fit
    monkeypatch.setattr(emb, "_fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    resumed = build_embedding_catalog(gen.path, out, **kw)
    assert calls == []  # the reducer came from the partial folder, not from a new fit
    assert (resumed.path / "reducer-pca.npz").read_bytes() == saved
    assert _shard_bytes(resumed) == _shard_bytes(straight)
    assert resumed.manifest["shards"] == straight.manifest["shards"]
    assert resumed.manifest["extra"] == straight.manifest["extra"]
    assert not partial.exists()

    # a changed input part starts clean (new build id) and refits
    with pytest.raises(_Kill):
        build_embedding_catalog(gen.path, tmp_path / "c", callback=_kill_after(2_600), **kw)
    os.utime(gen.path / "metadata" / "metadata_1.parquet", ns=(1, 1))
    again = build_embedding_catalog(gen.path, tmp_path / "c", **kw)
    assert calls == [1, 1] and _shard_bytes(again) == _shard_bytes(straight)  # c killed, then c refitted
    assert again.manifest["extra"]["build"]["build_id"] != straight.manifest["extra"]["build"]["build_id"]


def test_head_reducer_trains_on_text_emb_pairs(tmp_path):
    gen = write_embedding_folder(tmp_path / "emb", 3_000, dim=64, rows_per_part=1_000, n_clusters=6)
    cat = build_embedding_catalog(gen.path, tmp_path / "cat", reducer="head-koleo", head_epochs=2,
                                  progress=False)
    spec = cat.manifest["encoder"]
    assert spec["reducer"] == "head-koleo" and spec["reducer_file"] == "reducer-head.pt"
    assert (cat.path / "reducer-head.pt").is_file() and "model" not in spec
    truth = cat.items_of(np.arange(3_000)).column("cluster").to_numpy()
    ids, _ = cat.search_image(17, k=20)
    assert np.mean(truth[ids] == truth[17]) >= 0.8


def _text_emb_folder(path, model, n=1_500):
    """A folder whose image embeddings are the model's embeddings of the captions (so a caption,
    typed as a query, must find its own items)."""
    from clipbranches_widgets.embedding.encoders import load_encoder

    enc = load_encoder(model, device="cpu")
    gen = write_embedding_folder(path, n, dim=enc.embed_dim, rows_per_part=600, with_text=False, n_clusters=6)
    for part in read_embedding_folder(path).parts:
        captions = pq.read_table(part.metadata, columns=["caption"]).column(0).to_pylist()
        np.save(part.img, enc.encode_texts(captions).astype(np.float16))
    return gen


@pytest.fixture
def model(tiny_catalog_path):
    return "local-dir:" + str(tiny_catalog_path / "encoder")


def test_cli_end_to_end_with_a_model(tmp_path, model, capsys):
    gen = _text_emb_folder(tmp_path / "emb", model)
    out = tmp_path / "cat"
    rc = main(["build-catalog", str(out), "--embeddings", str(gen.path), "--model", model,
               "--shard-rows", "500", "--sample-rows", "1000"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote 1,500 rows in 3 shards" in text and "--model/--pretrained" not in text
    cat = open_catalog(out)
    assert cat.manifest["encoder"]["model"] == "local-dir" and cat.manifest["encoder"]["reducer"] == "pca"
    query = f"a photo of a {gen.cluster_names[2]}"
    assert main(["search", str(out), query, "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.endswith(query) for line in lines)


def test_head_without_text_emb_encodes_the_captions(tmp_path, model):
    gen = _text_emb_folder(tmp_path / "emb", model, n=800)
    with pytest.raises(ValueError, match="no text_emb/ folder and no model"):
        build_embedding_catalog(gen.path, tmp_path / "x", reducer="head", progress=False)
    cat = build_embedding_catalog(gen.path, tmp_path / "cat", reducer="head", model=model, head_epochs=1,
                                  progress=False)
    assert cat.manifest["encoder"]["reducer"] == "head"
    assert cat.search_text("a photo of a red car", k=5)[0].shape == (5,)


def test_cli_without_a_model_says_text_search_needs_one(tmp_path, capsys):
    gen = write_embedding_folder(tmp_path / "emb", 2_000, dim=64, rows_per_part=700, n_clusters=6)
    out = tmp_path / "cat"
    assert main(["build-catalog", str(out), "--embeddings", str(gen.path), "--shard-rows", "500",
                 "--sample-rows", "1000", "--reducer", "pca"]) == 0
    text = capsys.readouterr().out
    assert "wrote 2,000 rows in 4 shards" in text and "text search needs --model/--pretrained" in text
    assert main(["build-catalog", str(tmp_path / "x"), "--embeddings", str(gen.path), "--folder",
                 str(gen.path)]) == 2
    assert "give one of --folder, --embeddings, --webdataset" in capsys.readouterr().err
    assert main(["build-catalog", str(tmp_path / "y"), "--embeddings", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_image_root_gives_picture_tiles(tmp_path):
    gen = write_embedding_folder(tmp_path / "emb", 300, dim=64, rows_per_part=300, n_clusters=4)
    pictures = tmp_path / "pictures"
    (pictures / "images").mkdir(parents=True)
    Image.new("RGB", (320, 200), (200, 30, 30)).save(pictures / "images" / "000000000.jpg")
    cat = build_embedding_catalog(gen.path, tmp_path / "cat", image_root=pictures, progress=False)
    assert cat.manifest["extra"]["image_root"] == "../pictures"  # relative: they move together
    assert cat.has_thumbnails
    tile = cat.image(0)
    assert tile.size == (160, 100) and tile.getpixel((80, 50))[0] > 150  # the picture, shrunk
    assert cat.image(1).size == (160, 160)  # no file: its caption tile
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="none of the first"):
        build_embedding_catalog(gen.path, tmp_path / "cat2", image_root=empty, progress=False)


# -- validation -----------------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    return write_embedding_folder(tmp_path / "emb", 600, dim=32, rows_per_part=200, n_clusters=4).path


def _expect(folder, match):
    with pytest.raises(ValueError, match=match):
        read_embedding_folder(folder)


def test_validation_of_the_folder_layout(small, tmp_path):
    assert read_embedding_folder(small).n_rows == 600
    _expect(tmp_path / "missing", "is not a folder")
    _expect(tmp_path, "no img_emb/ folder")
    shutil.copy(small / "img_emb" / "img_emb_1.npy", small / "img_emb" / "img_emb_01.npy")
    _expect(small, "are both part 1")
    (small / "img_emb" / "img_emb_01.npy").unlink()
    (small / "metadata" / "metadata_2.parquet").unlink()
    _expect(small, "part 2 has no metadata")


def test_validation_of_rows_and_dtypes(small):
    meta = small / "metadata" / "metadata_1.parquet"
    table = pq.read_table(meta)
    pq.write_table(table.slice(0, 199), meta)
    _expect(small, r"img_emb_1.npy has 200 rows but .*metadata_1.parquet has 199")
    pq.write_table(table, meta)

    img = small / "img_emb" / "img_emb_2.npy"
    good = np.load(img)
    np.save(img, np.zeros(200, np.float16))
    _expect(small, r"shape \(200,\); embeddings are a 2-D float array")
    np.save(img, np.ones((200, 32), np.int8))
    _expect(small, "holds a int8 array")
    wide = np.zeros((200, 48), np.float16)
    wide[:, 0] = 1
    np.save(img, wide)
    _expect(small, r"different widths \(32-d in img_emb_0.npy, 48-d in img_emb_2.npy\)")
    np.save(img, good * 2)
    _expect(small, r"img_emb_2.npy does not hold unit-length rows: the norms of 16 sampled rows are 2.000")
    np.save(img, good)
    with open(img, "r+b") as f:
        f.truncate(img.stat().st_size - 10)
    _expect(small, "img_emb_2.npy is truncated")
    np.save(img, good)

    text = small / "text_emb" / "text_emb_0.npy"
    np.save(text, np.load(text)[:150])
    _expect(small, "text_emb_0.npy has 150 rows but .*img_emb_0.npy has 200")
    text.unlink()
    _expect(small, "part 0 has no text embeddings")


def test_build_argument_errors(small, tmp_path):
    with pytest.raises(ValueError, match="unknown reducer"):
        build_embedding_catalog(small, tmp_path / "x", reducer="umap", progress=False)
    with pytest.raises(ValueError, match="without a pretrained tag has random weights"):
        build_embedding_catalog(small, tmp_path / "x", model="ViT-B-32", progress=False)
    with pytest.raises(ValueError, match="shard_rows must be an integer >= 1"):
        build_embedding_catalog(small, tmp_path / "x", shard_rows=0, progress=False)
    with pytest.raises(ValueError, match="needs an image_path column"):
        meta = small / "metadata"
        for path in meta.iterdir():
            pq.write_table(pq.read_table(path).drop_columns(["image_path"]), path)
        build_embedding_catalog(small, tmp_path / "x", image_root=tmp_path, progress=False)
    assert not (tmp_path / "x").exists()


def test_reducer_none_keeps_32d_embeddings(small, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cat = build_embedding_catalog(small, tmp_path / "cat", reducer="none", progress=False)
    rows = _all_rows(small)
    assert np.array_equal(cat.rows(np.arange(600)), cat.quantizer.quantize(rows / np.linalg.norm(rows, axis=1,
                                                                                                 keepdims=True)))


def test_metadata_id_column_is_kept_as_source_id(small, tmp_path):
    for path in (small / "metadata").iterdir():
        table = pq.read_table(path)
        pq.write_table(table.append_column("id", pa.array(np.arange(table.num_rows) + 1000)), path)
    cat = build_embedding_catalog(small, tmp_path / "cat", progress=False)
    page = cat.items_of([0, 599])
    assert page.column("id").to_pylist() == [0, 599] and page.column("source_id").to_pylist() == [1000, 1199]


def test_the_generator_yields_exactly_the_rows_the_folder_holds(tmp_path):
    from clipbranches_widgets.build.embeddings import generate_embeddings

    gen = write_embedding_folder(tmp_path / "g", 5000, dim=64, rows_per_part=3000, random_state=4)
    blocks = list(generate_embeddings(5000, dim=64, rows_per_part=3000, with_text=True, random_state=4))
    img = np.concatenate([b[0] for b in blocks])
    assert np.array_equal(img[:3000], np.load(gen.path / "img_emb" / f"img_emb_{gen.part_labels[0]}.npy"))
    assert np.array_equal(np.concatenate([b[1] for b in blocks])[3000:],
                          np.load(gen.path / "text_emb" / f"text_emb_{gen.part_labels[1]}.npy"))
    assert sum(b[2].num_rows for b in blocks) == 5000
