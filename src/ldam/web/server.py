"""``ldam serve``: the live sampler and activations pages over FastAPI + WebSockets.

Each WebSocket connection owns one :class:`~ldam.web.session.LiveSession`. Its worker
publishes frames; one sender task per connection forwards the newest frame whenever the socket
is free (older frames are dropped) and every other reply in order. Closing the tab stops the
worker. The server binds localhost unless told otherwise, and then it requires a token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from ..errors import LdamError
from .protocol import MAX_UPLOAD, Ack, Activations, ProtocolError, Record, Set, Simple, Start, Top, parse, short
from .session import DEFAULT_CHAINS, KNOBS, MAX_CHAINS, LiveSession, ModelEntry, activation_maps, method_menu, top_images

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8765
MAX_PIXELS = 40_000_000
#: Frames sent but not yet acknowledged, at most, for a page that acknowledges frames. Newer
#: frames replace older ones while the page catches up, so what it shows is never stale by more
#: than this many frames, however slow it is and however large the socket buffers are.
IN_FLIGHT = 2
FORMATS = {"PNG", "JPEG", "GIF", "BMP", "WEBP"}
#: Seconds without a frame taken by the client (sent to a page that does not acknowledge, or
#: acknowledged by one that does) after which the session's worker idles until the client reads.
STALL_S = 5.0
#: Seconds a single send may block (the client reads nothing) before the connection is closed.
SEND_TIMEOUT_S = 20.0
#: Seconds without any message or acknowledgement, while frames wait, before the client is evicted.
IDLE_EVICT_S = 120.0
#: Requests that run the model or decode an upload: at most one at a time per session, and at
#: most ``HEAVY_BURST`` in any ``HEAVY_WINDOW_S`` seconds.
HEAVY_BURST = 6
HEAVY_WINDOW_S = 10.0
COOKIE = "ldam_token"


@dataclass
class ServerConfig:
    """What ``ldam serve`` was started with."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    max_sessions: int = 4
    max_fps: float = 60.0
    #: Host names a remote-mode browser may use (besides ``host`` itself when it is a name or a
    #: specific address); empty with a wildcard ``host`` accepts any, the token still required.
    allowed_hosts: tuple[str, ...] = ()
    #: An atlas folder (:mod:`ldam.atlas`) whose static site is served read-only under ``/atlas/``:
    #: its ``index.html`` and ``site/`` only, never its manifest or shards. ``None``: no atlas.
    atlas: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str | None) -> str | None:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower-case."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else None
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str | None, cfg: ServerConfig) -> bool:
    """DNS rebinding guard: a local server answers only to loopback names and addresses; a remote
    one to its configured names (any, behind the token, when it binds a wildcard address and
    none are given)."""
    name = host_name(header)
    if name is None:
        return False
    if cfg.token is None:
        return is_loopback(name)
    names = {h.lower() for h in cfg.allowed_hosts}
    if cfg.host not in ("0.0.0.0", "::", ""):
        names.add(cfg.host.lower())
    if not names:
        return True
    return name in names or name.strip("[]") in names or is_loopback(name)


def decode_upload(data: str, entry: ModelEntry) -> torch.Tensor:
    """A base64 image from the browser → one model input. Size, format and pixel count are capped."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("the upload is not valid base64") from None
    if len(raw) > MAX_UPLOAD:
        raise ProtocolError(f"the upload is {len(raw)} bytes; the limit is {MAX_UPLOAD}")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in FORMATS:
                raise ProtocolError(f"unsupported image format {im.format}; use PNG, JPEG, GIF, BMP or WEBP")
            if im.width * im.height > MAX_PIXELS:
                raise ProtocolError(f"the image is {im.width}x{im.height} pixels; the limit is {MAX_PIXELS} pixels")
            c, h, w = entry.info.input_shape
            im = im.convert("L" if c == 1 else "RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((w, h), Image.BICUBIC)
            arr = torch.tensor(bytearray(im.tobytes()), dtype=torch.uint8).float().div_(255)
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - a crafted file may raise anything from deep in a decoder
        raise ProtocolError(f"the upload is not a readable image ({type(e).__name__})") from None
    pixels = arr.view(h, w, c).permute(2, 0, 1) if c == 3 else arr.view(1, h, w)
    return entry.preprocess_pixels(pixels)


def _input(msg: Activations, entry: ModelEntry) -> torch.Tensor:
    src = msg.input
    if src.kind == "dataset":
        if entry.test_images is None:
            raise ProtocolError(f"{entry.name} has no dataset examples on this server")
        if src.index >= len(entry.test_images):
            raise ProtocolError(f"dataset index {src.index} is out of range (0-{len(entry.test_images) - 1})")
        return entry.dataset_input(src.index)
    if src.kind == "photo":
        from ..data.photos import PHOTOS, load_photo

        if entry.info.input_shape != (3, 224, 224) or src.name not in PHOTOS:
            raise ProtocolError(f"sample photos are for 224x224 RGB models; names: {', '.join(PHOTOS)}")
        return entry.preprocess_pixels(load_photo(src.name))
    return decode_upload(src.data, entry)


def create_app(entries: dict[str, ModelEntry], cfg: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving ``entries`` (the only models a browser can choose)."""
    cfg = cfg or ServerConfig()
    sessions: set[LiveSession] = set()
    app = FastAPI(title="ldam", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(sessions))
    lock = threading.Lock()
    app.state.sessions = sessions
    app.state.entries = entries
    app.state.config = cfg
    _add_http_guard(app, cfg)
    _add_pages(app)
    _add_api(app, entries, cfg, sessions)
    _add_assets(app)
    _add_atlas(app, cfg.atlas)
    _add_socket(app, entries, cfg, sessions, lock)
    return app


def _lifespan(sessions: set[LiveSession]) -> Any:
    """The app's lifespan: nothing at startup; at shutdown, stop the worker of every session left."""
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        for s in list(sessions):
            s.stop(timeout=2)

    return lifespan


def _token_ok(token: str | None, cfg: ServerConfig) -> bool:
    """Whether ``token`` is the server's token (compared in constant time; ``cfg.token`` is set)."""
    # bytes: compare_digest refuses non-ASCII str, and a wrong token is a 401, never a 500
    return token is not None and secrets.compare_digest(token.encode("utf-8", "replace"),
                                                        cfg.token.encode("utf-8"))  # type: ignore[union-attr]


def _authorized(query_token: str | None, cookie_token: str | None, cfg: ServerConfig) -> bool:
    """Whether a request may proceed: no token is needed, or the query or the cookie carries it."""
    return cfg.token is None or _token_ok(query_token, cfg) or _token_ok(cookie_token, cfg)


def _add_http_guard(app: FastAPI, cfg: ServerConfig) -> None:
    """Every HTTP request: refuse a foreign ``Host`` (421) or a missing token (401); mark every
    response ``nosniff``; and when the query carries the right token, set it as a cookie."""
    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if not host_allowed(request.headers.get("host"), cfg):
            return JSONResponse({"error": "this server answers only to its own host name (Host header refused)"},
                                status_code=421)
        query_token = request.query_params.get("token")
        if not _authorized(query_token, request.cookies.get(COOKIE), cfg):
            return JSONResponse({"error": "this server needs ?token=... (printed when it started)"}, status_code=401)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if cfg.token is not None and _token_ok(query_token, cfg):
            # the page's assets and socket then authenticate without the token in their URLs
            response.set_cookie(COOKIE, cfg.token, httponly=True, samesite="strict", path="/")
        return response


def _add_pages(app: FastAPI) -> None:
    """The two pages: the sampler at ``/`` and the activations page at ``/activations``."""
    @app.get("/")
    async def sampler_page() -> FileResponse:
        return FileResponse(STATIC / "sampler.html")

    @app.get("/activations")
    async def activations_page() -> FileResponse:
        return FileResponse(STATIC / "activations.html")


def _add_api(app: FastAPI, entries: dict[str, ModelEntry], cfg: ServerConfig, sessions: set[LiveSession]) -> None:
    """The JSON endpoints: ``/api/models`` (what each page is told of the models) and ``/api/health``."""
    @app.get("/api/models")
    async def models() -> JSONResponse:
        return JSONResponse({"models": [e.describe() for e in entries.values()]})

    @app.get("/api/health")
    async def health() -> JSONResponse:
        return JSONResponse({"ok": True, "sessions": len(sessions), "max_sessions": cfg.max_sessions})


def _add_assets(app: FastAPI) -> None:
    """The pages' scripts and styles under ``/static``, and an empty favicon."""
    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def atlas_root(folder: Path | str) -> Path:
    """The atlas folder ``folder``, resolved; an :class:`LdamError` naming the fix when it is none."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise LdamError(f"no atlas folder at {folder}; pass the folder an atlas run wrote (its --out)")
    return root


def _add_atlas(app: FastAPI, folder: Path | str | None) -> None:
    """An atlas's static site, read-only, behind the same host and token guard as every page:
    ``/atlas/`` (its ``index.html``) and ``/atlas/site/...`` (the layer and unit pages, pictures,
    CSS and JS). No other file of the folder can be named: Starlette's ``StaticFiles`` resolves
    each path and refuses any that leaves ``site/`` (``..``, encoded or not, and symbolic links).
    The site may be written while it is served (a run in progress): each request reads the disk."""
    if folder is None:
        return
    root = atlas_root(folder)
    index = root / "index.html"

    @app.get("/atlas", include_in_schema=False)
    async def atlas_slash() -> Response:
        return RedirectResponse("/atlas/", status_code=307)  # the site's links are relative to /atlas/

    @app.get("/atlas/", include_in_schema=False)
    @app.get("/atlas/index.html", include_in_schema=False)
    async def atlas_index() -> Response:
        if not index.is_file():
            return JSONResponse({"error": f"the atlas in {root.name} has no site yet; build it "
                                          "(ldam.atlas.site.build_site) and reload"}, status_code=404)
        return FileResponse(index)

    app.mount("/atlas/site", StaticFiles(directory=root / "site", html=True, check_dir=False), name="atlas")


def _socket_refusal(ws: WebSocket, cfg: ServerConfig) -> tuple[int, str] | None:
    """Why a WebSocket handshake is refused, as a close code and reason (``None``: it is not): a
    foreign ``Host``, a missing token, or an ``Origin`` that is not this server's host."""
    if not host_allowed(ws.headers.get("host"), cfg):
        return 4403, "host not allowed"
    if not _authorized(ws.query_params.get("token"), ws.cookies.get(COOKIE), cfg):
        return 4401, "token required"
    origin = ws.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != ws.headers.get("host"):
        return 4403, "cross-origin connections are refused"
    return None


async def _turned_away(ws: WebSocket, cfg: ServerConfig, sessions: set[LiveSession], lock: threading.Lock) -> bool:
    """When the server holds ``cfg.max_sessions`` sessions already, tell the accepted client so in a
    fatal error and close its socket (code 1013). Whether it was turned away."""
    with lock:
        full = len(sessions) >= cfg.max_sessions
    if not full:
        return False
    await ws.send_json({"type": "error", "fatal": True,
                        "message": f"the server is at its limit of {cfg.max_sessions} sessions; close another tab"})
    await ws.close(code=1013)
    return True


def _add_socket(app: FastAPI, entries: dict[str, ModelEntry], cfg: ServerConfig, sessions: set[LiveSession],
                lock: threading.Lock) -> None:
    """The ``/ws`` endpoint: check the handshake, accept, turn the client away when the server is
    full, else run the connection until it ends."""
    @app.websocket("/ws")
    async def socket(ws: WebSocket) -> None:
        refusal = _socket_refusal(ws, cfg)
        if refusal is not None:
            code, reason = refusal
            await ws.close(code=code, reason=reason)
            return
        await ws.accept()
        if await _turned_away(ws, cfg, sessions, lock):
            return
        await _connection(ws, entries, cfg, sessions, lock)


class _Heavy:
    """One connection's requests that run the model or decode an upload: one at a time, at most
    ``HEAVY_BURST`` per ``HEAVY_WINDOW_S`` seconds, off the event loop; uploads are decoded one at a
    time server-wide so that no client takes every core from the others."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.times: collections.deque[float] = collections.deque()

    def admit(self) -> None:
        now = time.monotonic()
        if self.task is not None and not self.task.done():
            raise ProtocolError("the previous image or activations request is still running; wait for its reply")
        while self.times and now - self.times[0] > HEAVY_WINDOW_S:
            self.times.popleft()
        if len(self.times) >= HEAVY_BURST:
            raise ProtocolError(f"at most {HEAVY_BURST} image or activations requests per {HEAVY_WINDOW_S:g} s; "
                                "wait a moment")
        self.times.append(now)


_DECODE = threading.BoundedSemaphore(1)


def _decode_guarded(msg: Activations, entry: ModelEntry) -> torch.Tensor:
    with _DECODE:
        return _input(msg, entry)


async def _heavy(msg: Any, entries: dict[str, ModelEntry], publish: Any) -> None:
    try:
        if isinstance(msg, Activations):
            entry = entries[msg.model]
            x = await asyncio.to_thread(_decode_guarded, msg, entry)
            publish(await asyncio.to_thread(activation_maps, entry, msg.layer, x))
        else:
            publish(await asyncio.to_thread(top_images, entries[msg.model], msg.layer, msg.unit))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is this request's error reply, never the session's end
        publish({"type": "error", "message": _reason(e)})


def _reason(e: BaseException) -> str:
    if isinstance(e, (ProtocolError, LdamError, ValueError, KeyError)):
        return str(e).strip("'\"")
    return f"the server could not handle that message ({type(e).__name__})"


def _dispatch(msg: Any, session: LiveSession, entries: dict[str, ModelEntry], publish: Any, heavy: _Heavy) -> None:
    if isinstance(msg, (Start, Activations, Top)) and msg.model not in entries:
        raise ProtocolError(f"unknown model {short(msg.model)}; this server offers: {', '.join(entries)}")
    if isinstance(msg, Start):
        session.submit("start", msg.model_dump())
    elif isinstance(msg, Set):
        session.submit("set", msg.changes())
    elif isinstance(msg, Simple):
        session.submit(msg.type)
    elif isinstance(msg, Record):
        session.submit("record", msg.on)
    elif isinstance(msg, (Activations, Top)):
        heavy.admit()
        heavy.task = asyncio.create_task(_heavy(msg, entries, publish))


def _hello(entries: dict[str, ModelEntry]) -> dict[str, Any]:
    """The first message of every connection: the models, the limits, the defaults of a start, the
    knobs' sliders and the methods' menu; the pages build their controls from it."""
    return {"type": "hello", "models": [e.describe() for e in entries.values()],
            "limits": {"chains": MAX_CHAINS, "upload_bytes": MAX_UPLOAD},
            "defaults": {"chains": DEFAULT_CHAINS},
            "knobs": {name: knob.slider() for name, knob in KNOBS.items()}, "methods": method_menu()}


@dataclass
class _Flow:
    """A connection's frame accounting: frames ``sent`` and ``acked`` since the last start, whether
    the page is ``acking`` (acknowledges every frame), and the monotonic times a frame was last
    ``taken`` by the client and the client was last ``heard`` from."""

    sent: int = 0
    acked: int = 0
    acking: bool = False
    taken: float = field(default_factory=time.monotonic)
    heard: float = field(default_factory=time.monotonic)

    def behind(self) -> bool:
        """Whether an acknowledging page has ``IN_FLIGHT`` frames unacknowledged (send it no more)."""
        return self.acking and self.sent - self.acked >= IN_FLIGHT


class _Connection:
    """One accepted socket: its session and the sender, receiver and watchdog tasks that serve it.

    Built on the event loop; :meth:`publish` may be called from any thread (the session's worker,
    the heavy requests' threads)."""

    def __init__(self, ws: WebSocket, entries: dict[str, ModelEntry], cfg: ServerConfig,
                 sessions: set[LiveSession], lock: threading.Lock) -> None:
        self.ws = ws
        self.entries = entries
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.next_frame: dict[str, Any] | None = None
        self.flow = _Flow()
        self.replies: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self.heavy = _Heavy()
        self.sessions = sessions
        self.lock = lock
        with lock:
            self.session = LiveSession(entries, self.publish, cfg.max_fps, on_exit=self._ended)
            sessions.add(self.session)

    def publish(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for the sender: a frame replaces the one not yet sent, any other message
        waits its turn among the replies. Any thread; a no-op once the loop has closed."""
        if msg.get("type") == "frame":
            self.next_frame = msg
        else:
            self.replies.append(msg)
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop is closed: the connection is gone
            pass

    def _ended(self, session: LiveSession) -> None:
        """Free the session's slot; called by its worker thread as it ends, and only then."""
        with self.lock:
            self.sessions.discard(session)

    def _taken(self) -> None:
        """The client took a frame: note when, and let an idled worker run again."""
        self.flow.taken = time.monotonic()
        if self.session.held:
            self.session.hold(False)

    async def _send(self, msg: dict[str, Any]) -> None:
        """Send one message; a send blocked for ``SEND_TIMEOUT_S`` raises and so ends the connection."""
        await asyncio.wait_for(self.ws.send_json(msg), SEND_TIMEOUT_S)

    async def _sender(self) -> None:
        """Whenever woken: send every waiting reply in order, then the newest frame unless the page
        is behind on its acknowledgements."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.replies:
                await self._send(self.replies.popleft())
            if self.flow.behind():
                continue  # the page is behind: keep only the newest frame until it acknowledges
            frame, self.next_frame = self.next_frame, None
            if frame is not None:
                self.flow.sent += 1
                await self._send(frame)
                if not self.flow.acking:
                    self._taken()

    async def _receiver(self) -> None:
        """Read the client's messages until it disconnects, noting when each was heard."""
        while True:
            event = await self.ws.receive()
            if event["type"] == "websocket.disconnect":
                return
            self.flow.heard = time.monotonic()
            self._handle(event.get("text"))

    def _handle(self, text: str | None) -> None:
        """Act on one client message: an acknowledgement frees a frame slot, a start resets the flow
        accounting, the rest go to :func:`_dispatch`. Any failure is an error reply."""
        if text is None:
            self.publish({"type": "error", "message": "send JSON text messages, not binary"})
            return
        try:
            msg = parse(text)
            if isinstance(msg, Ack):
                self.flow.acked = min(self.flow.acked + 1, self.flow.sent)
                self._taken()
                self.wake.set()
                return
            if isinstance(msg, Start):
                self.flow.acking, self.flow.sent, self.flow.acked = msg.ack, 0, 0
                self._taken()
            _dispatch(msg, self.session, self.entries, self.publish, self.heavy)
        except Exception as e:  # noqa: BLE001 - one bad message is an error reply; the session lives on
            self.publish({"type": "error", "message": _reason(e)})

    async def _watchdog(self) -> None:
        """While a frame waits untaken: idle the worker after ``STALL_S``; return (ending the
        connection) after ``IDLE_EVICT_S`` without a frame taken or a message heard."""
        while True:
            await asyncio.sleep(min(1.0, STALL_S / 4))
            now = time.monotonic()
            waiting = self.next_frame is not None
            if waiting and now - self.flow.taken > STALL_S and not self.session.held:
                self.session.hold(True)
            if waiting and now - max(self.flow.taken, self.flow.heard) > IDLE_EVICT_S:
                return

    async def run(self) -> None:
        """Greet the client, then serve it until the sender, the receiver or the watchdog ends."""
        tasks = [asyncio.create_task(c()) for c in (self._sender, self._receiver, self._watchdog)]
        self.publish(_hello(self.entries))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._close(tasks)

    async def _close(self, tasks: list[asyncio.Task]) -> None:
        """Stop the worker, cancel the tasks and any heavy request, wait for them, close the socket."""
        self.session.stop(timeout=0)  # first, before any await: this task may itself be cancelled below
        for t in tasks:
            t.cancel()
        if self.heavy.task is not None:
            self.heavy.task.cancel()
        for t in tasks:  # a send that failed or timed out ends the connection; nothing more to report
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=1000), 1.0)


async def _connection(ws: WebSocket, entries: dict[str, ModelEntry], cfg: ServerConfig,
                      sessions: set[LiveSession], lock: threading.Lock) -> None:
    """One accepted socket: its session, a sender, a receiver and a watchdog, until any ends.

    The sender forwards every reply in order and the newest frame whenever the socket is free
    (at most ``IN_FLIGHT`` unacknowledged for a page that acknowledges). A send that blocks for
    ``SEND_TIMEOUT_S`` ends the connection. While no frame is taken for ``STALL_S`` the worker
    idles; after ``IDLE_EVICT_S`` of silence with frames waiting the client is evicted. The session
    slot is freed only once the worker has ended."""
    await _Connection(ws, entries, cfg, sessions, lock).run()


def load_entries(models: list[str], with_data: bool = True, device: torch.device | str | None = None,
                 **options: Any) -> dict[str, ModelEntry]:
    """The entries ``ldam serve MODEL...`` offers, each model on ``device`` (``None``: the CPU, where
    models load). ``options`` go to :func:`ldam.zoo.load_model`; with ``arch`` they describe the
    model files only (``zoo:NAME`` entries keep their own)."""
    def for_spec(spec: str) -> dict[str, Any]:
        if options.get("arch") and spec.startswith("zoo:"):
            return {}
        return {k: v for k, v in options.items() if v is not None}

    return {spec: ModelEntry.load(spec, with_data=with_data, device=device, **for_spec(spec)) for spec in models}


def serve(models: list[str] | dict[str, ModelEntry], cfg: ServerConfig | None = None, with_data: bool = True,
          device: torch.device | str | None = None, **options: Any) -> None:
    """Serve ``models`` (``zoo:NAME``/checkpoint specs, or ready :class:`ModelEntry` values) until Ctrl-C.

    ``device`` (a ``torch.device``, or a spec for :func:`ldam.device.resolve_device` such as
    ``"auto"``) is where the models given by spec, and so every session's chains, run; ready
    entries keep their models where they are. ``options`` (``arch``, ``arch_kwargs``,
    ``input_shape``, ``mean``, ``std``) describe the model files given by spec; see :func:`load_entries`."""
    import uvicorn

    cfg = cfg or ServerConfig()
    check_port(cfg.host, cfg.port)  # first: a busy port is one clear line, before any model loads
    if cfg.atlas is not None:
        atlas_root(cfg.atlas)  # and a wrong --atlas folder too
    if isinstance(models, dict):
        entries = dict(models)
    else:
        from ..device import resolve_device

        entries = load_entries(models, with_data=with_data,
                               device=None if device is None else resolve_device(device), **options)
    app = create_app(entries, cfg)
    token = f"?token={cfg.token}" if cfg.token else ""
    for name, e in entries.items():
        if with_data and e.data_source in ("bundled", "missing"):
            print(f"ldam serve: {name}: {e.data_note()}", flush=True)
    where = ", ".join(sorted({str(e.device) for e in entries.values()}))
    print(f"ldam serve: {', '.join(entries)} (on {where}) on http://{cfg.host}:{cfg.port}/{token}  (Ctrl-C to stop)",
          flush=True)
    if cfg.atlas is not None:
        print(f"ldam serve: the atlas in {cfg.atlas} on http://{cfg.host}:{cfg.port}/atlas/{token}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                ws_max_size=MAX_UPLOAD * 2, ws_ping_interval=20)


def check_port(host: str, port: int) -> None:
    """Raise an :class:`LdamError` that names the fix when ``host:port`` cannot be bound (a probe:
    the socket is closed at once and uvicorn binds the address itself)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise LdamError(f"port {port} is in use; pass --port (e.g. --port {port + 1})") from None
            if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
                raise LdamError(f"cannot listen on {host}: no such address on this machine; pass --host") from None
            raise LdamError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def new_token() -> str:
    return secrets.token_urlsafe(18)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """Serve ``app`` with uvicorn in a thread of this process (tests, benchmarks, screenshots).

    ``with BackgroundServer(app) as srv: ... srv.url ...``
    """

    def __init__(self, app: FastAPI, port: int | None = None):
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    ws_max_size=MAX_UPLOAD * 2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the test server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


__all__ = ["create_app", "serve", "load_entries", "ServerConfig", "BackgroundServer", "is_loopback", "DEFAULT_PORT"]
