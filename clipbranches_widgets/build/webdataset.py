"""Build a catalog from img2dataset's webdataset shards: ``00000.tar``, ``00001.tar``, ...

Each tar holds, per sample ``KEY``, a picture (``KEY.jpg``, ``.jpeg``, ``.png`` or ``.webp``), its
caption (``KEY.txt``) and metadata (``KEY.json``: url, key, width, height, caption, ...); an
optional ``00000.parquet`` next to a tar holds the same rows' metadata and fills in what a sample's
``.json`` lacks. Tars are read in name order, streamed with the standard library's ``tarfile``
(nothing is extracted to disk); a broken or missing picture is skipped and reported, never fatal.

The build is resumable. Each finished tar's embeddings, kept rows and thumbnails are saved
atomically in a work folder next to the output (``OUT.work/00000.tar.npy``, ``00000.tar.parquet``
and the ``00000.tar.json`` that marks the tar done), so a rerun after a kill embeds only the tars
not finished yet. Once every tar is embedded, the reducer and quantizer are fitted exactly as for a folder of
pictures (:mod:`clipbranches_widgets.build.images`), the catalog is written atomically, and the
work folder is removed.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_open, atomic_save_npy, atomic_write_text
from ..embedding.reducers import REDUCER_FILES
from .images import _tqdm, fit_quantizer, fit_reducer, write_encoded_catalog
from .ingest import IMAGE_EXTENSIONS, Skipped, load_image

__all__ = ["build_webdataset_catalog", "WebdatasetResult"]

#: member extensions (lower case, no dot) read as the sample's picture, in order of preference
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
#: item columns taken from each sample, besides the tar's name (``shard``)
COLUMNS = ("key", "url", "caption", "width", "height")
#: JPEG quality of the stored thumbnails (as for a folder build)
JPEG_QUALITY = 85
#: version of the work folder's layout; a work folder of another version is started afresh
WORK_FORMAT = 1


@dataclass
class WebdatasetResult:
    """What a webdataset build read: ``shards`` (tar names, in build order), ``n_items`` (pictures
    kept), ``skipped`` (:class:`~clipbranches_widgets.build.ingest.Skipped` with ``path`` =
    ``"TAR:KEY"`` and why), ``reused`` (tars whose embeddings came from an earlier, interrupted run)."""

    shards_dir: Path
    shards: list = field(default_factory=list)
    n_items: int = 0
    skipped: list = field(default_factory=list)
    reused: list = field(default_factory=list)

    def report(self) -> str:
        """Human-readable summary, e.g. for a notebook cell or the CLI."""
        lines = [f"{self.n_items} images from {len(self.shards)} tars in {self.shards_dir}, "
                 f"{len(self.skipped)} samples skipped"
                 + (f"; {len(self.reused)} tars reused from an interrupted run" if self.reused else "")]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's naming: ``dir/KEY.EXT`` -> (``dir/KEY``, ``ext``) split at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _samples(tar_path: Path):
    """Yield ``(key, {ext: bytes})`` per sample of a tar, streaming; a key's members are contiguous."""
    key, members = None, {}
    try:
        with tarfile.open(tar_path, mode="r|") as tf:
            for member in tf:
                if not member.isfile() or member.name.rpartition("/")[2].startswith("."):
                    continue
                k, ext = _split_member(member.name)
                data = tf.extractfile(member).read()
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, {}
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{tar_path} is not a readable tar file (truncated or corrupt?): {exc}") from None
    if key is not None:
        yield key, members


def _parquet_metadata(tar_path: Path) -> dict:
    """``{key: {url, caption}}`` from the parquet img2dataset writes next to a tar (empty without one)."""
    import pyarrow.parquet as pq

    path = tar_path.with_suffix(".parquet")
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ValueError(f"{path} (the metadata of {tar_path.name}) is not a readable parquet file: {exc}") from None
    if "key" not in table.column_names:
        return {}
    columns = [c for c in ("key", "url", "caption") if c in table.column_names]
    return {str(row["key"]): row for row in table.select(columns).to_pylist()}


def _sample_row(key: str, members: dict, parquet_rows: dict) -> tuple[dict, str | None]:
    """(metadata row of a sample, the extension of its picture or None)."""
    meta = dict(parquet_rows.get(key, {}))
    if "json" in members:
        try:
            parsed = json.loads(members["json"])
        except ValueError:  # a damaged .json loses only metadata: the parquet row (if any) still applies
            parsed = None
        if isinstance(parsed, dict):
            meta.update(parsed)
    caption = members["txt"].decode("utf-8", "replace").strip() if "txt" in members else meta.get("caption")
    url = meta.get("url")
    row = {"key": key, "url": None if url is None else str(url), "caption": "" if caption is None else str(caption)}
    return row, next((e for e in IMAGE_EXTS if e in members), None)


def _embed_shard(encoder, tar_path: Path, *, batch_size: int, thumb_side: int, bar):
    """Read one tar and embed its pictures: (features (n, D) float32, rows, thumbnails, skipped)."""
    from PIL import Image, UnidentifiedImageError

    from ..catalog.thumbnails import jpeg

    parquet_rows = _parquet_metadata(tar_path)
    features, rows, thumbs, skipped, pending, seen = [], [], [], [], [], set()

    def flush():
        if pending:
            features.append(encoder.encode_images(pending, batch_size=batch_size, progress=False))
            bar.update(len(pending))
            pending.clear()

    for key, members in _samples(tar_path):
        where = f"{tar_path.name}:{key}"
        if key in seen:
            skipped.append(Skipped(where, "duplicate key (its members are not contiguous in the tar)"))
            continue
        seen.add(key)
        row, ext = _sample_row(key, members, parquet_rows)
        if ext is None:
            has = ", ".join(f".{e}" for e in sorted(members))
            skipped.append(Skipped(where, f"no image (the sample has {has})"))
            continue
        try:
            im = load_image(io.BytesIO(members[ext]))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            skipped.append(Skipped(where, f"unreadable image {key}.{ext}: {exc}"))
            continue
        row["width"], row["height"] = im.size
        thumb = im.copy()
        thumb.thumbnail((thumb_side, thumb_side))
        thumbs.append(jpeg(thumb, quality=JPEG_QUALITY))
        rows.append(row)
        pending.append(im)
        if len(pending) >= batch_size:
            flush()
    flush()
    features = np.concatenate(features) if features else np.empty((0, encoder.embed_dim), np.float32)
    return features, rows, thumbs, skipped


def _items_table(rows: list, shard: str, thumbs: list):
    """A shard's kept rows and their thumbnails (column ``thumbnail``) as a pyarrow Table."""
    import pyarrow as pa

    columns = {"key": pa.array([r["key"] for r in rows], pa.string()),
               "url": pa.array([r["url"] for r in rows], pa.string()),
               "caption": pa.array([r["caption"] for r in rows], pa.string()),
               "width": pa.array([r["width"] for r in rows], pa.int32()),
               "height": pa.array([r["height"] for r in rows], pa.int32()),
               "shard": pa.array([shard] * len(rows), pa.string()),
               "thumbnail": pa.array(thumbs, pa.binary())}
    return pa.table(columns)


class _WorkFolder:
    """``OUT.work``: per tar ``T.tar``, its embeddings (``T.tar.npy``), rows + thumbnails
    (``T.tar.parquet``) and done marker (``T.tar.json``, written last); valid for one encoder and
    thumbnail size (``work.json``)."""

    def __init__(self, path: Path, spec: dict):
        self.path = path
        self.spec = {"format": WORK_FORMAT, **spec}
        spec_path = path / "work.json"
        try:
            same = json.loads(spec_path.read_text()) == self.spec
        except (OSError, ValueError):
            same = False
        if not same:  # made by another encoder / thumbnail size, or no work folder yet: start afresh
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            atomic_write_text(spec_path, json.dumps(self.spec, indent=1))

    @staticmethod
    def _signature(tar_path: Path) -> dict:
        st = tar_path.stat()
        return {"tar": tar_path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def load(self, tar_path: Path):
        """(n kept, skipped) of a tar finished by an earlier run, or None when it must be (re)done."""
        import pyarrow.parquet as pq

        name = tar_path.name
        try:
            done = json.loads((self.path / f"{name}.json").read_text())
            if done["signature"] != self._signature(tar_path):
                return None
            n = int(done["n"])
            features = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if features.shape[0] != n or pq.read_metadata(self.path / f"{name}.parquet").num_rows != n:
                return None
            return n, [Skipped(str(path), str(reason)) for path, reason in done["skipped"]]
        except (OSError, ValueError, KeyError, TypeError):  # missing, partial or damaged: redo the tar
            return None

    def save(self, tar_path: Path, features, rows, thumbs, skipped) -> None:
        import pyarrow.parquet as pq

        name = tar_path.name
        atomic_save_npy(self.path / f"{name}.npy", np.ascontiguousarray(features, np.float32))
        with atomic_open(self.path / f"{name}.parquet", "wb") as f:
            pq.write_table(_items_table(rows, tar_path.name, thumbs), f)
        done = {"signature": self._signature(tar_path), "n": len(rows),
                "skipped": [[s.path, s.reason] for s in skipped]}
        atomic_write_text(self.path / f"{name}.json", json.dumps(done))

    def features(self, names) -> np.ndarray:
        return np.concatenate([np.load(self.path / f"{n}.npy", allow_pickle=False) for n in names])

    def items(self, names):
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(self.path / f"{n}.parquet", columns=[*COLUMNS, "shard"])
                                 for n in names])

    def thumbnails(self, names, counts) -> "_Thumbnails":
        return _Thumbnails([self.path / f"{n}.parquet" for n in names], counts)


class _Thumbnails(Sequence):
    """Every item's JPEG bytes, read from the work folder one shard at a time (never all in memory)."""

    def __init__(self, paths, counts):
        self.paths = paths
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._shard, self._thumbs = None, None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> bytes:
        import pyarrow.parquet as pq

        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        if shard != self._shard:
            self._thumbs = pq.read_table(self.paths[shard], columns=["thumbnail"]).column("thumbnail").to_pylist()
            self._shard = shard
        return self._thumbs[i - int(self.starts[shard])]


def build_webdataset_catalog(shards_dir, out, *, model: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
                             batch_size: int = 64, device=None, reducer: str = "pca", quantizer: str = "global",
                             random_state: int = 0, progress: bool = True, thumb_side: int = 160):
    """Build a catalog at ``out`` from the img2dataset webdataset tars in ``shards_dir``.

    Returns ``(catalog, result)``: the opened :class:`~clipbranches_widgets.catalog.Catalog` and a
    :class:`WebdatasetResult` whose ``report()`` lists every skipped sample (no or unreadable
    picture) and why. Items keep ``key``, ``url``, ``caption`` (the sample's ``.txt``, else its
    metadata's caption), ``width`` / ``height`` (of the stored picture) and ``shard`` (the tar's name),
    in tar order, then member order; the catalog stores ``thumb_side`` px JPEG thumbnails.

    model / pretrained: any open_clip model and tag (weights from the Hugging Face cache) or
    ``model="local-dir:PATH"`` (weights stored in the catalog). device: None picks CUDA when
    available, else the CPU (or any torch device name). ``batch_size`` pictures are decoded and
    embedded at a time. reducer: "pca" (default), "head" / "head-koleo" (trained on the captions)
    or "none" (for a 32-d encoder); quantizer: "global" or "per-dim" (see
    :func:`~clipbranches_widgets.build.images.fit_reducer` / ``fit_quantizer``).

    Resumable: finished tars are kept in ``OUT.work`` next to ``out`` and not embedded again by a
    rerun with the same model, pretrained and thumb_side (a tar whose size or mtime changed is
    redone); the work folder is removed once the catalog is written. Raises ValueError for a
    missing folder, a folder without ``*.tar`` files, an unreadable tar, a tar without any usable
    picture, or an unknown reducer / quantizer.
    """
    from ..embedding.encoders import load_encoder

    shards_dir, out = Path(shards_dir), Path(out)
    if not shards_dir.is_dir():
        raise ValueError(f"{shards_dir} is not a folder (expected img2dataset's webdataset output)")
    tars = sorted(p for p in shards_dir.glob("*.tar") if p.is_file())
    if not tars:
        raise ValueError(f"no .tar shards in {shards_dir} (img2dataset --output_format webdataset "
                         "writes 00000.tar, 00001.tar, ...)")
    if reducer not in REDUCER_FILES:
        raise ValueError(f"unknown reducer {reducer!r}; expected one of {sorted(REDUCER_FILES)}")
    if quantizer not in ("global", "per-dim"):
        raise ValueError(f"quantizer must be 'global' or 'per-dim'; got {quantizer!r}")
    if int(batch_size) < 1 or int(thumb_side) < 1:
        raise ValueError(f"batch_size and thumb_side must be >= 1; got {batch_size} and {thumb_side}")
    encoder = load_encoder(model, pretrained, device="auto" if device is None else device)
    if reducer == "none" and encoder.embed_dim != 32:
        raise ValueError(f"the encoder gives {encoder.embed_dim}-d features; a catalog needs 32: "
                         "use reducer='pca' or a head")

    # what the encoder actually is (a local-dir model ignores `pretrained`), for the work folder and manifest
    used = {"model": encoder.name, "pretrained": encoder.pretrained}
    work = _WorkFolder(out.with_name(out.name + ".work"), {**used, "thumb_side": int(thumb_side)})
    result = WebdatasetResult(shards_dir, shards=[t.name for t in tars])
    counts = []  # items kept per tar
    with _tqdm()(desc="embed images", unit="img", disable=not progress) as bar:
        for i, tar in enumerate(tars):
            bar.set_postfix_str(f"tar {i + 1}/{len(tars)}: {tar.name}")
            done = work.load(tar)
            if done is not None:
                n, skipped = done
                result.reused.append(tar.name)
                bar.update(n)
            else:
                features, rows, thumbs, skipped = _embed_shard(encoder, tar, batch_size=int(batch_size),
                                                               thumb_side=int(thumb_side), bar=bar)
                n = len(rows)
                if n == 0:
                    reasons = "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:10])
                    raise ValueError(f"{tar} holds no usable picture ({len(skipped)} samples skipped); remove "
                                     f"it and rerun (finished tars are kept in {work.path}):\n{reasons}")
                work.save(tar, features, rows, thumbs, skipped)
            counts.append(n)
            result.n_items += n
            result.skipped.extend(skipped)

    names = [t.name for t in tars]
    features = work.features(names)
    items = work.items(names)
    text_features = None
    if reducer.startswith("head"):
        text_features = encoder.encode_texts(items.column("caption").to_pylist(), progress=progress)
    red = fit_reducer(reducer, features, text_features, random_state=random_state, progress=progress)
    reduced = red.embed_images(features)
    quant = fit_quantizer(quantizer, reduced)
    cat = write_encoded_catalog(
        out, encoder=encoder, reducer=red, quantizer=quant, reduced=reduced, items=items,
        thumbnails=work.thumbnails(names, counts),
        extra={"build": {"webdataset": str(shards_dir), "shards": result.shards, **used,
                         "reducer": reducer, "quantizer": quantizer,
                         "skipped": [s.path for s in result.skipped]}})
    shutil.rmtree(work.path, ignore_errors=True)
    return cat, result
