"""A sharded catalog served by Dask workers answers exactly as the local catalog and one folder do;
workers open their own shards (codes never travel), and failures name the shard and the worker.

One LocalCluster of 2 worker processes (1 thread each, 127.0.0.1 only) for the module.
"""

import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

distributed = pytest.importorskip("distributed")

from sklearn.ensemble import RandomForestClassifier  # noqa: E402

from clipbranches_widgets.catalog import ShardedCatalogWriter, write_catalog  # noqa: E402
from clipbranches_widgets.catalog.distributed import DaskCatalog, assign_shards, open_distributed  # noqa: E402
from clipbranches_widgets.engine import BranchEnsemble, DecisionBranches, LinearCodes  # noqa: E402
from clipbranches_widgets.testing.synthetic import clustered_catalog  # noqa: E402
from clipbranches_widgets.session import SearchSession  # noqa: E402

N, SHARD = 5000, 1000


@pytest.fixture(scope="module")
def client():
    # Dask's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in THIS process's environment when it spawns
    # workers (distributed.nanny.pre-spawn-environ) and never unsets them: torch, started later in
    # the test run, would then run single-threaded and give other floats. Put the environment back.
    saved = dict(os.environ)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        yield client
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory, client):
    """(one folder, the local sharded catalog, the DaskCatalog over the same folder, cluster labels)."""
    root = tmp_path_factory.mktemp("distributed")
    codes, labels = clustered_catalog(N, n_clusters=12, seed=3)
    items = pa.table({"caption": [f"item {i} of cluster {c}" for i, c in enumerate(labels)],
                      "cluster": labels.astype(np.int64)})
    one = write_catalog(root / "one", codes, items)
    with ShardedCatalogWriter(root / "many", shard_rows=SHARD, build_id="t") as writer:
        for start in range(0, N, 700):
            writer.add(codes[start:start + 700], items.slice(start, 700))
    return one, writer.catalog, open_distributed(root / "many", client), labels


def _fitted_models(one, labels):
    X = one.rows(np.arange(0, N, 3))
    y = (labels[::3] == 2).astype(int)
    return [DecisionBranches(random_state=0).fit(X, y), BranchEnsemble(random_state=0).fit(X, y),
            LinearCodes().fit(X, y), RandomForestClassifier(20, random_state=0).fit(X, y)]


def test_shards_are_spread_round_robin_and_small_reads_match(catalogs, client):
    one, local, dask, _ = catalogs
    assert isinstance(dask, DaskCatalog) and dask.n_items == N and dask.n_shards == 5
    assert dask.fingerprint == local.fingerprint
    first, second = sorted(client.scheduler_info()["workers"])
    assert dask.assignment() == {first: ["shard-00000", "shard-00002", "shard-00004"],
                                 second: ["shard-00001", "shard-00003"]}
    ids = np.array([4999, 0, 1000, 999, 5, 2500, 5, 3001])
    assert np.array_equal(dask.rows(ids), one.rows(ids))
    assert dask.items_of(ids).equals(local.items_of(ids))
    assert dask.items_of(ids).column("caption").to_pylist() == one.items_of(ids).column("caption").to_pylist()
    assert dask.items_of([]).equals(local.items_of([]))
    assert dask.has_thumbnails == local.has_thumbnails
    assert dask.thumbnail(3001) == local.thumbnail(3001)
    with pytest.raises(ValueError, match="unknown item id 5000"):
        dask.rows([N])


def test_open_catalog_with_a_client_serves_it_on_the_cluster(catalogs, client):
    from clipbranches_widgets import open_catalog
    from clipbranches_widgets.catalog.distributed import DaskCatalog

    _, local, _, _ = catalogs
    served = open_catalog(local.path, client=client)
    assert isinstance(served, DaskCatalog) and served.fingerprint == local.fingerprint
    assert np.array_equal(served.rows([0, N - 1]), local.rows([0, N - 1]))


def test_nearest_neighbours_equal_local_and_one_folder(catalogs):
    one, local, dask, _ = catalogs
    queries = one.quantizer.dequantize(one.rows([10, 2450, 4920]))
    for k in (1, 7, 60, 2000):
        a, b, c = (cat.search_vectors(queries, k=k) for cat in (one, local, dask))
        assert np.array_equal(c[0], b[0]) and np.array_equal(c[1], b[1])
        assert np.array_equal(c[0], a[0]) and np.allclose(c[1], a[1])
    similar = dask.search_similar(1305, k=20)
    assert np.array_equal(similar[0], local.search_similar(1305, k=20)[0]) and 1305 not in similar[0].tolist()
    excluded = dask.search_vectors(queries[:1], k=30, exclude=[10, 1000, 4999])
    assert np.array_equal(excluded[0], local.search_vectors(queries[:1], k=30, exclude=[10, 1000, 4999])[0])


def test_every_model_family_answers_identically(catalogs):
    one, local, dask, labels = catalogs
    for model in _fitted_models(one, labels):
        a, b, c = one.apply(model), local.apply(model), dask.apply(model)
        name = type(model).__name__
        assert c.count > 0 and np.array_equal(c.ids, b.ids) and np.array_equal(c.scores, b.scores), name
        assert np.array_equal(c.ids, a.ids) and np.allclose(c.scores, a.scores), name
        assert c.stats["n_blocks"] == 5 and c.stats["method"] == b.stats["method"]


def test_a_session_loop_gives_identical_results(catalogs, tmp_path):
    one, local, dask, labels = catalogs
    results = []
    for cat in (one, local, dask):
        session = SearchSession(cat, random_state=5)
        shown = session.image_search(int(np.flatnonzero(labels == 4)[0]), k=40).ids
        session.label([int(i) for i in shown if labels[i] == 4], "pos")
        session.label([int(i) for i in shown if labels[i] != 4], "neg")
        refined = session.refine("auto", n_random_negatives=200, exclude_top=100)
        suggested = session.suggest(30, random_state=1)
        session.export(tmp_path / "answer.csv")
        results.append((shown.tolist(), refined.model_name, refined.ids.tolist(), refined.scores.tolist(),
                        refined.estimate, suggested.ids.tolist(), (tmp_path / "answer.csv").read_text()))
    assert results[2] == results[1] == results[0]


def test_codes_never_travel_workers_open_their_own_shards_once(catalogs, monkeypatch):
    import cloudpickle

    one, _, dask, labels = catalogs
    sizes = []
    submit = dask.client.submit

    def spy(fn, *args, **kwargs):
        sizes.append(len(cloudpickle.dumps((fn, args))))
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(dask.client, "submit", spy)
    dask.apply(_fitted_models(one, labels)[0])
    dask.search_vectors(one.quantizer.dequantize(one.rows([7])), k=60)
    dask.rows(np.arange(0, N, 10))
    one_shard_codes = SHARD * dask.dim
    assert len(sizes) == 6 and max(sizes) < one_shard_codes / 2, sizes  # manifest + model / query / ids
    # after every test above, each worker opened exactly the shards it holds, each once
    stats = dask.worker_stats()
    for worker, names in dask.assignment().items():
        assert stats[worker]["opened"] == {name: 1 for name in names}
        assert stats[worker]["holding"] == names and stats[worker]["nthreads"] == 1


def test_a_shard_that_cannot_be_opened_names_the_shard_and_the_worker(catalogs, client, tmp_path):
    one, local, _, _ = catalogs
    broken = tmp_path / "broken"
    shutil.copytree(local.path, broken)
    (broken / "shard-00003" / "codes.npy").unlink()
    with pytest.raises(ValueError, match=r"worker tcp://127\.0\.0\.1:\d+ could not open shard shard-00003 of "
                                         r"catalog .*broken: catalog file .*codes\.npy is missing"):
        open_distributed(broken, client)
    gone = tmp_path / "gone"
    shutil.copytree(local.path, gone)
    shutil.rmtree(gone / "shard-00001")
    with pytest.raises(ValueError, match=r"could not open shard shard-00001 of catalog .*gone: shard .* is missing"):
        open_distributed(gone, client)
    with pytest.raises(ValueError, match="one-folder catalog"):
        open_distributed(one.path, client)


def test_a_busy_worker_times_out_with_a_clear_error(catalogs, client):
    _, local, dask, labels = catalogs
    impatient = open_distributed(local.path, client)  # the workers hold these shards already
    impatient.timeout = 0.5
    holder = sorted(client.scheduler_info()["workers"])[1]
    blocker = client.submit(time.sleep, 2, workers=[holder], pure=False)  # its only thread is busy
    time.sleep(0.2)
    with pytest.raises(TimeoutError, match=f"worker {holder}, holding shard-00001, shard-00003 of catalog "
                                           f".* did not answer apply within 0.5 s"):
        impatient.apply(LinearCodes().fit(local.rows(np.arange(0, N, 3)), (labels[::3] == 2).astype(int)))
    blocker.result()


def test_reassignment_moves_only_the_shards_of_departed_workers():
    plan = assign_shards(5, ["b", "a"])
    assert plan == {"a": [0, 2, 4], "b": [1, 3]}
    assert assign_shards(5, ["a", "c"], plan) == {"a": [0, 2, 4], "c": [1, 3]}
    assert assign_shards(5, ["c", "d", "e"], {"a": [0, 2, 4], "c": [1, 3]}) == {"c": [1, 3], "d": [0, 4], "e": [2]}


def test_a_worker_that_dies_is_named_then_its_shards_move(catalogs, client):
    # last in the module: it costs the cluster a worker (the nanny starts a new one)
    _, local, dask, labels = catalogs
    model = LinearCodes().fit(local.rows(np.arange(0, N, 3)), (labels[::3] == 2).astype(int))
    survivor, victim = sorted(client.scheduler_info()["workers"])
    pid = client.run(os.getpid, workers=[victim])[victim]
    blocker = client.submit(time.sleep, 30, workers=[victim], pure=False)  # keeps the apply waiting there
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"worker {victim}, holding shard-00001, shard-00003 of catalog .* "
                                           f"left the Dask cluster while answering apply"):
        dask.apply(model)
    assert time.monotonic() - t0 < 10  # noticed by the liveness check, not by the 120 s timeout
    client.cancel(blocker)
    client.wait_for_workers(2, timeout=60)
    assert np.array_equal(dask.apply(model).ids, local.apply(model).ids)  # the new worker took over
    replacement = next(w for w in client.scheduler_info()["workers"] if w != survivor)
    assert dask.assignment() == {survivor: ["shard-00000", "shard-00002", "shard-00004"],
                                 replacement: ["shard-00001", "shard-00003"]}
