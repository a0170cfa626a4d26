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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from ..errors import LdamError
from .protocol import MAX_UPLOAD, Ack, Activations, ProtocolError, Record, Set, Simple, Start, Top, parse
from .session import LiveSession, ModelEntry, activation_maps, top_images

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8765
MAX_PIXELS = 40_000_000
#: Frames sent but not yet acknowledged, at most, for a page that acknowledges frames. Newer
#: frames replace older ones while the page catches up, so what it shows is never stale by more
#: than this many frames, however slow it is and however large the socket buffers are.
IN_FLIGHT = 2
FORMATS = {"PNG", "JPEG", "GIF", "BMP", "WEBP"}


@dataclass
class ServerConfig:
    """What ``ldam serve`` was started with."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    max_sessions: int = 4
    max_fps: float = 60.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    except (OSError, ValueError, Image.DecompressionBombError) as e:
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

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        for s in list(sessions):  # the server is stopping: stop every worker
            s.stop(timeout=2)

    app = FastAPI(title="ldam", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    lock = threading.Lock()
    app.state.sessions = sessions
    app.state.entries = entries
    app.state.config = cfg

    def authorized(token: str | None) -> bool:
        return cfg.token is None or (token is not None and secrets.compare_digest(token, cfg.token))

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if not authorized(request.query_params.get("token")):
            return JSONResponse({"error": "this server needs ?token=... (printed when it started)"}, status_code=401)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    async def sampler_page() -> FileResponse:
        return FileResponse(STATIC / "sampler.html")

    @app.get("/activations")
    async def activations_page() -> FileResponse:
        return FileResponse(STATIC / "activations.html")

    @app.get("/api/models")
    async def models() -> JSONResponse:
        return JSONResponse({"models": [e.describe() for e in entries.values()]})

    @app.get("/api/health")
    async def health() -> JSONResponse:
        return JSONResponse({"ok": True, "sessions": len(sessions), "max_sessions": cfg.max_sessions})

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.websocket("/ws")
    async def socket(ws: WebSocket) -> None:
        if not authorized(ws.query_params.get("token")):
            await ws.close(code=4401, reason="token required")
            return
        origin = ws.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != ws.headers.get("host"):
            await ws.close(code=4403, reason="cross-origin connections are refused")
            return
        await ws.accept()
        with lock:
            full = len(sessions) >= cfg.max_sessions
        if full:
            await ws.send_json({"type": "error", "fatal": True,
                                "message": f"the server is at its limit of {cfg.max_sessions} sessions; close another tab"})
            await ws.close(code=1013)
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        slot: dict[str, Any] = {"frame": None}
        flow = {"sent": 0, "acked": 0, "acking": False}
        replies: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)

        def publish(msg: dict[str, Any]) -> None:  # any thread
            if msg.get("type") == "frame":
                slot["frame"] = msg  # the newest frame replaces one not yet sent
            else:
                replies.append(msg)
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is closed: the connection is gone
                pass

        session = LiveSession(entries, publish, cfg.max_fps)
        with lock:
            sessions.add(session)

        async def sender() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while replies:
                    await ws.send_json(replies.popleft())
                if flow["acking"] and flow["sent"] - flow["acked"] >= IN_FLIGHT:
                    continue  # the page is behind: keep only the newest frame until it acknowledges
                frame, slot["frame"] = slot["frame"], None
                if frame is not None:
                    flow["sent"] += 1
                    await ws.send_json(frame)

        send_task = asyncio.create_task(sender())
        publish({"type": "hello", "models": [e.describe() for e in entries.values()],
                 "limits": {"chains": 100, "upload_bytes": MAX_UPLOAD}})
        try:
            while True:
                event = await ws.receive()
                if event["type"] == "websocket.disconnect":
                    break
                text = event.get("text")
                if text is None:
                    publish({"type": "error", "message": "send JSON text messages, not binary"})
                    continue
                try:
                    msg = parse(text)
                    if isinstance(msg, Ack):
                        flow["acked"] = min(flow["acked"] + 1, flow["sent"])
                        wake.set()
                        continue
                    if isinstance(msg, Start):
                        flow.update(acking=msg.ack, sent=0, acked=0)
                    await _dispatch(msg, session, entries, publish)
                except (ProtocolError, LdamError, ValueError, KeyError) as e:
                    publish({"type": "error", "message": str(e).strip("'\"")})
                if send_task.done():
                    break
        except WebSocketDisconnect:
            pass
        finally:
            send_task.cancel()
            session.stop(timeout=0)  # signal at once: this task may itself be cancelled below
            with lock:
                sessions.discard(session)
            await asyncio.to_thread(session.stop)

    return app


async def _dispatch(msg: Any, session: LiveSession, entries: dict[str, ModelEntry], publish: Any) -> None:
    if isinstance(msg, (Start, Activations, Top)) and msg.model not in entries:
        raise ProtocolError(f"unknown model {msg.model!r}; this server offers: {', '.join(entries)}")
    if isinstance(msg, Start):
        session.submit("start", msg.model_dump())
    elif isinstance(msg, Set):
        session.submit("set", msg.changes())
    elif isinstance(msg, Simple):
        session.submit(msg.type)
    elif isinstance(msg, Record):
        session.submit("record", msg.on)
    elif isinstance(msg, Activations):
        entry = entries[msg.model]
        x = _input(msg, entry)
        publish(await asyncio.to_thread(activation_maps, entry, msg.layer, x))
    elif isinstance(msg, Top):
        publish(await asyncio.to_thread(top_images, entries[msg.model], msg.layer, msg.unit))


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
    if isinstance(models, dict):
        entries = dict(models)
    else:
        from ..device import resolve_device

        entries = load_entries(models, with_data=with_data,
                               device=None if device is None else resolve_device(device), **options)
    app = create_app(entries, cfg)
    token = f"?token={cfg.token}" if cfg.token else ""
    for name, e in entries.items():
        if with_data and e.info.dataset in ("mnist", "cifar10") and not e.has_data:
            print(f"ldam serve: no local {e.info.dataset} data for {name}: the discriminator and dataset inputs are off "
                  "(set LDAM_DATA_DIR to a folder holding it)", flush=True)
    where = ", ".join(sorted({str(e.device) for e in entries.values()}))
    print(f"ldam serve: {', '.join(entries)} (on {where}) on http://{cfg.host}:{cfg.port}/{token}  (Ctrl-C to stop)",
          flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                ws_max_size=MAX_UPLOAD * 2, ws_ping_interval=20)


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
