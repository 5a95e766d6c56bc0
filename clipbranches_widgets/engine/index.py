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
counted and thresholded at ``min_votes``; scores come from the scan module's shared kernel, so
index and scan results are identical (ids, float64 scores, order).

``method="auto"`` estimates from a fixed sample of catalog rows which fraction of the catalog the
boxes select (summed over boxes: each box is a separate descent) and uses the index when that sum
is at most ``auto_threshold``, else the fused scan.

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

import numba
import numpy as np
from numba import njit, prange

from .._atomic import sha256_file, staging_dir
from ._validation import check_codes, check_subsets
from .boxes import BoxSet, rank
from .result import SearchResult
from .scan import check_box_set_dims, scan_votes, score_hits

FORMAT_VERSION = 2  # 2: meta.json holds each file's sha256
_FORMAT_NAME = "clipbranches.BoxIndex"
_FILES = ("perm.npy", "bounds.npy", "sample.npy")
#: index files up to this total size are checked against their checksums on open (larger: sizes only)
HASH_ON_OPEN_MAX_BYTES = 512 * 2**20

#: rows of the planner's fixed random sample
SAMPLE_SIZE = 4096
#: ``auto`` uses the index when the boxes' summed estimated selectivity is at most this fraction
#: of the catalog; above it, the scan (which always reads everything once) is cheaper. Calibrated
#: on benchmarks/results/engine.md: trained boxes constrain 4-8 dims each, and a box selecting
#: 1.3% of a 10M catalog still makes the trees test ~25% of the rows by random access, so the
#: index lost to the scan at every measured selectivity >= 1.3%; it wins on narrow boxes only.
DEFAULT_AUTO_THRESHOLD = 0.005


# ---------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, nogil=True)
def _tree_depth(m, leaf_size):
    """Smallest depth d with ``m <= leaf_size * 2**d`` (leaves then hold <= leaf_size rows)."""
    d = 0
    while m > (leaf_size << d):
        d += 1
    return d


@njit(cache=True, nogil=True)
def _build_one(keys, idx, tkeys, tidx, k, depth, node_lo, node_hi, bounds, off0):
    """Build one tree in place: ``keys`` holds each row's k subset bytes packed into a uint64.

    Level by level, every node records the tight min/max of its points per dim, and internal nodes
    are split on the dim with the largest spread by a stable counting sort (O(len) per node) into
    the other buffer; the left child gets the ``len // 2`` smallest. Returns the buffer holding the
    final row order (``idx`` or ``tidx``).
    """
    hist = np.empty(257, np.int64)
    n_internal = (1 << depth) - 1
    level_start = 0
    for level in range(depth + 1):
        level_end = 2 * level_start + 1
        for node in range(level_start, level_end):
            lo = node_lo[node]
            hi = node_hi[node]
            off = off0 + node * 2 * k
            best_axis = 0
            best_spread = -1
            for j in range(k):
                sh = np.uint64(8 * j)
                mn = 255
                mx = 0
                for i in range(lo, hi):
                    v = np.int64((keys[i] >> sh) & np.uint64(255))
                    mn = min(mn, v)
                    mx = max(mx, v)
                bounds[off + j] = mn
                bounds[off + k + j] = mx
                if mx - mn > best_spread:
                    best_spread = mx - mn
                    best_axis = j
            if node < n_internal:
                sh = np.uint64(8 * best_axis)
                hist[:] = 0
                for i in range(lo, hi):
                    hist[np.int64((keys[i] >> sh) & np.uint64(255)) + 1] += 1
                hist[0] = lo
                for v in range(1, 257):
                    hist[v] += hist[v - 1]
                for i in range(lo, hi):
                    v = np.int64((keys[i] >> sh) & np.uint64(255))
                    p = hist[v]
                    hist[v] = p + 1
                    tkeys[p] = keys[i]
                    tidx[p] = idx[i]
        if level < depth:
            keys, tkeys = tkeys, keys
            idx, tidx = tidx, idx
        level_start = level_end
    return idx


@njit(cache=True, nogil=True)
def _node_ranges(m, depth):
    """Row range [lo, hi) of every heap-numbered node of the implicit tree over ``m`` rows."""
    n_nodes = (1 << (depth + 1)) - 1
    node_lo = np.zeros(n_nodes, np.int64)
    node_hi = np.zeros(n_nodes, np.int64)
    node_hi[0] = m
    for node in range((1 << depth) - 1):
        mid = node_lo[node] + (node_hi[node] - node_lo[node]) // 2
        node_lo[2 * node + 1] = node_lo[node]
        node_hi[2 * node + 1] = mid
        node_lo[2 * node + 2] = mid
        node_hi[2 * node + 2] = node_hi[node]
    return node_lo, node_hi


@njit(parallel=True, cache=True, nogil=True)
def _build_all(codes, sub_dims, sub_k, segment_size, leaf_size, n_nodes_max, bounds_offset, perm, bounds):
    """Build every (subset, segment) tree; prange over segments (each thread works in cache)."""
    n = codes.shape[0]
    n_seg = (n + segment_size - 1) // segment_size
    for g in prange(n_seg):
        base = g * segment_size
        m = min(segment_size, n - base)
        depth = _tree_depth(m, leaf_size)
        node_lo, node_hi = _node_ranges(m, depth)
        keys = np.empty(m, np.uint64)
        tkeys = np.empty(m, np.uint64)
        idx = np.empty(m, np.uint16)
        tidx = np.empty(m, np.uint16)
        for s in range(sub_dims.shape[0]):
            k = sub_k[s]
            for i in range(m):
                key = np.uint64(0)
                for j in range(k):
                    key |= np.uint64(codes[base + i, sub_dims[s, j]]) << np.uint64(8 * j)
                keys[i] = key
                idx[i] = i
            off0 = bounds_offset[s] + g * n_nodes_max * 2 * k
            final = _build_one(keys, idx, tkeys, tidx, k, depth, node_lo, node_hi, bounds, off0)
            perm[s, base:base + m] = final


@njit(cache=True, nogil=True)
def _mark(r, stamp_value, stamp, votes, touched, n_touched):
    """Count one estimator's vote for local row ``r`` once; return the new touched-list length."""
    if stamp[r] != stamp_value:
        stamp[r] = stamp_value
        if votes[r] == 0:
            touched[n_touched] = r
            n_touched += 1
        votes[r] += 1
    return n_touched


@njit(parallel=True, cache=True, nogil=True)
def _query_all(codes, perm, bounds, bounds_offset, sub_dims, sub_k, segment_size, leaf_size, n_nodes_max,
               box_sub, qlo, qhi, est_start, min_votes, n_blocks, out_ids, out_votes, seg_count, counters):
    """Answer all boxes on every segment; positives of segment g go to ``out_*[base_g:base_g+count]``.

    ``qlo``/``qhi`` are the box bounds in the order of the box's subset dims (unconstrained dims
    [0, 255]). ``counters[g]``: nodes visited, leaves scanned, rows checked, rows emitted wholesale.
    """
    n = codes.shape[0]
    n_seg = (n + segment_size - 1) // segment_size
    n_est = est_start.shape[0] - 1
    for blk in prange(n_blocks):
        # per-block scratch, reset after each segment only where it was touched
        stamp = np.zeros(segment_size, np.int32)
        votes = np.zeros(segment_size, np.uint16)
        touched = np.empty(segment_size, np.int32)
        stack = np.empty((64, 3), np.int64)
        for g in range(blk, n_seg, n_blocks):
            base = g * segment_size
            m = min(segment_size, n - base)
            depth = _tree_depth(m, leaf_size)
            n_internal = (1 << depth) - 1
            n_touched = 0
            nodes = 0
            leaves = 0
            checked = 0
            emitted = 0
            for e in range(n_est):
                for b in range(est_start[e], est_start[e + 1]):
                    s = box_sub[b]
                    k = sub_k[s]
                    off0 = bounds_offset[s] + g * n_nodes_max * 2 * k
                    top = 0
                    stack[0, 0] = 0
                    stack[0, 1] = 0
                    stack[0, 2] = m
                    top = 1
                    while top > 0:
                        top -= 1
                        node = stack[top, 0]
                        lo = stack[top, 1]
                        hi = stack[top, 2]
                        if lo == hi:
                            continue
                        nodes += 1
                        off = off0 + node * 2 * k
                        disjoint = False
                        inside = True
                        for j in range(k):
                            bmin = bounds[off + j]
                            bmax = bounds[off + k + j]
                            if bmax < qlo[b, j] or bmin > qhi[b, j]:
                                disjoint = True
                                break
                            if bmin < qlo[b, j] or bmax > qhi[b, j]:
                                inside = False
                        if disjoint:
                            continue
                        if inside:
                            emitted += hi - lo
                            for i in range(lo, hi):
                                r = np.int64(perm[s, base + i])
                                if r < m:  # always true for a valid index; guards a damaged file
                                    n_touched = _mark(r, e + 1, stamp, votes, touched, n_touched)
                        elif node >= n_internal:
                            leaves += 1
                            checked += hi - lo
                            for i in range(lo, hi):
                                r = np.int64(perm[s, base + i])
                                if r >= m:
                                    continue
                                ok = True
                                for j in range(k):
                                    x = codes[base + r, sub_dims[s, j]]
                                    if x < qlo[b, j] or x > qhi[b, j]:
                                        ok = False
                                        break
                                if ok:
                                    n_touched = _mark(r, e + 1, stamp, votes, touched, n_touched)
                        else:
                            mid = lo + (hi - lo) // 2
                            stack[top, 0] = 2 * node + 2
                            stack[top, 1] = mid
                            stack[top, 2] = hi
                            stack[top + 1, 0] = 2 * node + 1
                            stack[top + 1, 1] = lo
                            stack[top + 1, 2] = mid
                            top += 2
            count = 0
            for t in range(n_touched):
                r = touched[t]
                if votes[r] >= min_votes:
                    out_ids[base + count] = base + r
                    out_votes[base + count] = votes[r]
                    count += 1
                votes[r] = 0
                stamp[r] = 0
            seg_count[g] = count
            counters[g, 0] = nodes
            counters[g, 1] = leaves
            counters[g, 2] = checked
            counters[g, 3] = emitted


@njit(cache=True, nogil=True)
def _sample_fractions(sample, dims, ndims, low, high):
    """(per-box fraction of sample rows inside the box, fraction inside at least one box)."""
    n = sample.shape[0]
    frac = np.zeros(ndims.shape[0], np.float64)
    any_count = 0
    for i in range(n):
        hit = False
        for b in range(ndims.shape[0]):
            ok = True
            for j in range(ndims[b]):
                x = sample[i, dims[b, j]]
                if x < low[b, j] or x > high[b, j]:
                    ok = False
                    break
            if ok:
                frac[b] += 1.0
                hit = True
        any_count += hit
    return frac / max(n, 1), any_count / max(n, 1)


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


def _layout(n_items: int, subsets, leaf_size: int, segment_size: int):
    """(n_segments, n_nodes_max, bounds_offset per subset, total bounds bytes)."""
    n_seg = -(-n_items // segment_size)
    depth = int(_tree_depth(min(segment_size, n_items), leaf_size))
    n_nodes_max = (1 << (depth + 1)) - 1
    sizes = np.array([len(s) for s in subsets], np.int64) * n_seg * n_nodes_max * 2
    offsets = np.zeros(len(subsets), np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return n_seg, n_nodes_max, offsets, int(sizes.sum())


def _subset_arrays(subsets):
    dims = np.zeros((len(subsets), 8), np.int64)
    k = np.zeros(len(subsets), np.int64)
    for i, s in enumerate(subsets):
        dims[i, :len(s)] = s
        k[i] = len(s)
    return dims, k


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
        self._sub_dims, self._sub_k = _subset_arrays(self.subsets)
        self._n_seg, self._n_nodes_max, self._bounds_offset, _ = _layout(codes.shape[0], self.subsets, leaf_size,
                                                                          segment_size)
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
        if codes_hash is None:
            codes_hash = hash_codes(codes)
        key = _index_key(str(codes_hash), codes.shape, subsets, int(leaf_size), int(segment_size))
        folder = Path(path) / f"boxindex-{key}"
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
    def _build(cls, codes, subsets, leaf_size, segment_size) -> "BoxIndex":
        t0 = time.perf_counter()
        n = codes.shape[0]
        sub_dims, sub_k = _subset_arrays(subsets)
        _, n_nodes_max, offsets, n_bounds = _layout(n, subsets, leaf_size, segment_size)
        perm = np.empty((len(subsets), n), np.uint16)
        bounds = np.zeros(n_bounds, np.uint8)
        _build_all(codes, sub_dims, sub_k, int(segment_size), int(leaf_size), n_nodes_max, offsets, perm, bounds)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, SAMPLE_SIZE), replace=False)).astype(np.int64)
        return cls(codes, subsets, leaf_size, segment_size, perm, bounds, sample, build_s=time.perf_counter() - t0)

    def _meta(self, key: str, codes_hash: str) -> dict:
        return {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "key": key, "codes_hash": codes_hash,
                "n_items": int(self.codes.shape[0]), "n_features": int(self.codes.shape[1]),
                "subsets": [list(s) for s in self.subsets], "leaf_size": self.leaf_size,
                "segment_size": self.segment_size, "n_nodes_max": int(self._n_nodes_max),
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
        _, n_nodes_max, _, n_bounds = _layout(n, subsets, leaf_size, segment_size)
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
        qlo = np.zeros((n_boxes, 8), np.uint8)
        qhi = np.full((n_boxes, 8), 255, np.uint8)
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
        ``"scan"``, or ``"auto"`` (index when the estimated summed selectivity is at most
        ``self.auto_threshold`` and every box is indexed). ``stats``: method, selectivity (estimated
        fraction of rows inside any box), est_rows_frac (summed over boxes), n_boxes,
        n_estimators, nodes_visited, leaves_visited, rows_checked, rows_emitted, plan_s, query_s,
        score_s, total_s, count.
        """
        t0 = time.perf_counter()
        if method not in ("auto", "index", "scan"):
            raise ValueError(f"method must be 'auto', 'index' or 'scan'; got {method!r}")
        box_set = BoxSet.from_model(model)
        codes = self.codes
        check_box_set_dims(box_set, codes.shape[1])
        if box_set.n_estimators > np.iinfo(np.uint16).max:
            raise ValueError(f"at most 65535 estimators are supported; got {box_set.n_estimators}")
        mapping = self._box_subsets(box_set)
        if method == "index" and mapping is None:
            raise ValueError("method='index' needs every box on an indexed feature subset; some box is not "
                             "(use method='scan' or 'auto')")
        frac, union = _sample_fractions(self._sample_codes, box_set.dims, box_set.ndims,
                                        box_set.low, box_set.high)
        est = float(frac.sum())
        if method == "auto":
            method = "index" if mapping is not None and est <= self.auto_threshold else "scan"
        stats = {"method": method, "selectivity": float(union), "est_rows_frac": est, "n_boxes": box_set.n_boxes,
                 "n_estimators": box_set.n_estimators, "nodes_visited": 0, "leaves_visited": 0,
                 "rows_checked": 0, "rows_emitted": 0}
        t1 = time.perf_counter()
        if method == "scan":
            ids, votes = scan_votes(codes, box_set)
            stats["rows_checked"] = int(codes.shape[0])
        else:
            ids, votes, counters = self._query(box_set, *mapping)
            stats.update(nodes_visited=int(counters[0]), leaves_visited=int(counters[1]),
                         rows_checked=int(counters[2]), rows_emitted=int(counters[3]))
        refine = getattr(model, "refine_hits", None)  # per-box post trees of a DecisionBranches
        if refine is not None:
            keep = refine(codes, ids)
            ids, votes = ids[keep], votes[keep]
        t2 = time.perf_counter()
        ids, scores = rank(ids, score_hits(codes, ids, votes, box_set))
        t3 = time.perf_counter()
        stats.update(count=int(ids.shape[0]), plan_s=t1 - t0, query_s=t2 - t1, score_s=t3 - t2, total_s=t3 - t0)
        return SearchResult(ids, scores, stats)

    def _query(self, box_set: BoxSet, box_sub, qlo, qhi):
        """(ids, votes, counters summed) of the positives by tree descent."""
        n = self.codes.shape[0]
        n_seg = self._n_seg
        est_start = np.searchsorted(box_set.estimator, np.arange(box_set.n_estimators + 1)).astype(np.int64)
        n_blocks = max(1, min(n_seg, 4 * numba.get_num_threads()))
        out_ids = np.empty(n, np.int64)  # segment g writes its positives at its own rows: no race
        out_votes = np.empty(n, np.uint16)
        seg_count = np.zeros(n_seg, np.int64)
        counters = np.zeros((n_seg, 4), np.int64)
        _query_all(self.codes, self.perm, self.bounds, self._bounds_offset, self._sub_dims, self._sub_k,
                   self.segment_size, self.leaf_size, self._n_nodes_max, box_sub, qlo, qhi, est_start,
                   box_set.min_votes, n_blocks, out_ids, out_votes, seg_count, counters)
        starts = np.arange(n_seg) * self.segment_size
        take = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, seg_count)]) if n_seg else np.zeros(0)
        take = take.astype(np.int64)
        return out_ids[take], out_votes[take], counters.sum(axis=0)
