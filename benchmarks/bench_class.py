"""A class at once: K visitors open the dashboard together, as a teacher's class would.

For each K, a fresh server is started the way the README's class mode starts it
(``python -m clipbranches_widgets serve --visitors K``: one query process, a pool of K preheated
kernels); once it says it is ready, K pages open at the same moment in headless Chromium
(Playwright's async API, one browser context per visitor) and each visitor

1. opens the page and waits for the app (``page_to_app_s``),
2. searches "a red star" and waits for its 60 tiles painted (``first_grid_s``, from page open),
3. marks the whole page positive ("All positive") and presses Fine-tune, then waits for the
   answer's count, estimate and first tiles painted (``finetune_s``, from the click).

Recorded per visitor: those times, or the error that stopped it (a failure). Sampled every 0.5 s
during the run: the PSS (proportional set size: shared pages split among the processes that map
them, so the sum is what the server tree really costs) of the server's whole process tree (Voilà,
its kernels, the query process), and the CPU the server tree and Chromium used, because on a
2-core machine the K browser pages compete with the server for the same cores, which a real class
(its own laptops) would not.

``--plain-voila K ...`` also runs those class sizes against plain Voilà as before class mode (``voila
--preheat_kernel=True --pool_size=K``: every kernel loads torch and the encoder itself), side by
side, for the ratio.

    .venv/bin/python benchmarks/bench_class.py --visitors 1 10 20 30 --plain-voila 1 10 20   # ~15 minutes
Writes benchmarks/results/class.{json,md} and class.png.

``--client protocol`` runs the same classes with light protocol clients instead of Chromium
(:mod:`clipbranches_widgets.testing.widget_client`: the page, the static files a browser with an
empty cache fetches, the kernel's websocket, the widget states, the same clicks as widget
messages), all in this process and using almost no CPU, so the K visitors cost the server what K
browsers on their own laptops would and the times are the server's. Before the classes one
Chromium visit to a 1-visitor server records which static files a browser fetches (each protocol
visitor then fetches them too, unless ``--no-assets``), the times it saw, and its first grid's ids
(the protocol visitors' must be the same). Times are to the widget message that carries the
change, not to pixels painted. Per visitor also: page GET, static files, kernel connect, widget
states, search click -> grid state.

    .venv/bin/python benchmarks/bench_class.py --client protocol --visitors 1 10 20 30   # ~5 minutes
Writes benchmarks/results/class_protocol.{json,md} and class_protocol.png (the browser results stay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_engine import machine  # noqa: E402
from dashboard_driver import (CHROMIUM, CHROMIUM_ARGS, CLASS_QUERY, PAINTED, free_port, run_class,  # noqa: E402
                              serve_command, stop_process_group, wait_until)

from clipbranches_widgets.testing.widget_client import run_protocol_class  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DASHBOARD = ROOT / "notebooks" / "dashboard.ipynb"
TARGETS = {"first_grid_median_s": 10.0, "first_grid_max_s": 20.0, "finetune_median_s": 2.0,
           "server_pss_per_visitor_mb": 400.0}
#: results file stem per kind of visitor
STEMS = {"browser": "class", "protocol": "class_protocol"}


# -- the server --------------------------------------------------------------------------------

def start_server(visitors: int, plain: bool, log_path: Path):
    """Start the class-mode server (or plain Voilà) in its own process group; return (proc, port)."""
    port = free_port()
    if plain:
        cmd = [str(Path(sys.executable).with_name("voila")), str(DASHBOARD), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--preheat_kernel=True", f"--pool_size={visitors}"]
    else:
        cmd = serve_command(port, visitors)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, port


def server_tree(proc) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kernels(proc) -> list[psutil.Process]:
    out = []
    for p in server_tree(proc):
        try:
            if "ipykernel_launcher" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, all but idle and iowait)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def role(p: psutil.Process) -> str:
    """Which part of the server a process is: kernel, query process, or the Voilà server itself."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.NoSuchProcess:
        return "gone"
    return "kernels" if "ipykernel_launcher" in cmd else "query" if "embedding.remote" in cmd else "voila"


def cpu_by_role(proc) -> dict:
    out = {"voila": 0.0, "kernels": 0.0, "query": 0.0}
    for p in server_tree(proc):
        r = role(p)
        if r in out:
            out[r] += cpu_seconds([p])
    return out


def pss_mb(procs) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def wait_ready(proc, log_path: Path, timeout: float = 900.0) -> tuple[float, int]:
    """Seconds until the pool has gone quiet (no kernel CPU and no new kernel for 5 s: every pooled
    kernel has run the notebook and its warm-up), and how many kernels it holds then (a kernel that
    died while starting is not replaced by Voilà, so this can be fewer than the pool size)."""
    t0 = time.monotonic()
    quiet_since, last = None, None
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}")
        ks = kernels(proc)
        now = (len(ks), round(cpu_seconds(ks), 1))
        if ks and now == last:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 5.0:
                return quiet_since - t0, len(ks)
        else:
            quiet_since = None
        last = now
        time.sleep(0.5)
    raise RuntimeError(f"the pool was not ready within {timeout:.0f} s; see {log_path}")


class Sampler(threading.Thread):
    """Every 0.5 s: the server tree's PSS (peak kept) and kernel count."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.peak_pss, self.peak_kernels, self.samples = proc, 0.0, 0, []
        self._done = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self._done.wait(0.5):
            tree = server_tree(self.proc)
            pss = pss_mb(tree)
            n = len(kernels(self.proc))
            self.samples.append((time.monotonic() - t0, pss, n))
            self.peak_pss, self.peak_kernels = max(self.peak_pss, pss), max(self.peak_kernels, n)

    def stop(self):
        self._done.set()
        self.join()


# -- one class size ----------------------------------------------------------------------------

def measure(visitors: int, plain: bool, logs: Path, client: str = "browser", assets: list[str] = ()) -> dict:
    """One class of ``visitors`` on a fresh server: Chromium pages (``client="browser"``) or protocol
    clients (``"protocol"``, each fetching ``assets`` after the page as a browser would)."""
    log_path = logs / f"server-{'plain' if plain else 'class'}-{client}-{visitors}.log"
    t_start, load_before = time.monotonic(), os.getloadavg()[0]
    proc, port = start_server(visitors, plain, log_path)
    try:
        ready_s, pooled = wait_ready(proc, log_path)
        idle = server_tree(proc)
        idle_pss = pss_mb(idle)
        ks = kernels(proc)
        kernel_pss = [pss_mb([k]) for k in ks]
        kernel_cpu = [cpu_seconds([k]) for k in ks]
        torch_in_kernels = sum(any("libtorch" in m.path for m in k.memory_maps()) for k in ks)
        sampler = Sampler(proc)
        sampler.start()
        server_cpu0, busy0, roles0 = cpu_seconds(server_tree(proc)), busy_cpu_seconds(), cpu_by_role(proc)
        t0, thread0 = time.monotonic(), time.thread_time()
        url = f"http://127.0.0.1:{port}/"
        if client == "protocol":
            results = asyncio.run(run_protocol_class(url, visitors, assets=list(assets)))
        else:
            results = asyncio.run(run_class(url, visitors))
        wall = time.monotonic() - t0
        # the protocol clients all run in this thread's event loop: its CPU time is theirs
        client_cpu = time.thread_time() - thread0
        server_cpu = cpu_seconds(server_tree(proc)) - server_cpu0
        # kernels that were culled or replaced during the class are missing here: a lower bound
        roles = {k: v - roles0.get(k, 0.0) for k, v in cpu_by_role(proc).items()}
        # the pages' renderers are gone by now (psutil cannot read a dead process's CPU): what the
        # machine as a whole was busy for, less the server's share, is the browser (and this script)
        browser_cpu = busy_cpu_seconds() - busy0 - server_cpu
        time.sleep(2.0)
        sampler.stop()
        log_text = log_path.read_text(errors="replace")
        ready_line = re.search(r"(\d+) kernel\(s\) ready for visitors, (\d+) s after", log_text)
    finally:
        stop_process_group(proc)
    ok = [r for r in results if "failed" not in r]
    first = [r["first_grid_s"] for r in ok]
    fine = [r["finetune_s"] for r in ok]
    extra = {}
    if client == "protocol":
        words = [w for w in CLASS_QUERY.lower().split() if len(w) > 2]
        for r in results:  # keep the records small: the first ids, and whether the captions fit the query
            captions = r.pop("captions", None)
            if captions is not None:
                r["captions_with_query_words"] = sum(all(w in c.lower() for w in words) for c in captions)
            r.pop("answer_ids", None)
            if "first_ids" in r:
                r["first_ids"] = r["first_ids"][:10]
        extra = {"client_cpu_s": client_cpu, "other_cpu_s": browser_cpu,
                 "assets_fetched": len(assets),
                 "same_first_ids": len({tuple(r["first_ids"]) for r in ok}) <= 1}
        for key in ("page_s", "assets_s", "connect_s", "states_s", "search_s"):
            extra[f"{key[:-2]}_median_s"] = float(np.median([r[key] for r in ok])) if ok else None
    return {
        "client": client, **extra,
        "visitors": visitors, "server": "plain voila" if plain else "clipbranches serve",
        "served": len(ok), "pooled_kernels": pooled, "failures": [r["failed"] for r in results if "failed" in r],
        "prepare_s": ready_s, "prepare_reported_s": float(ready_line.group(2)) if ready_line else None,
        "setup_wall_s": time.monotonic() - t_start,
        "idle_server_pss_mb": idle_pss, "kernel_pss_mb_median": float(np.median(kernel_pss)) if kernel_pss else None,
        "kernel_start_cpu_s_median": float(np.median(kernel_cpu)) if kernel_cpu else None,
        "kernels_with_torch": torch_in_kernels,
        "peak_server_pss_mb": sampler.peak_pss, "peak_kernels": sampler.peak_kernels,
        "server_pss_per_visitor_mb": sampler.peak_pss / visitors,
        "page_to_app_median_s": float(np.median([r["page_to_app_s"] for r in ok])) if ok else None,
        "first_grid_median_s": float(np.median(first)) if first else None,
        "first_grid_max_s": float(max(first)) if first else None,
        "finetune_median_s": float(np.median(fine)) if fine else None,
        "finetune_max_s": float(max(fine)) if fine else None,
        "class_wall_s": wall, "server_cpu_s": server_cpu, "server_cpu_by_role_s": roles,
        "browser_cpu_s": browser_cpu,
        "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0], "per_visitor": results,
        "pss_samples": sampler.samples,
    }


# -- what a real browser fetches (for the protocol clients) --------------------------------------

async def _chromium_visit(url: str) -> dict:
    """One Chromium visitor that records every request it makes: open the page, search, wait for the
    grid painted. Returns its times, its first grid's ids and the requests (path, kind, bytes)."""
    from playwright.async_api import async_playwright

    origin = url.rstrip("/")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            outside = []

            async def route(r):
                if r.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
                    await r.continue_()
                else:  # Voilà asks a CDN for FontAwesome; nothing outside 127.0.0.1 is reachable
                    outside.append(r.request.url)
                    await r.abort()

            await page.route("**/*", route)
            finished, frames = [], {"binary": 0, "text": 0}

            def on_frame(payload):
                frames["binary" if isinstance(payload, bytes) else "text"] += 1

            page.on("requestfinished", lambda req: finished.append(req))
            page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
            t0 = time.perf_counter()
            await page.goto(url, timeout=240_000)
            await page.wait_for_selector(".cb-query input", timeout=240_000)
            page_to_app = time.perf_counter() - t0
            await page.fill(".cb-query input", CLASS_QUERY)
            t1 = time.perf_counter()
            await page.click(".cb-search")
            await wait_until(page, "document.querySelectorAll('.cb-tile').length >= 60 && [...document.querySelectorAll("
                                   "'.cb-stats[data-count]')].some(s => s.dataset.count === '60')")
            await page.evaluate(PAINTED)
            t2 = time.perf_counter()
            ids = await page.eval_on_selector_all(".cb-tile", "els => els.map(e => Number(e.dataset.id))")
            requests = []
            for req in finished:
                if not req.url.startswith(origin) or req.resource_type == "websocket":
                    continue
                sizes = await req.sizes()
                timing = req.timing
                requests.append({"method": req.method, "path": req.url[len(origin):], "kind": req.resource_type,
                                 "bytes": sizes.get("responseBodySize", 0),
                                 "start_ms": timing.get("startTime", 0.0),
                                 "end_ms": timing.get("startTime", 0.0) + max(0.0, timing.get("responseEnd", 0.0))})
            await context.close()
        finally:
            await browser.close()
    return {"page_to_app_s": page_to_app, "first_grid_s": t2 - t0, "search_s": t2 - t1, "first_ids": ids,
            "requests": requests, "outside_requests": outside, "websocket_frames": frames}


def browser_reference(logs: Path) -> dict:
    """A 1-visitor server and one Chromium visit: which static files a browser fetches (paths, bytes,
    how long they took), which websocket framing it used, its times and its first grid's ids."""
    log_path = logs / "server-reference.log"
    proc, port = start_server(1, False, log_path)
    try:
        wait_ready(proc, log_path)
        visit = asyncio.run(_chromium_visit(f"http://127.0.0.1:{port}/"))
    finally:
        stop_process_group(proc)
    statics = [r for r in visit["requests"]
               if r["method"] == "GET" and r["path"].startswith("/voila/") and r["kind"] not in ("fetch", "xhr")]
    span = (max(r["end_ms"] for r in statics) - min(r["start_ms"] for r in statics)) / 1000 if statics else 0.0
    frames = visit["websocket_frames"]
    return {
        "chromium_page_to_app_s": visit["page_to_app_s"], "chromium_first_grid_s": visit["first_grid_s"],
        "chromium_search_s": visit["search_s"], "chromium_first_ids": visit["first_ids"],
        "assets": [r["path"] for r in statics], "asset_bytes": sum(r["bytes"] for r in statics),
        "asset_span_s": span,
        "asset_groups": {prefix: [sum(r["path"].startswith(prefix) for r in statics),
                                  sum(r["bytes"] for r in statics if r["path"].startswith(prefix))]
                         for prefix in ("/voila/static/", "/voila/labextensions/", "/voila/templates/")},
        "other_requests": [f"{r['method']} {re.sub(r'[0-9a-f]{8}-[0-9a-f-]{27}', '<kernel id>', r['path'].split('?')[0])} "
                           f"({r['kind']}, {r['bytes']} B)"
                           for r in visit["requests"] if r not in statics],
        "outside_requests": visit["outside_requests"],
        "websocket": "v1 (binary)" if frames["binary"] and not frames["text"] else
                     "json (text)" if frames["text"] and not frames["binary"] else f"mixed {frames}",
    }


def met(row, key) -> str:
    v = row.get(key)
    if v is None:
        return "—"
    return "yes" if v <= TARGETS[key] else "**no**"


def rerun_command(runs: list[dict], client: str, out: Path) -> str:
    """The command that measures these runs' class sizes again."""
    sizes = {kind: " ".join(str(r["visitors"]) for r in runs if (r["server"] == "plain voila") == plain)
             for kind, plain in (("--visitors", False), ("--plain-voila", True))}
    args = [f"{flag} {v}" for flag, v in sizes.items() if v]
    client_arg = ["--client protocol"] if client == "protocol" else []
    out_arg = [] if out.resolve() == RESULTS.resolve() else [f"--out {os.path.relpath(out.resolve(), ROOT)}"]
    return " ".join([".venv/bin/python benchmarks/bench_class.py", *client_arg, *args, *out_arg])


def cpu_cells(run: dict) -> str:
    """Table cells: CPU seconds of the Voilà server, the kernels and the query process (per visitor)."""
    k, roles = run["visitors"], run["server_cpu_by_role_s"]
    return " | ".join(f"{roles[x]:.1f} ({roles[x] / k:.2f})" for x in ("voila", "kernels", "query"))


def failure_lines(runs: list[dict]) -> list[str]:
    """The report's "Failures" list (nothing when every visitor was served)."""
    fails = [(r["server"], r["visitors"], f) for r in runs for f in r["failures"]]
    return ["", "Failures:", ""] + [f"- {s}, {k} visitors: {f}" for s, k, f in fails] if fails else []


def report(runs: list[dict], mach: dict, rerun: str) -> str:
    lines = ["# A class at once: K visitors on one dashboard server", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['date']}. "
             "Server and K headless Chromium pages (one browser, a context per visitor) on the same machine: the "
             "pages' own CPU (column `browser CPU`) is taken from the 2 cores the server has, which a real "
             "class on its own laptops would not do. Each visitor: open the page, search \"a red star\" "
             "(first grid = page open to 60 tiles painted), \"All positive\", Fine-tune (click to answer "
             "painted, model \"Automatic\"). Load average (1 min) before each class size, from other work on the "
             "machine: " + ", ".join(f"{r.get('load_average_1min_before', float('nan')):.1f}" for r in runs) + ".", "",
             "| server | visitors | served | prepare (s; kernels ready) | first grid median / max (s) | fine-tune median / max (s) "
             "| peak server PSS (GB) | per visitor (MB) | kernel PSS (MB) | kernel start CPU (s) | server CPU (s) "
             "| browser CPU (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        f = lambda v, d=1: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(
            f"| {r['server']} | {r['visitors']} | {r['served']} | {f(r['prepare_s'], 0)} ({r.get('pooled_kernels', '?')}) | "
            f"{f(r['first_grid_median_s'])} / {f(r['first_grid_max_s'])} | {f(r['finetune_median_s'], 2)} / "
            f"{f(r['finetune_max_s'], 2)} | {r['peak_server_pss_mb'] / 1024:.2f} | {r['server_pss_per_visitor_mb']:.0f} | "
            f"{f(r['kernel_pss_mb_median'], 0)} | {f(r['kernel_start_cpu_s_median'], 2)} | {r['server_cpu_s']:.0f} | "
            f"{r['browser_cpu_s']:.0f} |")
    lines += ["", "Where a visitor's first grid went (medians, seconds): the page (open to the app's query box: "
              "Voilà sends the page the pooled kernel already rendered, the browser boots JupyterLab's widget "
              "manager and connects) vs the search (click to 60 tiles painted: the query process encodes the "
              "text, the kernel finds the neighbours, sends the tiles, the browser paints them):", "",
              "| server | visitors | page open -> app | search click -> grid painted |", "|---|---|---|---|"]
    for r in runs:
        ok = [v for v in r["per_visitor"] if "failed" not in v]
        if ok:
            page = float(np.median([v["page_to_app_s"] for v in ok]))
            search = float(np.median([v["first_grid_s"] - v["page_to_app_s"] for v in ok]))
            lines.append(f"| {r['server']} | {r['visitors']} | {page:.1f} | {search:.1f} |")
    lines += ["", "Targets (class mode, 20 visitors): all served, first grid median <= 10 s and max <= 20 s, "
              "fine-tune median <= 2 s, server <= 400 MB per visitor; 30 visitors all served. (One visitor alone: "
              "as fast as before class mode, the plain Voilà row.)", "",
              "| visitors | all served | first grid median | first grid max | fine-tune median | MB per visitor |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        if r["server"] == "clipbranches serve" and r["visitors"] >= 20:
            lines.append(f"| {r['visitors']} | {'yes' if r['served'] == r['visitors'] else '**no**'} | "
                         f"{met(r, 'first_grid_median_s')} | {met(r, 'first_grid_max_s')} | "
                         f"{met(r, 'finetune_median_s')} | {met(r, 'server_pss_per_visitor_mb')} |")
    lines += ["", "Where the server's CPU went during the class (seconds; per visitor in brackets) and what the "
              "co-located browser pages used:", "",
              "| server | visitors | Voilà server | kernels | query process | browser pages |", "|---|---|---|---|---|---|"]
    for r in runs:
        k, cells = r["visitors"], cpu_cells(r)
        lines.append(f"| {r['server']} | {k} | {cells} | {r['browser_cpu_s']:.1f} ({r['browser_cpu_s'] / k:.2f}) |")
    lines += failure_lines(runs)
    lines += ["", "Columns: *prepare* = server start until the pool is full and every pooled kernel has gone "
              "quiet; *peak server PSS* = the most the server's process tree (Voilà, kernels, query process) "
              "held during the class; *kernel PSS* and *kernel start CPU* = one pooled kernel before the class "
              "(imports, catalog, notebook run, warm-up); *kernels with torch* is "
              + ", ".join(f"{r['kernels_with_torch']}" for r in runs) + " in the order of the rows.", "",
              f"Re-run: `{rerun}`."]
    return "\n".join(lines) + "\n"


def _f(v, d=1) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def report_protocol(runs: list[dict], mach: dict, ref: dict | None, browser_runs: list[dict], rerun: str) -> str:
    """class_protocol.md: the classes with protocol clients, next to the Chromium rows of class.json."""
    kb = lambda n: f"{n / 2**20:.1f} MB"  # noqa: E731
    lines = ["# A class at once, protocol clients: K visitors on one dashboard server, the server's side", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['date']}. Each visitor "
             "is a protocol client (`clipbranches_widgets/testing/widget_client.py`), all of them in the benchmark's "
             "one thread: it GETs the page, the static files a browser with an empty cache fetches (six at a time), "
             "the kernel model, opens the kernel's websocket (JupyterLab 4's `v1.kernel.websocket.jupyter.org` "
             "framing), asks for every widget's state (ipywidgets 8's `jupyter.widget.control` `request_states`) "
             "and then sends what the browser's widget views would: the query box's value, Search's click, the "
             "grid's labels (\"All positive\"), Fine-tune's click. So K visitors cost the server what K browsers on "
             "their own laptops would, and the machine's cores are the server's (column `client CPU`: all K clients "
             "together). Times end when the widget message with the change arrives (first grid: page GET start to "
             "the grid's update carrying its 60 tiles; fine-tune: click to the answer's statistics and tiles), not "
             "when a browser would have painted it. Load average (1 min) before each class size: "
             + ", ".join(f"{r.get('load_average_1min_before', float('nan')):.1f}" for r in runs) + ".", ""]
    if ref:
        groups = ", ".join(f"{n} from `{p}` ({kb(b)})" for p, (n, b) in ref["asset_groups"].items() if n)
        fetched = "each protocol visitor fetches them too" if any(r.get("assets_fetched") for r in runs) else \
            "**the protocol visitors here skipped them** (`--no-assets`)"
        lines += [f"What a browser fetches and the clients do not (or do), from one Chromium visit to a 1-visitor "
                  f"server before the classes: {len(ref['assets'])} static files, {kb(ref['asset_bytes'])} "
                  f"({groups}), {ref['asset_span_s']:.1f} s from the first to the last for that one page; "
                  f"{fetched}. Besides: {'; '.join(ref['other_requests'])}, which the clients do; "
                  f"{len(ref['outside_requests'])} requests outside the server (FontAwesome from a CDN), which "
                  f"neither makes; the browser's websocket used the {ref['websocket']} framing. Not done by the "
                  "clients: running the JavaScript, rendering, painting (the client side of the browser rows' times). "
                  f"That Chromium visit, alone on the machine: page open -> app {ref['chromium_page_to_app_s']:.1f} s, "
                  f"first grid painted {ref['chromium_first_grid_s']:.1f} s (search click -> painted "
                  f"{ref['chromium_search_s']:.1f} s).", ""]
    lines += ["| server | visitors | served | prepare (s; kernels ready) | first grid median / max (s) | "
              "fine-tune median / max (s) | peak server PSS (GB) | per visitor (MB) | server CPU (s) | client CPU (s) "
              "| same first ids |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        same = "yes" if r.get("same_first_ids") else "**no**"
        if ref and r["served"]:
            ok = [v for v in r["per_visitor"] if "failed" not in v]
            same += ", = Chromium's" if ok[0]["first_ids"] == ref["chromium_first_ids"][:10] else ", **not Chromium's**"
        lines.append(
            f"| {r['server']} (protocol clients) | {r['visitors']} | {r['served']} | {_f(r['prepare_s'], 0)} "
            f"({r.get('pooled_kernels', '?')}) | {_f(r['first_grid_median_s'])} / {_f(r['first_grid_max_s'])} | "
            f"{_f(r['finetune_median_s'], 2)} / {_f(r['finetune_max_s'], 2)} | {r['peak_server_pss_mb'] / 1024:.2f} | "
            f"{r['server_pss_per_visitor_mb']:.0f} | {r['server_cpu_s']:.1f} | {r['client_cpu_s']:.1f} | {same} |")
    lines += ["", "Where a visitor's first grid went (medians, seconds): the page GET (Voilà sends what the pooled "
              "kernel already rendered), the static files, the kernel connection (kernel model GET, websocket, "
              "kernel_info), the widget states, then the search (click to the grid's update: the query process "
              "encodes the text, the kernel finds the neighbours and sends the tiles):", "",
              "| server | visitors | page GET | static files | kernel connect | widget states | page open -> app "
              "| search click -> grid |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["served"]:
            lines.append(f"| {r['server']} (protocol clients) | {r['visitors']} | {_f(r['page_median_s'], 2)} | "
                         f"{_f(r['assets_median_s'], 2)} | {_f(r['connect_median_s'], 2)} | {_f(r['states_median_s'], 2)} | "
                         f"{_f(r['page_to_app_median_s'], 2)} | {_f(r['search_median_s'], 2)} |")
    if browser_runs:
        lines += ["", "Next to the Chromium class (`class.md`: the browser pages on the same 2 cores as the server; "
                  "its own machine, date and load), medians in seconds:", "",
                  "| server | visitors | first grid: Chromium | first grid: protocol | page -> app: Chromium "
                  "| page -> app: protocol | fine-tune: Chromium | fine-tune: protocol | server CPU (s): Chromium "
                  "| server CPU (s): protocol |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            b = next((x for x in browser_runs if x["server"] == r["server"] and x["visitors"] == r["visitors"]), None)
            if b is None:
                continue
            lines.append(f"| {r['server']} | {r['visitors']} | {_f(b['first_grid_median_s'])} | "
                         f"{_f(r['first_grid_median_s'])} | {_f(b['page_to_app_median_s'])} | "
                         f"{_f(r['page_to_app_median_s'])} | {_f(b['finetune_median_s'], 2)} | "
                         f"{_f(r['finetune_median_s'], 2)} | {b['server_cpu_s']:.1f} | {r['server_cpu_s']:.1f} |")
    lines += ["", "Targets (class mode, 20 visitors): all served, first grid median <= 10 s and max <= 20 s, "
              "fine-tune median <= 2 s, server <= 400 MB per visitor; 30 visitors all served.", "",
              "| visitors | all served | first grid median | first grid max | fine-tune median | MB per visitor |",
              "|---|---|---|---|---|---|"]
    target_rows = [r for r in runs if r["server"] == "clipbranches serve" and r["visitors"] >= 20]
    for r in target_rows:
        lines.append(f"| {r['visitors']} | {'yes' if r['served'] == r['visitors'] else '**no**'} | "
                     f"{met(r, 'first_grid_median_s')} | {met(r, 'first_grid_max_s')} | "
                     f"{met(r, 'finetune_median_s')} | {met(r, 'server_pss_per_visitor_mb')} |")
    if not target_rows:
        lines.append("| (no class of 20 or more in this run) | | | | | |")
    lines += ["", "Where the server's CPU went during the class (seconds; per visitor in brackets), what the "
              "protocol clients used (this benchmark's thread) and the rest of the machine (other work included):",
              "", "| server | visitors | Voilà server | kernels | query process | protocol clients | rest of machine |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        k, cells = r["visitors"], cpu_cells(r)
        rest = r["other_cpu_s"] - r["client_cpu_s"]
        lines.append(f"| {r['server']} | {k} | {cells} | {r['client_cpu_s']:.1f} ({r['client_cpu_s'] / k:.2f}) | "
                     f"{rest:.1f} |")
    lines += failure_lines(runs)
    lines += ["", "Columns: *prepare* = server start until the pool is full and every pooled kernel has gone quiet; "
              "*peak server PSS* = the most the server's process tree held during the class; *same first ids* = "
              "every visitor's first grid had the same ten first ids (and those of the Chromium visit); captions "
              "holding every query word: " + ", ".join(
                  f"{min((v.get('captions_with_query_words', 0) for v in r['per_visitor'] if 'failed' not in v), default=0)}"
                  f"/60" for r in runs) + " (fewest of any visitor, in the order of the rows).", "",
              f"Re-run: `{rerun}`."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    protocol = any(r.get("client") == "protocol" for r in runs)
    suffix = " (protocol clients)" if protocol else ""
    for server, marker, color in (("clipbranches serve", "o", "C0"), ("plain voila", "s", "C1")):
        rows = [r for r in runs if r["server"] == server]
        if not rows:
            continue
        for r in rows:
            ok = [v for v in r["per_visitor"] if "failed" not in v]
            axes[0].scatter([r["visitors"]] * len(ok), [v["first_grid_s"] for v in ok], marker=marker, alpha=0.4,
                            color=color, label=f"{server}{suffix}" if r is rows[0] else None)
        axes[1].plot([r["visitors"] for r in rows], [r["server_pss_per_visitor_mb"] for r in rows], marker=marker,
                     color=color, label=server + suffix)
    axes[0].axhline(TARGETS["first_grid_max_s"], color="grey", ls="--", lw=0.8)
    axes[0].axhline(TARGETS["first_grid_median_s"], color="grey", ls=":", lw=0.8)
    axes[0].set(xlabel="visitors at once",
                ylabel="page open -> first grid " + ("state received (s)" if protocol else "painted (s)"),
                title="Each visitor's first grid" + suffix)
    axes[1].axhline(TARGETS["server_pss_per_visitor_mb"], color="grey", ls="--", lw=0.8)
    axes[1].set(xlabel="visitors at once", ylabel="peak server PSS / visitor (MB)", title="Server memory per visitor")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, nargs="+", default=[1, 10, 20, 30])
    ap.add_argument("--plain-voila", type=int, nargs="*", default=[], metavar="K",
                    help="class sizes to also run against plain Voilà (kernels load torch), side by side")
    ap.add_argument("--client", choices=sorted(STEMS), default="browser",
                    help="visitors: headless Chromium pages (browser, default) or protocol clients that speak the "
                         "widget protocol without a browser (results in class_protocol.*)")
    ap.add_argument("--no-assets", action="store_true",
                    help="protocol clients: skip the static files a browser fetches (default: fetch them)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report and plot from the saved JSON (of --client's kind)")
    args = ap.parse_args()
    stem = STEMS[args.client]
    out_json = args.out / f"{stem}.json"
    if args.report_only:
        saved = json.loads(out_json.read_text())
        write_report(saved["runs"], saved["machine"], args.out, args.client, saved.get("browser_reference"))
        return
    if args.client == "browser" and not Path(CHROMIUM).exists():
        sys.exit(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    logs = Path(tempfile.mkdtemp(prefix="bench-class-"))
    print(f"server logs in {logs}", flush=True)
    mach = machine()
    ref, assets = None, []
    if args.client == "protocol":
        if Path(CHROMIUM).exists():
            print("one Chromium visit to record what a browser fetches ...", flush=True)
            ref = browser_reference(logs)
            print(f"  {len(ref['assets'])} static files, {ref['asset_bytes'] / 2**20:.1f} MB; websocket "
                  f"{ref['websocket']}", flush=True)
            assets = [] if args.no_assets else ref["assets"]
        else:
            print(f"Chromium not found at {CHROMIUM}: the protocol clients fetch no static files", flush=True)
    runs = []
    for k in args.visitors:
        for plain in ([False, True] if k in args.plain_voila else [False]):
            print(f"{'plain voila' if plain else 'class mode'}, {args.client} visitors: {k} ...", flush=True)
            runs.append(measure(k, plain, logs, args.client, assets))
            r = runs[-1]
            print(f"  served {r['served']}/{k}, first grid median {r['first_grid_median_s']}, "
                  f"fine-tune median {r['finetune_median_s']}, {r['server_pss_per_visitor_mb']:.0f} MB/visitor"
                  + (f", client CPU {r['client_cpu_s']:.1f} s" if args.client == "protocol" else ""), flush=True)
            # saved after every class size, so a later failure keeps what was measured
            args.out.mkdir(parents=True, exist_ok=True)
            saved = {"machine": mach, "client": args.client, "runs": runs}
            if ref is not None:
                saved["browser_reference"] = ref
            out_json.write_text(json.dumps(saved, indent=1))
    write_report(runs, mach, args.out, args.client, ref)


def write_report(runs: list[dict], mach: dict, out: Path, client: str = "browser", ref: dict | None = None) -> None:
    stem = STEMS[client]
    if client == "protocol":
        browser_json = out / f"{STEMS['browser']}.json"
        browser_runs = json.loads(browser_json.read_text())["runs"] if browser_json.exists() else []
        text = report_protocol(runs, mach, ref, browser_runs, rerun_command(runs, client, out))
    else:
        text = report(runs, mach, rerun_command(runs, client, out))
    (out / f"{stem}.md").write_text(text)
    plot(runs, out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
