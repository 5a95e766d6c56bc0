"""What a visitor's kernel costs, piece by piece: CPU seconds and PSS as it imports and warms up.

A dashboard kernel (what Voilà starts per visitor) is replayed in a fresh interpreter, step by
step, as the dashboard notebook runs it: Python and ipykernel, numpy and pyarrow, Numba,
scikit-learn (the engine's estimators derive from it), the engine, session and widgets, the app on
the default catalog, then the app's warm-up (the query encoder, a search, refine of every family,
suggest). After each step: the process's CPU time and its PSS (proportional set size).

Run twice: with the query process that ``python -m clipbranches_widgets serve`` starts (the kernel
never loads torch), and without it (the kernel loads torch and the CLIP towers itself, as every
kernel did before class mode).

Then real kernels, started by jupyter_client as Voilà starts them, side by side: spawned (``python -m
ipykernel_launcher``, ``serve --no-fork-kernels``) and forked from the kernel template
(:mod:`clipbranches_widgets.kernel_fork`, what ``serve`` does by default). Each runs the dashboard
notebook and waits for its warm-up; its own CPU time (psutil: the kernel process alone, from its
start, or from the fork) after each step, then the PSS and USS of each with ``KERNELS`` of the kind
running at once (a forked kernel's PSS counts its share of the pages it shares with the template
and the others, the USS only its own).

    .venv/bin/python benchmarks/bench_kernel.py        # ~2 minutes
Writes benchmarks/results/kernel.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_engine import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DASHBOARD = ROOT / "notebooks" / "dashboard.ipynb"
#: kernels of each kind running at once when their memory is measured
KERNELS = 4

#: the replayed kernel: prints one JSON line per step (cumulative CPU seconds, PSS MB)
KERNEL = r'''
import json, sys, threading, time, psutil
proc = psutil.Process()
def step(name):
    print(json.dumps({"step": name, "cpu_s": time.process_time(), "pss_mb": proc.memory_full_info().pss / 2**20,
                      "torch": "torch" in sys.modules}), flush=True)
step("Python")
import ipykernel.ipkernel; step("ipykernel")
import numpy, pyarrow.parquet; step("numpy, pyarrow")
import numba; step("numba")
import sklearn.base; step("scikit-learn")
import clipbranches_widgets.engine, clipbranches_widgets.session; step("engine, session")
import ipywidgets
from clipbranches_widgets.widgets import SearchApp; step("ipywidgets, the app's code")
app = SearchApp.default(); step("SearchApp.default() (opens the catalog)")
for t in threading.enumerate():
    if t.name == "cb-warm-up":
        t.join()
step("warm-up (encoder, search, refine x3, suggest)")
'''


def replay(env: dict) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", KERNEL], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


WARMED_UP = ("import threading\nfor t in threading.enumerate():\n"
             "    if t.name == 'cb-warm-up':\n        t.join()")


async def jupyter_kernels(env: dict, tmp: str, template=None, count: int | None = None) -> dict:
    """Start ``count`` kernels one after the other as Voilà does (spawned, or forked from
    ``template``), each running the dashboard notebook and its warm-up; returns each step's CPU
    seconds (mean over the kernels) and the kernels' PSS and USS while all of them run."""
    from jupyter_client import AsyncKernelManager

    from clipbranches_widgets.kernel_fork import ForkProvisioner

    count = KERNELS if count is None else count
    cells = ["".join(c["source"]) for c in json.loads(DASHBOARD.read_text())["cells"] if c["cell_type"] == "code"]
    managers, steps = [], []
    try:
        for i in range(count):
            km = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                    connection_file=os.path.join(tmp, f"kernel-{i}-{template is not None}.json"))
            if template is not None:
                km.provisioner = ForkProvisioner(kernel_id=f"k{i}", kernel_spec=km.kernel_spec, parent=km,
                                                 template=template)
            managers.append(km)
            await km.start_kernel(env=env, cwd=str(DASHBOARD.parent))
            assert template is None or km.provisioner.forked, "the kernel was not forked"
            kernel = psutil.Process(km.provisioner.pid)
            kc = km.client()
            kc.start_channels()
            try:
                cpu = []

                def step(kernel=kernel, cpu=cpu):
                    t = kernel.cpu_times()
                    cpu.append(t.user + t.system)

                await kc.wait_for_ready(timeout=120)
                step()
                for code in ("\n".join(cells), WARMED_UP):
                    reply = await kc.execute_interactive(code, timeout=300, output_hook=lambda msg: None)
                    assert reply["content"]["status"] == "ok", reply["content"]
                    step()
            finally:
                kc.stop_channels()
            steps.append(cpu)
        kernels = [psutil.Process(km.provisioner.pid).memory_full_info() for km in managers]
        out = {"cpu_s": [sum(s[j] for s in steps) / len(steps) for j in range(3)],
               "pss_mb": sum(m.pss for m in kernels) / len(kernels) / 2**20,
               "uss_mb": sum(m.uss for m in kernels) / len(kernels) / 2**20, "kernels": count}
        if template is not None:
            out["template_pss_mb"] = psutil.Process(template.pid).memory_full_info().pss / 2**20
        return out
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers), return_exceptions=True)


def spawned_and_forked(env: dict) -> dict:
    from clipbranches_widgets.kernel_fork import KernelTemplate

    with tempfile.TemporaryDirectory() as tmp:
        spawned = asyncio.run(jupyter_kernels(env, tmp))
        template = KernelTemplate.start(tmp, env)
        try:
            info = template.wait_ready()
            forked = asyncio.run(jupyter_kernels(env, tmp, template))
        finally:
            template.stop()
    forked["template_cpu_s"] = info["preload_cpu_s"]
    forked["template_threads"] = info["threads"]
    return {"spawned": spawned, "forked": forked}


def kernels_table(result: dict) -> list[str]:
    spawned, forked = result["spawned"], result["forked"]
    names = ["start to kernel ready (Python, imports, ipykernel)", "the notebook (`SearchApp.default()`)",
             "warm-up (encoder, search, refine x3, suggest)"]
    lines = ["## Kernels started by Jupyter: spawned vs forked from the template (class mode)", "",
             "As Voilà starts them (jupyter_client, the query process running, one thread per kernel as `serve` "
             "gives a class), one after the other; each runs "
             "the dashboard notebook and waits for its warm-up. CPU: the kernel process's own, from its start "
             f"(spawned) or from the fork. Memory: with {spawned['kernels']} kernels of the kind running at "
             "once, per kernel.", "",
             "| step | spawned: CPU (s) | forked: CPU (s) |", "|---|---|---|"]
    prev = [0.0, 0.0]
    for j, name in enumerate(names):
        now = [spawned["cpu_s"][j], forked["cpu_s"][j]]
        lines.append(f"| {name} | {now[0] - prev[0]:.2f} | {now[1] - prev[1]:.2f} |")
        prev = now
    lines += [f"| **total** | **{spawned['cpu_s'][-1]:.2f}** | **{forked['cpu_s'][-1]:.2f}** |",
              f"| PSS per kernel (MB) | {spawned['pss_mb']:.0f} | {forked['pss_mb']:.0f} |",
              f"| USS per kernel (MB, its own pages) | {spawned['uss_mb']:.0f} | {forked['uss_mb']:.0f} |",
              f"| the template, once per server: CPU (s) / PSS (MB) | - | {forked['template_cpu_s']:.2f} / "
              f"{forked['template_pss_mb']:.0f} |", "",
              "The template's threads when it forks: " + ", ".join(forked["template_threads"]) + " (the main "
              "one; any other is native and fork-safe: pyarrow's jemalloc background thread, OpenBLAS's workers "
              "when it has more than one thread).", ""]
    return lines


def main() -> None:
    from clipbranches_widgets.catalog.default import default_catalog_path
    from clipbranches_widgets.embedding.remote import QueryService
    from clipbranches_widgets.serve import kernel_threads, start_query_process

    load_before = os.getloadavg()
    base = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base.pop("CLIPBRANCHES_QUERY_SERVICE", None)
    with tempfile.TemporaryDirectory() as tmp:
        service = QueryService(os.path.join(tmp, "query.sock"))
        query = start_query_process(service, [default_catalog_path()])
        try:
            replay({**base, **service.environment()})  # a first run fills the OS page cache for both
            with_service = replay({**base, **service.environment()})
            kernels = spawned_and_forked({**base, **service.environment(), **kernel_threads(KERNELS)})
        finally:
            query.terminate()
            query.wait(timeout=10)
    without = replay(base)
    runs = {"with the query process (class mode)": with_service, "torch in the kernel (before)": without}
    mach = machine()
    load = [load_before[0], os.getloadavg()[0]]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernel.json").write_text(json.dumps({"machine": mach, "load_average_before_after": load, "runs": runs,
                                                     "jupyter_kernels": kernels}, indent=1))
    lines = ["# What a visitor's kernel costs", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['date']}; load "
             f"average (1 min) {load[0]:.1f} before the run, {load[1]:.1f} after. A dashboard "
             "kernel replayed step by step in a fresh interpreter (Numba's cache warm); CPU seconds and PSS (MB) "
             "added by each step, and the totals.", ""]
    for name, steps in runs.items():
        lines += [f"## {name}", "", "| step | CPU (s) | PSS (MB) | torch loaded |", "|---|---|---|---|"]
        prev = {"cpu_s": 0.0, "pss_mb": 0.0}
        for s in steps:
            lines.append(f"| {s['step']} | {s['cpu_s'] - prev['cpu_s']:.2f} | {s['pss_mb'] - prev['pss_mb']:.0f} | "
                         f"{'yes' if s['torch'] else 'no'} |")
            prev = s
        lines += [f"| **total** | **{steps[-1]['cpu_s']:.2f}** | **{steps[-1]['pss_mb']:.0f}** | |", ""]
    lines += kernels_table(kernels)
    lines += ["Re-run: `.venv/bin/python benchmarks/bench_kernel.py`."]
    (RESULTS / "kernel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
