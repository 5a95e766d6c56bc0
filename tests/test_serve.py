"""Class mode: one query process encodes every kernel's queries; Voilà keeps a bounded pool of
preheated kernels (``python -m clipbranches_widgets serve --visitors N``, what ``make demo`` runs).

The query process is real (a child process with the demo catalog's tiny CLIP); a kernel-like client
runs in a fresh interpreter and must never import torch. The class test serves the dashboard to
more visitors than its pool at once in headless Chromium and checks that every visitor is served
the same answer as the session API gives, that no kernel maps libtorch, that the pool stays
within its bound, and that the kernels of visitors who left are culled and the pool refilled.
"""

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from dashboard_driver import CHROMIUM, run_class, voila_server

from clipbranches_widgets import open_catalog
from clipbranches_widgets.catalog import DEFAULT_CATALOG
from clipbranches_widgets.embedding.query import QueryEncoder
from clipbranches_widgets.embedding.remote import KEY_ENV, QueryService, RemoteQueryEncoder, service_from_environment
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

        peak = []
        results = asyncio.run(_class_with_kernel_count(url, visitors, server.pid, peak))
        failures = [r["failed"] for r in results if "failed" in r]
        assert not failures, (failures, log_path.read_text(errors="replace")[-3000:])
        assert [r["answer_count"] for r in results] == [expected.count] * visitors
        assert max(peak) <= pool + SPARE_KERNELS, peak
        # the visitors have left: their kernels are culled (10 s without a connection) and the pool refills
        deadline = time.monotonic() + 120
        while len(_kernels(server.pid)) != pool:
            assert time.monotonic() < deadline, (len(_kernels(server.pid)), log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
    log = log_path.read_text(errors="replace")
    assert len(re.findall(r"Kernel shutdown", log)) >= visitors


async def _class_with_kernel_count(url, visitors, server_pid, peak):
    """Run the class while sampling how many kernels the server holds."""
    done = asyncio.Event()

    async def sample():
        while not done.is_set():
            peak.append(len(_kernels(server_pid)))
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
    with voila_server(log_path=logs[0]) as url_a, voila_server(log_path=logs[1]) as url_b:
        deadline = time.monotonic() + 240
        while not all("ready for visitors" in log.read_text(errors="replace") for log in logs):
            assert time.monotonic() < deadline, [log.read_text(errors="replace")[-2000:] for log in logs]
            time.sleep(0.5)
        results = [asyncio.run(run_class(url, 1))[0] for url in (url_a, url_b)]
    assert all("failed" not in r for r in results), results
    assert results[0]["answer_count"] == results[1]["answer_count"]
    # each server's kernel used its own query process (a fallback would load torch and say so)
    assert all("query service unusable" not in log.read_text(errors="replace") for log in logs)
