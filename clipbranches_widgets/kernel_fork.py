"""A class's kernels, forked from one process that has already imported what they import.

Why: CPU and memory per visitor. A dashboard kernel started the ordinary way (``python -m
ipykernel_launcher -f CONN``) spends most of its start-up CPU importing ipykernel, numpy, pyarrow,
Numba, scikit-learn and the app before it runs a line of the notebook, and most of its memory is its
own copy of those modules. ``serve --visitors N`` starts one **template** process instead, which
imports them once; each kernel is a ``fork()`` of it. A forked kernel starts with everything
imported and shares those pages with the template and every other kernel: copy on write, a page is
copied only when a kernel writes to it (``gc.freeze()`` keeps the kernel's garbage collector from
writing to the template's objects). What is left per visitor is the notebook and its warm-up
(``benchmarks/results/kernel.md`` measures both kinds of kernel side by side).

The pieces:

* the template, ``python -m clipbranches_widgets.kernel_fork --socket PATH --server-pid PID``
  (:func:`main`): imports :data:`PRELOAD`, then answers requests on a Unix socket (one JSON line
  each): ``fork`` (a kernel: its pid), ``exit_code`` (of a kernel it reaped), ``info``;
* :class:`KernelTemplate`, the server's handle on it: start, wait until ready, fork, stop;
* :class:`ForkProvisioner`, a jupyter_client ``LocalProvisioner`` whose kernels the template forks,
  and which starts a kernel the ordinary way (with a warning) when the template cannot: it is gone,
  the fork failed, or the kernel asked for differs from what the template prepared.

Fork safety: the template forks only while it runs no Python thread besides its main one and has
not started Numba's threading layer (once started, Numba's OpenMP layer terminates a forked child
that runs a parallel loop; so the template never runs or loads one, and each kernel starts the
layer on its first parallel loop). The native threads present after the imports
are fork-safe: pyarrow's jemalloc background thread (jemalloc disables it in a child) and
OpenBLAS's workers (OpenBLAS stops them around ``fork``). Variables read at import time (the thread
counts ``serve`` sets, ``NUMBA_*``) come from the template's environment, which is the server's:
a kernel asking for other values is started the ordinary way.

A forked kernel gets a state of its own (:func:`_become_kernel`): its own session and process
group (as ``LocalProvisioner`` gives a spawned kernel, so an interrupt or kill by process group
reaches it and nothing else), default signal handlers, the environment, working directory and
command line Jupyter asked for, reseeded random generators (``random`` reseeds itself at fork;
numpy's global one is reseeded here), no template socket. (Kernels do share the template's ``str``
hash seed, drawn when it started: that only matters against inputs crafted to collide.) It is not
the server's child but the template's: :class:`ForkedKernel` tells Jupyter whether it is alive from
its pid (a zombie counts as dead) and asks the template for its exit code. It ends when the server
does (it watches the server's pid, as ipykernel watches its parent), not when the template does: a
template that crashes takes no visitor's kernel with it. The template ends when the server does, and
stops the kernels it forked that are still running.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import psutil
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Any

__all__ = ["PRELOAD", "ForkProvisioner", "ForkedKernel", "KernelTemplate", "main"]

log = logging.getLogger(__name__)

#: what a dashboard kernel imports (measured: the modules a warmed-up kernel has loaded), imported
#: once by the template; none of them starts a Python thread or Numba's threading layer on import
PRELOAD = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.comm",
    "numpy", "pyarrow", "pyarrow.parquet", "cffi", "numba",
    "sklearn.base", "sklearn.utils.multiclass", "sklearn.callback",
    "ipywidgets",
    "clipbranches_widgets.engine", "clipbranches_widgets.session", "clipbranches_widgets.widgets",
    "clipbranches_widgets.catalog.search", "clipbranches_widgets.embedding.remote",
    "clipbranches_widgets.embedding.query", "clipbranches_widgets.embedding.reducers",
)

#: variables read when the modules above are imported: a kernel asking for other values than the
#: template's is started the ordinary way
IMPORT_TIME_PREFIXES = ("NUMBA_", "OMP_", "OPENBLAS_", "MKL_", "PYTHON", "LD_", "ARROW_", "JE_")

#: room reserved in the template's command line for a kernel's (see _set_cmdline)
_ROOM = "--room=" + "." * 250
_KERNEL_MODULE = "ipykernel_launcher"


# -- the template process ------------------------------------------------------------------------

def preload(modules=PRELOAD) -> list[str]:
    """Import ``modules`` and prepare Numba's compiler; returns the imports that failed, in words."""
    import importlib

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a kernel that needs it will say so itself
            failed.append(f"{name}: {exc}")
    try:  # Numba's target context and its registries (~70 modules) load on the first compile
        import numba

        numba.njit(lambda x: x + 1)(1)
    except Exception as exc:  # noqa: BLE001
        failed.append(f"numba: {exc}")
    return failed


def native_threads() -> list[str]:
    """The names of this process's threads (``/proc/self/task``), Python's and native ones."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def fork_hazard() -> str | None:
    """Why forking now would be unsafe, or None: a Python thread besides the main one, or Numba's
    threading layer started."""
    if threading.active_count() > 1:
        return f"the template runs Python threads {[t.name for t in threading.enumerate()]}"
    numba_parallel = sys.modules.get("numba.np.ufunc.parallel")
    if numba_parallel is not None and getattr(numba_parallel, "_is_initialized", False):
        return "the template has started Numba's threading layer"
    return None


def _set_cmdline(args: list[str]) -> bool:
    """Show ``args`` as this process's command line (``ps``, psutil), within the room its own
    command line has (Linux: the argv area, ``arg_start``..``arg_end`` in ``/proc/self/stat``).
    A forked kernel shows ``python -m ipykernel_launcher -f CONN`` like a spawned one."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
        text = b"\0".join(a.encode() for a in args)[: end - start - 1]
        ctypes.memmove(start, text.ljust(end - start, b"\0"), end - start)
        return True
    except (OSError, ValueError, IndexError):
        return False


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _running(process: psutil.Process | None) -> bool:
    """Whether ``process`` still runs: not ended, not a zombie, its pid not reused (psutil checks)."""
    try:
        return process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _exit_with_server(server_pid: int, server_fd: int | None) -> None:
    """In a kernel: exit once the server has (a daemon thread, as ipykernel's parent poller)."""

    def watch():
        if server_fd is not None:  # readable once the server has exited
            select.select([server_fd], [], [])
        else:
            try:
                server = psutil.Process(server_pid)
            except psutil.Error:
                server = None
            while _running(server):
                time.sleep(1.0)
        print("clipbranches: the server is gone; this kernel stops", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="cb-server-watch", daemon=True).start()


def _become_kernel(request: dict, server_pid: int, server_fd: int | None) -> int:
    """In the forked child: set up a state of its own and run ipykernel as
    ``python -m ipykernel_launcher ARGS`` would; returns its exit code. (It already has its own
    session: :meth:`_Template.fork`.)"""
    gc.enable()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop("JPY_PARENT_PID", None)  # its parent is the template, not the server
    os.chdir(request["cwd"])
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # `random` reseeds itself in a forked child; numpy does not
    _set_cmdline(request["argv"])
    import importlib.util

    sys.argv = [importlib.util.find_spec(_KERNEL_MODULE).origin, *request["argv"][3:]]
    if sys.path and sys.path[0] in ("", os.getcwd(), request["template_cwd"]):
        del sys.path[0]  # as ipykernel_launcher does; IPython puts the kernel's directory back
    _exit_with_server(server_pid, server_fd)
    from ipykernel.kernelapp import IPKernelApp

    try:
        # parent_handle 1: no parent poller (_exit_with_server watches the server instead) and no
        # terminal banner; given here because ipykernel read JPY_PARENT_PID when the template imported it
        app = IPKernelApp.instance(parent_handle=1)
        app.initialize(sys.argv[1:])
        if "ipywidgets" in sys.modules:  # imported before there was a kernel: register its comm targets now
            sys.modules["ipywidgets"].register_comm_target()
        app.start()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


class _Template:
    """The template's loop: one request per connection, one JSON line each way."""

    def __init__(self, path: str, server_pid: int):
        self.path, self.server_pid, self.cwd = path, server_pid, os.getcwd()
        self.server_fd = _open_pidfd(server_pid)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(128)
        self.children: dict[int, int | None] = {}  # pid -> exit code (None: running)
        self.preload_cpu_s = 0.0
        self.preload_failed: list[str] = []

    def server_alive(self) -> bool:
        if self.server_fd is not None:
            return not select.select([self.server_fd], [], [], 0)[0]
        return os.getppid() == self.server_pid

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children[pid] = os.waitstatus_to_exitcode(status)

    def run(self) -> None:
        waiting = [self.listener] + ([self.server_fd] if self.server_fd is not None else [])
        while True:
            ready = select.select(waiting, [], [], 0.5)[0]
            self.reap()
            if not self.server_alive():
                print("clipbranches: the server is gone; the kernel template stops", file=sys.stderr, flush=True)
                return
            if self.listener in ready:
                conn, _ = self.listener.accept()
                with conn:
                    self.answer(conn)

    def answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            request = json.loads(data)
            op = request.get("op")
            if op == "fork":
                reply = self.fork(request, conn)
            elif op == "exit_code":
                self.reap()
                pid = int(request["pid"])
                reply = {"exit_code": self.children.get(pid), "known": pid in self.children}
            elif op == "info":
                reply = self.info()
            else:
                reply = {"error": f"unknown request {op!r}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError) as exc:
            print(f"clipbranches: kernel template: a request failed: {exc}", file=sys.stderr, flush=True)

    def info(self) -> dict:
        return {"pid": os.getpid(), "threads": native_threads(), "python_threads": threading.active_count(),
                "hazard": fork_hazard(), "modules": len(sys.modules), "preload_cpu_s": self.preload_cpu_s,
                "preload_failed": self.preload_failed,
                "running": sorted(pid for pid, code in self.children.items() if code is None)}

    def fork(self, request: dict, conn: socket.socket) -> dict:
        hazard = fork_hazard()
        if hazard:
            return {"error": f"not forking: {hazard}"}
        request["template_cwd"] = self.cwd
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # the template's objects stay out of the kernels' collections (and their pages shared)
        ready_r, ready_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(ready_r)
            os.close(ready_w)
            return {"error": f"fork failed: {exc}"}
        if pid == 0:  # the kernel: never returns into this loop
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self.listener.close()
                conn.close()
                os.close(ready_r)
                os.setsid()  # own session and process group, as LocalProvisioner gives a spawned kernel
                os.write(ready_w, b"k")  # the server may signal its process group from now on
                os.close(ready_w)
                code = _become_kernel(request, self.server_pid, self.server_fd)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                try:
                    import atexit

                    atexit._run_exitfuncs()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        self.children[pid] = None
        return {"pid": pid}

    def stop_children(self, grace: float = 5.0) -> None:
        """Stop the kernels this template forked that still run (their process groups)."""
        self.reap()
        running = [pid for pid, code in self.children.items() if code is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in running:
                try:
                    os.killpg(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + grace
            while running and time.monotonic() < deadline:
                time.sleep(0.05)
                self.reap()
                running = [pid for pid in running if self.children.get(pid) is None]
            if not running:
                return


def main(argv=None) -> int:
    gc.disable()  # no collections (and freed holes in shared pages) while the modules load
    ap = argparse.ArgumentParser(prog="python -m clipbranches_widgets.kernel_fork",
                                 description="The kernel template of `serve --visitors N` (started by it).")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    args, _ = ap.parse_known_args(argv)
    _set_cmdline([sys.executable, "-m", __spec__.name if __spec__ else "clipbranches_widgets.kernel_fork",
                  "--socket", args.socket, f"--server-pid={args.server_pid}"])
    t0 = time.process_time()
    failed = preload()
    gc.freeze()
    template = _Template(args.socket, args.server_pid)
    template.preload_cpu_s, template.preload_failed = time.process_time() - t0, failed

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        template.run()
    finally:
        template.stop_children()
        try:
            os.unlink(args.socket)
        except OSError:
            pass
    return 0


# -- the server's side -----------------------------------------------------------------------------

class KernelTemplate:
    """The template process seen from the server: :meth:`start` it (the server's environment is
    its and its kernels'), :meth:`wait_ready`, :meth:`fork` kernels, :meth:`stop` it (by its pid)."""

    def __init__(self, path: str, process: subprocess.Popen, env: dict):
        self.path, self.process, self.env = path, process, env

    @classmethod
    def start(cls, folder: str, env: dict | None = None) -> KernelTemplate:
        """Start a template listening in ``folder`` (a private one: only this user may connect)."""
        path = os.path.join(folder, "kernel-template.sock")
        env = dict(os.environ if env is None else env)
        cmd = [sys.executable, "-m", __name__, "--socket", path, f"--server-pid={os.getpid()}", _ROOM]
        # its own session: Ctrl-C in the terminal stops the server, which then stops the template
        process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(path, process, env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, message: dict, timeout: float = 5.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            s.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the kernel template closed the connection")
                data += chunk
        return json.loads(data)

    def wait_ready(self, timeout: float = 180.0) -> dict:
        """Wait until the template has imported everything and listens; returns its ``info``."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"the kernel template exited with code {self.process.returncode}")
            try:
                return self.request({"op": "info"}, timeout=2.0)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the kernel template did not answer within {timeout:.0f} s") from None
                time.sleep(0.1)

    def cannot_fork(self, cmd: list[str], kwargs: dict) -> str | None:
        """Why a kernel launched as ``cmd`` with ``kwargs`` (Popen's) cannot be forked, or None."""
        if not self.alive():
            return f"the kernel template has exited (code {self.process.returncode})"
        if len(cmd) < 3 or cmd[1:3] != ["-m", _KERNEL_MODULE]:
            return f"not an ipykernel command line: {cmd[:3]}"
        if os.path.realpath(cmd[0]) != os.path.realpath(sys.executable):
            return f"another interpreter than the template's: {cmd[0]}"
        if any(kwargs.get(name) is not None for name in ("stdin", "stdout", "stderr")):
            return "its standard streams are redirected"
        env = kwargs.get("env") or os.environ
        keys = {k for k in (*env, *self.env) if k.startswith(IMPORT_TIME_PREFIXES)}
        differ = sorted(k for k in keys if env.get(k) != self.env.get(k))
        if differ:
            return f"its environment differs from the template's in {', '.join(differ)}"
        return None

    async def fork(self, cmd: list[str], env: dict, cwd) -> int:
        """A kernel forked from the template, started as ``cmd`` would start it; returns its pid."""
        message = {"op": "fork", "argv": cmd, "env": env, "cwd": str(cwd or os.getcwd())}
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 10)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 30) or b"{}")
        finally:
            writer.close()
        if "pid" not in reply:
            raise RuntimeError(reply.get("error", "no answer"))
        return int(reply["pid"])

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a kernel the template has reaped (None if it cannot tell)."""
        try:
            return self.request({"op": "exit_code", "pid": pid}, timeout=2.0).get("exit_code")
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the template (it stops the kernels it forked that still run first)."""
        if self.alive():
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedKernel:
    """What ``LocalProvisioner`` uses of a ``Popen``, for a kernel the template forked.

    The kernel is the template's child, not the server's: it is alive while its pid runs and is
    no zombie (psutil also checks the pid was not reused); its exit code comes from the template."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, template: KernelTemplate):
        self.pid, self.template, self.returncode = pid, template, None
        try:
            self._process = psutil.Process(pid)
        except psutil.Error:
            self._process = None

    def poll(self) -> int | None:
        if self.returncode is None and not _running(self._process):
            code = self.template.exit_code(self.pid)
            self.returncode = 1 if code is None else code  # 1: it has ended, the template cannot say how
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkProvisioner(LocalProvisioner):
    """A ``LocalProvisioner`` whose kernels are forked from a :class:`KernelTemplate`.

    Everything but the launch is ``LocalProvisioner``'s: signals go to the kernel's process group
    (its pid: the kernel starts its own session), ``poll``/``wait`` go through :class:`ForkedKernel`.
    A kernel that cannot be forked (see :meth:`KernelTemplate.cannot_fork`, or the fork failed)
    is launched the ordinary way, with a warning: a visitor always gets a kernel."""

    template = Any(None, help="the KernelTemplate to fork kernels from (None: launch them the ordinary way)")

    @property
    def forked(self) -> bool:
        return isinstance(self.process, ForkedKernel)

    async def launch_kernel(self, cmd: list[str], **kwargs):
        template = self.template
        why = "no kernel template" if template is None else template.cannot_fork(cmd, kwargs)
        if why is None:
            try:
                pid = await template.fork(cmd, kwargs.get("env") or dict(os.environ), kwargs.get("cwd"))
            except Exception as exc:  # noqa: BLE001 - the visitor still gets a kernel, below
                why = f"the kernel template did not fork it ({type(exc).__name__}: {exc})"
            else:
                self.process = ForkedKernel(pid, template)
                self.pid = self.pgid = pid
                self.cwd = kwargs.get("cwd", pathlib.Path.cwd())
                return self.connection_info
        if template is not None:
            log.warning("kernel %s: %s; starting it the ordinary way", self.kernel_id, why)
        return await super().launch_kernel(cmd, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
