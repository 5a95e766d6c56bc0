"""A sharded catalog on a 2-worker Dask LocalCluster against the local ShardedCatalog in one process.

The same catalog (``--rows`` clustered 32-d codes, written through ``ShardedCatalogWriter`` in
blocks of 1M rows) is queried two ways on the same cores: the local ``ShardedCatalog`` in this
process (Numba uses every core) and ``open_distributed`` over a ``LocalCluster`` of 2
worker processes with 1 thread each (each worker scans the shards it holds). Measured, as medians
of ``--repeats`` warm runs after checking that both give identical answers:

* ``apply`` of a single DecisionBranches model, a 25-model BranchEnsemble and LinearCodes, fitted
  on what a user gives a session (the 60 nearest items of a median-sized cluster's item, marked by
  the cluster truth, plus 500 random negatives);
* nearest neighbours: one query, k = 60 (a page) and k = 2,000 (a session's neighbourhood);
* the small reads a session makes: ``rows`` of 560 ids, ``items_of`` 60 ids;
* shipping a fitted ensemble to the workers inline (the pickled model in each worker's task, what
  ``DaskCatalog.apply`` does) vs ``client.scatter(model, broadcast=True)`` and then the tasks;
* a worker's resident memory after a pass over its shards, with and without dropping the codes'
  memory-mapped pages (what Dask's memory monitor counts).

    .venv/bin/python benchmarks/bench_dask.py                     # 10M rows, ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_dask.py --rows 2000000 --shard-rows 500000

Writes benchmarks/results/dask.md and dask.json; the catalog goes to benchmarks/tmp/ and is deleted
unless --keep (a kept catalog of the same size is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_demo import machine, repo_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TMP = Path(__file__).resolve().parent / "tmp"
N_CLUSTERS = 200  # Zipf-sized clusters, as bench_scale.py
SEED = 11
N_WORKERS = 2


def build(path: Path, n_rows: int, shard_rows: int) -> float:
    """Write the catalog block by block (one block and one shard in memory); seconds taken."""
    import pyarrow as pa

    from clipbranches_widgets.catalog import ShardedCatalogWriter
    from clipbranches_widgets.testing.synthetic import clustered_blocks

    t0 = time.perf_counter()
    with ShardedCatalogWriter(path, shard_rows=shard_rows, build_id=f"dask-{n_rows}-{shard_rows}-{SEED}") as writer:
        for codes, labels in clustered_blocks(n_rows, n_clusters=N_CLUSTERS, seed=SEED, chunk=1_000_000):
            writer.add(codes, pa.table({"cluster": labels}))
    return time.perf_counter() - t0


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: Numba caches, per-shard search state, page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def user_models(cat) -> tuple[dict, dict]:
    """Models fitted on a simulated user's marks (see the module docstring), and what they were fitted on."""
    from clipbranches_widgets.engine import BranchEnsemble, DecisionBranches, LinearCodes
    from clipbranches_widgets.session import BOX_MODEL_PARAMS

    sample = np.arange(0, cat.n_items, max(1, cat.n_items // 10_000))
    clusters = np.asarray(cat.items_of(sample).column("cluster"))
    values, counts = np.unique(clusters, return_counts=True)
    cluster = int(values[np.argsort(counts, kind="stable")[len(counts) // 2]])  # a median-sized cluster
    seed_item = int(sample[np.flatnonzero(clusters == cluster)[0]])
    shown, _ = cat.search_similar(seed_item, k=60, include_self=True)
    rng = np.random.default_rng(SEED)
    negatives = np.setdiff1d(rng.choice(cat.n_items, 520, replace=False), shown)[:500]
    ids = np.r_[shown, negatives]
    y = np.r_[np.asarray(cat.items_of(shown).column("cluster")) == cluster, np.zeros(negatives.shape[0], bool)]
    X = cat.rows(ids)
    models = {"branches (1 model)": DecisionBranches(random_state=0, **BOX_MODEL_PARAMS).fit(X, y),
              "ensemble (25 models)": BranchEnsemble(n_estimators=25, random_state=0, **BOX_MODEL_PARAMS).fit(X, y),
              "linear": LinearCodes(random_state=0).fit(X, y)}
    return models, {"cluster": cluster, "seed_item": seed_item, "n_positives": int(y.sum()), "n_rows": int(y.shape[0])}


def _receive(payload) -> str:
    """Worker side of the shipping comparison: what a task does with the model before applying it
    (inline: unpickle the bytes, as DaskCatalog's task does; scattered: Dask hands over the object)."""
    model = pickle.loads(payload) if isinstance(payload, bytes) else payload
    return type(model).__name__


def shipping(client, model, repeats: int) -> dict:
    """Seconds to get a fitted model to every worker and run a task with it there: inline vs scatter."""
    import cloudpickle

    workers = sorted(client.scheduler_info()["workers"])

    def inline():
        payload = cloudpickle.dumps(model)
        client.gather([client.submit(_receive, payload, workers=[w], pure=False) for w in workers])

    def scattered():
        future = client.scatter(model, broadcast=True, hash=False)
        client.gather([client.submit(_receive, future, workers=[w], pure=False) for w in workers])
        client.cancel(future)

    def round_trip():  # the floor: one empty task per worker
        client.gather([client.submit(len, b"", workers=[w], pure=False) for w in workers])

    return {"model_bytes": len(cloudpickle.dumps(model)), "inline_s": median_time(inline, repeats),
            "scatter_s": median_time(scattered, repeats), "empty_tasks_s": median_time(round_trip, repeats)}


def _touch_and_release(path, fingerprint, dask_worker=None) -> dict:
    """A worker's RSS after reading every code it holds, then after dropping the mapped pages."""
    import psutil

    from clipbranches_widgets.catalog.distributed import PLUGIN_NAME, release_pages

    host = dask_worker.plugins[PLUGIN_NAME]
    catalog, open_shards = host.catalogs[(path, fingerprint)]
    codes = [catalog.shard(j).codes for j in sorted(open_shards)]
    before = psutil.Process().memory_info().rss
    for c in codes:
        int(np.asarray(c).sum(dtype=np.uint64))  # touches every page, as a scan does
    touched = psutil.Process().memory_info().rss
    for c in codes:
        release_pages(c)
    return {"codes_bytes": int(sum(c.nbytes for c in codes)), "rss_before": before, "rss_touched": touched,
            "rss_released": psutil.Process().memory_info().rss}


def measure(path: Path, repeats: int) -> dict:
    from distributed import Client, LocalCluster

    from clipbranches_widgets.catalog import open_catalog
    from clipbranches_widgets.catalog.distributed import open_distributed

    out = {}
    local = open_catalog(path)
    models, out["training"] = user_models(local)
    rng = np.random.default_rng(1)
    query = local.quantizer.dequantize(local.rows([out["training"]["seed_item"]]))
    row_ids, item_ids = rng.choice(local.n_items, 560, replace=False), rng.choice(local.n_items, 60, replace=False)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        out["cluster_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask = open_distributed(path, client)
        out["open_distributed_s"] = time.perf_counter() - t0
        out["assignment"] = {f"worker {i}": names for i, names in enumerate(dask.assignment().values())}
        first = next(iter(models.values()))
        t0 = time.perf_counter()
        dask.apply(first)
        out["first_apply_s"] = time.perf_counter() - t0  # includes loading the Numba cache in fresh workers

        out["apply"] = {}
        for name, model in models.items():
            a, b = local.apply(model), dask.apply(model)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores), name
            out["apply"][name] = {"count": a.count, "local_s": median_time(lambda: local.apply(model), repeats),
                                  "dask_s": median_time(lambda: dask.apply(model), repeats)}
            print(f"apply {name}: {out['apply'][name]}", flush=True)
        out["nn"] = {}
        for k in (60, 2000):
            a, b = local.search_vectors(query, k=k), dask.search_vectors(query, k=k)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), k
            out["nn"][f"k={k}"] = {"local_s": median_time(lambda: local.search_vectors(query, k=k), repeats),
                                   "dask_s": median_time(lambda: dask.search_vectors(query, k=k), repeats)}
        assert np.array_equal(local.rows(row_ids), dask.rows(row_ids))
        assert local.items_of(item_ids).equals(dask.items_of(item_ids))
        out["reads"] = {"rows (560 ids)": {"local_s": median_time(lambda: local.rows(row_ids), repeats),
                                           "dask_s": median_time(lambda: dask.rows(row_ids), repeats)},
                        "items_of (60 ids)": {"local_s": median_time(lambda: local.items_of(item_ids), repeats),
                                              "dask_s": median_time(lambda: dask.items_of(item_ids), repeats)}}
        print(f"nn {out['nn']}\nreads {out['reads']}", flush=True)
        out["shipping"] = shipping(client, models["ensemble (25 models)"], repeats)
        stats = dask.worker_stats()
        out["workers_after_runs"] = [{"rss_bytes": s["rss_bytes"], "opened": s["opened"]} for s in stats.values()]
        out["memory_maps"] = list(client.run(_touch_and_release, str(dask.path), dask.fingerprint).values())
    return out


def markdown(result: dict) -> str:
    m, r = result["machine"], result["run"]
    mib = 2**20
    lines = ["# A sharded catalog on Dask workers vs one process", "",
             f"Re-run: `.venv/bin/python benchmarks/bench_dask.py --rows {result['n_rows']} --shard-rows "
             f"{result['shard_rows']} --repeats {result['repeats']}{result.get('out_arg', '')}`. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['memory_gib']:.1f} GiB, Python {m['python']}, {m['date']}, commit {m['commit']}. Load average "
             f"(1 min) {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after (the machine is "
             f"shared: other work ran alongside).", "",
             f"{result['n_rows']:,} clustered 32-d codes ({N_CLUSTERS} clusters) in {result['n_shards']} shards of "
             f"{result['shard_rows']:,} rows, built in {result['build_s']:.0f} s. **local**: the ShardedCatalog in one "
             f"process (Numba on all {m['cores']} cores). **dask**: `open_distributed` on a LocalCluster of "
             f"{N_WORKERS} worker processes x 1 thread on the same cores (shards round robin: "
             + "; ".join(f"{w}: {', '.join(s)}" for w, s in r["assignment"].items())
             + f"). Cluster start {r['cluster_start_s']:.1f} s, `open_distributed` {r['open_distributed_s']:.2f} s "
             f"(each worker opens and checks its shards), first apply {r['first_apply_s']:.2f} s (fresh workers load "
             f"the Numba cache). Models fitted on {r['training']['n_rows']} marked rows ({r['training']['n_positives']} "
             f"positives: the 60 nearest items of a median-sized cluster's item, marked by the truth, and 500 random "
             f"negatives). Every answer was checked identical (ids and scores) before timing; medians of "
             f"{result['repeats']} warm runs.", "",
             "| query | answer size | local | dask | dask / local |", "|---|---|---|---|---|"]
    for name, a in r["apply"].items():
        lines.append(f"| apply {name} | {a['count']:,} | {a['local_s'] * 1000:.0f} ms | {a['dask_s'] * 1000:.0f} ms "
                     f"| {a['dask_s'] / a['local_s']:.2f} |")
    for name, a in {**{f"nearest neighbours, 1 query, {k}": v for k, v in r["nn"].items()}, **r["reads"]}.items():
        lines.append(f"| {name} | | {a['local_s'] * 1000:.1f} ms | {a['dask_s'] * 1000:.1f} ms "
                     f"| {a['dask_s'] / a['local_s']:.2f} |")
    s = r["shipping"]
    lines += ["", f"Shipping the fitted 25-model ensemble ({s['model_bytes'] / 1024:.0f} KB pickled) to both workers "
              f"and running a task with it there: inline in each task {s['inline_s'] * 1000:.1f} ms, "
              f"`client.scatter(model, broadcast=True)` then the tasks {s['scatter_s'] * 1000:.1f} ms; one empty "
              f"task per worker {s['empty_tasks_s'] * 1000:.1f} ms. `DaskCatalog.apply` sends the model inline.", "",
              "Worker memory (what Dask's memory monitor reads: the process RSS, which counts the memory-mapped "
              "pages a scan touched):", "",
              "| worker | codes held | RSS after the runs above | RSS after reading all its codes | after dropping the mapped pages |",
              "|---|---|---|---|---|"]
    for i, (mm, w) in enumerate(zip(r["memory_maps"], r["workers_after_runs"])):
        lines.append(f"| {i} | {mm['codes_bytes'] / mib:.0f} MiB | {w['rss_bytes'] / mib:.0f} MiB | "
                     f"{mm['rss_touched'] / mib:.0f} MiB | {mm['rss_released'] / mib:.0f} MiB |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shard-rows", type=int, default=2_500_000, help="default: 4 shards at 10M, 2 per worker")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the catalog in benchmarks/tmp/ (and reuse it)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from clipbranches_widgets.catalog import open_catalog

    info = machine()
    info["memory_gib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    result = {"machine": info, "n_rows": args.rows, "shard_rows": args.shard_rows, "repeats": args.repeats,
              "out_arg": "" if args.out == RESULTS else f" --out {repo_path(args.out)}",
              "load_before": os.getloadavg()}
    path = TMP / f"dask-{args.rows}-{args.shard_rows}"
    try:
        reuse = (path / "manifest.json").is_file() and open_catalog(path).n_items == args.rows
        result["build_s"] = 0.0 if reuse else build(path, args.rows, args.shard_rows)
        result["n_shards"] = open_catalog(path).n_shards
        print(f"{args.rows:,} rows in {result['n_shards']} shards ({'reused' if reuse else 'built'}); measuring ...",
              flush=True)
        result["run"] = measure(path, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dask.json").write_text(json.dumps(result, indent=1))
    (args.out / "dask.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
