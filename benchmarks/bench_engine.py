"""Engine benchmark: training, applying a model to the whole catalog, index build, compile cost.

Run (about 10 minutes on 2 cores for the default sizes):

    .venv/bin/python benchmarks/bench_engine.py                        # 100k, 1M, 10M rows
    .venv/bin/python benchmarks/bench_engine.py --sizes 100000 1000000  # quicker

Writes ``benchmarks/results/engine.json`` (every measurement, plus the machine), ``engine.md`` (the
report tables) and ``apply_time.png`` (apply time vs catalog size per method). Every method is
measured side by side in the same process on the same catalog and task, and index, fused scan and
the plain numpy answer are checked to be identical before any time is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



from clipbranches_widgets.engine import BoxIndex, BranchEnsemble, DecisionBranches, apply_boxes_numpy, feature_subsets  # noqa: E402
from clipbranches_widgets.engine.baselines import make_baseline, scan_sklearn  # noqa: E402
from clipbranches_widgets.engine.boxes import BoxSet  # noqa: E402
from clipbranches_widgets.testing.synthetic import clustered_catalog, labelled_task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SUBSETS = feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)


@njit(parallel=True, cache=True)
def _xor_words(words):
    n_blocks = 64
    partial = np.zeros(n_blocks, np.uint64)
    n = words.shape[0]
    for b in prange(n_blocks):
        acc = np.uint64(0)
        for i in range(b * n // n_blocks, (b + 1) * n // n_blocks):
            acc ^= words[i]
        partial[b] = acc
    return partial


def streaming_pass(codes):
    """One streaming read of every code byte (XOR of 8-byte words, which LLVM vectorises fully):
    the floor any scan is compared against."""
    return _xor_words(codes.reshape(-1).view(np.uint64))


def timed(fn, repeat):
    """Median wall time of ``repeat`` calls (after the result of the first call is kept)."""
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - t)
        out = r if out is None else out
    return out, float(np.median(times)), times


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numba
    import sklearn
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "sklearn": sklearn.__version__,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}


def compile_cost() -> dict:
    """First-call cost in a fresh process: with an empty Numba cache, then with the cache filled."""
    code = ("import time,numpy as np; t0=time.perf_counter();"
            "from clipbranches_widgets.engine import DecisionBranches,BranchEnsemble,BoxIndex,feature_subsets;"
            "t1=time.perf_counter(); rng=np.random.default_rng(0); X=rng.integers(0,256,(560,32)).astype(np.uint8);"
            "y=np.r_[np.ones(60,int),np.zeros(500,int)]; s=feature_subsets(32,{4:64,6:32,8:8},seed=42);"
            "m=DecisionBranches(subsets=s,random_state=0).fit(X,y); t2=time.perf_counter();"
            "BranchEnsemble(25,subsets=s,random_state=0).fit(X,y); t3=time.perf_counter();"
            "ix=BoxIndex.build(X,s); t4=time.perf_counter(); ix.search(m,method='index'); ix.search(m,method='scan');"
            "t5=time.perf_counter(); print(t1-t0,t2-t1,t3-t2,t4-t3,t5-t4)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        for label in ("cold_cache", "warm_cache"):
            txt = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            vals = [float(v) for v in txt.split()]
            out[label] = dict(zip(("import_s", "branches_first_fit_s", "ensemble_first_fit_s", "index_first_build_s",
                                   "first_searches_s"), vals))
    return out


def bench_size(n_rows: int, n_tasks: int, full_numpy: bool, leaf_study: bool = False) -> dict:
    print(f"\n=== {n_rows:,} rows ===", flush=True)
    t = time.perf_counter()
    codes, labels = clustered_catalog(n_rows, seed=1)
    row = {"n_rows": n_rows, "generate_s": time.perf_counter() - t}

    streaming_pass(codes[:1000])
    _, row["streaming_pass_s"], _ = timed(lambda: streaming_pass(codes), 5)

    t = time.perf_counter()
    index = BoxIndex.build(codes, SUBSETS)
    row["index_build_s"] = time.perf_counter() - t
    row["index_bytes_per_item"] = index.nbytes / n_rows
    print(f"index build {row['index_build_s']:.1f} s, {row['index_bytes_per_item']:.1f} B/item", flush=True)

    # tasks: clusters from rare to common
    sizes = np.bincount(labels)
    order = np.argsort(sizes)
    picks = order[np.linspace(len(order) // 4, len(order) - 1, n_tasks).astype(int)]
    tasks = []
    for k, cluster in enumerate(picks):
        ids, y = labelled_task(codes, labels, int(cluster), seed=k)
        X = codes[ids]
        r = {"cluster": int(cluster), "true_fraction": float(sizes[cluster] / n_rows), "n_pos": int(y.sum())}
        models = {}
        models["branches"], r["train_branches_s"], _ = timed(lambda: DecisionBranches(subsets=SUBSETS, random_state=0).fit(X, y), 7)
        models["ensemble"], r["train_ensemble_s"], _ = timed(lambda: BranchEnsemble(25, subsets=SUBSETS, random_state=0).fit(X, y), 5)
        models["tree"], r["train_tree_s"], _ = timed(lambda: make_baseline("tree", random_state=0).fit(X, y), 5)
        models["forest"], r["train_forest_s"], _ = timed(lambda: make_baseline("forest", random_state=0, n_jobs=-1).fit(X, y), 3)
        for name in ("branches", "ensemble"):
            m = models[name]
            bs = BoxSet.from_model(m)
            via_index, t_index, _ = timed(lambda: index.search(m, method="index"), 5)
            via_scan, t_scan, _ = timed(lambda: index.search(m, method="scan"), 5)
            via_auto, t_auto, _ = timed(lambda: index.search(m, method="auto"), 5)
            assert np.array_equal(via_index.ids, via_scan.ids) and np.array_equal(via_index.scores, via_scan.scores)
            assert np.array_equal(via_auto.ids, via_scan.ids)
            if full_numpy or name == "branches":
                (np_ids, np_scores), t_np, _ = timed(lambda: apply_boxes_numpy(codes, bs), 1)
                assert np.array_equal(np_ids, via_scan.ids) and np.array_equal(np_scores, via_scan.scores)
                r[f"apply_{name}_numpy_s"] = t_np
            truth = labels == r["cluster"]
            hit = np.zeros(n_rows, bool)
            hit[via_scan.ids] = True
            tp = int((hit & truth).sum())
            r.update({f"apply_{name}_index_s": t_index, f"apply_{name}_scan_s": t_scan, f"apply_{name}_auto_s": t_auto,
                      f"{name}_auto_method": via_auto.stats.get("method"), f"{name}_count": len(via_scan),
                      f"{name}_selectivity": len(via_scan) / n_rows, f"{name}_n_boxes": bs.n_boxes,
                      f"{name}_precision": tp / max(1, hit.sum()), f"{name}_recall": tp / max(1, truth.sum()),
                      f"{name}_index_stats": {k: v for k, v in via_index.stats.items() if isinstance(v, (int, float, str))}})
        for name in ("tree", "forest"):
            res, r[f"apply_{name}_sklearn_s"], _ = timed(lambda: scan_sklearn(models[name], codes), 1 if n_rows > 2_000_000 else 3)
            r[f"{name}_count"] = len(res)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if not k.endswith("_stats")}, flush=True)
        tasks.append(r)
    row["tasks"] = tasks
    del index
    if leaf_study:
        row["leaf_sizes"] = leaf_size_study(codes, labels, tasks[0]["cluster"])
    return row


def leaf_size_study(codes, labels, cluster) -> list[dict]:
    """Bytes per item and index query time of the rarest task's models for several leaf sizes."""
    ids, y = labelled_task(codes, labels, cluster, seed=0)
    models = {"branches": DecisionBranches(subsets=SUBSETS, random_state=0).fit(codes[ids], y),
              "ensemble": BranchEnsemble(25, subsets=SUBSETS, random_state=0).fit(codes[ids], y)}
    out = []
    for leaf in (64, 128, 256, 512, 1024):
        t = time.perf_counter()
        index = BoxIndex.build(codes, SUBSETS, leaf_size=leaf)
        r = {"leaf_size": leaf, "build_s": time.perf_counter() - t, "bytes_per_item": index.nbytes / codes.shape[0]}
        for name, m in models.items():
            index.search(m, method="index")
            _, r[f"{name}_index_s"], _ = timed(lambda: index.search(m, method="index"), 5)
        print(r, flush=True)
        out.append(r)
    return out


def report(results: dict) -> str:
    lines = ["# Engine benchmark", "", f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['memory_gib']} GiB; numpy {results['machine']['numpy']}, numba "
             f"{results['machine']['numba']}, scikit-learn {results['machine']['sklearn']}; {results['machine']['date']}.",
             "Re-run: `.venv/bin/python benchmarks/bench_engine.py` (writes this file, engine.json, apply_time.png).", ""]
    lines += ["## Index build and storage", "", "| rows | build (s) | bytes per item | one streaming pass (ms) |", "|---|---|---|---|"]
    for s in results["sizes"]:
        lines.append(f"| {s['n_rows']:,} | {s['index_build_s']:.1f} | {s['index_bytes_per_item']:.1f} | {s['streaming_pass_s'] * 1e3:.1f} |")
    lines += ["", "## Training (median ms; 60 labelled + 500 random negatives)", "",
              "| rows | task (true %) | branches | ensemble (25) | sklearn tree | sklearn forest (25) |", "|---|---|---|---|---|---|"]
    for s in results["sizes"]:
        for t in s["tasks"]:
            lines.append(f"| {s['n_rows']:,} | {100 * t['true_fraction']:.2f}% | {t['train_branches_s'] * 1e3:.1f} | "
                         f"{t['train_ensemble_s'] * 1e3:.1f} | {t['train_tree_s'] * 1e3:.1f} | {t['train_forest_s'] * 1e3:.1f} |")
    lines += ["", "## Applying the model to the whole catalog (median ms)", "",
              "| rows | model | boxes | result % | index | fused scan | auto (chosen) | numpy scan | index speed-up vs scan | scan / streaming pass |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["sizes"]:
        for t in s["tasks"]:
            for name in ("branches", "ensemble"):
                npk = t.get(f"apply_{name}_numpy_s")
                lines.append(
                    f"| {s['n_rows']:,} | {name} | {t[f'{name}_n_boxes']} | {100 * t[f'{name}_selectivity']:.2f}% | "
                    f"{t[f'apply_{name}_index_s'] * 1e3:.1f} | {t[f'apply_{name}_scan_s'] * 1e3:.1f} | "
                    f"{t[f'apply_{name}_auto_s'] * 1e3:.1f} ({t[f'{name}_auto_method']}) | "
                    f"{'-' if npk is None else f'{npk * 1e3:.0f}'} | "
                    f"{t[f'apply_{name}_scan_s'] / t[f'apply_{name}_index_s']:.1f}x | "
                    f"{t[f'apply_{name}_scan_s'] / s['streaming_pass_s']:.2f} |")
            lines.append(f"| {s['n_rows']:,} | sklearn tree / forest | - | - | - | - | - | "
                         f"{t['apply_tree_sklearn_s'] * 1e3:.0f} / {t['apply_forest_sklearn_s'] * 1e3:.0f} (chunked predict) | - | - |")
    for s in results["sizes"]:
        if s.get("leaf_sizes"):
            lines += ["", f"## Leaf size ({s['n_rows']:,} rows, rarest task; median ms through the index)", "",
                      "| leaf size | build (s) | bytes per item | branches query | ensemble query |", "|---|---|---|---|---|"]
            for r in s["leaf_sizes"]:
                lines.append(f"| {r['leaf_size']} | {r['build_s']:.1f} | {r['bytes_per_item']:.1f} | "
                             f"{r['branches_index_s'] * 1e3:.2f} | {r['ensemble_index_s'] * 1e3:.2f} |")
    lines += targets_section(results)
    c = results.get("compile")
    if c:
        lines += ["", "## First call in a fresh process (s)", "", "| Numba cache | import | branches fit | ensemble fit | index build (560 rows) | first searches |",
                  "|---|---|---|---|---|---|"]
        for label, v in c.items():
            lines.append(f"| {label} | {v['import_s']:.2f} | {v['branches_first_fit_s']:.2f} | {v['ensemble_first_fit_s']:.2f} | "
                         f"{v['index_first_build_s']:.2f} | {v['first_searches_s']:.2f} |")
    return "\n".join(lines) + "\n"


def targets_section(results: dict) -> list[str]:
    """The issue's targets, met or missed, computed from the recorded results (and scan.json)."""
    tasks = [(s["n_rows"], t) for s in results["sizes"] for t in s["tasks"]]
    big = max(s["n_rows"] for s in results["sizes"])
    big_size = next(s for s in results["sizes"] if s["n_rows"] == big)
    rows = []

    def add(target, value, met, how):
        rows.append(f"| {target} | {value} | {'met' if met else 'MISSED'} | {how} |")

    worst = max(t["train_branches_s"] for _, t in tasks)
    add("branch training <= 10 ms", f"{worst * 1e3:.1f} ms (worst task)", worst <= 0.010, "median of 7 per task")
    worst = max(t["train_ensemble_s"] for _, t in tasks)
    add("ensemble (25) training <= 150 ms", f"{worst * 1e3:.1f} ms (worst task)", worst <= 0.150, "median of 5 per task")
    if big >= 10_000_000:
        add("index build <= 60 s for 10M rows", f"{big_size['index_build_s']:.1f} s", big_size["index_build_s"] <= 60, "in memory")
    worst = max(s["index_bytes_per_item"] for s in results["sizes"])
    add("index <= 232 B/item", f"{worst:.1f} B/item", worst <= 232, "perm + node bounds + planner sample")
    sel = [(t[f"apply_{m}_scan_s"] / t[f"apply_{m}_index_s"], m, t[f"{m}_selectivity"]) for n, t in tasks if n == big
           for m in ("branches", "ensemble") if t[f"{m}_selectivity"] <= 0.01]
    if sel:
        best = max(sel)
        add(f"selective model (<= 1% of rows) via index >= 10x faster than the scan at {big:,} rows",
            f"best {best[0]:.1f}x ({best[1]}, {100 * best[2]:.2f}%); all: " + ", ".join(f"{r:.1f}x" for r, _, _ in sel),
            best[0] >= 10, "whole search incl. scoring")
    scan_json = RESULTS / "scan.json"
    if scan_json.exists():
        sc = json.loads(scan_json.read_text())
        ratios = ", ".join(f"{m['model']}: {m['ratio']:.1f}x" for m in sc["models"] if "[10..30]" in m["model"])
        add("fused scan within 2x of one streaming pass", ratios, all(m["ratio"] <= 2 for m in sc["models"]),
            f"results/scan.md, {sc['n_rows']:,} rows")
    return ["", "## Targets (from the issue)", "", "| target | measured | status | how |", "|---|---|---|---|", *rows, "",
            "Why the two speed targets are missed: trained boxes constrain all 4-8 dims of their subset with moderate "
            "widths; a k-d tree over a 65,536-row segment (uint16 offsets, needed for the byte budget) splits each of "
            "8 dims only about once, so a box selecting ~1-2% of the catalog still touches ~25% of the leaves, and "
            "random-access row checks lose to one sequential SIMD pass; the planner therefore picks the scan. The scan "
            "meets 2x for single-box models; for many boxes the byte transpose (~69 ms at 10M) and the per-box tests "
            "(~62 ms for 75 boxes) dominate. Tried without enough gain: a global PCA-tree row order (~25% faster index "
            "queries), a column-major copy of the codes (22.7 ms for a 4-dim box, 157 ms for 32 dims at 10M), leaf "
            "size 64 (6%)."]


def plot(results: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [s["n_rows"] for s in results["sizes"]]
    # the most selective task at each size (the first one: rarest cluster)
    series = {"branches via index": "apply_branches_index_s", "branches fused scan": "apply_branches_scan_s",
              "branches numpy scan": "apply_branches_numpy_s", "ensemble via index": "apply_ensemble_index_s",
              "ensemble fused scan": "apply_ensemble_scan_s", "sklearn tree predict": "apply_tree_sklearn_s",
              "sklearn forest predict": "apply_forest_sklearn_s"}
    for label, key in series.items():
        ys = [s["tasks"][0].get(key) for s in results["sizes"]]
        if all(v is not None for v in ys):
            ax.plot(sizes, [v * 1e3 for v in ys], marker="o", label=label)
    ax.plot(sizes, [s["streaming_pass_s"] * 1e3 for s in results["sizes"]], "k--", label="one streaming pass")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog rows")
    ax.set_ylabel("time to answer the whole catalog (ms)")
    ax.set_title("Applying a trained model (rarest task), 2-core machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--tasks", type=int, default=3, help="labelled tasks per size, rare to common")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--leaf-study-rows", type=int, default=1_000_000, help="catalog size for the leaf-size study")
    ap.add_argument("--report-only", action="store_true", help="rebuild engine.md and the plot from engine.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((args.out / "engine.json").read_text())
        (args.out / "engine.md").write_text(report(results))
        plot(results, args.out / "apply_time.png")
        print(report(results))
        return
    results = {"machine": machine(), "compile": compile_cost(), "sizes": []}
    print(results["machine"], results["compile"], flush=True)
    for n in args.sizes:
        results["sizes"].append(bench_size(n, args.tasks, full_numpy=n <= 1_000_000, leaf_study=n == args.leaf_study_rows))
    (args.out / "engine.json").write_text(json.dumps(results, indent=1))
    (args.out / "engine.md").write_text(report(results))
    plot(results, args.out / "apply_time.png")
    print(report(results))


if __name__ == "__main__":
    main()
