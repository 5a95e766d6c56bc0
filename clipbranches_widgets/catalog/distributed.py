"""A sharded catalog served by a Dask cluster: every worker answers for the shards it holds.

::

    from dask.distributed import Client
    from clipbranches_widgets.catalog.distributed import open_distributed
    from clipbranches_widgets.session import SearchSession

    catalog = open_distributed("/shared/catalogs/big", Client("tcp://scheduler:8786"))
    session = SearchSession(catalog)      # unchanged: a session uses only the query API

Where things run
----------------
* The catalog must sit on a filesystem that the client and every worker read at the SAME path
  (NFS, Lustre, a cloud filesystem mount, or one machine's disk for a ``LocalCluster``). The client
  reads only the top-level manifest and, for text and picture queries, the encoder files; the
  shards (codes, items, tiles) are read by the workers alone. Workers need this package, the same
  version, importable.
* Shards are given to the workers round robin over their sorted addresses when the catalog opens.
  Each worker opens its shards once (memory-mapped and checked against the manifest, as
  :class:`~.sharded.ShardedCatalog` does) and keeps them in its :class:`ShardHost` worker plugin,
  keyed by catalog path and fingerprint, so two catalogs (or two versions of one) never mix.
* A model is fitted where the session is (the marks are there); ``apply(model)`` pickles it once
  and sends it inline with ONE small task per worker, which answers every shard it holds with
  :func:`~clipbranches_widgets.engine.apply_model`; the client merges the per-shard answers with
  :func:`~clipbranches_widgets.engine.merge_results` and the shard offsets. Nearest neighbours
  likewise: a top-k per shard on the workers, :func:`~.sharded.merge_top_k` on the client. The
  answers are identical to a local :class:`~.sharded.ShardedCatalog`'s and to one folder's.
* ``rows``, ``items_of`` and tiles run on the workers holding the ids' shards too, although the
  client could read the files: opening a shard reads its whole items table and checks its codes,
  and a session's random negatives touch every shard, so reading locally would put the whole
  catalog in the client's memory. A call costs one Dask round trip (15-45 ms on a busy 2-core
  machine: benchmarks/results/dask.md).

Pitfalls this module avoids (the reasons are in the comments where it matters)
-------------------------------------------------------------------------------
* No array of codes ever enters the task graph: a task carries the manifest (a few KB), shard
  numbers, the query or ids, and the pickled model (KB). Results (ids and scores) come back.
* Nothing compiled by Numba is pickled: the task functions are module-level and imported by the
  workers, whose ``@njit`` kernels load from Numba's cache (a pickled gufunc does not load in
  another process: dask/distributed#7929, numba#4314).
* Memory-mapped pages count as a worker's memory: Dask's monitor reads the process RSS, which
  includes the file pages a scan touched, and pauses a worker at 80% of its limit and restarts it
  at 95%. After each pass over a shard (and each read of scattered rows, which maps most of the
  file) its pages are dropped from the worker's resident set (``madvise(MADV_DONTNEED)``); they
  stay in the page cache, so the next pass maps them again without reading the disk.
* Threads: Dask starts workers with OpenMP/BLAS at one thread (it expects one task per thread).
  A task here is one per worker, so it sets Numba, OpenMP and BLAS to the worker's ``nthreads``,
  and a worker runs one such task at a time.

Failures
--------
A shard a worker cannot open raises ValueError naming the worker, the shard and the cause (at
open: every worker opens its shards then). A worker that leaves the cluster while answering raises
RuntimeError naming it and its shards (noticed within ``LIVENESS_POLL_S``); the next call hands its
shards to the workers present (the others keep theirs). A worker that does not answer within
``timeout`` seconds raises TimeoutError naming it and its shards. Unfinished tasks are cancelled.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import pickle
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import cloudpickle
import numpy as np
from distributed import WorkerPlugin, get_worker

from .base import check_ids
from .sharded import ShardedCatalog, merge_top_k

#: the name the shard host is registered under on every worker
PLUGIN_NAME = "clipbranches-shard-host"
#: seconds a call waits for the workers before a TimeoutError (opening a catalog waits as long)
DEFAULT_TIMEOUT_S = 120.0
#: while waiting, how often the client checks that the workers it waits for are still there
LIVENESS_POLL_S = 0.5


class CatalogSpec(NamedTuple):
    """What a worker needs to open a catalog's shards itself (sent with every task; a few KB)."""

    path: str
    fingerprint: str
    manifest: dict
    verify: str
    image_root: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.path, self.fingerprint


# -- the client side --------------------------------------------------------------------------

class DaskCatalog(ShardedCatalog):
    """A sharded catalog whose shards live on Dask workers (see the module docstring).

    Created by :func:`open_distributed`. Attributes as :class:`~.sharded.ShardedCatalog`, plus
    ``client`` and ``timeout`` (seconds a call waits for the workers; settable). The query API
    (``rows``, ``items_of``, ``search_vectors``, ``apply``, tiles) runs on the workers;
    :meth:`~.sharded.ShardedCatalog.shard` still opens a shard here, on the client, and no query
    calls it.
    """

    def __init__(self, path, manifest: dict, client, *, verify: str = "auto", image_root=None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(path, manifest, verify=verify, image_root=image_root)
        self.client = client
        self.timeout = float(timeout)
        self._spec = CatalogSpec(str(self.path), self.fingerprint, manifest, verify,
                                 None if image_root is None else str(image_root))
        self._plan_lock = threading.Lock()
        self._holders: dict[str, list[int]] = {}  # worker address -> shard numbers it holds

    def __repr__(self) -> str:
        return (f"DaskCatalog({str(self.path)!r}, {self.n_items:,} items x {self.dim} dims, {self.n_shards} shards "
                f"on {len(self._holders)} workers)")

    # -- which worker holds what --------------------------------------------------------------

    def assignment(self) -> dict[str, list[str]]:
        """``{worker address: [shard names]}``: who answers for which shards (refreshed first)."""
        return {w: [self.shard_names[j] for j in shards] for w, shards in self._plan().items()}

    def _plan(self) -> dict[str, list[int]]:
        """The holders of the shards, after handing the shards of departed workers to those present."""
        with self._plan_lock:
            present = list(self.client.scheduler_info()["workers"])
            if not present:
                raise RuntimeError(f"the Dask cluster behind {self.client} has no workers to serve catalog "
                                   f"{self.path}; start some (or wait: client.wait_for_workers(n))")
            if not self._holders or not set(self._holders) <= set(present):
                self._holders = assign_shards(self.n_shards, present, self._holders)
            return {w: list(shards) for w, shards in self._holders.items() if shards}

    def worker_stats(self) -> dict[str, dict]:
        """Per worker, for this catalog: ``opened`` (shard name -> times it was opened there),
        ``holding`` (shards open now), ``nthreads`` and ``rss_bytes`` (the worker process's resident
        memory). For checks and benchmarks: each shard should be opened once, by its holder."""
        return self.client.run(_stats_on_worker, self._spec.path, self._spec.fingerprint)

    def close(self) -> None:
        """Let every worker drop this catalog's shards (their memory maps and items tables).
        The catalog stays usable: the next call opens the shards again."""
        with self._plan_lock:
            self.client.run(_forget_on_worker, self._spec.path, self._spec.fingerprint)
            self._holders = {}

    def __enter__(self) -> "DaskCatalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running tasks ----------------------------------------------------------------------

    def _run(self, what: str, fn, work: dict[str, tuple]) -> dict[str, object]:
        """``fn(spec, shards, *args)`` on each worker of ``work`` (``{address: (shards, *args)}``),
        one task each, pinned to that worker; the answers by address.

        Waits at most ``timeout`` seconds; checks every LIVENESS_POLL_S that the workers still
        waited for are in the cluster (a task pinned to a worker that has gone would wait forever).
        """
        token = uuid.uuid4().hex[:12]
        futures = {address: self.client.submit(fn, self._spec, *args, key=f"clipbranches-{what}-{token}-{i}",
                                               workers=[address], allow_other_workers=False, pure=False)
                   for i, (address, args) in enumerate(work.items())}
        deadline = time.monotonic() + self.timeout
        answers = {}
        try:
            for address, future in futures.items():
                while address not in answers:
                    try:
                        answers[address] = future.result(timeout=max(0.0, min(LIVENESS_POLL_S,
                                                                              deadline - time.monotonic())))
                    except TimeoutError:
                        if future.done():  # finished just now: its answer, or its own error raised here
                            answers[address] = future.result()
                        else:
                            self._check_waiting(what, futures, work, deadline)
            return answers
        finally:
            pending = [f for f in futures.values() if not f.done()]
            if pending:
                self.client.cancel(pending)

    def _check_waiting(self, what: str, futures: dict, work: dict, deadline: float) -> None:
        """Raise if a worker still waited for has left the cluster, or the time is up."""
        waiting = [a for a, f in futures.items() if not f.done()]
        present = self.client.scheduler_info()["workers"]
        for address in waiting:
            if address not in present:
                raise RuntimeError(f"worker {address}, holding {self._names(work[address][0])} of catalog "
                                   f"{self.path}, left the Dask cluster while answering {what}; the next call "
                                   f"hands its shards to the workers still there")
        if time.monotonic() >= deadline:
            address = waiting[0]
            raise TimeoutError(f"worker {address}, holding {self._names(work[address][0])} of catalog {self.path}, "
                               f"did not answer {what} within {self.timeout:g} s (busy with other tasks, stuck, or "
                               f"overloaded); see its log, or raise the catalog's timeout")

    def _names(self, shards) -> str:
        return ", ".join(self.shard_names[j] for j in shards)

    def _on_holders(self, what: str, fn, touched) -> list:
        """``fn`` on the holders of the shards in ``touched`` (``[(shard, positions, local rows)]``);
        ``[(shard, positions, fn's answer for that shard)]`` in the order of ``touched``."""
        holder = {j: w for w, shards in self._plan().items() for j in shards}
        work: dict[str, tuple[list, list]] = {}
        for j, _, local in touched:
            shards, rows = work.setdefault(holder[j], ([], []))
            shards.append(j)
            rows.append(local)
        answers = {}
        for address, per_shard in self._run(what, fn, work).items():
            answers.update(zip(work[address][0], per_shard))
        return [(j, where, answers[j]) for j, where, _ in touched]

    def _open_shards(self) -> None:
        """Every worker opens the shards it holds now: errors surface at open, not at the first query."""
        self._run("open", _open_on_worker, {w: (shards,) for w, shards in self._plan().items()})

    # -- the query API ----------------------------------------------------------------------

    def rows(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.n_items)
        out = np.empty((ids.shape[0], self.dim), np.uint8)
        for _, where, codes in self._on_holders("rows", _rows_on_worker, list(self._by_shard(ids))):
            out[where] = codes
        return out

    def items_of(self, ids):
        import pyarrow as pa

        ids = check_ids(ids, self.n_items)
        if ids.shape[0] == 0:  # shard 0's columns and no rows, as ShardedCatalog answers
            return self._on_holders("items", _items_on_worker, [(0, None, np.zeros(0, np.int64))])[0][2]
        pieces = self._on_holders("items", _items_on_worker, list(self._by_shard(ids)))
        table = pa.concat_tables([t for _, _, t in pieces], promote_options="default")
        table = table.take(np.argsort(np.concatenate([where for _, where, _ in pieces]), kind="stable"))
        return table.set_column(table.column_names.index("id"), "id", pa.array(ids))

    def search_vectors(self, queries, k: int = 60, *, exclude=None):
        excluded = np.zeros(0, np.int64) if exclude is None else check_ids(exclude, self.n_items)
        queries = np.asarray(queries, np.float32)  # what each shard's search reads; sent once per worker
        work = {}
        for address, shards in self._plan().items():
            local_excl = []
            for j in shards:
                lo, hi = self.offsets[j], self.offsets[j + 1]
                mine = excluded[(excluded >= lo) & (excluded < hi)] - lo
                local_excl.append(mine if mine.size else None)
            work[address] = (shards, queries, k, local_excl)
        parts = {}
        for address, per_shard in self._run("search", _search_on_worker, work).items():
            for j, (ids, scores) in zip(work[address][0], per_shard):
                parts[j] = (ids + self.offsets[j], scores)
        return merge_top_k([parts[j] for j in range(self.n_shards)], k)

    def apply(self, model):
        from ..engine import merge_results

        # pickled once, here, and sent inline with each worker's task: a fitted model is a few KB
        # (a 25-model ensemble ~30 KB, a 100-tree forest ~200 KB), less than a scatter's extra
        # round trip costs (benchmarks/results/dask.md). cloudpickle, so a model class defined in a
        # notebook travels too.
        payload = cloudpickle.dumps(model)
        plan = self._plan()
        parts = {}
        for address, per_shard in self._run("apply", _apply_on_worker,
                                             {w: (shards, payload) for w, shards in plan.items()}).items():
            parts.update(zip(plan[address], per_shard))
        return merge_results((parts[j] for j in range(self.n_shards)), self.offsets[:-1])

    @property
    def thumbnails(self):
        return _WorkerTiles(self)


class _WorkerTiles:
    """Tiles of a DaskCatalog: read by the worker holding the item's shard (one round trip each)."""

    def __init__(self, catalog: DaskCatalog):
        self.catalog = catalog

    @property
    def pictures(self) -> bool:
        return self.catalog._on_holders("tiles", _pictures_on_worker, [(0, None, None)])[0][2]

    def thumbnail(self, i: int) -> bytes:
        (j,), (local,) = self.catalog.locate([i])
        return self.catalog._on_holders("tiles", _tile_on_worker, [(int(j), None, int(local))])[0][2]


def assign_shards(n_shards: int, workers, previous: dict | None = None) -> dict[str, list[int]]:
    """Shard numbers per worker address.

    Without ``previous``: round robin over the sorted addresses (shard ``j`` to worker ``j mod W``).
    With it (the workers changed): shards stay with the workers still present and only those of
    departed workers move, each to the worker holding fewest (then the lowest address), so no
    worker reopens a shard it already holds.
    """
    workers = sorted(workers)
    if not previous:
        return {w: list(range(i, n_shards, len(workers))) for i, w in enumerate(workers)}
    plan = {w: list(previous.get(w, [])) for w in workers}
    for j in sorted(j for w, shards in previous.items() if w not in plan for j in shards):
        plan[min(workers, key=lambda w: (len(plan[w]), w))].append(j)
    return plan


def open_distributed(path, client, *, verify: str = "auto", image_root=None,
                     timeout: float = DEFAULT_TIMEOUT_S) -> DaskCatalog:
    """Open a sharded catalog whose queries run on the workers of a Dask ``client``.

    ``path`` must be readable at the same place by the client and every worker (a shared
    filesystem). The client checks the top-level manifest and files (as ``open_catalog`` does);
    then every worker opens and checks the shards it is given, so a missing or damaged shard raises
    a ValueError naming it and the worker here. verify / image_root: as ``open_catalog`` (an
    image_root must be readable by the workers). timeout: seconds any call waits for the workers.
    """
    from .folder import open_catalog

    if getattr(client, "asynchronous", False):
        raise ValueError("open_distributed needs a synchronous dask.distributed Client "
                         "(Client(address), not Client(..., asynchronous=True))")
    # absolute: the workers resolve the path themselves, from their own working directory
    local = open_catalog(Path(path).absolute(), verify=verify, image_root=image_root)  # opens no shard
    if not isinstance(local, ShardedCatalog):
        raise ValueError(f"{path} is a one-folder catalog; Dask workers serve sharded catalogs (write it with "
                         f"ShardedCatalogWriter), or open it without a client")
    responses = client.register_plugin(ShardHost(), name=PLUGIN_NAME) or {}
    failed = {w: r for w, r in responses.items() if isinstance(r, dict) and r.get("status") != "OK"}
    if failed:
        worker, response = next(iter(failed.items()))
        raise RuntimeError(f"worker {worker} could not set up the shard host ({response.get('exception_text')}); "
                           f"is clipbranches_widgets, the client's version, installed there?")
    catalog = DaskCatalog(local.path, local.manifest, client, verify=verify, image_root=image_root, timeout=timeout)
    catalog._open_shards()
    return catalog


# -- the worker side --------------------------------------------------------------------------

class ShardHost(WorkerPlugin):
    """On each worker: the sharded catalogs it serves, each opened once, and the shards it opened.

    Registered by :func:`open_distributed` (idempotent: a second catalog keeps the first's
    state). Holding the state in a plugin rather than a module global keeps it per worker even when
    several workers share a process (``processes=False``), and drops it when the worker closes.
    """

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker) -> None:
        self.worker = worker
        self.catalogs: dict[tuple[str, str], tuple[ShardedCatalog, set]] = {}  # spec.key -> (catalog, open shards)
        self.opened: collections.Counter = collections.Counter()  # (path, fingerprint, shard name) -> opens
        self._lock = threading.Lock()  # guards the two dicts (and opening)
        self._work_lock = threading.Lock()  # one pass over shards at a time: each uses every thread

    def teardown(self, worker) -> None:
        self.catalogs.clear()

    def shard(self, spec: CatalogSpec, j: int):
        """Shard ``j`` of ``spec``'s catalog, opened and checked on first use; a ValueError names
        the worker and the shard when it cannot be opened."""
        with self._lock:
            if spec.key not in self.catalogs:
                self.catalogs[spec.key] = (ShardedCatalog(Path(spec.path), spec.manifest, verify=spec.verify,
                                                          image_root=spec.image_root), set())
            catalog, open_shards = self.catalogs[spec.key]
            if j not in open_shards:
                try:
                    catalog.shard(j)
                except (ValueError, OSError) as exc:
                    raise ValueError(f"worker {self.worker.address} could not open shard {catalog.shard_names[j]} "
                                     f"of catalog {spec.path}: {exc}") from None
                open_shards.add(j)
                self.opened[(spec.path, spec.fingerprint, catalog.shard_names[j])] += 1
            return catalog.shard(j)

    @contextlib.contextmanager
    def working(self):
        """A pass over this worker's shards: alone, with Numba, OpenMP and BLAS at ``nthreads``
        (Dask starts workers with OMP/BLAS at 1 thread; one task per worker has to use them all)."""
        import numba
        from threadpoolctl import threadpool_limits

        n = max(1, min(int(self.worker.state.nthreads), numba.config.NUMBA_NUM_THREADS))
        with self._work_lock, threadpool_limits(limits=n):
            numba.set_num_threads(n)  # per calling thread: set in the task's own thread
            yield

    def forget(self, path: str, fingerprint: str) -> None:
        with self._lock:
            self.catalogs.pop((path, fingerprint), None)

    def stats(self, path: str, fingerprint: str) -> dict:
        import psutil

        with self._lock:
            catalog, open_shards = self.catalogs.get((path, fingerprint), (None, set()))
            return {"opened": {name: n for (p, f, name), n in self.opened.items() if (p, f) == (path, fingerprint)},
                    "holding": sorted(catalog.shard_names[j] for j in open_shards) if catalog else [],
                    "nthreads": int(self.worker.state.nthreads),
                    "rss_bytes": int(psutil.Process().memory_info().rss)}


def release_pages(array) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set.

    They stay in the page cache: touching them again maps them back without disk reads. Without
    this, Dask counts every page a scan touched as the worker's memory (module docstring).
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(base, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _host() -> ShardHost:
    worker = get_worker()
    host = worker.plugins.get(PLUGIN_NAME)
    if host is None:
        raise RuntimeError(f"worker {worker.address} has no {PLUGIN_NAME} plugin; open catalogs with "
                           f"open_distributed, which registers it on every worker")
    return host


# Task functions: module-level, so a task pickles them by name and the worker imports this module
# (and the engine's Numba kernels from their cache) instead of receiving compiled code.

def _open_on_worker(spec: CatalogSpec, shards: list) -> None:
    host = _host()
    for j in shards:
        host.shard(spec, j)


def _apply_on_worker(spec: CatalogSpec, shards: list, payload: bytes) -> list:
    from ..engine import apply_model

    host = _host()
    with host.working():
        model = pickle.loads(payload)
        answers = []
        for j in shards:
            codes = host.shard(spec, j).codes
            # the fused scan, as ShardedCatalog.apply (no per-shard box index: 216 B/item)
            answers.append(apply_model(codes, model))
            release_pages(codes)
        return answers


def _search_on_worker(spec: CatalogSpec, shards: list, queries, k, excluded: list) -> list:
    host = _host()
    with host.working():
        answers = []
        for j, exclude in zip(shards, excluded):
            shard = host.shard(spec, j)
            answers.append(shard.search_vectors(queries, k=k, exclude=exclude))
            release_pages(shard.codes)
        return answers


def _rows_on_worker(spec: CatalogSpec, shards: list, local_rows: list) -> list:
    host = _host()
    answers = []
    for j, rows in zip(shards, local_rows):
        codes = host.shard(spec, j).codes
        answers.append(np.ascontiguousarray(codes[rows]))
        # a few hundred scattered rows map most of the file (the kernel maps the cached pages
        # around each fault): measured, 1,000 rows of a 2.5M-row shard left 75 of its 76 MiB resident
        release_pages(codes)
    return answers


def _items_on_worker(spec: CatalogSpec, shards: list, local_rows: list) -> list:
    host = _host()
    return [host.shard(spec, j).items_of(rows) for j, rows in zip(shards, local_rows)]


def _tile_on_worker(spec: CatalogSpec, shards: list, local_rows: list) -> list:
    host = _host()
    return [host.shard(spec, j).thumbnail(row) for j, row in zip(shards, local_rows)]


def _pictures_on_worker(spec: CatalogSpec, shards: list, _rows: list) -> list:
    host = _host()
    return [host.shard(spec, j).thumbnails.pictures for j in shards]


def _stats_on_worker(path: str, fingerprint: str, dask_worker=None) -> dict:
    host = dask_worker.plugins.get(PLUGIN_NAME)
    return {} if host is None else host.stats(path, fingerprint)


def _forget_on_worker(path: str, fingerprint: str, dask_worker=None) -> None:
    host = dask_worker.plugins.get(PLUGIN_NAME)
    if host is not None:
        host.forget(path, fingerprint)
