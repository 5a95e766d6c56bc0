"""``BoxIndex``: compact per-subset range-query indexes that answer a whole model at once.

Layout (why it is small): the catalog is cut into *segments* of ``segment_size`` (<= 65,536) rows.
For every (feature subset, segment) there is a complete, implicit binary k-d tree over a
permutation of the segment's rows, stored as uint16 *local* offsets: 2 bytes per item per subset,
one array ``perm`` of shape (n_subsets, N). Node ranges are implied by recursive halving (the left
child of a node over ``len`` rows gets ``len // 2``), so no node table is stored. Each node keeps
the TIGHT min/max of its points on every dim of the subset (uint8, ``2 k`` bytes per node), which
prunes much better than the original cell bounds. No features are copied: a partially covered leaf
reads ``codes[base + offset, dims]`` from the catalog itself. For 104 paper subsets this is
208 B/item of permutations + ~8 B/item of bounds (the original stored 928 B/item).

Query (``search``): per segment (in parallel), per box, descend its subset's tree: a node outside
the box is pruned, a node inside the box emits its whole row range without reading codes, a leaf
partly inside tests its rows. Rows are deduplicated per estimator with a stamp array, votes are
counted and thresholded at ``min_votes``; the hits are ranked by the scan module's keys and
counting sort, so index and scan results are identical (ids, float64 scores, order). The trees'
layout, build and descent kernels live in :mod:`.kdtree`; this module keeps the planner,
persistence and the class.

``method="auto"`` first estimates from a fixed sample of catalog rows which fraction of the
catalog each box selects; when the sum over boxes (each box is a separate descent), each weighted
by ``(k / 4) ** 2`` for a tree on ``k`` dims, is above ``auto_threshold`` it scans. Otherwise it
descends the trees of a few segments (a probe) and uses the index when the rows that would be
checked in all segments are few enough (``PROBE_MAX_ROWS``); small catalogs, where a probe would
cost too much of the search, go by the estimate alone.

What the index is for: very narrow models. A box around a handful of items is answered 5-20x
faster than by the scan at 10M rows; trained models, whose boxes select 0.1-5% of the catalog
each, are answered as fast or faster by the scan (benchmarks/results/engine.md). So catalogs build
an index only on request (``Catalog.box_index``).

Persistence: ``BoxIndex.build(codes, subsets, path=...)`` keys a folder by a hash of the codes,
subsets, leaf and segment size and the format version, loads it (memory-mapped) when it exists and
validates, and otherwise builds into a temporary folder that is renamed into place only when
complete. Different inputs give a different key, so a stale index is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from numba import njit

from .._atomic import sha256_file, staging_dir
from ._validation import check_codes, check_subsets
from .boxes import MAX_BOX_DIMS, BoxSet, estimator_starts
from .kdtree import build_trees, layout, query_trees
from .result import SearchResult
from .scan import (apply_post_trees, check_box_set, hit_keys, hits_from_arrays, rank_hits, ranking, row_in_box,
                   scan_hits, thread_scratch)
from .subsets import pad_subsets

FORMAT_VERSION = 2  # 2: meta.json holds each file's sha256
_FORMAT_NAME = "clipbranches.BoxIndex"
_FILES = ("perm.npy", "bounds.npy", "sample.npy")
#: index files up to this total size are checked against their checksums on open (larger: sizes only)
HASH_ON_OPEN_MAX_BYTES = 512 * 2**20

#: rows of the planner's fixed random sample
SAMPLE_SIZE = 4096
#: ``auto`` considers the index only when the boxes' weighted estimated selectivity
#: (:func:`planned_cost`) is at most this fraction of the catalog: wider models make the trees
#: check far more rows than the scan reads (trained ensembles: 30-80M row checks at 10M rows)
DEFAULT_AUTO_THRESHOLD = 0.02
#: ... and then probes the trees of this many segments, and uses the index when the rows they would
#: check or emit in all segments, extrapolated, are at most ``PROBE_MAX_ROWS`` of the catalog.
#: Why a probe: the sample's estimate cannot see what the trees cost. Measured at 10M rows on 2
#: cores (benchmarks/results/engine.md, "Index vs scan for single boxes"): an index search costs
#: ~2 ms plus ~20 ms per million rows checked, the scan 15-30 ms, so the index wins below ~8% of
#: the rows checked; and boxes selecting almost nothing (0.002% of rows, estimated 0 by the
#: 4096-row sample) checked 0.4% of the rows on a 4-dim tree but 10% on an 8-dim one, whose dims
#: are each split about twice in a 65,536-row segment.
PROBE_SEGMENTS = 4
PROBE_MAX_ROWS = 0.08
#: catalogs of fewer than ``PROBE_MIN_SEGMENTS`` segments (2M rows) are not probed, a probe would
#: cost a good part of the search: there the index is used when the weighted estimate is at most
#: ``SMALL_AUTO_THRESHOLD`` (both paths take a few ms there)
PROBE_MIN_SEGMENTS = 8 * PROBE_SEGMENTS
SMALL_AUTO_THRESHOLD = 0.004


# ---------------------------------------------------------------------------------------------
# planner


@njit(cache=True, nogil=True)
def _sample_fractions(sample, dims, ndims, low, high):
    """(per-box fraction of sample rows inside the box, fraction inside at least one box).

    The planner's estimate (``search``, ``method="auto"``); :func:`sample_fractions_numpy` is its
    plain-numpy twin, which tests compare it with.
    """
    n = sample.shape[0]
    frac = np.zeros(ndims.shape[0], np.float64)
    any_count = 0
    for i in range(n):
        hit = False
        for b in range(ndims.shape[0]):
            if row_in_box(sample, i, dims, b, ndims[b], low, high, b):
                frac[b] += 1.0
                hit = True
        any_count += hit
    return frac / max(n, 1), any_count / max(n, 1)


def sample_fractions_numpy(sample, dims, ndims, low, high) -> tuple[np.ndarray, float]:
    """Plain-numpy twin of :func:`_sample_fractions` (same arguments, a BoxSet's arrays): one boolean
    column per box, then the column means and the mean of the rows' OR. Slow; used by tests."""
    n = sample.shape[0]
    inside = np.zeros((n, ndims.shape[0]), bool)
    for b in range(ndims.shape[0]):
        k = int(ndims[b])
        cols = sample[:, dims[b, :k]]
        inside[:, b] = np.all((cols >= low[b, :k]) & (cols <= high[b, :k]), axis=1)
    return inside.sum(axis=0) / max(n, 1), inside.any(axis=1).sum() / max(n, 1)


def planned_cost(frac, tree_dims) -> float:
    """The planner's cost of answering boxes by the index, in catalog fractions: each box's
    estimated selectivity ``frac[b]``, weighted by ``(k / 4) ** 2`` for the ``k``-dim tree that
    answers it (``tree_dims[b]``), summed. See ``DEFAULT_AUTO_THRESHOLD``."""
    return float(sum(f * (k / 4.0) ** 2 for f, k in zip(frac, tree_dims)))


# ---------------------------------------------------------------------------------------------
# helpers


def hash_codes(codes: np.ndarray) -> str:
    """Content hash of a uint8 catalog (shape included); ~1 GB/s, pass ``codes_hash`` to skip it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(codes.shape).encode())
    flat = codes.reshape(-1)
    step = 1 << 26  # hash in 64 MiB slices so a memory-mapped catalog is never copied whole
    for start in range(0, flat.shape[0], step):
        h.update(memoryview(np.ascontiguousarray(flat[start:start + step])))
    return h.hexdigest()


def _index_key(codes_hash: str, shape, subsets, leaf_size: int, segment_size: int) -> str:
    payload = json.dumps({"codes": codes_hash, "shape": list(shape), "subsets": [list(s) for s in subsets],
                          "leaf_size": leaf_size, "segment_size": segment_size, "version": FORMAT_VERSION},
                         sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


def _saved_folder(codes, subsets, path, leaf_size, segment_size, codes_hash) -> tuple[str, str, Path]:
    """(codes hash, key, folder) of the index of these arguments under ``path`` (module doc)."""
    codes_hash = hash_codes(codes) if codes_hash is None else str(codes_hash)
    key = _index_key(codes_hash, codes.shape, subsets, int(leaf_size), int(segment_size))
    return codes_hash, key, Path(path) / f"boxindex-{key}"


def _check_params(leaf_size, segment_size):
    if not isinstance(leaf_size, (int, np.integer)) or leaf_size < 1:
        raise ValueError(f"leaf_size must be a positive integer; got {leaf_size!r}")
    if not isinstance(segment_size, (int, np.integer)) or not 1 <= segment_size <= 65536:
        raise ValueError(f"segment_size must be an integer in 1..65536 (offsets are uint16); got {segment_size!r}")


def _load_npy(folder: Path, name: str, shape, dtype) -> np.ndarray:
    """Memory-map ``folder/name`` and check shape, dtype and exact file size, or raise ValueError."""
    path = folder / name
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"index file {path} is missing") from None
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError for damaged headers or sizes
        raise ValueError(f"index file {path} is corrupt or truncated: {exc}") from None
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ValueError(f"index file {path} holds {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{tuple(shape)}")
    if arr.offset + arr.nbytes != os.path.getsize(path):
        raise ValueError(f"index file {path} has the wrong size (truncated or padded)")
    return arr


# ---------------------------------------------------------------------------------------------


class BoxIndex:
    """Segment-local k-d trees with tight bounds, one per feature subset; see the module doc.

    Attributes: ``codes`` (the catalog it answers on), ``subsets``, ``leaf_size``,
    ``segment_size``, ``folder`` (None when in memory), ``loaded`` (True when opened from disk
    instead of built), ``build_s``, ``nbytes`` and ``bytes_per_item``.
    """

    def __init__(self, codes, subsets, leaf_size, segment_size, perm, bounds, sample, *, folder=None,
                 loaded=False, build_s=0.0, auto_threshold=DEFAULT_AUTO_THRESHOLD):
        self.codes = codes
        self.subsets = [tuple(s) for s in subsets]
        self.leaf_size = int(leaf_size)
        self.segment_size = int(segment_size)
        self.perm = perm
        self.bounds = bounds
        self.sample = sample
        self.folder = folder
        self.loaded = loaded
        self.build_s = build_s
        self.auto_threshold = auto_threshold
        self._sub_dims, self._sub_k = pad_subsets(self.subsets)
        self._layout = layout(codes.shape[0], self._sub_k, leaf_size, segment_size)
        self._subset_pos = {s: i for i, s in enumerate(self.subsets)}
        self._sample_codes = np.ascontiguousarray(codes[np.asarray(sample)])  # 4096 x d: tiny, kept for planning

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, codes, subsets, path=None, *, leaf_size: int = 256, segment_size: int = 65536,
              codes_hash: str | None = None) -> "BoxIndex":
        """Build (or, with ``path``, load a matching saved) index of ``codes`` for ``subsets``.

        ``path``: parent folder of the persisted indexes; the index lives in
        ``path/boxindex-<key>`` with ``key`` a hash of the codes (or ``codes_hash``), subsets,
        ``leaf_size``, ``segment_size`` and the format version. An existing folder under the key
        is memory-mapped instead of rebuilt (``index.loaded`` is True); one that is damaged raises
        ``ValueError`` naming the file (delete the folder to rebuild).
        """
        codes = check_codes(codes, name="codes")
        subsets = check_subsets(subsets, codes.shape[1])
        _check_params(leaf_size, segment_size)
        if path is None:
            return cls._build(codes, subsets, leaf_size, segment_size)
        codes_hash, key, folder = _saved_folder(codes, subsets, path, leaf_size, segment_size, codes_hash)
        if folder.exists():
            return cls.open(folder, codes)
        index = cls._build(codes, subsets, leaf_size, segment_size)
        meta = index._meta(key, str(codes_hash))
        with staging_dir(folder) as staged:
            for name, arr in zip(_FILES, (index.perm, index.bounds, index.sample)):
                np.save(staged.path / name, arr, allow_pickle=False)
            meta["sha256"] = {name: sha256_file(staged.path / name) for name in _FILES}
            # meta.json last: a folder with meta.json is complete (and only whole folders are published)
            (staged.path / "meta.json").write_text(json.dumps(meta, indent=1))
        if not staged.published:  # another process published the same key first: use theirs
            return cls.open(folder, codes)
        index.folder = folder
        return index

    @classmethod
    def find(cls, codes, subsets, path, *, leaf_size: int = 256, segment_size: int = 65536,
             codes_hash: str | None = None) -> "BoxIndex | None":
        """The index :meth:`build` saved under ``path`` for these arguments, opened (as
        :meth:`open`); None when there is none. Never builds one."""
        codes = check_codes(codes, name="codes")
        subsets = check_subsets(subsets, codes.shape[1])
        _check_params(leaf_size, segment_size)
        folder = _saved_folder(codes, subsets, path, leaf_size, segment_size, codes_hash)[2]
        return cls.open(folder, codes) if folder.exists() else None

    @classmethod
    def _build(cls, codes, subsets, leaf_size, segment_size) -> "BoxIndex":
        t0 = time.perf_counter()
        n = codes.shape[0]
        sub_dims, sub_k = pad_subsets(subsets)
        perm, bounds = build_trees(codes, sub_dims, sub_k, leaf_size, segment_size,
                                   layout(n, sub_k, leaf_size, segment_size))
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, SAMPLE_SIZE), replace=False)).astype(np.int64)
        return cls(codes, subsets, leaf_size, segment_size, perm, bounds, sample, build_s=time.perf_counter() - t0)

    def _meta(self, key: str, codes_hash: str) -> dict:
        return {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "key": key, "codes_hash": codes_hash,
                "n_items": int(self.codes.shape[0]), "n_features": int(self.codes.shape[1]),
                "subsets": [list(s) for s in self.subsets], "leaf_size": self.leaf_size,
                "segment_size": self.segment_size, "n_nodes_max": int(self._layout.n_nodes_max),
                "build_s": self.build_s}

    @classmethod
    def open(cls, folder, codes) -> "BoxIndex":
        """Memory-map a saved index folder for ``codes`` (the catalog it was built on): its shape is
        checked, and its files against their checksums (up to HASH_ON_OPEN_MAX_BYTES in all)."""
        folder = Path(folder)
        codes = check_codes(codes, name="codes")
        meta_path = folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            ok = meta.get("format") == _FORMAT_NAME
        except FileNotFoundError:
            raise ValueError(f"{folder} is not a BoxIndex folder: {meta_path} is missing") from None
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise ValueError(f"index file {meta_path} is corrupt: {exc}") from None
        if not ok:
            raise ValueError(f"index file {meta_path} does not describe a BoxIndex")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"index {folder} has format version {meta.get('version')}; this code reads "
                             f"{FORMAT_VERSION} (rebuild it)")
        try:
            n, d = int(meta["n_items"]), int(meta["n_features"])
            subsets = check_subsets(meta["subsets"], d)
            leaf_size, segment_size = int(meta["leaf_size"]), int(meta["segment_size"])
            _check_params(leaf_size, segment_size)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"index file {meta_path} is corrupt: {exc}") from None
        if codes.shape != (n, d):
            raise ValueError(f"index {folder} was built for codes of shape {(n, d)}; got {codes.shape}")
        n_bounds = layout(n, [len(s) for s in subsets], leaf_size, segment_size).n_bounds
        sums = meta.get("sha256")
        if not isinstance(sums, dict) or set(sums) != set(_FILES):
            raise ValueError(f"index file {meta_path} lists no checksums (rebuild the index)")
        if sum(os.path.getsize(folder / name) for name in _FILES if (folder / name).is_file()) <= HASH_ON_OPEN_MAX_BYTES:
            for name in _FILES:  # flipped bytes of the right size would give wrong answers silently
                if (folder / name).is_file() and sha256_file(folder / name) != sums[name]:
                    raise ValueError(f"index file {folder / name} does not match its checksum (corrupt): "
                                     f"delete {folder} to rebuild it")
        perm = _load_npy(folder, "perm.npy", (len(subsets), n), np.uint16)
        bounds = _load_npy(folder, "bounds.npy", (n_bounds,), np.uint8)
        sample = _load_npy(folder, "sample.npy", (min(n, SAMPLE_SIZE),), np.int64)
        if sample.shape[0] and (sample.min() < 0 or sample.max() >= n):
            raise ValueError(f"index file {folder / 'sample.npy'} is corrupt: row ids out of range")
        # plain ndarray views of the memory maps (numba types them as ordinary arrays; no copy)
        return cls(codes, subsets, leaf_size, segment_size, np.asarray(perm), np.asarray(bounds),
                   np.asarray(sample), folder=folder,
                   loaded=True, build_s=float(meta.get("build_s", 0.0)))

    # ---- size ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the index itself (permutations, node bounds, planner sample), not the codes."""
        return int(self.perm.nbytes + self.bounds.nbytes + self.sample.nbytes)

    @property
    def bytes_per_item(self) -> float:
        return self.nbytes / self.codes.shape[0]

    # ---- search -------------------------------------------------------------------------------

    def _box_subsets(self, box_set: BoxSet):
        """Per box: the indexed subset answering it and its bounds in that subset's dim order.

        A box on exactly an indexed subset uses that tree; a box on fewer dims may use any indexed
        subset containing them (its other dims unconstrained). Returns None if some box has none.
        """
        n_boxes = box_set.n_boxes
        box_sub = np.zeros(n_boxes, np.int64)
        qlo = np.zeros((n_boxes, MAX_BOX_DIMS), np.uint8)
        qhi = np.full((n_boxes, MAX_BOX_DIMS), 255, np.uint8)
        for b in range(n_boxes):
            k = int(box_set.ndims[b])
            dims = [int(v) for v in box_set.dims[b, :k]]
            s = self._subset_pos.get(tuple(sorted(dims)))
            if s is None:
                s = next((i for i, sub in enumerate(self.subsets) if set(dims) <= set(sub)), None)
                if s is None:
                    return None
            pos = {d: j for j, d in enumerate(self.subsets[s])}
            box_sub[b] = s
            for j, d in enumerate(dims):
                # a dim repeated within a box narrows to the intersection of its ranges
                qlo[b, pos[d]] = max(qlo[b, pos[d]], box_set.low[b, j])
                qhi[b, pos[d]] = min(qhi[b, pos[d]], box_set.high[b, j])
        return box_sub, qlo, qhi

    def search(self, model, method: str = "auto") -> SearchResult:
        """All catalog ids the model (fitted model or BoxSet) calls positive, ranked like the reference.

        ``method``: ``"index"`` (raises ``ValueError`` when a box's dims are not indexed),
        ``"scan"``, or ``"auto"`` (the module doc's planner: index when every box is indexed, the
        weighted estimated selectivity :func:`planned_cost` is at most ``self.auto_threshold`` and
        the probe's rows are at most ``PROBE_MAX_ROWS``). ``stats``: method, selectivity (estimated
        fraction of rows inside any box), est_rows_frac (summed over boxes), est_cost (the planned
        cost; inf when some box is not indexed), probe_rows_frac (rows the trees would check or
        emit, as a fraction of the catalog; nan when not probed), n_boxes,
        n_estimators, nodes_visited, leaves_visited, rows_checked, rows_emitted, plan_s, query_s,
        score_s, total_s, count.
        """
        t0 = time.perf_counter()
        if method not in ("auto", "index", "scan"):
            raise ValueError(f"method must be 'auto', 'index' or 'scan'; got {method!r}")
        box_set = BoxSet.from_model(model)
        codes = self.codes
        check_box_set(box_set, codes.shape[1])
        mapping = self._box_subsets(box_set)
        if method == "index" and mapping is None:
            raise ValueError("method='index' needs every box on an indexed feature subset; some box is not "
                             "(use method='scan' or 'auto')")
        frac, union = _sample_fractions(self._sample_codes, box_set.dims, box_set.ndims,
                                        box_set.low, box_set.high)
        est = float(frac.sum())
        cost = planned_cost(frac, [len(self.subsets[s]) for s in mapping[0]]) if mapping is not None else np.inf
        probe = np.nan
        if method == "auto":
            method = "scan"
            if self._layout.n_segments < PROBE_MIN_SEGMENTS:
                method = "index" if cost <= min(self.auto_threshold, SMALL_AUTO_THRESHOLD) else "scan"
            elif cost <= self.auto_threshold:
                step = self._layout.n_segments // PROBE_SEGMENTS
                counters = self._query(box_set, *mapping, seg_step=step)[2]
                probe = float(counters[2] + counters[3]) * step / codes.shape[0]
                method = "index" if probe <= PROBE_MAX_ROWS else "scan"
        stats = {"method": method, "selectivity": float(union), "est_rows_frac": est, "est_cost": cost,
                 "probe_rows_frac": probe, "n_boxes": box_set.n_boxes,
                 "n_estimators": box_set.n_estimators, "nodes_visited": 0, "leaves_visited": 0,
                 "rows_checked": 0, "rows_emitted": 0}
        rk = ranking(box_set)
        t1 = time.perf_counter()
        if method == "scan":
            hits = scan_hits(codes, box_set, rk, thread_scratch())
            stats["rows_checked"] = int(codes.shape[0])
        else:
            ids, votes, counters = self._query(box_set, *mapping)
            order = np.argsort(ids)  # the trees give ids in no order within a segment
            ids, votes = ids[order], votes[order]
            hits = hits_from_arrays(ids, hit_keys(codes, ids, votes, box_set, rk), rk.values.shape[0])
            stats.update(nodes_visited=int(counters[0]), leaves_visited=int(counters[1]),
                         rows_checked=int(counters[2]), rows_emitted=int(counters[3]))
        hits = apply_post_trees(model, codes, hits, rk.values.shape[0])
        t2 = time.perf_counter()
        ids, scores = rank_hits(hits, rk.values)
        t3 = time.perf_counter()
        stats.update(count=int(ids.shape[0]), plan_s=t1 - t0, query_s=t2 - t1, score_s=t3 - t2, total_s=t3 - t0)
        return SearchResult(ids, scores, stats)

    def _query(self, box_set: BoxSet, box_sub, qlo, qhi, seg_step: int = 1):
        """(ids, votes, counters summed) of the positives by tree descent (:func:`~.kdtree.query_trees`;
        every ``seg_step``-th segment only: the planner's probe)."""
        return query_trees(self.codes, self.perm, self.bounds, self._layout, self._sub_dims, self._sub_k,
                           self.leaf_size, self.segment_size, box_sub, qlo, qhi,
                           estimator_starts(box_set.estimator, box_set.n_estimators), box_set.min_votes,
                           *thread_scratch().rows(self.codes.shape[0]), seg_step=seg_step)
