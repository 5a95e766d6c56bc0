"""Class mode: one query process encodes every kernel's queries; Voilà keeps a bounded pool of
preheated kernels (``python -m clipbranches_widgets serve --visitors N``, what ``make demo`` runs).

The query process is real (a child process with the demo catalog's tiny CLIP); a kernel-like client
runs in a fresh interpreter and must never import torch. The class test serves the dashboard to
more visitors than its pool at once in headless Chromium and checks that every visitor is served
the same answer as the session API gives, that no kernel maps libtorch, that the pool stays
within its bound, and that the kernels of visitors who left are culled and the pool refilled.

Kernels are forked from a template process (``clipbranches_widgets.kernel_fork``): a forked kernel
is checked on its own (jupyter_client starts, interrupts, restarts and shuts it down) and in a
class-mode server (its kernels are the template's children, culled ones are reaped, a kernel still
starts, the ordinary way, once the template is gone, and nothing is left once the server stops).
"""

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import psutil
import pytest
from dashboard_driver import CHROMIUM, ROOT, free_port, run_class, serve_command, voila_server
from jupyter_client import AsyncKernelManager

from clipbranches_widgets import open_catalog
from clipbranches_widgets.catalog import DEFAULT_CATALOG
from clipbranches_widgets.embedding.query import QueryEncoder
from clipbranches_widgets.embedding.remote import KEY_ENV, QueryService, RemoteQueryEncoder, service_from_environment
from clipbranches_widgets.kernel_fork import ForkProvisioner, KernelTemplate
from clipbranches_widgets.serve import SPARE_KERNELS, THREAD_VARIABLES, kernel_threads, start_query_process
from clipbranches_widgets.session import SearchSession


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A running query process for the default catalog; yields its QueryService (address, key)."""
    svc = QueryService(str(tmp_path_factory.mktemp("svc") / "query.sock"))
    proc = start_query_process(svc, [DEFAULT_CATALOG])
    yield svc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def catalog():
    return open_catalog(DEFAULT_CATALOG)


def test_remote_encoder_gives_the_in_process_vectors(service, catalog):
    local = QueryEncoder.for_catalog(catalog)
    remote = RemoteQueryEncoder(catalog, service.address, service.authkey)
    texts = ["a red star", "a small blue circle", "ünïcode ☆"]
    np.testing.assert_allclose(remote.encode_texts(texts), local.encode_texts(texts), atol=1e-5)
    pictures = [catalog.image(5), catalog.image(123)]
    np.testing.assert_allclose(remote.encode_images(pictures), local.encode_images(pictures), atol=1e-5)


def test_a_kernel_with_the_service_never_imports_torch(service, catalog):
    code = ("import json, sys; from clipbranches_widgets import open_catalog;"
            f"cat = open_catalog({str(DEFAULT_CATALOG)!r}); ids, _ = cat.search_text('a red star', k=20);"
            "print(json.dumps({'ids': ids.tolist(), 'torch': 'torch' in sys.modules,"
            " 'encoder': type(cat.query_encoder()).__name__}))")
    env = {**os.environ, **service.environment(), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["encoder"] == "RemoteQueryEncoder" and got["torch"] is False
    expected, _ = catalog.search_text("a red star", k=20)
    assert got["ids"] == expected.tolist()


def test_a_wrong_key_is_refused_and_the_kernel_falls_back(service, catalog, monkeypatch, caplog):
    monkeypatch.setenv("CLIPBRANCHES_QUERY_SERVICE", service.address)
    monkeypatch.setenv(KEY_ENV, "00" * 32)
    with caplog.at_level(logging.WARNING):
        assert service_from_environment(catalog) is None
    assert "loading the encoder in this process" in caplog.text
    # the service refused that client and still serves the right one
    good = RemoteQueryEncoder(catalog, service.address, service.authkey)
    assert good.encode_texts(["a star"]).shape == (1, catalog.dim)


def test_a_service_that_is_gone_means_a_fallback_not_an_error(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBRANCHES_QUERY_SERVICE", str(tmp_path / "nobody.sock"))
    monkeypatch.setenv(KEY_ENV, "11" * 32)
    assert service_from_environment(catalog) is None


def test_a_rebuilt_catalog_and_a_bad_request_get_clear_errors(service, catalog):
    remote = RemoteQueryEncoder(catalog, service.address, service.authkey)
    remote.identity = {**remote.identity, "fingerprint": "0" * 64}  # as if the kernel's copy were older
    with pytest.raises(ValueError, match="rebuilt"):
        remote.ping()
    remote = RemoteQueryEncoder(catalog, service.address, service.authkey)
    with pytest.raises(ValueError, match="1..64 queries"):
        remote.encode_texts(["x"] * 65)
    assert remote.encode_texts(["a green square"]).shape == (1, catalog.dim)  # the connection lives on


def test_a_class_shares_the_cores_and_a_users_thread_setting_wins(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert kernel_threads(1, cores=2) == {name: "2" for name in THREAD_VARIABLES}
    assert kernel_threads(30, cores=2) == {name: "1" for name in THREAD_VARIABLES}
    assert kernel_threads(4, cores=16)["NUMBA_NUM_THREADS"] == "4"
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert "NUMBA_NUM_THREADS" not in kernel_threads(30, cores=2)


# -- kernels forked from the template ---------------------------------------------------------------

KERNEL_ENV = {"HF_HUB_OFFLINE": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
PROBE = ("import json, os, signal, numba, numpy; print(json.dumps({'pid': os.getpid(), 'cwd': os.getcwd(),"
         " 'mark': os.environ.get('CB_TEST_MARK'), 'numba_threads': numba.config.NUMBA_NUM_THREADS,"
         " 'random': numpy.random.random(), 'parent_pid': os.environ.get('JPY_PARENT_PID')}))")


@pytest.fixture
def template():
    """A kernel template (short private folder: Unix socket paths are limited to 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="cb-fork-")
    env = {**os.environ, **KERNEL_ENV, "CB_TEST_MARK": "template"}
    tpl = KernelTemplate.start(folder, env)
    tpl.info = tpl.wait_ready()
    yield tpl
    tpl.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _manager(template, folder, name="k"):
    km = AsyncKernelManager(kernel_name="python3", transport="ipc",
                            connection_file=os.path.join(folder, f"{name}.json"))
    km.provisioner = ForkProvisioner(kernel_id=name, kernel_spec=km.kernel_spec, parent=km, template=template)
    return km


async def _run(kc, code, timeout=60):
    out = []
    reply = await kc.execute_interactive(code, timeout=timeout,
                                         output_hook=lambda m: out.append(m["content"].get("text", "")))
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


def _gone(pid) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if not _gone(p)]
        time.sleep(0.2)


def test_the_template_forks_single_threaded_with_everything_imported(template):
    info = template.info
    assert info["hazard"] is None and info["python_threads"] == 1 and info["preload_failed"] == []
    # besides its main thread only pyarrow's jemalloc thread (fork-safe); OpenBLAS has 1 thread here
    assert [t for t in info["threads"] if t != "jemalloc_bg_thd"] == [info["threads"][0]], info["threads"]
    assert info["modules"] > 1000  # PRELOAD and what it imports (preload_failed: none failed)
    kwargs = {"env": {**template.env, "CB_TEST_MARK": "kernel"}}
    cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "x.json"]
    assert template.cannot_fork(cmd, kwargs) is None
    assert "NUMBA_NUM_THREADS" in template.cannot_fork(cmd, {"env": {**template.env, "NUMBA_NUM_THREADS": "7"}})
    assert "ipykernel" in template.cannot_fork([sys.executable, "-m", "other"], kwargs)


def test_a_forked_kernel_is_a_kernel_of_its_own(template, tmp_path):
    """Forked from the template, a kernel has its own session, environment, working directory and
    random state, shows ipykernel's command line, and jupyter_client interrupts, restarts and
    shuts it down as a spawned one (the template reaps it: no zombie)."""
    folder = tempfile.mkdtemp(prefix="cb-k-")

    async def scenario():
        kms = [_manager(template, folder, f"k{i}") for i in range(2)]
        env = {**template.env, "CB_TEST_MARK": "kernel"}
        for km in kms:
            await km.start_kernel(env=env, cwd=str(tmp_path))
        clients = [km.client() for km in kms]
        try:
            for kc in clients:
                kc.start_channels()
                await kc.wait_for_ready(timeout=60)
            probes = [json.loads(await _run(kc, PROBE)) for kc in clients]
            for km, probe in zip(kms, probes):
                pid = km.provisioner.pid
                assert km.provisioner.forked and probe["pid"] == pid
                kernel = psutil.Process(pid)
                assert kernel.ppid() == template.pid and os.getpgid(pid) == pid and os.getsid(pid) == pid
                assert "ipykernel_launcher" in kernel.cmdline()
                assert probe["cwd"] == str(tmp_path) and probe["mark"] == "kernel" and probe["numba_threads"] == 1
                assert probe["parent_pid"] is None
            assert probes[0]["random"] != probes[1]["random"], "numpy's generator was not reseeded"

            km, kc = kms[0], clients[0]
            kc.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await kc.get_shell_msg(timeout=20)
            assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"

            old = km.provisioner.pid
            await km.restart_kernel(now=False)
            await kc.wait_for_ready(timeout=60)
            assert km.provisioner.forked and km.provisioner.pid != old
            assert psutil.Process(km.provisioner.pid).ppid() == template.pid
            assert json.loads(await _run(kc, PROBE))["pid"] == km.provisioner.pid
            _wait_gone([old], timeout=10)
        finally:
            for kc in clients:
                kc.stop_channels()
            pids = [km.provisioner.pid for km in kms]
            for km in kms:
                await km.shutdown_kernel()
        for pid in pids:
            assert not psutil.pid_exists(pid), "a forked kernel is left (or a zombie)"
        assert template.request({"op": "info"})["running"] == []

    asyncio.run(scenario())
    shutil.rmtree(folder, ignore_errors=True)


def test_without_the_template_a_kernel_starts_the_ordinary_way(template, caplog):
    """A template that is gone costs no kernel: the ones it forked run on (jupyter_client still
    sees and stops them), a new one is started as `python -m ipykernel_launcher`, with a warning."""
    folder = tempfile.mkdtemp(prefix="cb-k-")

    async def scenario():
        forked, spawned = _manager(template, folder, "forked"), _manager(template, folder, "spawned")
        await forked.start_kernel(env=template.env)
        assert forked.provisioner.forked
        os.kill(template.pid, signal.SIGKILL)
        template.process.wait()
        kc = forked.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            assert await forked.is_alive()
            assert "2" in await _run(kc, "print(1 + 1)")
        finally:
            kc.stop_channels()
        with caplog.at_level(logging.WARNING):
            await spawned.start_kernel(env=template.env)
        assert not spawned.provisioner.forked and "starting it the ordinary way" in caplog.text
        assert psutil.Process(spawned.provisioner.pid).ppid() == os.getpid()
        kc = spawned.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
        finally:
            kc.stop_channels()
        pids = [forked.provisioner.pid, spawned.provisioner.pid]
        for km in (forked, spawned):
            await km.shutdown_kernel()
            assert not await km.is_alive()
        _wait_gone(pids, timeout=10)

    asyncio.run(scenario())
    shutil.rmtree(folder, ignore_errors=True)


def _template_of(server_pid):
    found = [p for p in psutil.Process(server_pid).children() if "kernel_fork" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def test_a_class_servers_kernels_are_forked_culled_and_stopped_with_it(tmp_path):
    """`serve --visitors 2`: the pool's kernels are forked from the template; a visitor's kernel,
    culled, is reaped; with the template killed, a new kernel starts the ordinary way; once the
    server stops, no kernel, template or query process is left."""
    log_path = tmp_path / "serve.log"
    seen = set()
    with voila_server(log_path=log_path, visitors=2, extra_args=["--cull-idle=4"]) as url:
        deadline = time.monotonic() + 240
        while "ready for visitors" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        server = psutil.Process([p.pid for p in psutil.Process().children() if "serve" in " ".join(p.cmdline())][0])
        tpl = _template_of(server.pid)
        seen |= {p.pid for p in server.children(recursive=True)}
        pool = _kernels(server.pid)
        assert len(pool) == 2 and all(k.ppid() == tpl.pid for k in pool), [(k.pid, k.ppid()) for k in pool]

        # a visitor (a page load; no browser keeps its kernel connected) takes a pooled kernel: culled after 4 s
        assert urllib.request.urlopen(url, timeout=120).status == 200
        deadline = time.monotonic() + 60
        while all(not _gone(k.pid) for k in pool):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        time.sleep(1.5)  # the template reaps its children every 0.5 s
        assert any(not psutil.pid_exists(k.pid) for k in pool), "a culled kernel was left a zombie"
        seen |= {p.pid for p in server.children(recursive=True)}

        # the template is gone: the next kernel is started the ordinary way (a child of the server)
        tpl.kill()
        _wait_gone([tpl.pid])  # a zombie until the server next looks at it
        assert urllib.request.urlopen(url, timeout=120).status == 200
        deadline = time.monotonic() + 120
        while not any(k.ppid() == server.pid for k in _kernels(server.pid)):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        assert "starting it the ordinary way" in log_path.read_text(errors="replace")
        seen |= {p.pid for p in server.children(recursive=True)}
        seen |= {k.pid for k in pool}
    _wait_gone(seen | {server.pid})


def test_ctrl_c_stops_the_server_its_template_and_kernels(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the server and its query process; the
    template and the kernels have sessions of their own): Voilà shuts its kernels down, the server
    stops the template, and nothing is left."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(serve_command(free_port(), 2), cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 240
            while "ready for visitors" not in log_path.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
                time.sleep(0.5)
            seen = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            assert len(_kernels(proc.pid)) == 2 and _template_of(proc.pid).pid in seen
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _wait_gone(seen, timeout=10)
    assert "Kernel shutdown" in log_path.read_text(errors="replace")


def _kernels(pid):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True)
                if "ipykernel_launcher" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def test_a_class_bigger_than_the_pool_is_served_in_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run installs Debian's chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    pool, visitors = 2, 3
    catalog = open_catalog(DEFAULT_CATALOG)
    session = SearchSession(catalog, random_state=0)
    page = session.text_search("a red star", k=60)
    session.label(page.ids.tolist(), "pos")
    expected = session.refine()  # what every visitor's "All positive" + Fine-tune must show
    log_path = tmp_path / "serve.log"
    with voila_server(log_path=log_path, visitors=pool, extra_args=["--cull-idle=10"]) as url:
        deadline = time.monotonic() + 240
        while "ready for visitors" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        server = psutil.Process([p.pid for p in psutil.Process().children() if "serve" in " ".join(p.cmdline())][0])
        kernels = _kernels(server.pid)
        assert len(kernels) == pool
        assert not any("libtorch" in m.path for k in kernels for m in k.memory_maps()), "a kernel loaded torch"
        template = _template_of(server.pid)  # every kernel, the visitors' too, is forked from it
        seen = {p.pid for p in server.children(recursive=True)}

        peak, parents = [], set()
        results = asyncio.run(_class_with_kernel_count(url, visitors, server.pid, peak, parents, seen))
        assert parents == {template.pid}, (parents, template.pid)
        failures = [r["failed"] for r in results if "failed" in r]
        assert not failures, (failures, log_path.read_text(errors="replace")[-3000:])
        assert [r["answer_count"] for r in results] == [expected.count] * visitors
        assert max(peak) <= pool + SPARE_KERNELS, peak
        # the visitors have left: their kernels are culled (10 s without a connection) and the pool refills
        deadline = time.monotonic() + 120
        while len(_kernels(server.pid)) != pool:
            assert time.monotonic() < deadline, (len(_kernels(server.pid)), log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        seen |= {p.pid for p in server.children(recursive=True)}
    log = log_path.read_text(errors="replace")
    assert len(re.findall(r"Kernel shutdown", log)) >= visitors
    _wait_gone(seen | {server.pid})  # no kernel, template or query process left


async def _class_with_kernel_count(url, visitors, server_pid, peak, parents, seen):
    """Run the class while sampling how many kernels the server holds, their parents and pids."""
    done = asyncio.Event()

    async def sample():
        while not done.is_set():
            kernels = _kernels(server_pid)
            peak.append(len(kernels))
            for k in kernels:
                seen.add(k.pid)
                try:
                    parents.add(k.ppid())
                except psutil.NoSuchProcess:
                    pass
            await asyncio.sleep(0.3)

    sampler = asyncio.create_task(sample())
    try:
        return await run_class(url, visitors)
    finally:
        done.set()
        await sampler


def test_two_servers_side_by_side_each_serve_their_visitor(tmp_path):
    """Past one server: several `serve` instances (behind a proxy, or on several machines) are
    independent, each with its own query process, socket and key. On one machine: two at once."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run installs Debian's chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # the second one starts its kernels the ordinary way (--no-fork-kernels): the same answer
    with voila_server(log_path=logs[0]) as url_a, \
            voila_server(log_path=logs[1], extra_args=["--no-fork-kernels"]) as url_b:
        deadline = time.monotonic() + 240
        while not all("ready for visitors" in log.read_text(errors="replace") for log in logs):
            assert time.monotonic() < deadline, [log.read_text(errors="replace")[-2000:] for log in logs]
            time.sleep(0.5)
        servers = [next(p for p in psutil.Process().children() if f"--port={url.rsplit(':', 1)[1].strip('/')}"
                        in p.cmdline()) for url in (url_a, url_b)]
        assert {k.ppid() for k in _kernels(servers[0].pid)} == {_template_of(servers[0].pid).pid}
        assert {k.ppid() for k in _kernels(servers[1].pid)} == {servers[1].pid}
        assert not any("kernel_fork" in " ".join(p.cmdline()) for p in servers[1].children())
        results = [asyncio.run(run_class(url, 1))[0] for url in (url_a, url_b)]
    assert all("failed" not in r for r in results), results
    assert results[0]["answer_count"] == results[1]["answer_count"]
    # each server's kernel used its own query process (a fallback would load torch and say so)
    assert all("query service unusable" not in log.read_text(errors="replace") for log in logs)
