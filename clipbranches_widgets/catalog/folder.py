"""A catalog folder: 8-bit codes, item metadata, thumbnails and the box index, validated on open.

Layout (DESIGN.md)::

    manifest.json      format + version, n_items, dim, quantizer, encoder/head spec, file sizes + sha256
    codes.npy          uint8 (N, dim), C order, memory-mapped on open
    items.parquet      one row per item: id (0..N-1), caption, ... (any further columns: attributes)
    thumbs.bin         optional: JPEG bytes of every item, back to back
    thumbs.idx.npy     optional: int64 (N + 1,) offsets into thumbs.bin
    index/             BoxIndex folders, keyed by the codes' hash (built on request: Catalog.box_index)

``write_catalog`` fills a temporary folder and renames it into place, so a crash never leaves a
half-written catalog; an existing catalog at the same path is replaced only after the new one is
complete. One writer per folder at a time: ``.NAME.lock`` next to the folder is held while writing
(a second writer gets a clear error; the lock dies with its process). ``open_catalog`` checks every file against the manifest and raises ``ValueError`` naming
the file that is missing, truncated, corrupt or inconsistent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .._atomic import replace_dir, sha256_file, staging_dir, writer_lock
from .base import CatalogBase, check_ids, check_k
from .items import ROW_GROUP_ROWS, ItemsFile
from .quantize import GlobalQuantizer, quantizer_from_dict
from .sharded import is_sharded, open_sharded
from .thumbnails import StoredThumbnails, thumbnail_source

log = logging.getLogger(__name__)

FORMAT = "clipbranches.catalog"
VERSION = 1
#: files up to this size are hashed on open; larger ones are checked by size only (``verify="hash"`` forces it)
HASH_ON_OPEN_MAX_BYTES = 256 * 2**20


def write_catalog(path, codes, items, *, quantizer=None, encoder: dict | None = None, thumbnails=None,
                  extra: dict | None = None, assets: dict | None = None) -> "Catalog":
    """Write a catalog folder at ``path`` atomically, holding its writer lock, and return it opened.

    codes: uint8 (N, d). items: pyarrow Table (or anything ``pa.table`` accepts) with N rows and an
    ``id`` column equal to 0..N-1 (added if absent). thumbnails: optional sequence of N JPEG byte
    strings. encoder: JSON-able description of the encoder + reducer that made the embeddings;
    with a ``"model"`` key the catalog answers text and image queries (see
    :meth:`Catalog.query_encoder`). assets: ``{relative file name: bytes}`` written into the folder
    and checked on open like every other file (e.g. the encoder's weights, the reducer).
    extra: free JSON; ``extra["thumbnails"]`` names a generator that renders tiles on demand (the
    demo world), ``extra["image_root"]`` a folder of the items' ``image_path`` files
    (:mod:`clipbranches_widgets.catalog.thumbnails`).
    """
    codes, table = _checked_rows(codes, items, thumbnails)  # bad input is refused before anything is touched
    final = Path(path)
    with writer_lock(final):  # one writer per folder: a second one gets a clear error, not a race
        write_catalog_folder(final, codes, table, quantizer=quantizer, encoder=encoder, thumbnails=thumbnails,
                             extra=extra, assets=assets)
        return open_catalog(final)


def write_catalog_folder(final: Path, codes, items, *, quantizer=None, encoder: dict | None = None,
                         thumbnails=None, extra: dict | None = None, assets: dict | None = None) -> None:
    """:func:`write_catalog`'s work, without taking the lock or opening the result: for a writer that
    already holds the lock of an enclosing folder (the shards of a sharded catalog)."""
    import pyarrow.parquet as pq

    codes, table = _checked_rows(codes, items, thumbnails)
    n, dim = codes.shape
    quantizer = quantizer if quantizer is not None else GlobalQuantizer()
    staged_final = final.with_name(final.name + ".new")
    shutil.rmtree(staged_final, ignore_errors=True)  # we hold the lock: a leftover is from a crashed write
    with staging_dir(staged_final) as staged:
        folder = staged.path
        np.save(folder / "codes.npy", codes, allow_pickle=False)
        pq.write_table(table, folder / "items.parquet", row_group_size=ROW_GROUP_ROWS)
        files = ["codes.npy", "items.parquet"]
        if thumbnails is not None:
            offsets = np.zeros(n + 1, np.int64)
            with open(folder / "thumbs.bin", "wb") as f:
                for i, jpeg in enumerate(thumbnails):
                    f.write(jpeg)
                    offsets[i + 1] = offsets[i] + len(jpeg)
            np.save(folder / "thumbs.idx.npy", offsets, allow_pickle=False)
            files += ["thumbs.bin", "thumbs.idx.npy"]
        for name, data in (assets or {}).items():
            target = folder / name
            if Path(name).is_absolute() or ".." in Path(name).parts or name in files:
                raise ValueError(f"asset name {name!r} must be a new relative path inside the catalog")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files.append(name)
        manifest = {"format": FORMAT, "version": VERSION, "n_items": n, "dim": dim,
                    "quantizer": quantizer.to_dict(), "encoder": encoder, "extra": extra or {},
                    "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
                              for name in files}}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if not staged.published:
        raise ValueError(f"another process is writing a catalog at {final}; try again when it has finished")
    replace_dir(staged_final, final)


def _checked_rows(codes, items, thumbnails):
    """(uint8 codes, items Table with an ``id`` column 0..N-1), or a ValueError naming what is wrong."""
    import pyarrow as pa

    from ..engine._validation import check_codes

    codes = check_codes(codes, name="codes")
    n = codes.shape[0]
    table = items if isinstance(items, pa.Table) else pa.table(items)
    if table.num_rows != n:
        raise ValueError(f"items has {table.num_rows} rows but codes has {n}")
    if "id" not in table.column_names:
        table = table.add_column(0, "id", pa.array(np.arange(n, dtype=np.int64)))
    elif not np.array_equal(np.asarray(table.column("id")), np.arange(n)):
        raise ValueError("items.id must be 0..N-1 in order (the row number of each item's code)")
    if thumbnails is not None and len(thumbnails) != n:
        raise ValueError(f"got {len(thumbnails)} thumbnails for {n} items")
    return codes, table


class Catalog(CatalogBase):
    """An opened catalog folder (see :func:`open_catalog`).

    Attributes: path, manifest, codes (memory-mapped uint8 (N, d)), items (the whole items table,
    read on first use; :meth:`items_of` reads only the rows asked for), quantizer, n_items, dim.
    """

    def __init__(self, path: Path, manifest: dict, codes: np.ndarray, items, thumb_offsets, image_root=None):
        super().__init__()
        self.path = path
        self.manifest = manifest
        self.codes = codes
        self._items = items
        self.quantizer = quantizer_from_dict(manifest["quantizer"])
        self._thumb_offsets = thumb_offsets
        self._image_root = image_root
        # stored thumbnails are opened now, with the codes and items: a rebuild in place afterwards
        # cannot pair this catalog's captions with the new folder's pictures
        self._thumbnails = None if thumb_offsets is None else StoredThumbnails(path / "thumbs.bin", thumb_offsets)
        self._index = None

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def items(self):
        """The whole items table (pyarrow), read on first use and kept."""
        return self._items.table()

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    @property
    def thumbnails(self):
        """Where this catalog's tiles come from (:mod:`clipbranches_widgets.catalog.thumbnails`)."""
        with self._lock:
            if self._thumbnails is None:
                self._thumbnails = thumbnail_source(self.path, self.manifest, self._items, self._thumb_offsets,
                                                    self._image_root)
            return self._thumbnails

    def nearest(self):
        """The catalog's :class:`~clipbranches_widgets.catalog.search.NearestNeighbours` (created once)."""
        if getattr(self, "_nn", None) is None:
            from .search import NearestNeighbours

            self._nn = NearestNeighbours(self.codes, self.quantizer)
        return self._nn

    # -- the query API (catalog.base) ---------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A hash that changes whenever the codes do (sessions check it before reusing marks)."""
        return self.manifest["files"]["codes.npy"]["sha256"]

    def rows(self, ids) -> np.ndarray:
        return np.ascontiguousarray(self.codes[check_ids(ids, self.n_items)])

    def items_of(self, ids):
        return self._items.take(check_ids(ids, self.n_items))

    def search_vectors(self, queries, k: int = 60, *, exclude=None):
        return self.nearest().search(queries, k=k, exclude=exclude)

    def apply(self, model):
        """Every item the fitted model calls positive, ranked (an engine ``SearchResult``).

        Box models go through the catalog's BoxIndex (which plans index vs scan) when one was built
        or saved for these codes (:meth:`box_index`, :meth:`saved_box_index`); otherwise, and by
        default, through the fused scan. Applying never builds an index: on trained models the
        scan measured faster (benchmarks/results/engine.md)."""
        from ..engine import apply_model
        from ..engine.apply import is_box_model

        return apply_model(self.codes, model, index=self.saved_box_index() if is_box_model(model) else None)

    def box_index(self, subsets=None):
        """The engine's BoxIndex for these codes, built on request, then kept under ``index/`` (keyed
        by the codes' hash, so a rebuilt catalog never reuses a stale index), or in the user's cache
        when the catalog folder is read-only. Once built, :meth:`apply` uses it where its planner
        expects it to beat the scan (very narrow boxes; see the README's "How the engine works")."""
        from ..engine import BoxIndex
        from ..engine.subsets import default_subsets

        subsets = default_subsets(self.dim) if subsets is None else subsets
        with self._lock:
            if self._index is None or not _same_subsets(self._index.subsets, subsets):
                self._index = None
                for folder in self._index_folders():
                    try:
                        self._index = BoxIndex.build(self.codes, subsets, path=folder, codes_hash=self.fingerprint)
                        break
                    except OSError:  # read-only (an installed package, a shared mount): try the next place
                        continue
                if self._index is None:
                    self._index = BoxIndex.build(self.codes, subsets)  # kept in memory only
            return self._index

    def saved_box_index(self):
        """The BoxIndex :meth:`box_index` built in this process or saved earlier (default subsets),
        or None; never builds one. A damaged saved index is logged and skipped (the scan answers)."""
        from ..engine import BoxIndex
        from ..engine.subsets import default_subsets

        with self._lock:
            if self._index is None:
                for folder in self._index_folders():
                    try:
                        self._index = BoxIndex.find(self.codes, default_subsets(self.dim), folder,
                                                    codes_hash=self.fingerprint)
                    except (OSError, ValueError) as exc:
                        log.warning("ignoring the saved box index under %s: %s", folder, exc)
                        continue
                    if self._index is not None:
                        break
            return self._index

    def _index_folders(self) -> list[Path]:
        """Where the index may be saved: next to the codes, else the user's cache (the index key holds
        the codes' hash, so one cache serves every catalog). The catalog shipped inside the package
        always uses the cache, so nothing is written into site-packages."""
        from .default import PACKAGED_CATALOG

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipbranches" / "index"
        inside = [] if self.path.resolve() == PACKAGED_CATALOG.resolve() else [self.path / "index"]
        return inside + [cache]


def _same_subsets(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def catalog_file(folder: Path, name) -> Path:
    """``folder / name`` for a file a manifest lists: a relative path that stays inside the folder
    (symlinks resolved) and names a regular file; anything else is a ValueError, never an open
    (``/dev/zero`` or a FIFO would hang a reader, ``../`` would read outside the catalog)."""
    rel = Path(str(name))
    if not str(name) or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"catalog {folder} lists a file outside itself: {str(name)!r}")
    fpath = folder / rel
    if not fpath.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"catalog file {fpath} links outside the catalog")
    if not fpath.exists():
        raise ValueError(f"catalog file {fpath} is missing")
    if not fpath.is_file():
        raise ValueError(f"catalog file {fpath} is not a regular file")
    return fpath


def open_catalog(path, *, verify: str = "auto", image_root=None, client=None) -> CatalogBase:
    """Open and validate a catalog folder: one folder (:class:`Catalog`) or a sharded catalog
    (:class:`~.sharded.ShardedCatalog`, whose shards are opened and checked when first used).

    verify: "auto" (hash files up to 256 MiB, size-check larger ones), "hash" (hash everything) or
    "size". image_root: a folder holding the items' ``image_path`` files, for tiles (overrides the
    manifest's ``extra["image_root"]``). client: a ``dask.distributed.Client``: the (sharded)
    catalog is served by its workers (:func:`~.distributed.open_distributed`; the path must be on a
    filesystem they share). Raises ValueError naming the bad file.
    """
    if verify not in ("auto", "hash", "size"):
        raise ValueError(f"verify must be 'auto', 'hash' or 'size'; got {verify!r}")
    if client is not None:  # shards served by Dask workers; dask is imported only when asked for
        from .distributed import open_distributed

        return open_distributed(path, client, verify=verify, image_root=image_root)
    folder = Path(path)
    # A rewrite in place swaps the whole folder: files opened across the swap come from two
    # versions, or vanish. Reading the manifest again after opening tells a swap (start again)
    # from damage (the same manifest: report it).
    for attempt in range(REWRITE_RETRIES + 1):
        before = _manifest_bytes(folder)
        try:
            catalog = _open_once(folder, verify, image_root)
        except (ValueError, OSError) as exc:
            if attempt == REWRITE_RETRIES or (before is not None and _manifest_bytes(folder) == before):
                if isinstance(exc, ValueError):
                    raise
                raise ValueError(f"catalog {folder} cannot be read: {exc}") from None
        else:
            if _manifest_bytes(folder) == before:
                return catalog
            if attempt == REWRITE_RETRIES:
                raise ValueError(f"catalog {folder} is being rewritten again and again; try again later")
        time.sleep(0.02 * (attempt + 1))


#: how often open_catalog starts again when the folder was rewritten while it was being opened
REWRITE_RETRIES = 5


def _manifest_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / "manifest.json").read_bytes()
    except OSError:
        return None


def _open_once(folder: Path, verify: str, image_root) -> CatalogBase:
    if not folder.is_dir():
        raise ValueError(f"no catalog at {folder}: not a folder")
    mpath = folder / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a catalog: {mpath} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"catalog file {mpath} is corrupt: {exc}") from None
    if is_sharded(manifest):
        return open_sharded(folder, manifest, verify=verify, image_root=image_root)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{mpath} does not describe a clipbranches catalog")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{mpath} has format version {manifest.get('version')}; this code reads {VERSION}")
    try:
        n, dim, files = int(manifest["n_items"]), int(manifest["dim"]), manifest["files"]
        quantizer_from_dict(manifest["quantizer"])
        if n < 1 or dim < 1:
            raise ValueError(f"n_items {n} and dim {dim} must be >= 1")
        if not isinstance(files, dict) or not all(
                isinstance(info, dict) and isinstance(info.get("bytes"), int) and isinstance(info.get("sha256"), str)
                for info in files.values()):
            raise ValueError("'files' must map each file name to its bytes and sha256")
        for key in ("encoder", "extra"):
            if manifest.get(key) is not None and not isinstance(manifest[key], dict):
                raise ValueError(f"{key!r} must be an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"catalog file {mpath} is corrupt: {exc}") from None
    for name in ("codes.npy", "items.parquet"):
        if name not in files:
            raise ValueError(f"catalog file {mpath} lists no {name}")
    for name, info in files.items():
        fpath = catalog_file(folder, name)
        size = fpath.stat().st_size
        if size != info.get("bytes"):
            raise ValueError(f"catalog file {fpath} has {size} bytes; the manifest says {info.get('bytes')} (truncated or replaced?)")
        if verify == "hash" or (verify == "auto" and size <= HASH_ON_OPEN_MAX_BYTES):
            if sha256_file(fpath) != info.get("sha256"):
                raise ValueError(f"catalog file {fpath} does not match its checksum in the manifest (corrupt or replaced)")
    try:
        codes = np.load(folder / "codes.npy", mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"catalog file {folder / 'codes.npy'} is not a readable .npy array: {exc}") from None
    if codes.dtype != np.uint8 or codes.shape != (n, dim):
        raise ValueError(f"catalog file {folder / 'codes.npy'} holds {codes.dtype} {codes.shape}; "
                         f"the manifest says uint8 {(n, dim)}")
    try:
        items = ItemsFile(folder / "items.parquet")  # metadata only: rows are read when asked for
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ValueError(f"catalog file {folder / 'items.parquet'} is not readable: {exc}") from None
    if items.num_rows != n or "id" not in items.column_names:
        raise ValueError(f"catalog file {folder / 'items.parquet'} has {items.num_rows} rows "
                         f"(and columns {items.column_names}); expected {n} rows with an id column")
    offsets = None
    if "thumbs.idx.npy" in files:
        offsets = np.load(folder / "thumbs.idx.npy", allow_pickle=False)
        if offsets.shape != (n + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any() \
                or offsets[-1] != files["thumbs.bin"]["bytes"]:
            raise ValueError(f"catalog file {folder / 'thumbs.idx.npy'} does not match thumbs.bin")
    return Catalog(folder, manifest, np.asarray(codes), items, offsets, image_root=image_root)
