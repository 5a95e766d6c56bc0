"""A light headless visitor for a Voilà dashboard: the Jupyter widget protocol, without a browser.

A class of K visitors in headless Chromium on the server's own machine measures the browsers
fighting the server for its cores as much as the server (each page boots JupyterLab's widget
manager, renders, paints). :class:`WidgetClient` instead does what the browser's widget manager
does on the wire, so K clients cost the server what K browsers on their own laptops would, and
almost no CPU here:

1. ``GET`` the page. Voilà 0.5 with a preheated kernel pool sends the notebook the pooled kernel
   has already run: the kernel id is in ``<script id="jupyter-config-data">`` (``kernelId``), the
   root widget's model id in the cell output (``application/vnd.jupyter.widget-view+json``). The
   widget *states* are not in the page (Voilà's lab template empties the ``jupyter_widgets``
   block): the browser asks the kernel for them, and so does this client.
2. Optionally ``GET`` the static files a browser with an empty cache would (``assets``: paths
   recorded from a real browser's visit, see ``benchmarks/bench_class.py``); six at a time, as a
   browser opens six connections per host. They cost the server bytes and tornado's time, not the
   kernel's; without them the client skips about 5 MB and a hundred requests per visitor.
3. ``GET /api/kernels/<id>`` and open ``/api/kernels/<id>/channels?session_id=...`` (the
   ``v1.kernel.websocket.jupyter.org`` binary framing JupyterLab 4's services use, the server
   then forwards the kernel's frames without parsing them; ``protocol="json"`` uses the legacy
   JSON frames), send ``kernel_info_request`` and wait for its reply (JupyterLab does that first
   on every connection).
4. Load the widgets as ipywidgets 8's manager does (``_loadFromKernel``): open a comm to
   ``jupyter.widget.control``, send ``{"method": "request_states"}``, read ``update_states``
   (every model's state, binary buffers put back at their ``buffer_paths``), close that comm.
   The widget comms themselves are not opened again (the kernel opened them; the browser only
   creates its side), so messages on them are just sent with their ``comm_id`` = model id.

From then on the client keeps a model table (model id -> :class:`Model`: name, module, state),
updated by every ``comm_open`` / ``comm_msg`` (``update``, ``echo_update``) / ``comm_close`` the
kernel sends, and acts like a user: :meth:`WidgetClient.set_state` (what a view's
``model.save_changes()`` sends) and :meth:`WidgetClient.click` (a Button's ``custom`` ``click``
message). :meth:`WidgetClient.wait_for` waits until a condition on the table holds, and fails at
once if the kernel went idle after handling a given request without it holding (the handler ran
and did not produce it) or the app shows an error.

:func:`dashboard_visit` is one visitor of the clipbranches dashboard (search, "All positive",
Fine-tune) with the same steps and record keys as ``tests/dashboard_driver.visitor`` (the
Chromium one), and :func:`run_protocol_class` is K of them at once.

What a Chromium visitor sends on its kernel websocket for the same visit (checked frame by frame):
``kernel_info_request``, ``comm_open`` (control), ``request_states``, ``comm_close``, the query's
``update``, Search's ``click``, the grid's ``labels`` ``update``, Fine-tune's ``click``: the same
messages in the same order as :func:`dashboard_visit`.

Not done (a browser does it, the server does not see it, or sees it only as static files): the
JavaScript and CSS, rendering and painting, the CDN stylesheet (FontAwesome, not from this
server), ``localStorage`` (the grid's ``store`` messages are received and dropped; a fresh browser
has nothing to restore either), and the ``beforeunload`` shutdown beacon unless
:meth:`WidgetClient.close` is given ``shutdown=True`` (Playwright's ``context.close()`` does not
send it either, so the Chromium class leaves its kernels to the idle culler too).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

__all__ = ["Model", "WidgetClient", "WidgetClientError", "dashboard_visit", "run_protocol_class",
           "parse_voila_page", "CLASS_QUERY"]

#: the query a class visitor types (the same as the Chromium class's)
CLASS_QUERY = "a red star"
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: what ipywidgets 8's manager names the control comm and its protocol version
CONTROL_TARGET, CONTROL_VERSION = "jupyter.widget.control", "1.0.0"
#: a browser opens at most six HTTP/1.1 connections to one host
BROWSER_CONNECTIONS = 6


class WidgetClientError(RuntimeError):
    """The page, the kernel or the app did not do what a visitor waits for."""


@dataclass
class Model:
    """One widget model as the front end holds it."""

    model_id: str
    name: str
    module: str
    state: dict = field(default_factory=dict)
    #: the client's message counter when the kernel last changed this model (0: from the initial states)
    updated_at: int = 0
    #: per state key, the message counter when the kernel last changed it (not counting echoes of
    #: what this client set: ipywidgets 8 sends those back as ``echo_update``)
    changed_at: dict = field(default_factory=dict)

    def changed_since(self, seq: int, key: str) -> bool:
        """Whether the kernel changed ``key`` after message ``seq``."""
        return self.changed_at.get(key, 0) > seq

    @property
    def dom_classes(self) -> list[str]:
        return list(self.state.get("_dom_classes", ()))

    def __repr__(self) -> str:
        return f"Model({self.model_id[:8]}, {self.name}, classes={self.dom_classes})"


# -- the page -------------------------------------------------------------------------------------

def parse_voila_page(html: str) -> dict:
    """What the browser reads off a Voilà 0.5 (lab template) page: ``kernel_id`` (the page config's
    ``kernelId``), ``page_config`` (all of it), ``root_models`` (the model ids of the widget views
    in the cell outputs, in order) and ``errors`` (the ``ename: evalue`` of any error output)."""
    m = re.search(r'<script id="jupyter-config-data" type="application/json">\s*(.*?)\s*</script>', html, re.S)
    if not m:
        raise WidgetClientError("no jupyter-config-data in the page: not a Voilà page, or Voilà changed its template")
    config = json.loads(m.group(1))
    roots, errors = [], []
    for block in re.findall(r'<script type="application/vnd\.voila\.cell-output\+json">\s*(.*?)\s*</script>', html, re.S):
        try:
            output = json.loads(block)
        except ValueError:
            continue
        view = (output.get("data") or {}).get("application/vnd.jupyter.widget-view+json")
        if view and view.get("model_id"):
            roots.append(view["model_id"])
        if output.get("output_type") == "error":
            errors.append(f"{output.get('ename')}: {output.get('evalue')}")
    if not config.get("kernelId"):
        raise WidgetClientError("the page carries no kernel id (not a preheated or running kernel)")
    return {"kernel_id": config["kernelId"], "page_config": config, "root_models": roots, "errors": errors}


# -- wire formats ---------------------------------------------------------------------------------

def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _pack_v1(channel: str, msg: dict) -> bytes:
    """A message in the v1 kernel websocket framing (``jupyter_server``'s ``serialize_msg_to_ws_v1``)."""
    parts = [_dumps(msg["header"]), _dumps(msg["parent_header"]), _dumps(msg["metadata"]),
             _dumps(msg["content"]), *[bytes(b) for b in msg.get("buffers", ())]]
    chan = channel.encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return b"".join([head, chan, *parts])


def _unpack_v1(frame: bytes) -> dict:
    n = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(n)]
    view = memoryview(frame)
    parts = [view[offsets[i]: offsets[i + 1]] for i in range(1, n - 1)]  # the last offset is the end
    msg = {"channel": bytes(view[offsets[0]: offsets[1]]).decode(),
           "header": json.loads(bytes(parts[0])), "parent_header": json.loads(bytes(parts[1])),
           "metadata": json.loads(bytes(parts[2])), "content": json.loads(bytes(parts[3])),
           "buffers": [bytes(p) for p in parts[4:]]}
    return msg


def _pack_json(channel: str, msg: dict) -> str | bytes:
    """A message in the legacy JSON framing (binary, ``serialize_binary_message``, when it has buffers)."""
    body = {**msg, "channel": channel}
    buffers = [bytes(b) for b in body.pop("buffers", ())]
    if not buffers:
        return json.dumps({**body, "buffers": []})
    parts = [_dumps(body), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + len(p))
    return struct.pack("!" + "I" * (len(parts) + 1), len(parts), *offsets) + b"".join(parts)


def _unpack_json(frame: str | bytes) -> dict:
    if isinstance(frame, str):
        msg = json.loads(frame)
        msg.setdefault("buffers", [])
        return msg
    n = struct.unpack("!I", frame[:4])[0]
    offsets = list(struct.unpack("!" + "I" * n, frame[4: 4 * (n + 1)])) + [len(frame)]
    parts = [frame[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    msg = json.loads(parts[0])
    msg["buffers"] = parts[1:]
    return msg


async def _read_response(reader: asyncio.StreamReader, keep_body: bool = False) -> tuple[int, dict, bytes | int, bool]:
    """Read one HTTP/1.1 response: its status, headers (lower-case names; ``set-cookie`` a list), the
    body (bytes with ``keep_body``, else how many bytes it had) and whether the connection stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict = {"set-cookie": []}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            k, v = k.strip().lower(), v.strip()
            if k == "set-cookie":
                headers[k].append(v)
            else:
                headers[k] = v
    keep = headers.get("connection", "").lower() != "close"
    chunks: list[bytes] = []
    if "content-length" in headers:
        chunks.append(await reader.readexactly(int(headers["content-length"])))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append((await reader.readexactly(n + 2))[:n])
            if n == 0:
                break
    elif not (status in (204, 304) or status < 200):
        chunks.append(await reader.read())
        keep = False
    if keep_body:
        return status, headers, b"".join(chunks), keep
    return status, headers, sum(map(len, chunks)), keep


def _put_buffers(state: dict, paths: Sequence[Sequence], buffers: Sequence[bytes]) -> None:
    """Put binary buffers back where ``_remove_buffers`` took them from (ipywidgets' ``put_buffers``)."""
    for path, buf in zip(paths, buffers):
        obj = state
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = buf


# -- the client -----------------------------------------------------------------------------------

class WidgetClient:
    """One visitor's page on a Voilà dashboard, as the widget protocol sees it.

    ``url``: the page (``http://host:port/`` for Voilà serving one notebook). ``assets``: paths
    (``/voila/static/...``) to fetch after the page as a browser with an empty cache would, six
    at a time. ``protocol``: ``"v1"`` (JupyterLab 4's framing, the default) or ``"json"``.
    ``timeout``: seconds any one step may take.

    Use as ``async with WidgetClient(url) as c:`` (:meth:`open`, then :meth:`close`), or call
    them. After :meth:`open`: ``models`` (model id -> :class:`Model`), ``root`` (the page's
    widget), ``kernel_id``, ``timings`` (seconds: ``page_s``, ``assets_s``, ``connect_s``,
    ``states_s``, ``open_s`` = all of it) and ``page_bytes`` / ``asset_bytes``.
    """

    def __init__(self, url: str, *, assets: Iterable[str] = (), protocol: str = "v1", timeout: float = 240.0):
        if protocol not in ("v1", "json"):
            raise ValueError(f"protocol must be 'v1' or 'json', got {protocol!r}")
        self.url, self.assets, self.protocol, self.timeout = url, list(assets), protocol, float(timeout)
        self.session_id = str(uuid.uuid4())
        self.models: dict[str, Model] = {}
        self.root: Model | None = None
        self.kernel_id: str | None = None
        self.page: dict | None = None
        self.timings: dict[str, float] = {}
        self.page_bytes = self.asset_bytes = 0
        self.custom_messages: list[tuple[str, Any]] = []  # (model id, content) of the kernel's custom messages
        self.cookies: dict[str, str] = {}
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._seq = 0  # messages received
        self._idle: set[str] = set()  # msg ids of our requests the kernel has finished (iopub idle)
        self._replies: dict[str, dict] = {}  # shell replies by parent msg id
        self._control: dict[str, dict] = {}  # control comm id -> its update_states message
        self._changed = asyncio.Condition()
        self._closed_error: BaseException | None = None

    async def __aenter__(self) -> "WidgetClient":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- connect ----------------------------------------------------------------------------------

    # -- HTTP: a few requests, as plain HTTP/1.1 on asyncio streams (an HTTP client library would
    #    cost more CPU per visitor, here, than the server spends answering) --

    def _headers(self, extra: dict | None = None) -> str:
        parts = urlsplit(self.url)
        headers = {"Host": parts.netloc, "User-Agent": "clipbranches-widget-client",
                   "Accept-Encoding": "gzip, deflate, br", **(extra or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def _request(self, method: str, url: str, body: bytes = b"", headers: dict | None = None,
                       redirects: int = 5) -> tuple[int, bytes]:
        """One request on its own connection; follows redirects; keeps the cookies set. (status, body)"""
        parts = urlsplit(url)
        extra = {"Accept-Encoding": "gzip, deflate", **(headers or {}),
                 **({"Content-Length": str(len(body))} if body or method == "POST" else {})}
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 80), self.timeout)
        try:
            writer.write(f"{method} {target} HTTP/1.1\r\n{self._headers(extra)}Connection: close\r\n\r\n".encode() + body)
            status, got, content, _ = await asyncio.wait_for(_read_response(reader, keep_body=True), self.timeout)
        finally:
            writer.close()
        for cookie in got["set-cookie"]:
            name, _, value = cookie.split(";", 1)[0].partition("=")
            self.cookies[name.strip()] = value.strip()
        encoding = got.get("content-encoding", "").lower()
        if encoding == "gzip":
            content = gzip.decompress(content)
        elif encoding == "deflate":
            content = zlib.decompress(content)
        if status in (301, 302, 303, 307, 308) and "location" in got and redirects > 0:
            return await self._request("GET" if status == 303 else method, urljoin(url, got["location"]),
                                       body, headers, redirects - 1)
        return status, content

    async def open(self) -> None:
        """The page, the static files asked for, the kernel's channels, and every widget's state."""
        t0 = time.perf_counter()
        status, body = await self._request("GET", self.url, headers={"Accept": "text/html"})
        if status != 200:
            raise WidgetClientError(f"GET {self.url}: HTTP {status}")
        self.page_bytes = len(body)
        self.page = parse_voila_page(body.decode("utf-8", "replace"))
        self.kernel_id = self.page["kernel_id"]
        t1 = time.perf_counter()
        self.timings["page_s"] = t1 - t0
        if self.page["errors"]:
            raise WidgetClientError(f"the notebook failed on the server: {self.page['errors'][0]}")
        if self.assets:
            await self._fetch_assets()
        t2 = time.perf_counter()
        self.timings["assets_s"] = t2 - t1
        await self._connect()
        t3 = time.perf_counter()
        self.timings["connect_s"] = t3 - t2
        await self._load_states()
        t4 = time.perf_counter()
        self.timings["states_s"] = t4 - t3
        self.timings["open_s"] = t4 - t0
        roots = [self.models[m] for m in self.page["root_models"] if m in self.models]
        if self.page["root_models"] and not roots:
            raise WidgetClientError("the page's widget is not among the kernel's models")
        self.root = roots[0] if roots else None

    async def _fetch_assets(self) -> None:
        """GET every asset over six keep-alive connections, as a browser does, asking for the encodings
        a browser accepts (the server compresses if it would for a browser). The bodies are counted
        and dropped, so this is plain HTTP/1.1 on asyncio streams: a full HTTP client would spend
        more CPU here than the server spends sending them."""
        parts = urlsplit(self.url)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for path in self.assets:
            queue.put_nowait(path)
        head = self._headers({"Accept": "*/*"})
        total, failed = [0], []

        async def connection() -> None:
            reader = writer = None
            try:
                while not queue.empty():
                    path = queue.get_nowait()
                    if writer is None:
                        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
                    writer.write(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
                    status, _, size, keep = await _read_response(reader)
                    total[0] += size
                    if status != 200:
                        failed.append(f"{path}: HTTP {status}")
                    if not keep:
                        writer.close()
                        reader = writer = None
            finally:
                if writer is not None:
                    writer.close()

        await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(BROWSER_CONNECTIONS))), self.timeout)
        self.asset_bytes = total[0]
        if failed:
            raise WidgetClientError(f"{len(failed)} static files failed, e.g. {failed[0]}")

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        base = urljoin(self.url, self.page["page_config"].get("baseUrl", "/"))
        status, _ = await self._request("GET", urljoin(base, f"api/kernels/{self.kernel_id}?{int(time.time() * 1000)}"),
                                        headers={"Accept": "application/json"})
        if status != 200:
            raise WidgetClientError(f"the kernel {self.kernel_id} is not there (HTTP {status})")
        parts = urlsplit(base)
        ws_url = (f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}"
                  f"api/kernels/{self.kernel_id}/channels?session_id={self.session_id}")
        cookies = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self._ws = await connect(ws_url, subprotocols=[V1_PROTOCOL] if self.protocol == "v1" else None,
                                 origin=f"{parts.scheme}://{parts.netloc}", compression=None, max_size=None,
                                 additional_headers={"Cookie": cookies} if cookies else None,
                                 open_timeout=self.timeout, ping_interval=None,
                                 user_agent_header="clipbranches-widget-client")
        if self.protocol == "v1" and self._ws.subprotocol != V1_PROTOCOL:
            raise WidgetClientError(f"the server did not accept the {V1_PROTOCOL} protocol")
        self._reader = asyncio.create_task(self._read())
        msg_id = await self.send("kernel_info_request", {})
        await self.wait_for(lambda: msg_id in self._replies, what="kernel_info_reply")

    async def _load_states(self) -> None:
        comm_id = uuid.uuid4().hex
        await self.send("comm_open", {"comm_id": comm_id, "target_name": CONTROL_TARGET, "data": {}},
                        metadata={"version": CONTROL_VERSION})
        await self.send("comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}})
        await self.wait_for(lambda: comm_id in self._control, what="the widget states (update_states)")
        await self.send("comm_close", {"comm_id": comm_id, "data": {}})
        data, buffers = self._control[comm_id]["content"]["data"], self._control[comm_id]["buffers"]
        by_model: dict[str, tuple[list, list]] = {}
        for path, buf in zip(data.get("buffer_paths", []), buffers):
            paths, bufs = by_model.setdefault(path[0], ([], []))
            paths.append(path[1:])
            bufs.append(buf)
        for model_id, entry in data["states"].items():
            state = entry["state"]
            if model_id in by_model:
                _put_buffers(state, *by_model[model_id])
            if model_id not in self.models:  # a comm_open that came first is newer
                self.models[model_id] = Model(model_id, entry.get("model_name", ""), entry.get("model_module", ""), state)

    # -- messages ---------------------------------------------------------------------------------

    def _message(self, msg_type: str, content: dict, metadata: dict | None = None, buffers=()) -> dict:
        header = {"msg_id": uuid.uuid4().hex, "username": "", "session": self.session_id,
                  "date": datetime.now(timezone.utc).isoformat(), "msg_type": msg_type, "version": "5.3"}
        return {"header": header, "parent_header": {}, "metadata": metadata or {}, "content": content,
                "buffers": list(buffers)}

    async def send(self, msg_type: str, content: dict, *, metadata: dict | None = None, buffers=(),
                   channel: str = "shell") -> str:
        """Send one message to the kernel; returns its msg id."""
        if self._closed_error is not None:
            raise WidgetClientError(f"the kernel connection is gone: {self._closed_error}")
        msg = self._message(msg_type, content, metadata, buffers)
        frame = _pack_v1(channel, msg) if self.protocol == "v1" else _pack_json(channel, msg)
        await self._ws.send(frame)
        return msg["header"]["msg_id"]

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                msg = _unpack_v1(frame) if self.protocol == "v1" else _unpack_json(frame)
                self._handle(msg)
                async with self._changed:
                    self._changed.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported to whoever waits
            self._closed_error = exc
        else:
            self._closed_error = WidgetClientError("the server closed the kernel connection")
        async with self._changed:
            self._changed.notify_all()

    def _handle(self, msg: dict) -> None:
        self._seq += 1
        kind, content = msg["header"].get("msg_type"), msg["content"]
        parent = (msg.get("parent_header") or {}).get("msg_id")
        if msg["channel"] == "shell" and parent:
            self._replies[parent] = msg
        elif kind == "status" and content.get("execution_state") == "idle" and parent:
            self._idle.add(parent)
        elif kind == "comm_open":
            data = content.get("data") or {}
            state = data.get("state", {})
            _put_buffers(state, data.get("buffer_paths", []), msg["buffers"])
            self.models[content["comm_id"]] = Model(content["comm_id"], state.get("_model_name", ""),
                                                    state.get("_model_module", ""), state, self._seq)
        elif kind == "comm_msg":
            comm_id, data = content.get("comm_id"), content.get("data") or {}
            method = data.get("method")
            if method == "update_states":
                self._control[comm_id] = msg
            elif method in ("update", "echo_update") and comm_id in self.models:
                state = data.get("state", {})
                _put_buffers(state, data.get("buffer_paths", []), msg["buffers"])
                model = self.models[comm_id]
                model.state.update(state)
                model.updated_at = self._seq
                if method == "update":
                    model.changed_at.update(dict.fromkeys(state, self._seq))
            elif method == "custom":
                self.custom_messages.append((comm_id, data.get("content")))
        elif kind == "comm_close":
            self.models.pop(content.get("comm_id"), None)

    @property
    def seq(self) -> int:
        """How many messages the kernel has sent this client so far (a model's ``updated_at`` is one of these)."""
        return self._seq

    def finished(self, msg_id: str) -> bool:
        """Whether the kernel has handled the request ``msg_id`` (its iopub status went idle)."""
        return msg_id in self._idle

    async def wait_for(self, condition: Callable[[], Any], *, after: str | None = None, what: str = "",
                       check: Callable[[], None] | None = None, timeout: float | None = None):
        """Wait until ``condition()`` is true (checked after every message the kernel sends); return its value.

        ``after``: a msg id; if the kernel finished handling that request and the condition still
        does not hold, the wait ends in an error at once (the kernel will not produce it). ``check``
        raises to end the wait (e.g. the app shows an error)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        async with self._changed:
            while True:
                if check is not None:
                    check()
                value = condition()
                if value:
                    return value
                if after is not None and after in self._idle:
                    raise WidgetClientError(f"the kernel handled the request without {what or 'the change'}")
                if self._closed_error is not None:
                    raise WidgetClientError(f"the kernel connection is gone while waiting for {what}: "
                                            f"{self._closed_error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError(f"no {what or 'change'} within {self.timeout:.0f} s")
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    pass

    # -- acting like a user -----------------------------------------------------------------------

    def find(self, dom_class: str | None = None, *, name: str | None = None,
             has: Sequence[str] = (), where: Callable[[Model], bool] | None = None) -> Model:
        """The one model with CSS class ``dom_class`` (``_dom_classes``, what ``add_class`` sets),
        model name ``name``, the state keys ``has`` and ``where(model)`` true; an error if none or several."""
        found = [m for m in self.models.values()
                 if (dom_class is None or dom_class in m.dom_classes) and (name is None or m.name == name)
                 and all(k in m.state for k in has) and (where is None or where(m))]
        if len(found) != 1:
            raise WidgetClientError(f"{len(found)} widgets match class={dom_class!r} name={name!r} has={list(has)}")
        return found[0]

    async def set_state(self, model: Model, **state) -> str:
        """Change ``state`` of ``model`` as a view's ``save_changes()`` does (also in the table here)."""
        model.state.update(state)
        return await self.send("comm_msg", {"comm_id": model.model_id,
                                            "data": {"method": "update", "state": state, "buffer_paths": []}})

    async def custom(self, model: Model, content: dict) -> str:
        """A custom message to the model's Python side (``model.send(content)`` in a front end)."""
        return await self.send("comm_msg", {"comm_id": model.model_id, "data": {"method": "custom", "content": content}})

    async def click(self, button: Model) -> str:
        """Press a Button (its view sends ``{"event": "click"}``); returns the msg id."""
        if button.state.get("disabled"):
            raise WidgetClientError(f"the button {button.state.get('description')!r} is disabled")
        return await self.custom(button, {"event": "click"})

    async def close(self, shutdown: bool = False) -> None:
        """Leave the page: close the kernel channels (and, with ``shutdown``, send what the browser's
        ``beforeunload`` beacon sends: ``POST /voila/api/shutdown/<kernel id>``)."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self._reader.cancel()
        if shutdown and self.kernel_id:
            base = urljoin(self.url, self.page["page_config"].get("baseUrl", "/"))
            form = urlencode({"_xsrf": self.cookies.get("_xsrf", "")}).encode()
            try:
                await self._request("POST", urljoin(base, f"voila/api/shutdown/{self.kernel_id}"), form,
                                    {"Content-Type": "application/x-www-form-urlencoded"})
            except Exception:  # noqa: BLE001 - a beacon is fire and forget
                pass


# -- the clipbranches dashboard -------------------------------------------------------------------

def _error_text(client: WidgetClient) -> str | None:
    area = next((m for m in client.models.values() if "cb-error-area" in m.dom_classes), None)
    if area is None:
        return None
    m = re.search(r'class="cb-error">(.*?)</div>', area.state.get("value", ""), re.S)
    return m.group(1).strip() if m else None


def _stats(client: WidgetClient) -> dict:
    """What the statistics panel says: ``count``, ``view``, ``estimate`` (bool) — the browser's ``.cb-stats``."""
    value = client.find("cb-stats-area").state.get("value", "")
    count = re.findall(r'class="cb-stats"[^>]*data-count="(\d+)"', value)
    view = re.findall(r'class="cb-stats"[^>]*data-view="(\w+)"', value)
    return {"count": int(count[-1]) if count else None, "view": view[-1] if view else None,
            "estimate": 'class="cb-estimate"' in value}


def grid_items(client: WidgetClient) -> list[dict]:
    """The tiles the grid shows (``id``, ``caption``, ``score``, ``src``), in order."""
    grid = _grid(client)
    return list(grid.state.get("tiles", []))[: grid.state.get("shown", 0)]


def _grid(client: WidgetClient) -> Model:
    """The ImageGrid: anywidget names each model's class in ``_anywidget_id`` (module.qualname)."""
    return client.find(where=lambda m: str(m.state.get("_anywidget_id", "")).rsplit(".", 1)[-1] == "ImageGrid")


async def dashboard_visit(url: str, index: int = 0, start: asyncio.Event | None = None, *,
                          query: str = CLASS_QUERY, assets: Iterable[str] = (), protocol: str = "v1",
                          timeout: float = 240.0, shutdown: bool = False) -> dict:
    """One visitor of the clipbranches dashboard over the widget protocol, the steps of the Chromium
    visitor: when ``start`` is set, open the page (``page_to_app_s``: page, static files, kernel
    channels, widget states), type ``query`` and press Search (``first_grid_s``: page open to the
    grid's update carrying its tiles, 60 for the default k; ``search_s``: from the click), mark the
    grid "All positive" (every shown tile ``pos``, as the grid's button does) and press Fine-tune
    (``finetune_s``: click to the answer, the statistics with an estimate and the grid's new tiles;
    ``answer_count``). Also ``page_s``, ``assets_s``, ``connect_s``, ``states_s`` and ``first_ids``,
    ``captions`` (the first grid), ``answer_ids`` (its first page). A step that fails ends the visit
    with ``failed`` = the step and the error."""
    out: dict[str, Any] = {"visitor": index}
    client = WidgetClient(url, assets=assets, protocol=protocol, timeout=timeout)
    if start is not None:
        await start.wait()
    step = "open the page"

    def check():
        err = _error_text(client)
        if err:
            raise WidgetClientError(f"the app shows an error: {err}")

    try:
        t0 = time.perf_counter()
        await client.open()
        out["page_to_app_s"] = time.perf_counter() - t0
        out.update({k: v for k, v in client.timings.items() if k != "open_s"})
        step = "search"
        box, search = client.find("cb-query"), client.find("cb-search")
        grid, k = _grid(client), None
        await client.set_state(box, value=query)
        t1 = time.perf_counter()
        clicked, seq = await client.click(search), client.seq

        def first_grid():
            stats = _stats(client)
            tiles = grid.state.get("tiles", [])
            return (grid.changed_since(seq, "tiles") and tiles and stats["count"] is not None
                    and grid.state.get("shown") == len(tiles) == stats["count"])

        await client.wait_for(first_grid, after=clicked, what="the search's grid", check=check)
        now = time.perf_counter()
        out["first_grid_s"], out["search_s"] = now - t0, now - t1
        items = grid_items(client)
        out["first_ids"] = [t["id"] for t in items]
        out["captions"] = [t.get("caption", "") for t in items]
        k = len(items)
        step = "mark all"
        labels = {**grid.state.get("labels", {}), **{str(t["id"]): "pos" for t in items}}
        await client.set_state(grid, labels=labels)  # the grid's "All positive": every shown tile
        step = "fine-tune"
        t2 = time.perf_counter()
        clicked, seq = await client.click(client.find("cb-refine")), client.seq

        def answer():
            stats = _stats(client)
            # the answer's own tiles: the echo of the labels this client set is not an answer
            return grid.changed_since(seq, "tiles") and stats["view"] == "answer" and stats["estimate"] \
                and grid.state.get("tiles")

        await client.wait_for(answer, after=clicked, what="the fine-tuned answer", check=check)
        out["finetune_s"] = time.perf_counter() - t2
        out["answer_count"] = _stats(client)["count"]
        out["answer_ids"] = [t["id"] for t in grid_items(client)]
        out["first_grid_size"] = k
    except Exception as exc:  # noqa: BLE001 - a failed visitor is a result, not a crash
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        out["failed"] = f"{step}: {type(exc).__name__}: {text}"
    finally:
        try:
            await client.close(shutdown=shutdown)
        except Exception:  # noqa: BLE001
            pass
    return out


async def run_protocol_class(url: str, visitors: int, **kwargs) -> list[dict]:
    """``visitors`` protocol clients open ``url`` at the same moment, each a :func:`dashboard_visit`
    (``kwargs`` go to it); returns their records in visitor order."""
    start = asyncio.Event()
    tasks = [asyncio.create_task(dashboard_visit(url, i, start, **kwargs)) for i in range(visitors)]
    await asyncio.sleep(0)  # every visitor waits on start; then everyone opens the page at once
    start.set()
    return list(await asyncio.gather(*tasks))
