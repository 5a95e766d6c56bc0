"""Serve the dashboard to one visitor or a class: ``python -m clipbranches_widgets serve --visitors N``.

``make demo`` runs this (``make demo VISITORS=30`` for a class). It starts

* one **query process** (:mod:`.embedding.remote`): the catalog's CLIP towers, loaded once, encode
  every visitor's typed query and uploaded picture, so no visitor's kernel loads torch;
* **Voilà** (in this process) on ``notebooks/dashboard.ipynb``, listening on 127.0.0.1, with a pool
  of ``N`` preheated kernels: each has already imported the app, opened the catalog and run the
  notebook before anyone arrives, so ``N`` visitors who open the page at once are each given a ready
  kernel. The pool starts when the server does; the server prints when it is full;
* one **kernel template** (:mod:`.kernel_fork`) that has imported what a kernel imports: each kernel
  is forked from it, so a kernel starts without importing ipykernel, numpy, Numba or scikit-learn
  again and shares their memory with the others (``--no-fork-kernels``: start each kernel as
  ``python -m ipykernel_launcher``, as Jupyter does, e.g. to debug one).

A class's pool is bounded: once visitors hold kernels, the pool is only refilled while the total
(visitors' kernels + pool) stays within ``N + spare``, so a class of 30 does not start 30 more
kernels the moment it arrives (on a small machine they would compete with the visitors for CPU
and double the memory). A kernel is shut down when its page is closed (Voilà does that on unload)
or, for a visitor who left without closing it, after ``--cull-idle`` seconds with no connection;
each freed kernel lets the pool refill. Visitors beyond the pool are still served: Voilà starts
a kernel for them, as it would without a pool (slower: a kernel start and the notebook run).

Stop with Ctrl-C: Voilà shuts its kernels down; the kernel template and the query process end with this one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .catalog.default import default_catalog_path
from .embedding.remote import ADDRESS_ENV, QueryService
from .kernel_fork import ForkProvisioner, KernelTemplate

__all__ = ["main", "classroom_kernel_manager", "start_query_process"]

log = logging.getLogger(__name__)

DASHBOARD = Path(__file__).resolve().parents[1] / "notebooks" / "dashboard.ipynb"
#: kernels the pool may start beyond the class size (a visitor who reloads gets a fresh one at once)
SPARE_KERNELS = 2


def classroom_kernel_manager(voila_factory, visitors: int, spare: int = SPARE_KERNELS, started_at: float | None = None,
                             template: KernelTemplate | None = None):
    """Wrap Voilà's kernel-manager factory so that its pool respects a class size.

    Voilà (0.5) keeps each notebook's pool at ``pool_size`` kernels: every kernel taken by a
    visitor is replaced (after ``fill_delay``). For a class that arrives at once this starts as
    many new kernels as visitors while they wait for their first grid. Here the pool is refilled
    only while the kernels alive (pooled, starting, held by visitors) stay within
    ``visitors + spare``, and again whenever a visitor's kernel is shut down (page closed, culled).
    ``started_at`` (``time.monotonic()``) is when the server started, for the "ready" message.
    With a ``template``, every kernel (pooled or not) is forked from it (:class:`.ForkProvisioner`).
    """
    started_at = time.monotonic() if started_at is None else started_at

    def factory(base_class, preheat_kernel, default_pool_size, **kwargs):
        manager = voila_factory(base_class, preheat_kernel, default_pool_size, **kwargs)
        if not preheat_kernel:
            return manager

        class ClassroomKernelManager(manager):
            def __init__(self, **kw):
                self._stopping = False
                super().__init__(**kw)
                asyncio.get_event_loop().create_task(self._report_ready())

            def pre_start_kernel(self, kernel_name, kwargs):
                km, kernel_name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
                if template is not None:  # jupyter_client creates a provisioner only when there is none
                    km.provisioner = ForkProvisioner(kernel_id=kernel_id, kernel_spec=km.kernel_spec, parent=km,
                                                     template=template)
                return km, kernel_name, kernel_id

            def _room(self) -> int:
                """How many more kernels may start now."""
                starting = sum(not task.done() for pool in self._pools.values() for task in pool)
                return visitors + spare - len(self.list_kernel_ids()) - starting

            def fill_if_needed(self, delay=None, notebook_name=None, **kw):
                if self._stopping:
                    return
                pool = self._pools.get(notebook_name, [])
                target = min(visitors, len(pool) + max(0, self._room()))
                saved = self.kernel_pools_config
                default = {**saved.get("default", {}), "pool_size": target}
                self.kernel_pools_config = {**saved, "default": default, notebook_name: default}
                try:
                    super().fill_if_needed(delay, notebook_name, **kw)
                finally:
                    self.kernel_pools_config = saved

            async def shutdown_kernel(self, kernel_id, *args, **kw):
                await super().shutdown_kernel(kernel_id, *args, **kw)
                if self.notebook_path is not None:  # a visitor left: the pool may refill
                    self.fill_if_needed(notebook_name=self.notebook_path)

            async def shutdown_all(self, *args, **kw):
                self._stopping = True
                await super().shutdown_all(*args, **kw)

            async def _report_ready(self):
                """Say when every pooled kernel has run the notebook (the class may come in)."""
                for pool in list(self._pools.values()):
                    for item in list(pool):
                        try:
                            await (await item)["task"]
                        except Exception as exc:  # noqa: BLE001 - a failed kernel is Voilà's to report
                            log.warning("a pooled kernel failed to start: %s", exc)
                n = sum(len(p) for p in self._pools.values())
                print(f"clipbranches: {n} kernel(s) ready for visitors, "
                      f"{time.monotonic() - started_at:.0f} s after the server started", flush=True)

        return ClassroomKernelManager

    return factory


#: the thread pools a kernel sizes from the environment (Numba's prange loops; BLAS for the linear model)
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def kernel_threads(visitors: int, cores: int | None = None) -> dict:
    """Threads per kernel for a class: the machine's cores shared among the visitors (at least one).

    Twenty kernels with a thread per core each would, when a class presses Fine-tune together,
    run forty threads on two cores; spinning OpenMP workers and context switches then cost more
    than the parallel loops save. A variable the user has set is left as it is."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = str(max(1, cores // max(1, visitors)))
    return {name: n for name in THREAD_VARIABLES if name not in os.environ}


def start_query_process(service: QueryService, catalogs) -> subprocess.Popen:
    """Run ``service`` in a child process (it ends with this one); return once it listens."""
    env = {**os.environ, **service.environment()}
    cmd = [sys.executable, "-m", "clipbranches_widgets.embedding.remote", "--address", service.address]
    for path in catalogs:
        cmd += ["--preload", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "ready" once it listens, or "" if it died
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the query process did not start (exit code {proc.poll()}); see its messages above")
    return proc


def _template_ready(template: KernelTemplate) -> KernelTemplate | None:
    """``template`` once it has imported everything, or None (kernels start the ordinary way) if it failed."""
    try:
        info = template.wait_ready()
    except RuntimeError as exc:
        log.warning("%s; kernels will be started the ordinary way", exc)
        template.stop()
        return None
    print(f"clipbranches: kernels are forked from a template process (pid {info['pid']}, "
          f"{info['preload_cpu_s']:.1f} s of CPU to import what they import)", flush=True)
    for problem in info["preload_failed"]:
        log.warning("the kernel template could not import %s", problem)
    return template


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipbranches_widgets serve",
                                 description="Serve the dashboard (Voilà) to one visitor or a class.")
    ap.add_argument("--visitors", type=int, default=1,
                    help="visitors expected at once: the preheated kernel pool's size (default 1)")
    ap.add_argument("--port", type=int, default=8866)
    ap.add_argument("--cull-idle", type=float, default=900.0,
                    help="shut a visitor's kernel down after this many seconds without a page (default 900)")
    ap.add_argument("--notebook", type=Path, default=DASHBOARD)
    ap.add_argument("--fork-kernels", action=argparse.BooleanOptionalAction, default=True,
                    help="fork kernels from a template process that has imported what they import (default); "
                         "--no-fork-kernels starts each as `python -m ipykernel_launcher`")
    args, voila_extra = ap.parse_known_args(argv)
    if not 1 <= args.visitors <= 500:
        ap.error(f"--visitors must be 1..500; got {args.visitors}")
    if args.cull_idle <= 0:
        ap.error(f"--cull-idle must be > 0 seconds; got {args.cull_idle}")
    if not args.notebook.is_file():
        ap.error(f"no notebook at {args.notebook}")

    from voila import app as voila_app

    started_at = time.monotonic()
    private = tempfile.mkdtemp(prefix="clipbranches-")  # 0700: only this user reaches the socket
    service = QueryService(os.path.join(private, "query.sock"))
    catalogs = [default_catalog_path()]
    print(f"clipbranches: starting the query process and {args.visitors} kernel(s) for visitors ...", flush=True)
    kernel_env = {**service.environment(), **kernel_threads(args.visitors)}  # every kernel Voilà starts has it
    voila_argv = [str(args.notebook), "--no-browser", f"--port={args.port}", "--Voila.ip=127.0.0.1",
                  "--preheat_kernel=True", f"--pool_size={args.visitors}",
                  # kernels talk to the server over Unix sockets named after their own connection
                  # file: TCP ports are picked by binding and releasing them, and with 30 kernels
                  # starting at once two picked the same port (one kernel died, one visitor waited)
                  "--KernelManager.transport=ipc",
                  f"--MappingKernelManager.cull_idle_timeout={int(args.cull_idle)}",
                  f"--MappingKernelManager.cull_interval={max(1, min(60, int(args.cull_idle) // 2))}",
                  *voila_extra]
    template = query_process = None
    try:
        if args.fork_kernels:  # the template imports while the query process loads its encoder
            template = KernelTemplate.start(private, {**os.environ, **kernel_env})
        query_process = start_query_process(service, catalogs)
        os.environ.update(kernel_env)
        if template is not None:
            template = _template_ready(template)
        voila_app.voila_kernel_manager_factory = classroom_kernel_manager(
            voila_app.voila_kernel_manager_factory, args.visitors, started_at=started_at, template=template)
        voila_app.Voila.launch_instance(argv=voila_argv)
    finally:
        if template is not None:  # after Voilà has shut its kernels down; it stops any left
            template.stop()
        if query_process is not None:
            query_process.terminate()
            try:
                query_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                query_process.kill()
        os.environ.pop(ADDRESS_ENV, None)
        shutil.rmtree(private, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
