"""Start the dashboard server (Voilà) and a headless Chromium for browser tests and the dashboard benchmark.

Chromium comes from Debian (``/usr/bin/chromium``; ``.ci/run`` installs it); Playwright drives it
through ``executable_path`` because ``playwright install`` cannot download browsers here. Voilà
listens on 127.0.0.1 only and is stopped by its PID (its whole process group, kernels included).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "notebooks" / "dashboard.ipynb"
CHROMIUM = os.environ.get("CB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(proc, port: int, timeout: float, log_path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} (see {log_path})")
        try:  # a TCP connect only: a GET of a Voila page would already start a kernel
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s")
            time.sleep(0.3)


def stop_process_group(proc) -> None:
    """Stop a server started with start_new_session=True: its whole process group (kernels too)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve_command(port: int, visitors: int = 1, notebook: Path = DASHBOARD, *extra: str) -> list[str]:
    """The server ``make demo`` runs: ``python -m clipbranches_widgets serve`` (a query process and
    Voilà with ``visitors`` preheated kernels that have already run the notebook)."""
    return [sys.executable, "-m", "clipbranches_widgets", "serve", f"--visitors={visitors}", f"--port={port}",
            f"--notebook={notebook}", *extra]


@contextmanager
def voila_server(notebook: Path = DASHBOARD, env: dict | None = None, log_path: Path | None = None,
                 timeout: float = 120.0, visitors: int = 1, extra_args=()):
    """Yield the URL of the dashboard server (``serve_command``); stop it afterwards by PID."""
    port = free_port()
    cmd = serve_command(port, visitors, notebook, *extra_args)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_port(proc, port, timeout, log_path)
        yield url
    finally:
        stop_process_group(proc)
        if log_path:
            log.close()


@contextmanager
def chromium_page(viewport=(1400, 1000)):
    """Yield a Playwright page in headless Debian Chromium (CDN requests aborted: no internet)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            # Voilà asks a CDN for FontAwesome; nothing outside 127.0.0.1 is reachable in tests
            page.route("**/*", lambda route: route.abort()
                       if not route.request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                       else route.continue_())
            yield page
        finally:
            browser.close()


def tile_state(page) -> list[tuple[int, str]]:
    """(data-id, data-label) of every rendered tile, in grid order."""
    return page.eval_on_selector_all(
        ".cb-tile", "els => els.map(e => [Number(e.dataset.id), e.dataset.label])")


def stats_count(page) -> int | None:
    value = page.eval_on_selector_all(".cb-stats[data-count]", "els => els.map(e => e.dataset.count)")
    return int(value[-1]) if value else None


def stats_view(page) -> str | None:
    """What the statistics say the grid shows: "answer" or "suggestions"."""
    value = page.eval_on_selector_all(".cb-stats[data-view]", "els => els.map(e => e.dataset.view)")
    return value[-1] if value else None


def view_state(page) -> str | None:
    """The label of the Show toggle's pressed button ("answer" or "suggestions to mark")."""
    value = page.eval_on_selector_all(".cb-view button.mod-active", "els => els.map(e => e.textContent.trim())")
    return value[-1] if value else None


def tile_notes(page) -> dict[int, str]:
    """data-id -> data-note of every rendered tile that has a note."""
    pairs = page.eval_on_selector_all(".cb-tile[data-note]", "els => els.map(e => [Number(e.dataset.id), e.dataset.note])")
    return {i: note for i, note in pairs}


def app_timings(page) -> dict[str, float]:
    """The last refine's own timings as the statistics show them, in seconds: ``total`` (query
    time) and each part of the breakdown (encode, nn, sampling, cv, train, apply)."""
    text = page.evaluate("() => { const s = [...document.querySelectorAll('.cb-stats')].pop();"
                         " return s ? s.textContent : ''; }")
    out = {k: float(v) / 1000.0 for k, v in re.findall(r"\b(encode|nn|sampling|cv|train|apply) ([\d.]+) ms", text)}
    total = re.search(r"query time ([\d.]+) s", text)
    if total:
        out["total"] = float(total.group(1))
    return out


def estimate_state(page) -> dict | None:
    """The answer's estimate as the page shows it: precision, recall, f1 (floats) and its text."""
    return page.evaluate("() => { const e = [...document.querySelectorAll('.cb-estimate')].pop();"
                         " return e ? {precision: Number(e.dataset.precision), recall: Number(e.dataset.recall),"
                         " f1: Number(e.dataset.f1), text: e.textContent.trim()} : null; }")


@contextmanager
def jupyterlab_server(root_dir: Path, log_path: Path | None = None, timeout: float = 90.0):
    """Yield the base URL of a JupyterLab server (127.0.0.1, no token) serving ``root_dir``."""
    port = free_port()
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={root_dir}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "getuid") and os.getuid() == 0:  # CI containers often run as root
        cmd.append("--allow-root")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for_port(proc, port, timeout, log_path)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_process_group(proc)
        if log_path:
            log.close()


# -- a class: K visitors at once (Playwright's async API) ------------------------------------------
CLASS_QUERY = "a red star"
CLASS_STEP_TIMEOUT_MS = 240_000


PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


async def wait_until(page, condition: str) -> None:
    """Wait for a JS condition; an error the app shows (``.cb-error``) ends the wait at once."""
    handle = await page.wait_for_function(
        "() => { const e = [...document.querySelectorAll('.cb-error')].map(x => x.textContent.trim())"
        f".filter(Boolean); if (e.length) return 'ERROR ' + e[0]; return ({condition}) ? 'ok' : false; }}",
        timeout=CLASS_STEP_TIMEOUT_MS)
    value = await handle.json_value()
    if value != "ok":
        raise RuntimeError(f"the app shows an error: {value[6:]}")


async def visitor(browser, url: str, index: int, start: asyncio.Event) -> dict:
    """One visitor of a class, in its own browser context: when ``start`` is set, open the page
    (``page_to_app_s``), search "a red star" (``first_grid_s``: page open to its 60 tiles painted),
    mark the page "All positive", Fine-tune (``finetune_s``: click to the answer painted;
    ``answer_count``), close the tab. A step that fails or shows ``.cb-error`` ends the visit with
    ``failed`` = the step and the error."""
    out = {"visitor": index}
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    # Voilà asks a CDN for FontAwesome; nothing outside 127.0.0.1 is reachable here
    await page.route("**/*", lambda route: route.abort()
                     if not route.request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                     else route.continue_())
    await start.wait()
    step = "open the page"
    try:
        t0 = time.perf_counter()
        await page.goto(url, timeout=CLASS_STEP_TIMEOUT_MS)
        await page.wait_for_selector(".cb-query input", timeout=CLASS_STEP_TIMEOUT_MS)
        out["page_to_app_s"] = time.perf_counter() - t0
        step = "search"
        await page.fill(".cb-query input", CLASS_QUERY)
        await page.click(".cb-search")
        await wait_until(page, "document.querySelectorAll('.cb-tile').length >= 60 && [...document.querySelectorAll("
                               "'.cb-stats[data-count]')].some(s => s.dataset.count === '60')")
        await page.evaluate(PAINTED)
        out["first_grid_s"] = time.perf_counter() - t0
        step = "mark all"
        await page.click(".cb-all-pos")
        await wait_until(page, "[...document.querySelectorAll('.cb-tile')].every(t => t.dataset.label === 'pos')")
        step = "fine-tune"
        t1 = time.perf_counter()
        await page.click(".cb-refine")
        await wait_until(page, "(s => s && s.dataset.view === 'answer' && s.querySelector('.cb-estimate')"
                               " && document.querySelectorAll('.cb-tile').length > 0)"
                               "([...document.querySelectorAll('.cb-stats[data-count]')].pop())")
        await page.evaluate(PAINTED)
        out["finetune_s"] = time.perf_counter() - t1
        out["answer_count"] = int(await page.eval_on_selector_all(
            ".cb-stats[data-count]", "els => els[els.length - 1].dataset.count"))
    except Exception as exc:  # noqa: BLE001 - a failed visitor is a result, not a crash
        out["failed"] = f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    finally:
        # the visitor leaves; the server culls the kernel once it has had no connection for --cull-idle s
        await context.close()
    return out


async def run_class(url: str, visitors: int) -> list[dict]:
    """``visitors`` headless Chromium contexts open ``url`` at the same moment and each runs
    :func:`visitor`; returns their records in visitor order."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            start = asyncio.Event()
            tasks = [asyncio.create_task(visitor(browser, url, i, start)) for i in range(visitors)]
            await asyncio.sleep(1.0)  # every context made; then everyone opens the page at once
            start.set()
            return list(await asyncio.gather(*tasks))
        finally:
            await browser.close()
