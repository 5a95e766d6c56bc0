"""Build a catalog from precomputed CLIP embeddings: a clip-retrieval / LAION embedding folder.

``clip-retrieval inference`` writes (and the LAION-5B embedding release uses) one folder::

    img_emb/img_emb_<P>.npy             L2-normalised image embeddings (n_P, D): float16 in current
                                        dumps, float32 in older ones; D = 512, 768, 1024, ...
    text_emb/text_emb_<P>.npy           optional: the captions' embeddings, row for row
    metadata/metadata_<P>.parquet       one row per embedding, same order: image_path, caption and,
                                        with metadata enabled, url, key, width, height, ...

``<P>`` is the part number, zero-padded by clip-retrieval's writer to ``int(log10(part count)) + 1``
digits (``0``, ``1``, ... for fewer than 10 parts; LAION's ``0000``, ``0001``, ...). LAION's release names the metadata folder after the dataset
(``laion2B-en-metadata/``); a single ``*metadata`` folder is accepted for it. Item ``i`` of the
catalog is row ``i`` of the parts concatenated in part order, sorted by the integer value of
``<P>`` (the order clip-retrieval's index and metadata provider use for its padded names).

:func:`read_embedding_folder` checks a folder up front from the ``.npy`` headers and the parquet
footers (plus a few rows per part for the unit-norm check), :func:`build_embedding_catalog` turns
it into a sharded catalog in bounded memory (resumable), and :func:`write_embedding_folder`
generates realistic folders of any size for tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes
from ..catalog.quantize import quantizer_from_dict
from ..catalog.sharded import SHARD_ROWS, ShardedCatalogWriter
from ..embedding.reducers import REDUCER_FILES, load_reducer
from .images import _encoder_entry, _tqdm, fit_quantizer, fit_reducer

__all__ = ["EmbeddingPart", "EmbeddingFolder", "read_embedding_folder", "build_embedding_catalog",
           "write_embedding_folder", "GeneratedFolder"]

#: float32 bytes of image embeddings reduced at a time (256 MiB: 131k rows of 512-d, 87k of 768-d)
CHUNK_BYTES = 256 * 2**20
#: most rows per chunk, whatever the width
MAX_CHUNK_ROWS = 1 << 20
#: rows per part read for the unit-norm check, and how far a norm may stray from 1 (float16 rounding
#: moves a unit vector's norm by about 1e-3)
NORM_SAMPLE_ROWS = 16
NORM_TOLERANCE = 0.01
#: the build record stored in the partial folder (for a resume) and in the finished catalog
BUILD_RECORD = "embedding-build.json"
#: version of the build settings hashed into the build id; bump when the codes a build writes change
BUILD_FORMAT = 1
REDUCERS = ("pca", "head", "head-koleo", "none")
HEAD_REDUCERS = ("head", "head-koleo")
#: metadata columns of this name are renamed: the writer's items own ``id`` (the row position)
RENAMED_COLUMNS = {"id": "source_id"}


# -- reading the folder -----------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingPart:
    """One part ``<P>`` of an embedding folder: ``rows`` embeddings and their files."""

    number: int            # P as an integer: the sort key
    label: str             # P as written in the file names, e.g. "0007"
    rows: int
    dtype: str             # of the image embeddings, e.g. "float16"
    img: Path
    metadata: Path
    text: Path | None = None


@dataclass
class EmbeddingFolder:
    """A validated clip-retrieval embedding folder (see :func:`read_embedding_folder`).

    ``parts`` in id order; ``dim`` / ``text_dim`` the embedding widths (``text_dim`` None without
    ``text_emb``); ``columns`` the union of the metadata columns.
    """

    path: Path
    parts: list[EmbeddingPart]
    dim: int
    text_dim: int | None
    columns: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(sum(p.rows for p in self.parts))

    @property
    def offsets(self) -> np.ndarray:
        """(n_parts + 1,) int64: part ``j`` holds ids ``offsets[j] .. offsets[j+1]-1``."""
        return np.r_[0, np.cumsum([p.rows for p in self.parts])].astype(np.int64)

    @property
    def has_text(self) -> bool:
        return self.text_dim is not None

    @property
    def dtypes(self) -> list[str]:
        """The image embeddings' dtypes, each once (a folder may mix float16 and float32 parts)."""
        return sorted({p.dtype for p in self.parts})

    def signature(self) -> list:
        """[relative name, bytes, mtime_ns] of every input file: what a build id depends on."""
        out = []
        for part in self.parts:
            for path in (part.img, part.text, part.metadata):
                if path is not None:
                    st = path.stat()
                    out.append([path.relative_to(self.path).as_posix(), st.st_size, st.st_mtime_ns])
        return out

    def __repr__(self) -> str:
        return (f"EmbeddingFolder({str(self.path)!r}, {self.n_rows:,} rows x {self.dim} "
                f"({'/'.join(self.dtypes)}), {len(self.parts)} parts, "
                f"{'with' if self.has_text else 'no'} text_emb, columns {self.columns})")


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, tuple[str, Path]]:
    """``{P: (label, path)}`` of the files ``PREFIX_<digits>SUFFIX`` in ``folder``."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    found: dict[int, tuple[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        m = pattern.match(path.name)
        if m is None or not path.is_file():
            continue
        number = int(m.group(1))
        if number in found:
            raise ValueError(f"{found[number][1]} and {path} are both part {number} of {folder}: "
                             "remove one of them")
        found[number] = (m.group(1), path)
    return found


def _metadata_dir(folder: Path) -> Path:
    """``metadata/`` (clip-retrieval), else the one ``*metadata`` folder (LAION's ``laion2B-en-metadata/``)."""
    if (folder / "metadata").is_dir():
        return folder / "metadata"
    named = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower().endswith("metadata"))
    if len(named) == 1:
        return named[0]
    if not named:
        raise ValueError(f"no metadata/ folder in {folder}: clip-retrieval writes metadata/metadata_<P>.parquet "
                         "next to img_emb/ (the items' captions, urls and image paths)")
    raise ValueError(f"{folder} has several metadata folders ({', '.join(p.name for p in named)}) and no "
                     "metadata/: keep the one that matches img_emb/")


def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of an .npy file from its header alone; ValueError for a truncated or
    non-2-D float array."""
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version not in readers:
                raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
            shape, _fortran, dtype = readers[version](f)
            data_start = f.tell()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npy file: {exc}") from None
    if len(shape) != 2 or dtype.kind != "f":
        raise ValueError(f"{path} holds a {dtype} array of shape {shape}; embeddings are a 2-D float "
                         "array (rows, dim)")
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise ValueError(f"{path} is truncated: its header says {shape} {dtype} ({expected} bytes) but the "
                         f"file has {size} bytes (an interrupted copy or download?)")
    return shape, dtype


def _check_unit_norm(path: Path, rows: int) -> None:
    """Read a few evenly spaced rows and check they are unit vectors (clip-retrieval normalises)."""
    if rows == 0:
        return
    idx = np.unique(np.linspace(0, rows - 1, min(rows, NORM_SAMPLE_ROWS)).astype(np.int64))
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    norms = np.linalg.norm(np.asarray(arr[idx], np.float64), axis=1)
    del arr
    if not np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE):  # also catches NaN
        shown = ", ".join(f"{v:.3f}" for v in norms[:6])
        raise ValueError(f"{path} does not hold unit-length rows: the norms of {idx.size} sampled rows are "
                         f"{shown}{' ...' if idx.size > 6 else ''} (clip-retrieval writes L2-normalised "
                         "embeddings; normalise the rows first)")


def read_embedding_folder(path) -> EmbeddingFolder:
    """Describe and validate a clip-retrieval embedding folder without reading its data.

    Reads the ``.npy`` headers (shape, dtype), the parquet footers (row counts, schemas) and
    ``NORM_SAMPLE_ROWS`` rows per ``.npy`` for the unit-norm check. Raises ValueError, naming the
    file, for: no folder / no ``img_emb`` folder / no ``img_emb_<P>.npy``; two files for one part;
    a non-2-D, non-float or truncated ``.npy``; a part without its metadata parquet, or whose
    metadata (or ``text_emb``) row count differs from its ``img_emb``; mixed embedding widths;
    rows that are not unit vectors; metadata columns whose types conflict between parts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder (expected clip-retrieval inference output: img_emb/, "
                         "metadata/ and optionally text_emb/)")
    img_dir = folder / "img_emb"
    if not img_dir.is_dir():
        raise ValueError(f"no img_emb/ folder in {folder}: expected clip-retrieval inference output "
                         "(img_emb/img_emb_<P>.npy, metadata/metadata_<P>.parquet, optional text_emb/)")
    images = _numbered(img_dir, "img_emb", ".npy")
    if not images:
        raise ValueError(f"{img_dir} holds no img_emb_<P>.npy file")
    meta_dir = _metadata_dir(folder)
    metas = _numbered(meta_dir, "metadata", ".parquet")
    text_dir = folder / "text_emb"
    texts = _numbered(text_dir, "text_emb", ".npy") if text_dir.is_dir() else {}

    parts, dims, text_dims, schemas = [], {}, {}, []
    for number in sorted(images):
        label, img = images[number]
        shape, dtype = _npy_header(img)
        dims.setdefault(int(shape[1]), img)
        if number not in metas:
            raise ValueError(f"part {label} has no metadata: {img} but no metadata_{label}.parquet in {meta_dir}")
        meta = metas[number][1]
        try:
            info = pq.ParquetFile(meta)
            n_meta, schema = info.metadata.num_rows, info.schema_arrow
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise ValueError(f"{meta} is not a readable parquet file: {exc}") from None
        if n_meta != shape[0]:
            raise ValueError(f"part {label}: {img} has {shape[0]} rows but {meta} has {n_meta}; a part's "
                             "metadata must list its embeddings row for row")
        schemas.append((meta, schema))
        text = None
        if texts:
            if number not in texts:
                raise ValueError(f"part {label} has no text embeddings: {text_dir} holds other parts but no "
                                 f"text_emb_{label}.npy")
            text = texts[number][1]
            tshape, _ = _npy_header(text)
            if tshape[0] != shape[0]:
                raise ValueError(f"part {label}: {text} has {tshape[0]} rows but {img} has {shape[0]}; text "
                                 "embeddings must pair with the images row for row")
            text_dims.setdefault(int(tshape[1]), text)
        parts.append(EmbeddingPart(number, label, int(shape[0]), str(dtype), img, meta, text))
    for kind, widths in (("image", dims), ("text", text_dims)):
        if len(widths) > 1:
            listed = ", ".join(f"{d}-d in {p.name}" for d, p in sorted(widths.items()))
            raise ValueError(f"the {kind} embeddings of {folder} have different widths ({listed}); one "
                             "folder holds one model's embeddings")
    try:
        unified = pa.unify_schemas([s for _, s in schemas])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"the metadata parquets of {folder} have conflicting column types: {exc}") from None
    for part in parts:
        _check_unit_norm(part.img, part.rows)
        if part.text is not None:
            _check_unit_norm(part.text, part.rows)
    columns = [c for c in unified.names if not c.startswith("__index_level_")]
    return EmbeddingFolder(folder, parts, next(iter(dims)), next(iter(text_dims), None), columns)


# -- reading rows ---------------------------------------------------------------------------------

def _sample_ids(n: int, m: int, random_state) -> np.ndarray:
    """Sorted, uniformly drawn distinct row ids (all rows when ``m >= n``)."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)


def _read_rows(src: EmbeddingFolder, ids: np.ndarray, which: str, *, progress: bool) -> np.ndarray:
    """float32 rows ``ids`` (sorted) of the image (``which="img"``) or text embeddings, part by part."""
    dim = src.dim if which == "img" else src.text_dim
    out = np.empty((ids.shape[0], dim), np.float32)
    bounds = np.searchsorted(ids, src.offsets)
    for j, part in enumerate(_tqdm()(src.parts, desc=f"read sample ({which})", unit="part",
                                     disable=not progress)):
        lo, hi = bounds[j], bounds[j + 1]
        if hi > lo:
            arr = np.load(getattr(part, which), mmap_mode="r", allow_pickle=False)
            out[lo:hi] = arr[ids[lo:hi] - src.offsets[j]]
            del arr
    return out


def _read_captions(src: EmbeddingFolder, ids: np.ndarray) -> list[str]:
    """The ``caption`` of rows ``ids`` (sorted); a missing caption is ""."""
    import pyarrow.parquet as pq

    captions: list[str] = []
    bounds = np.searchsorted(ids, src.offsets)
    for j, part in enumerate(src.parts):
        lo, hi = bounds[j], bounds[j + 1]
        if hi > lo:
            column = pq.read_table(part.metadata, columns=["caption"]).column("caption")
            captions += ["" if c is None else str(c) for c in column.take(ids[lo:hi] - src.offsets[j]).to_pylist()]
    return captions


class _MetadataRows:
    """A part's metadata rows from ``start`` on, handed out in exact counts; starts at the row group
    holding ``start`` so a resume does not decode the rows before it."""

    def __init__(self, path: Path, start: int, batch_rows: int = 65_536):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        bounds = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        first = int(np.searchsorted(bounds, start, side="right") - 1)
        self._batches = pf.iter_batches(batch_size=batch_rows, row_groups=list(range(first, len(sizes))))
        self._skip = int(start - bounds[first])  # rows of the first row group before ``start``
        self._pending: list = []
        self._n = 0
        self._schema = pf.schema_arrow

    def take(self, n: int):
        """The next ``n`` rows as a pyarrow Table (see :func:`_clean_items`)."""
        import pyarrow as pa

        while self._n < self._skip + n:
            batch = next(self._batches)
            self._pending.append(batch)
            self._n += batch.num_rows
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        rest = table.slice(self._skip + n)
        rows = table.slice(self._skip, n)
        self._pending, self._n, self._skip = rest.to_batches(), rest.num_rows, 0
        return _clean_items(rows)


def _clean_items(table):
    """Drop pandas' index columns and schema metadata (they describe the source file, not the
    catalog), and rename columns the catalog owns (``id``)."""
    keep = [c for c in table.column_names if not c.startswith("__index_level_")]
    table = table.select(keep).replace_schema_metadata(None)
    return table.rename_columns([RENAMED_COLUMNS.get(c, c) for c in table.column_names])


def _chunk_rows(dim: int) -> int:
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (4 * dim)))


def _blocks(src: EmbeddingFolder, reducer, quantizer, start: int):
    """Yield (codes, items) for rows ``start ..`` in id order, one chunk at a time.

    Chunks follow a fixed grid inside each part (multiples of the chunk size), and a resume
    recomputes the whole chunk it starts in: every row is then reduced in the same batch as in an
    uninterrupted build, so its code is bit-identical (BLAS results can depend on the batch).
    """
    chunk = _chunk_rows(src.dim)
    offsets = src.offsets
    for j, part in enumerate(src.parts):
        if offsets[j + 1] <= start or part.rows == 0:
            continue
        first = max(0, int(start - offsets[j]))
        arr = np.load(part.img, mmap_mode="r", allow_pickle=False)
        meta = _MetadataRows(part.metadata, first)
        for s in range(first - first % chunk, part.rows, chunk):
            e = min(part.rows, s + chunk)
            reduced = reducer.embed_images(np.asarray(arr[s:e], np.float32))
            if not np.isfinite(reduced).all():
                bad = s + int(np.flatnonzero(~np.isfinite(reduced).all(axis=1))[0])
                raise ValueError(f"{part.img} row {bad} holds NaN or infinite values")
            keep = max(s, first)
            codes = quantizer.quantize(reduced[keep - s:])
            yield codes, meta.take(e - keep)
        del arr


# -- the reducer fit, saved for a resume ---------------------------------------------------------------

@dataclass
class _Fit:
    reducer: object
    reducer_bytes: bytes | None
    quantizer: object
    n_sample: int

    def record(self, build_id: str) -> bytes:
        kind = self.reducer.kind
        return json.dumps({
            "build_id": build_id, "reducer": kind, "reducer_file": REDUCER_FILES[kind],
            "reducer_sha256": None if self.reducer_bytes is None else hashlib.sha256(self.reducer_bytes).hexdigest(),
            "quantizer": self.quantizer.to_dict(), "n_sample": self.n_sample}, indent=1).encode()

    def save(self, folder: Path, build_id: str) -> None:
        if self.reducer_bytes is not None:
            atomic_write_bytes(folder / REDUCER_FILES[self.reducer.kind], self.reducer_bytes)
        atomic_write_bytes(folder / BUILD_RECORD, self.record(build_id))  # last: marks the fit complete

    @classmethod
    def load(cls, folder: Path, build_id: str) -> "_Fit | None":
        """The fit an interrupted run of this build saved in ``folder``, or None."""
        try:
            rec = json.loads((folder / BUILD_RECORD).read_text())
            if rec.get("build_id") != build_id:
                return None
            data = None
            if rec["reducer_file"] is not None:
                path = folder / rec["reducer_file"]
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != rec["reducer_sha256"]:
                    return None
            reducer = load_reducer(rec["reducer"], None if data is None else path)
            return cls(reducer, data, quantizer_from_dict(rec["quantizer"]), int(rec["n_sample"]))
        except (OSError, ValueError, KeyError, TypeError):  # absent, partial or damaged: fit again
            return None


def _fit(src: EmbeddingFolder, kind: str, *, encoder, sample_rows: int, quantizer: str, random_state,
         head_epochs: int, progress: bool) -> _Fit:
    """Fit the reducer (and a per-dim quantizer) on a seeded uniform sample of the folder's rows."""
    ids = _sample_ids(src.n_rows, sample_rows, random_state)
    images = _read_rows(src, ids, "img", progress=progress)
    texts = None
    if kind in HEAD_REDUCERS:
        if src.has_text:
            texts = _read_rows(src, ids, "text", progress=progress)
        else:  # no text_emb: the captions through the model that made the image embeddings
            texts = encoder.encode_texts(_read_captions(src, ids), progress=progress)
    # a head shows its epochs; PCA's one SVD gets a one-step bar so a long fit is not silent
    with _tqdm()(total=1, desc=f"fit {kind} reducer on {ids.shape[0]:,} rows",
                 disable=not progress or kind in HEAD_REDUCERS) as bar:
        reducer = fit_reducer(kind, images, texts, epochs=head_epochs, random_state=random_state,
                              progress=progress)
        bar.update(1)
    quant = fit_quantizer(quantizer, reducer.embed_images(images) if quantizer == "per-dim" else None)
    return _Fit(reducer, reducer.to_bytes(), quant, int(ids.shape[0]))


# -- the build --------------------------------------------------------------------------------------

def _stored_root(image_root: Path, out: Path) -> str:
    """``image_root`` relative to the catalog folder when it can be (the two move together), else absolute."""
    root = image_root.resolve()
    try:
        return Path(os.path.relpath(root, out.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(root)


def _check_image_root(image_root, src: EmbeddingFolder, out: Path) -> str:
    import pyarrow.parquet as pq

    root = Path(image_root)
    if not root.is_dir():
        raise ValueError(f"image root {root} is not a folder")
    if "image_path" not in src.columns:
        raise ValueError(f"--image-root needs an image_path column in the metadata; {src.path} has "
                         f"{src.columns}")
    # a wrong root shows no error, only caption tiles: say so now, from the first part's first paths
    first = pq.ParquetFile(next(p for p in src.parts if p.rows).metadata)
    paths = []
    if "image_path" in first.schema_arrow.names:
        paths = first.read_row_group(0, columns=["image_path"]).column(0).to_pylist()[:20]
    if paths and not any(p and (root / p).is_file() for p in paths):
        warnings.warn(f"none of the first {len(paths)} image_path values (e.g. {paths[0]!r}) is a file under "
                      f"{root}; tiles will show captions until the pictures are there", stacklevel=3)
    return _stored_root(root, out)


def build_embedding_catalog(folder, out, *, reducer: str = "pca", model: str | None = None,
                            pretrained: str | None = None, image_root=None, shard_rows: int = SHARD_ROWS,
                            sample_rows: int = 200_000, quantizer: str = "global", random_state: int = 0,
                            progress: bool = True, head_epochs: int = 20, callback=None):
    """Build a sharded catalog at ``out`` from a clip-retrieval / LAION embedding folder.

    Streams the folder part by part (memory-mapped, ``CHUNK_BYTES`` of embeddings at a time; the
    writer holds at most one shard), after fitting the 32-d reducer on a seeded uniform sample of
    ``sample_rows`` rows: ``"pca"`` on the image embeddings; ``"head"`` / ``"head-koleo"`` on
    (image, text) pairs, the text side from ``text_emb`` or else the captions encoded with
    ``model``; ``"none"`` for 32-d embeddings. Items keep every metadata column (a column named
    ``id`` becomes ``source_id``).

    model / pretrained: the open_clip model (and tag) that made the embeddings, or
    ``"local-dir:PATH"``. Recorded in the catalog so text queries go through it and the reducer;
    without it the catalog is searched by item and refined by marks, and text search raises.
    image_root: the folder the ``image_path`` column is relative to (or that holds its absolute
    paths); tiles then show the pictures. Stored relative to the catalog when possible.

    Resumable: a rerun with the same inputs (names, sizes, mtimes) and settings continues after
    the last complete shard with the reducer fitted before (kept in ``OUT.partial``); anything else
    starts clean. ``callback(rows_done, n_rows)`` is called after each chunk; an exception from it
    stops the build, keeping the finished shards for a resume. Returns the opened
    :class:`~clipbranches_widgets.catalog.sharded.ShardedCatalog`.
    """
    out = Path(out)
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; expected one of {list(REDUCERS)}")
    if quantizer not in ("global", "per-dim"):
        raise ValueError(f"quantizer must be 'global' or 'per-dim'; got {quantizer!r}")
    for name, value, low in (("shard_rows", shard_rows, 1), ("sample_rows", sample_rows, 2),
                             ("head_epochs", head_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    src = read_embedding_folder(folder)
    if src.n_rows == 0:
        raise ValueError(f"{src.path} holds no embeddings (every part has 0 rows)")
    if reducer == "none" and src.dim != 32:
        raise ValueError(f"reducer 'none' keeps the embeddings as they are, but they are {src.dim}-d and a "
                         "catalog needs 32: use reducer 'pca' or a head")
    if reducer in HEAD_REDUCERS and not src.has_text:
        if model is None:
            raise ValueError(f"reducer {reducer!r} trains on (image, caption) pairs, but {src.path} has no "
                             "text_emb/ folder and no model was given to encode its captions: pass the "
                             "model that made the embeddings (--model/--pretrained) or use reducer 'pca'")
        if "caption" not in src.columns:
            raise ValueError(f"reducer {reducer!r} without text_emb/ encodes the captions, but the metadata of "
                             f"{src.path} has no caption column (columns: {src.columns}); use reducer 'pca'")
    if model is not None and pretrained is None and not str(model).startswith("local-dir:"):
        raise ValueError(f"model {model!r} without a pretrained tag has random weights: pass the tag of the "
                         "weights that made the embeddings (--pretrained), or a local-dir:PATH model")
    stored_root = None if image_root is None else _check_image_root(image_root, src, out)

    encoder = None
    if model is not None:
        from ..embedding.encoders import load_encoder

        # CPU: its weights may be stored in the catalog as they are, and it encodes at most a sample
        encoder = load_encoder(model, pretrained, device="cpu")
        widths = {src.dim} | ({src.text_dim} if src.has_text else set())
        if widths != {encoder.embed_dim}:
            raise ValueError(f"the embeddings in {src.path} are {'/'.join(map(str, sorted(widths)))}-d but model "
                             f"{model!r} gives {encoder.embed_dim}-d features: pass the model that made them")

    settings = {"build_format": BUILD_FORMAT, "reducer": reducer, "model": model, "pretrained": pretrained,
                "sample_rows": int(sample_rows), "quantizer": quantizer, "random_state": random_state,
                "head_epochs": int(head_epochs) if reducer in HEAD_REDUCERS else None}
    # the image root only goes into the final manifest, not into the shards: not part of the id
    build_id = hashlib.sha256(json.dumps({"parts": src.signature(), "settings": settings},
                                         sort_keys=True).encode()).hexdigest()[:32]
    partial = out.with_name(out.name + ".partial")
    fit = _Fit.load(partial, build_id)
    if fit is None:
        fit = _fit(src, reducer, encoder=encoder, sample_rows=int(sample_rows), quantizer=quantizer,
                   random_state=random_state, head_epochs=int(head_epochs), progress=progress)
    spec, assets = _encoder_entry(encoder, fit.reducer)
    if fit.reducer_bytes is not None:  # the bytes saved with the fit (a re-serialised reducer may differ)
        assets[spec["reducer_file"]] = fit.reducer_bytes
    if encoder is None:
        spec["embed_dim"] = src.dim
        spec["text_search"] = ("needs the encoder that made the embeddings: rebuild with "
                               "--model/--pretrained (build_embedding_catalog(model=..., pretrained=...))")
    assets[BUILD_RECORD] = fit.record(build_id)
    extra = {"build": {"embeddings": str(folder), "parts": [p.label for p in src.parts], "rows": src.n_rows,
                       "dim": src.dim, "dtypes": src.dtypes, "text_emb": src.has_text, **settings,
                       "n_sample": fit.n_sample, "build_id": build_id}}
    if stored_root is not None:
        extra["image_root"] = stored_root

    with ShardedCatalogWriter(out, dim=32, shard_rows=int(shard_rows), quantizer=fit.quantizer, encoder=spec,
                              extra=extra, assets=assets, build_id=build_id) as writer:
        # saved after the writer's clean start, so the fit lives exactly as long as this build's shards
        fit.save(writer.partial, build_id)
        done = writer.n_written
        with _tqdm()(total=src.n_rows, initial=done, desc="reduce + quantize", unit="row",
                     disable=not progress) as bar:
            for codes, items in _blocks(src, fit.reducer, fit.quantizer, done):
                writer.add(codes, items)
                done += codes.shape[0]
                bar.update(codes.shape[0])
                if callback is not None:
                    callback(done, src.n_rows)
    return writer.catalog


# -- a generator of realistic folders ----------------------------------------------------------------

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
           "grey", "golden")
NOUNS = ("car", "dog", "cat", "house", "flower", "bicycle", "chair", "mountain", "boat", "bird", "shoe",
         "guitar", "cake", "lamp", "tree", "clock")
TEMPLATES = ("a photo of a {}", "{} on a white background", "close-up of a {}", "my new {}", "{} for sale",
             "a {} in the garden", "vintage {}", "the {} at sunset")
#: rows generated at a time (memory: a few of these x dim float32)
GEN_CHUNK = 65_536


@dataclass
class GeneratedFolder:
    """What :func:`write_embedding_folder` wrote: ``cluster_names[c]`` names cluster ``c`` (the
    metadata's ``cluster`` column is each row's true cluster)."""

    path: Path
    n_rows: int
    dim: int
    part_labels: list[str]
    cluster_names: list[str]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _World:
    """The generator's concepts: cluster centres, their names, a text "modality gap", cluster sizes."""

    def __init__(self, dim: int, n_clusters: int, random_state: int):
        rng = np.random.default_rng([random_state, 0])
        self.dim, self.n_clusters, self.random_state = dim, n_clusters, random_state
        self.noun_of = np.arange(n_clusters) % len(NOUNS)
        self.names = [f"{COLOURS[c // len(NOUNS)]} {NOUNS[self.noun_of[c]]}" for c in range(n_clusters)]
        topics = _unit(rng.standard_normal((len(NOUNS), dim)))
        self.centres = _unit(0.6 * topics[self.noun_of]
                             + 0.8 * _unit(rng.standard_normal((n_clusters, dim)))).astype(np.float32)
        self.gap = (0.8 * _unit(rng.standard_normal(dim))).astype(np.float32)
        weights = 1.0 / np.sqrt(1.0 + rng.permutation(n_clusters))  # uneven cluster sizes
        self.weights = weights / weights.sum()

    def rows(self, prng, s: int, e: int, with_text: bool):
        """Rows ``s .. e-1``: (image embeddings float32, text embeddings or None, metadata Table)."""
        import pyarrow as pa

        n, dim = e - s, self.dim
        cluster = prng.choice(self.n_clusters, size=n, p=self.weights)
        noise = prng.standard_normal((n, dim), dtype=np.float32)
        x = _unit(self.centres[cluster] + noise * np.float32(1.0 / math.sqrt(dim)))
        t = None
        if with_text:
            noise = prng.standard_normal((n, dim), dtype=np.float32)
            t = _unit(x + 0.5 * self.centres[cluster] + self.gap + noise * np.float32(0.6 / math.sqrt(dim)))
        template = prng.integers(0, len(TEMPLATES), n)
        keys = [f"{i:09d}" for i in range(s, e)]
        meta = pa.table({
            "image_path": [f"images/{k}.jpg" for k in keys],
            "caption": [TEMPLATES[t_].format(self.names[c]) for t_, c in zip(template, cluster)],
            "url": [f"https://example.com/{NOUNS[self.noun_of[c]]}/{k}.jpg" for k, c in zip(keys, cluster)],
            "key": keys,
            "width": prng.integers(200, 1600, n).astype(np.int32),
            "height": prng.integers(200, 1600, n).astype(np.int32),
            "cluster": cluster.astype(np.int32)}, schema=_generated_schema())
        return x, t, meta


def _generated_schema():
    """The metadata columns the generator writes (as clip-retrieval's writer names them, plus ``cluster``)."""
    import pyarrow as pa

    return pa.schema([("image_path", pa.string()), ("caption", pa.string()), ("url", pa.string()),
                      ("key", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("cluster", pa.int32())])


def _check_generator_args(n_rows: int, rows_per_part: int, dim: int, n_clusters: int) -> None:
    if n_rows < 1 or rows_per_part < 1 or not 1 <= n_clusters <= len(COLOURS) * len(NOUNS) or dim < 2:
        raise ValueError(f"need n_rows >= 1, rows_per_part >= 1, dim >= 2 and 1 <= n_clusters <= "
                         f"{len(COLOURS) * len(NOUNS)}; got {n_rows}, {rows_per_part}, {dim}, {n_clusters}")


def generate_embeddings(n_rows: int, *, dim: int = 512, rows_per_part: int = 1_000_000, dtype=np.float16,
                        with_text: bool = False, n_clusters: int = 24, random_state: int = 0):
    """Yield ``(image embeddings, text embeddings or None, metadata)`` blocks of at most ``GEN_CHUNK``
    rows, ``n_rows`` in all: exactly the rows :func:`write_embedding_folder` writes with the same
    arguments, without the disk (a 100M x 512 float16 folder is 100 GB). For ingesting from a generator."""
    _check_generator_args(int(n_rows), int(rows_per_part), dim, n_clusters)
    world = _World(dim, n_clusters, random_state)
    dtype = np.dtype(dtype)
    for p in range(math.ceil(n_rows / rows_per_part)):
        start, stop = p * rows_per_part, min(n_rows, (p + 1) * rows_per_part)
        prng = np.random.default_rng([random_state, 1, p])  # parts independent: any one can be regenerated
        for s in range(start, stop, GEN_CHUNK):
            x, t, meta = world.rows(prng, s, min(stop, s + GEN_CHUNK), with_text)
            yield x.astype(dtype), None if t is None else t.astype(dtype), meta


def write_embedding_folder(path, n_rows: int, *, dim: int = 512, rows_per_part: int = 1_000_000,
                           dtype=np.float16, with_text: bool = True, n_clusters: int = 24,
                           random_state: int = 0, progress: bool = False) -> GeneratedFolder:
    """Write a realistic clip-retrieval embedding folder of ``n_rows`` rows at ``path``.

    Rows belong to ``n_clusters`` clusters ("red car", "blue car", ...) of uneven sizes; clusters
    sharing a noun share a topic direction, so they are near each other as related concepts are in
    CLIP. Image embeddings are unit vectors around their cluster's centre (cosine about 0.7 with it);
    text embeddings (``with_text``) sit near their image's, shifted by a common "modality gap";
    captions name the cluster. Metadata: image_path, caption, url, key, width, height and
    ``cluster`` (the ground truth). Parts of ``rows_per_part`` rows are named as clip-retrieval
    names them (``P`` zero-padded to the width of the part count) and written ``GEN_CHUNK`` rows at
    a time, so memory stays bounded at any size. Deterministic in ``random_state``.
    """
    import pyarrow.parquet as pq

    n_rows, rows_per_part = int(n_rows), int(rows_per_part)
    _check_generator_args(n_rows, rows_per_part, dim, n_clusters)
    dtype = np.dtype(dtype)
    folder = Path(path)
    n_parts = math.ceil(n_rows / rows_per_part)
    width = int(math.log10(n_parts)) + 1  # clip-retrieval's zero padding
    labels = [str(p).zfill(width) for p in range(n_parts)]
    for sub in ("img_emb", "metadata") + (("text_emb",) if with_text else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    blocks = generate_embeddings(n_rows, dim=dim, rows_per_part=rows_per_part, dtype=dtype, with_text=with_text,
                                 n_clusters=n_clusters, random_state=random_state)
    with _tqdm()(total=n_rows, desc="generate embeddings", unit="row", disable=not progress) as bar:
        for p, label in enumerate(labels):
            rows = min(n_rows, (p + 1) * rows_per_part) - p * rows_per_part
            img = np.lib.format.open_memmap(folder / "img_emb" / f"img_emb_{label}.npy", mode="w+",
                                            dtype=dtype, shape=(rows, dim))
            txt = (np.lib.format.open_memmap(folder / "text_emb" / f"text_emb_{label}.npy", mode="w+",
                                             dtype=dtype, shape=(rows, dim)) if with_text else None)
            with pq.ParquetWriter(folder / "metadata" / f"metadata_{label}.parquet", _generated_schema()) as meta:
                done = 0
                while done < rows:
                    x, t, table = next(blocks)
                    img[done:done + x.shape[0]] = x
                    if with_text:
                        txt[done:done + x.shape[0]] = t
                    meta.write_table(table)
                    done += x.shape[0]
                    bar.update(x.shape[0])
            img.flush()
            del img
            if with_text:
                txt.flush()
                del txt
    return GeneratedFolder(folder, n_rows, dim, labels, _World(dim, n_clusters, random_state).names)
