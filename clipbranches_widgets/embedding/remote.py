"""One query process for many kernels: text and picture queries encoded once, torch loaded once.

A dashboard served to a class runs one kernel per visitor. Each kernel needs the catalog's CLIP
towers only to turn a typed query or an uploaded picture into a 32-d vector, yet loading torch and
open_clip costs a kernel ~370 MB and ~2.7 s of CPU (measured on the demo catalog; everything else a
kernel holds is ~210 MB). So ``python -m clipbranches_widgets serve`` starts ONE query process
(:class:`QueryService`) and tells every kernel where it is through two environment variables:

``CLIPBRANCHES_QUERY_SERVICE``
    the address (a Unix socket path) of the query process;
``CLIPBRANCHES_QUERY_KEY``
    the hex secret a client must know (``multiprocessing.connection``'s HMAC handshake): only the
    server's own kernels, which inherit its environment, can talk to it.

A kernel's catalog then hands out a :class:`RemoteQueryEncoder` instead of a
:class:`~.query.QueryEncoder`: same two methods, same answers (the service opens the same catalog
folder and checks that its codes and encoder are the ones the kernel has), no torch in the kernel.
If the service cannot be reached the kernel falls back to loading the encoder itself and logs why,
so a visitor is served more slowly rather than not at all.

This module imports no torch; only the service process does, when it loads an encoder.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

import numpy as np

__all__ = ["QueryService", "RemoteQueryEncoder", "service_from_environment", "ADDRESS_ENV", "KEY_ENV"]

log = logging.getLogger(__name__)

ADDRESS_ENV = "CLIPBRANCHES_QUERY_SERVICE"
KEY_ENV = "CLIPBRANCHES_QUERY_KEY"
#: the most texts or pictures one request may carry (a query is one; the limit bounds a bad client)
MAX_BATCH = 64


def _identity(catalog) -> dict:
    """What must match between the kernel's catalog and the service's: codes and encoder."""
    return {"fingerprint": catalog.fingerprint, "encoder": catalog.manifest.get("encoder")}


class RemoteQueryEncoder:
    """A :class:`~.query.QueryEncoder` whose towers run in the query process at ``address``.

    One connection per encoder, opened on first use and reopened once if the service restarted;
    calls from several threads take turns on it.
    """

    def __init__(self, catalog, address: str, authkey: bytes):
        self.catalog_path = str(Path(catalog.path).resolve())
        self.identity = _identity(catalog)
        self.address = address
        self._authkey = authkey
        self._conn = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteQueryEncoder({self.catalog_path!r}, service={self.address!r})"

    def _call(self, kind: str, payload):
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._conn is None:
                        self._conn = Client(self.address, family="AF_UNIX", authkey=self._authkey)
                    self._conn.send((kind, self.catalog_path, self.identity, payload))
                    status, value = self._conn.recv()
                    break
                except AuthenticationError as exc:  # another server's key: retrying will not help
                    self._close()
                    raise ConnectionError(f"the query service at {self.address} refused this key") from exc
                except (OSError, EOFError) as exc:  # not running, or restarted: one new connection
                    self._close()
                    if attempt:
                        raise ConnectionError(f"the query service at {self.address} is not answering ({exc})") from exc
        if status != "ok":
            raise ValueError(value)
        return value

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def ping(self) -> None:
        """Raise ConnectionError / ValueError unless the service answers for this catalog."""
        self._call("ping", None)

    def encode_texts(self, texts) -> np.ndarray:
        """Strings -> (n, catalog dim) float32 unit rows, computed by the query process."""
        return self._call("texts", [str(t) for t in texts])

    def encode_images(self, images) -> np.ndarray:
        """PIL images (or a uint8 (n, H, W, 3) array) -> (n, catalog dim) float32 unit rows.

        Pictures are made upright (EXIF) and 8-bit RGB here, then sent as uint8 arrays."""
        if not isinstance(images, np.ndarray):
            from ..pictures import to_rgb

            images = [np.asarray(to_rgb(im) if hasattr(im, "mode") else im, dtype=np.uint8) for im in images]
        return self._call("images", list(images))


def service_from_environment(catalog):
    """The :class:`RemoteQueryEncoder` the environment points at, or None (no service, or it does
    not answer for this catalog: the reason is logged and the caller loads the encoder itself)."""
    address, key = os.environ.get(ADDRESS_ENV), os.environ.get(KEY_ENV)
    if not address or not key:
        return None
    try:
        remote = RemoteQueryEncoder(catalog, address, bytes.fromhex(key))
        remote.ping()
        return remote
    except (ConnectionError, ValueError) as exc:
        log.warning("query service unusable for %s, loading the encoder in this process: %s", catalog.path, exc)
        return None


class QueryService:
    """The query process's server: encodes texts and pictures for any catalog its clients name.

    Parameters
    ----------
    address : str
        Unix socket path to listen on (its folder should be private to the user).
    authkey : bytes, optional
        The shared secret (default: 32 random bytes; ``authkey.hex()`` goes in ``KEY_ENV``).
    torch_threads : int, default 1
        Threads per encoding. Queries are tiny; several visitors' queries run side by side in
        their own connection threads instead of fighting over all cores for one.
    """

    def __init__(self, address: str, authkey: bytes | None = None, *, torch_threads: int = 1):
        self.address = str(address)
        self.authkey = authkey if authkey is not None else secrets.token_bytes(32)
        self.torch_threads = int(torch_threads)
        self._catalogs: dict[str, tuple] = {}  # resolved path -> (catalog, its QueryEncoder)
        self._lock = threading.Lock()
        self._listener = None

    def environment(self) -> dict:
        """The variables a kernel needs to use this service."""
        return {ADDRESS_ENV: self.address, KEY_ENV: self.authkey.hex()}

    def preload(self, path) -> None:
        """Open a catalog and load its encoder now (so the first visitor's query does not wait)."""
        self._encoder(str(Path(path).resolve()), None)

    def _encoder(self, path: str, identity: dict | None):
        from ..catalog import open_catalog
        from .query import QueryEncoder

        with self._lock:
            entry = self._catalogs.get(path)
            if entry is None or (identity is not None and _identity(entry[0]) != identity):
                # first use, or the kernel has a newer catalog than ours: open it again
                catalog = open_catalog(path)
                entry = (catalog, QueryEncoder.for_catalog(catalog))
                self._catalogs[path] = entry
        if identity is not None and _identity(entry[0]) != identity:
            raise ValueError(f"the query service opened {path} and found other codes or another encoder than "
                             "this kernel's catalog (it was rebuilt): open the catalog again")
        return entry[1]

    def _answer(self, request):
        kind, path, identity, payload = request
        if kind not in ("ping", "texts", "images") or not isinstance(path, str) or not isinstance(identity, dict):
            raise ValueError(f"unknown request {kind!r}")
        encoder = self._encoder(path, identity)
        if kind == "ping":
            return None
        if not isinstance(payload, list) or not 1 <= len(payload) <= MAX_BATCH:
            raise ValueError(f"a request carries 1..{MAX_BATCH} queries; got {type(payload).__name__}")
        if kind == "texts":
            return encoder.encode_texts(payload)
        from PIL import Image

        pictures = [np.asarray(a) for a in payload]
        if not all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in pictures):
            raise ValueError("pictures travel as uint8 (height, width, 3) arrays")
        return encoder.encode_images([Image.fromarray(a) for a in pictures])

    def _serve_connection(self, conn) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)
        with conn:
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    reply = ("ok", self._answer(request))
                except Exception as exc:  # noqa: BLE001 - the client shows the message, the service lives on
                    log.warning("query service: %s", exc)
                    reply = ("error", str(exc) or type(exc).__name__)
                try:
                    conn.send(reply)
                except OSError:
                    return

    def serve_forever(self, ready=None) -> None:
        """Accept clients until the process ends; each connection gets a thread. ``ready`` (a
        callable) is called once the socket listens."""
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        os.chmod(self.address, 0o600)
        if ready is not None:
            ready()
        while True:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:  # a client that failed the handshake: refuse it, go on
                if self._listener is None:
                    return
                log.warning("query service: refused a connection: %s", exc)
                continue
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True,
                             name="cb-query-client").start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()


def _exit_with_parent() -> None:
    """Stop this process when the one that started it is gone (even killed with SIGKILL)."""
    import time

    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main(argv=None) -> int:
    """``python -m clipbranches_widgets.embedding.remote --address SOCKET [--preload CATALOG ...]``

    Run a query service; the secret comes from ``$CLIPBRANCHES_QUERY_KEY`` (never the command
    line, which other users can read). Prints ``ready`` on stdout once it listens."""
    import argparse

    ap = argparse.ArgumentParser(description="clipbranches query service (one per dashboard server)")
    ap.add_argument("--address", required=True, help="Unix socket path to listen on")
    ap.add_argument("--preload", action="append", default=[], help="catalog folder whose encoder loads now")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[query service] %(message)s")
    service = QueryService(args.address, bytes.fromhex(os.environ[KEY_ENV]))

    def preload():
        for path in args.preload:
            try:
                service.preload(path)
            except (OSError, ValueError) as exc:  # the dashboard shows the catalog's own error
                log.warning("could not preload %s: %s", path, exc)

    def ready():
        # listening already: requests that come during the preload wait for it, they do not fail
        print("ready", flush=True)
        threading.Thread(target=preload, daemon=True, name="cb-preload").start()

    threading.Thread(target=_exit_with_parent, daemon=True, name="cb-parent-watch").start()
    service.serve_forever(ready=ready)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
