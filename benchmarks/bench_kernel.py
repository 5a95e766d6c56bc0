"""What a visitor's kernel costs, piece by piece: CPU seconds and PSS as it imports and warms up.

A dashboard kernel (what Voilà starts per visitor) is replayed in a fresh interpreter, step by
step, as the dashboard notebook runs it: Python and ipykernel, numpy and pyarrow, Numba,
scikit-learn (the engine's estimators derive from it), the engine, session and widgets, the app on
the default catalog, then the app's warm-up (the query encoder, a search, refine of every family,
suggest). After each step: the process's CPU time and its PSS (proportional set size).

Run twice: with the query process that ``python -m clipbranches_widgets serve`` starts (the kernel
never loads torch), and without it (the kernel loads torch and the CLIP towers itself, as every
kernel did before class mode).

    .venv/bin/python benchmarks/bench_kernel.py        # ~1 minute
Writes benchmarks/results/kernel.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_engine import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

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


def main() -> None:
    from clipbranches_widgets.catalog.default import default_catalog_path
    from clipbranches_widgets.embedding.remote import QueryService
    from clipbranches_widgets.serve import start_query_process

    base = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base.pop("CLIPBRANCHES_QUERY_SERVICE", None)
    with tempfile.TemporaryDirectory() as tmp:
        service = QueryService(os.path.join(tmp, "query.sock"))
        query = start_query_process(service, [default_catalog_path()])
        try:
            replay({**base, **service.environment()})  # a first run fills the OS page cache for both
            with_service = replay({**base, **service.environment()})
        finally:
            query.terminate()
            query.wait(timeout=10)
    without = replay(base)
    runs = {"with the query process (class mode)": with_service, "torch in the kernel (before)": without}
    mach = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernel.json").write_text(json.dumps({"machine": mach, "runs": runs}, indent=1))
    lines = ["# What a visitor's kernel costs", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['date']}. A dashboard "
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
    lines += ["Re-run: `.venv/bin/python benchmarks/bench_kernel.py`."]
    (RESULTS / "kernel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
