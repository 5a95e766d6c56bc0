"""Sharded catalogs: millions to hundreds of millions of items as shards of a few million rows.

Layout::

    OUT/manifest.json      format "clipbranches.sharded-catalog": n_items, dim, quantizer, encoder,
                           extra, the shards in id order (name, n_items, sha256 of the shard's
                           manifest) and the top-level files (encoder weights, reducer) with sha256
    OUT/shard-00000/       an ordinary catalog folder (codes.npy, items.parquet, manifest.json)
    OUT/shard-00001/ ...
    OUT/encoder/ ...       assets shared by every shard

Item ``i`` of the catalog is row ``i - offset[j]`` of shard ``j``. Opening is lazy: the top-level
manifest is read, each shard is opened (memory-mapped, checked against its manifest) the first
time a query touches it, and answers are merged so they equal one folder's answers.

:class:`ShardedCatalogWriter` writes one shard at a time (memory bounded by one shard), into
``OUT.partial/`` under the folder's writer lock; a killed build resumes from its last complete shard, and ``OUT``
only ever holds a whole catalog.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_text, replace_dir, sha256_file, writer_lock
from .base import CatalogBase, check_ids
from .quantize import GlobalQuantizer, quantizer_from_dict

FORMAT = "clipbranches.sharded-catalog"
VERSION = 1
#: rows per shard by default: 4M rows = 128 MB of codes, a few hundred MB of items at most
SHARD_ROWS = 4_000_000


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sharded(manifest: dict) -> bool:
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


# -- reading ------------------------------------------------------------------------------------

class ShardedCatalog(CatalogBase):
    """An opened sharded catalog (see :func:`~clipbranches_widgets.catalog.open_catalog`).

    Attributes: path, manifest, quantizer, n_items, dim, shard_names, offsets ((n_shards + 1,)
    int64: shard ``j`` holds ids ``offsets[j] .. offsets[j+1]-1``).
    """

    def __init__(self, path: Path, manifest: dict, *, verify: str = "auto", image_root=None):
        super().__init__()
        self.path = Path(path)
        self.manifest = manifest
        self.quantizer = quantizer_from_dict(manifest["quantizer"])
        self.shard_names = [s["name"] for s in manifest["shards"]]
        self._shard_sha = [s["manifest_sha256"] for s in manifest["shards"]]
        self.offsets = np.r_[0, np.cumsum([int(s["n_items"]) for s in manifest["shards"]])].astype(np.int64)
        self._verify = verify
        self._image_root = image_root
        self._shards: list = [None] * len(self.shard_names)

    @property
    def n_items(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def n_shards(self) -> int:
        return len(self.shard_names)

    @property
    def fingerprint(self) -> str:
        """A hash of the shard list and every shard's manifest (so of every shard's codes)."""
        return _sha256_bytes(json.dumps(self.manifest["shards"], sort_keys=True).encode())

    def shard(self, j: int):
        """Shard ``j`` as an opened :class:`~.folder.Catalog` (opened and checked on first use)."""
        from .folder import open_catalog

        with self._lock:
            if self._shards[j] is None:
                folder = self.path / self.shard_names[j]
                mpath = folder / "manifest.json"
                if not mpath.is_file():
                    raise ValueError(f"shard {folder} of catalog {self.path} is missing")
                if sha256_file(mpath) != self._shard_sha[j]:
                    raise ValueError(f"shard {folder} does not match the catalog's manifest (replaced or corrupt)")
                cat = open_catalog(folder, verify=self._verify, image_root=self._tile_root())
                if cat.n_items != self.offsets[j + 1] - self.offsets[j] or cat.dim != self.dim:
                    raise ValueError(f"shard {folder} holds {cat.n_items} x {cat.dim} codes; the catalog's "
                                     f"manifest says {self.offsets[j + 1] - self.offsets[j]} x {self.dim}")
                self._shards[j] = cat
            return self._shards[j]

    def _tile_root(self):
        root = self._image_root if self._image_root is not None else (self.manifest.get("extra") or {}).get("image_root")
        if root is None:
            return None
        root = Path(root)
        return root if root.is_absolute() else self.path / root

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, row in the shard) of each id."""
        ids = check_ids(ids, self.n_items)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, ids - self.offsets[shard]

    def _by_shard(self, ids):
        """Yield (shard number, positions in ``ids``, rows in that shard) for the shards ``ids`` touch."""
        shard, local = self.locate(ids)
        for j in np.unique(shard):
            where = np.flatnonzero(shard == j)
            yield int(j), where, local[where]

    # -- the query API ----------------------------------------------------------------------------

    def rows(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.n_items)
        out = np.empty((ids.shape[0], self.dim), np.uint8)
        for j, where, local in self._by_shard(ids):
            out[where] = self.shard(j).codes[local]
        return out

    def items_of(self, ids):
        import pyarrow as pa

        ids = check_ids(ids, self.n_items)
        if ids.shape[0] == 0:
            return self.shard(0).items_of([])
        parts, order = [], []
        for j, where, local in self._by_shard(ids):
            parts.append(self.shard(j).items_of(local))
            order.append(where)
        table = pa.concat_tables(parts, promote_options="default")
        table = table.take(np.argsort(np.concatenate(order), kind="stable"))
        return table.set_column(table.column_names.index("id"), "id", pa.array(ids))

    def search_vectors(self, queries, k: int = 60, *, exclude=None):
        excluded = np.zeros(0, np.int64) if exclude is None else check_ids(exclude, self.n_items)
        parts = []
        for j in range(self.n_shards):
            lo, hi = self.offsets[j], self.offsets[j + 1]
            local_excl = excluded[(excluded >= lo) & (excluded < hi)] - lo
            ids, scores = self.shard(j).search_vectors(queries, k=k, exclude=local_excl if local_excl.size else None)
            parts.append((ids + lo, scores))
        return merge_top_k(parts, k)

    def apply(self, model):
        from ..engine import apply_model, merge_results

        # the k-d index (216 B/item) is not built per shard: the fused scan streams each shard once
        return merge_results((apply_model(self.shard(j).codes, model) for j in range(self.n_shards)),
                             self.offsets[:-1])

    @property
    def thumbnails(self):
        return _ShardTiles(self)


class _ShardTiles:
    """Tiles of a sharded catalog: each shard's own source, addressed by global id."""

    def __init__(self, catalog: ShardedCatalog):
        self.catalog = catalog

    @property
    def pictures(self) -> bool:
        return self.catalog.shard(0).thumbnails.pictures

    def thumbnail(self, i: int) -> bytes:
        (j,), (local,) = self.catalog.locate([i])
        return self.catalog.shard(int(j)).thumbnail(int(local))


def merge_top_k(parts, k: int):
    """Merge per-block (ids, scores) top-k lists (already shifted to global ids) into one top-k,
    ordered by descending score, ties by ascending id, as one block's search orders them."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def open_sharded(folder: Path, manifest: dict, *, verify: str = "auto", image_root=None) -> ShardedCatalog:
    """Check a sharded catalog's top-level manifest and files; shards are checked when opened."""
    mpath = folder / "manifest.json"
    if manifest.get("version") != VERSION:
        raise ValueError(f"{mpath} has sharded format version {manifest.get('version')}; this code reads {VERSION}")
    try:
        shards, files = manifest["shards"], manifest.get("files", {})
        int(manifest["dim"])
        quantizer_from_dict(manifest["quantizer"])
        if not shards or any(int(s["n_items"]) < 1 or "/" in s["name"] or s["name"].startswith(".")
                             for s in shards):
            raise ValueError("bad shard list")
        if sum(int(s["n_items"]) for s in shards) != int(manifest["n_items"]):
            raise ValueError("the shards' sizes do not add up to n_items")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"catalog file {mpath} is corrupt: {exc}") from None
    from .folder import catalog_file

    for name, info in files.items():
        fpath = catalog_file(folder, name)
        if fpath.stat().st_size != info.get("bytes") or (verify != "size" and sha256_file(fpath) != info.get("sha256")):
            raise ValueError(f"catalog file {fpath} does not match its size or checksum in the manifest")
    return ShardedCatalog(folder, manifest, verify=verify, image_root=image_root)


# -- writing ------------------------------------------------------------------------------------

class ShardedCatalogWriter:
    """Write a sharded catalog block by block; memory is bounded by one shard.

    ::

        with ShardedCatalogWriter(out, quantizer=q, encoder=spec, assets=files, build_id=key) as w:
            skip = w.n_written          # rows a killed earlier run already wrote (resume)
            for codes, items in blocks_after(skip):
                w.add(codes, items)     # uint8 (n, d) and a pyarrow Table (or dict of columns)
        cat = w.catalog                 # the opened catalog, swapped into place atomically

    ``build_id`` identifies the build's inputs and settings: a rerun with the same id resumes from
    the last complete shard, another id starts clean. One writer per folder at a time: a second
    gets a ValueError naming the first writer's process. Leaving the ``with`` block by an
    exception keeps ``OUT.partial`` for a resume and leaves ``OUT`` as it was.
    """

    def __init__(self, path, *, dim: int = 32, shard_rows: int = SHARD_ROWS, quantizer=None,
                 encoder: dict | None = None, extra: dict | None = None, assets: dict | None = None,
                 build_id: str = "", resume: bool = True):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1; got {shard_rows}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.dim, self.shard_rows = int(dim), int(shard_rows)
        self.quantizer = quantizer if quantizer is not None else GlobalQuantizer()
        self.encoder, self.extra, self.assets = encoder, extra or {}, assets or {}
        self.build_id = str(build_id)
        self.resume = resume
        self.catalog = None
        self._codes: list[np.ndarray] = []
        self._items: list = []
        self._buffered = 0
        self._shards: list[dict] = []
        self._writer_lock = None

    @property
    def n_written(self) -> int:
        """Rows in complete shards (after a resume: what the earlier run finished)."""
        return sum(s["n_items"] for s in self._shards)

    def __enter__(self) -> "ShardedCatalogWriter":
        self._take_lock()
        self.partial.mkdir(parents=True, exist_ok=True)
        progress = self.partial / "progress.json"
        state = None
        if self.resume and progress.is_file():
            try:
                state = json.loads(progress.read_text())
            except ValueError:
                state = None
        if state and state.get("build_id") == self.build_id and state.get("shard_rows") == self.shard_rows \
                and all((self.partial / s["name"] / "manifest.json").is_file() for s in state["shards"]):
            self._shards = state["shards"]
        else:  # a different build, or nothing to resume: start clean, keeping only the lock
            for entry in self.partial.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._release_lock()

    def add(self, codes, items) -> None:
        """Append rows: uint8 codes (n, dim) and their items (pyarrow Table or dict of columns, n rows)."""
        import pyarrow as pa

        from ..engine._validation import check_codes

        codes = check_codes(codes, name="codes", n_features=self.dim, allow_empty=True)
        table = items if isinstance(items, pa.Table) else pa.table(items)
        if table.num_rows != codes.shape[0]:
            raise ValueError(f"items has {table.num_rows} rows but codes has {codes.shape[0]}")
        if "id" in table.column_names:
            table = table.drop_columns(["id"])  # ids are positions, set per shard
        start = 0
        while start < codes.shape[0]:
            take = min(self.shard_rows - self._buffered, codes.shape[0] - start)
            self._codes.append(codes[start:start + take])
            self._items.append(table.slice(start, take))
            self._buffered += take
            start += take
            if self._buffered == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        from .folder import write_catalog_folder

        if not self._buffered:
            return
        name = f"shard-{len(self._shards):05d}"
        codes = np.concatenate(self._codes) if len(self._codes) > 1 else self._codes[0]
        items = pa.concat_tables(self._items, promote_options="default")
        write_catalog_folder(self.partial / name, codes, items, quantizer=self.quantizer)  # under our lock
        self._shards.append({"name": name, "n_items": int(codes.shape[0]),
                             "manifest_sha256": sha256_file(self.partial / name / "manifest.json")})
        self._codes, self._items, self._buffered = [], [], 0
        atomic_write_text(self.partial / "progress.json", json.dumps(
            {"build_id": self.build_id, "shard_rows": self.shard_rows, "shards": self._shards}, indent=1))

    def _finish(self) -> None:
        self._flush()
        if not self._shards:
            raise ValueError("no rows were added: a catalog needs at least one item")
        files = {}
        for name, data in self.assets.items():
            if Path(name).is_absolute() or ".." in Path(name).parts or name.startswith("shard-"):
                raise ValueError(f"asset name {name!r} must be a new relative path inside the catalog")
            target = self.partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files[name] = {"bytes": len(data), "sha256": _sha256_bytes(data)}
        manifest = {"format": FORMAT, "version": VERSION, "n_items": self.n_written, "dim": self.dim,
                    "quantizer": self.quantizer.to_dict(), "encoder": self.encoder, "extra": self.extra,
                    "shards": self._shards, "files": files}
        (self.partial / "progress.json").unlink()
        atomic_write_text(self.partial / "manifest.json", json.dumps(manifest, indent=1))
        replace_dir(self.partial, self.path)
        from .folder import open_catalog

        self.catalog = open_catalog(self.path)

    def _take_lock(self) -> None:
        self._writer_lock = writer_lock(self.path)
        self._writer_lock.__enter__()

    def _release_lock(self) -> None:
        if self._writer_lock is not None:
            lock, self._writer_lock = self._writer_lock, None
            lock.__exit__(None, None, None)

