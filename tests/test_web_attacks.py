"""The live UI's server under attack (issue 13): each hole an attacker or a careless client found,
reproduced, and what the server must do instead. Assertions are on replies, sequence numbers,
step counters and thread states; the only clocks are generous deadlines for things that must
happen at all."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import zlib

import pytest
from torch import nn

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ldam.web.server as server_mod  # noqa: E402
import ldam.web.session as session_mod  # noqa: E402
from ldam.cli import main  # noqa: E402
from ldam.web.server import BackgroundServer, ServerConfig, create_app, free_port, host_allowed  # noqa: E402
from ldam.web.session import Busy, LiveSession, ModelEntry  # noqa: E402
from web_helpers import LOCAL, WS, chromium, receive, wait_until  # noqa: E402

MODEL = "zoo:lenet-mnist"


@pytest.fixture(scope="module")
def entries():
    return {MODEL: ModelEntry.load(MODEL, with_data=False)}


def start(ws, unit=3, chains=4, **extra) -> dict:
    ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": unit, "chains": chains, **extra})
    return receive(ws, "started")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png() -> bytes:
    """A PNG whose image data stops part-way and is followed by a chunk with a non-letter type:
    Pillow raises ``SyntaxError`` (not an ``OSError``) while decoding it."""
    w = h = 16
    raw = b"".join(b"\x00" + bytes(range(w * 3)) for _ in range(h))
    idat = zlib.compress(raw)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat[: len(idat) // 2]) + chunk(b"1\x002#", b"xx") + chunk(b"IEND", b""))


# ---- 1. no message ends a session ---------------------------------------------------------------

def test_deep_json_and_a_crafted_png_get_error_replies_and_the_session_lives(entries):
    from PIL import Image
    import io

    with pytest.raises(SyntaxError):  # the file does what the report says, so the test means something
        with Image.open(io.BytesIO(crafted_png())) as im:
            im.load()
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_text("[" * 1000 + "]" * 1000)
        assert "nested too deeply" in receive(ws, "error")["message"]
        ws.send_text('{"type": "set", "temperature": ' + "[" * 5000 + "]" * 5000 + "}")
        assert receive(ws, "error")["type"] == "error"
        data = base64.b64encode(crafted_png()).decode()
        ws.send_json({"type": "activations", "model": MODEL, "layer": "conv1",
                      "input": {"kind": "upload", "data": data}})
        assert "not a readable image (SyntaxError)" in receive(ws, "error")["message"]
        assert start(ws)["targets"] == "output:3"  # the same session carries on
        t0 = receive(ws, "frame")["t"]
        assert receive(ws, "frame")["t"] > t0


def test_any_exception_in_a_handler_is_a_reply_not_a_dropped_socket(entries, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server_mod, "activation_maps", broken)
    monkeypatch.setattr(server_mod, "parse", lambda text, _real=server_mod.parse: (
        (_ for _ in ()).throw(MemoryError()) if text == '"oom"' else _real(text)))
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_json({"type": "activations", "model": MODEL, "layer": "conv1", "input": {"kind": "dataset", "index": 0}})
        assert "has no dataset examples" in receive(ws, "error")["message"]
        ws.send_text('"oom"')
        assert "could not handle that message (MemoryError)" in receive(ws, "error")["message"]
        ws.send_json({"type": "activations", "model": MODEL, "layer": "conv1",
                      "input": {"kind": "upload", "data": base64.b64encode(_png()).decode()}})
        assert "RuntimeError" in receive(ws, "error")["message"]
        assert start(ws, unit=5)["targets"] == "output:5"


def _png(size=(40, 30)) -> bytes:
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# ---- 2. uploads off the event loop, one at a time, rate-limited -----------------------------------

def test_a_slow_upload_blocks_neither_the_server_nor_the_session(entries, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    real_input = server_mod._input

    def slow_input(msg, entry):
        entered.set()
        assert gate.wait(60), "the test never released the decode"
        return real_input(msg, entry)

    monkeypatch.setattr(server_mod, "_input", slow_input)
    app = create_app(entries, ServerConfig())
    upload = {"type": "activations", "model": MODEL, "layer": "conv1",
              "input": {"kind": "upload", "data": base64.b64encode(_png()).decode()}}
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws, c.websocket_connect(WS) as other:
        receive(ws, "hello")
        receive(other, "hello")
        ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": 2, "chains": 3})
        start(other, unit=7)
        ws.send_json(upload)
        assert entered.wait(30)
        # while the decode is held: health answers, and both sessions keep streaming frames
        health: list = []
        th = threading.Thread(target=lambda: health.append(c.get("/api/health").json()))
        th.start()
        th.join(30)
        assert health and health[0]["sessions"] == 2
        seq = receive(other, "frame")["seq"]
        assert receive(other, "frame")["seq"] > seq
        seq = receive(ws, "frame")["seq"]
        assert receive(ws, "frame")["seq"] > seq
        ws.send_json(upload)  # a second one while the first runs
        assert "still running" in receive(ws, "error")["message"]
        gate.set()
        maps = receive(ws, "activations")
        assert maps["layer"] == "conv1" and maps["total_units"] == 6


def test_heavy_requests_are_rate_limited(entries, monkeypatch):
    monkeypatch.setattr(server_mod, "HEAVY_WINDOW_S", 3600.0)
    app = create_app(entries, ServerConfig())
    upload = {"type": "activations", "model": MODEL, "layer": "conv1",
              "input": {"kind": "upload", "data": base64.b64encode(_png()).decode()}}
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        for _ in range(server_mod.HEAVY_BURST):
            ws.send_json(upload)
            receive(ws, "activations")
        ws.send_json(upload)
        assert f"at most {server_mod.HEAVY_BURST}" in receive(ws, "error")["message"]


# ---- 3. workers end within one step; controls are bounded; a slot is free when its worker ended ---

class Gate:
    """Shared by a model and the session's deep copy of it (``deepcopy`` returns the same gate)."""

    def __init__(self):
        self.calls = 0
        self.sem = threading.Semaphore(0)
        self.entered = threading.Event()
        self.free = threading.Event()

    def __deepcopy__(self, memo):
        return self


class SlowNet(nn.Module):
    """A LeNet-sized classifier whose forward waits at a gate: each sampler step is one forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.gate = Gate()

    def forward(self, x):
        g = self.gate
        g.calls += 1
        if not g.free.is_set():
            g.entered.set()
            g.sem.acquire(timeout=30)
        return self.fc(x.flatten(1))


def test_closing_a_tab_ends_its_worker_within_one_step_and_only_then_frees_the_slot():
    net = SlowNet()
    g = net.gate
    g.free.set()
    entry = ModelEntry.from_model("slow", net, (1, 28, 28))
    app = create_app({"slow": entry}, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c:
        with c.websocket_connect(WS) as ws:
            receive(ws, "hello")
            ws.send_json({"type": "set", "steps_per_frame": 100})
            ws.send_json({"type": "start", "model": "slow", "layer": "output", "unit": 1, "chains": 2})
            receive(ws, "started")
            g.entered.clear()
            g.free.clear()
            (session,) = app.state.sessions
            for _ in range(3):  # let three forwards through, one at a time
                assert g.entered.wait(30)
                g.entered.clear()
                g.sem.release()
            assert g.entered.wait(30)  # the worker now waits inside a step
        # the tab is gone while the worker is inside a step
        assert wait_until(lambda: session._stop.is_set())
        assert session.alive and app.state.sessions == {session}  # not free while the worker runs
        assert c.get("/api/health").json()["sessions"] == 1
        calls = g.calls
        g.free.set()
        g.sem.release(10)
        assert wait_until(lambda: not session.alive)
        assert g.calls - calls == 0  # it finished the step it was in, and took no other
        assert not app.state.sessions and c.get("/api/health").json()["sessions"] == 0


def test_quick_open_start_close_cycles_leave_no_threads(entries):
    before = {t.ident for t in threading.enumerate()}
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c:
        served = 0
        for i in range(12):
            with c.websocket_connect(WS) as ws:
                first = ws.receive_json()
                if first["type"] == "hello":
                    served += 1
                    ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": i % 10, "chains": 2})
                else:  # the earlier tabs' workers have not all ended yet: their slots are still taken
                    assert "limit of 4 sessions" in first["message"]
            running = [t for t in threading.enumerate()
                       if t.name == "ldam-session" and t.is_alive() and t.ident not in before]
            assert len(running) <= 4  # --max-sessions bounds the workers, not only the open sockets
        assert served >= 4
        assert wait_until(lambda: not app.state.sessions)
        workers = [t for t in threading.enumerate() if t.name == "ldam-session" and t.ident not in before]
        assert wait_until(lambda: not any(t.is_alive() for t in workers))


def test_controls_coalesce_and_are_bounded(entries):
    s = LiveSession(entries, lambda m: None)
    s.stop()  # no worker: the pending list is what a busy worker would face
    assert not s.alive
    for unit in range(3000):
        s.submit("start", {"model": MODEL, "layer": "output", "unit": unit % 10})
    assert s._pending == [("start", {"model": MODEL, "layer": "output", "unit": 2999 % 10})]
    for i in range(3000):
        s.submit("set", {"temperature": 0.01 + i * 1e-6, "l2": 0.5} if i % 2 else {"step_size": 1e-3 * (1 + i)})
    assert len(s._pending) == 2
    merged = s._pending[1][1]
    assert merged == {"temperature": pytest.approx(0.01 + 2999e-6), "l2": 0.5, "step_size": pytest.approx(2.999)}
    for _ in range(100):
        s.submit("pause")
        s.submit("resume")
        s.submit("snapshot")
    assert [k for k, _ in s._pending] == ["start", "set", "resume", "snapshot"]
    with pytest.raises(Busy, match="controls are waiting"):
        for i in range(100):  # alternating kinds cannot merge: the bound holds
            s.submit("record", bool(i % 2))
            s.submit("set", {"l2": float(i)})
    assert len(s._pending) <= session_mod.MAX_PENDING


def test_a_flood_of_starts_is_applied_as_a_few_and_ends_on_the_last(entries):
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        for i in range(3000):
            ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": i % 10, "chains": 2})
        ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": 8, "chains": 2, "seed": 42})
        (session,) = app.state.sessions
        assert len(session._pending) <= session_mod.MAX_PENDING
        starts = 0
        while True:
            m = ws.receive_json()
            assert m["type"] != "error", m
            if m["type"] == "started":
                starts += 1
                if m["unit"] == 8 and session.sampler.config["seed"] == 42:
                    break
        assert starts < 3001 and len(session._pending) <= session_mod.MAX_PENDING


# ---- 4. clients that never read ---------------------------------------------------------------------

def raw_socket_client(port: int, messages: list[dict]) -> socket.socket:
    """A WebSocket client that completes the handshake, sends ``messages`` and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    for msg in messages:
        payload, mask = json.dumps(msg).encode(), b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
        sock.sendall(header + mask + masked)
    return sock


@pytest.mark.parametrize("ack", [False, True])
def test_clients_that_never_read_are_idled_then_evicted(entries, monkeypatch, ack):
    monkeypatch.setattr(server_mod, "STALL_S", 0.5)
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT_S", 2.0)
    monkeypatch.setattr(server_mod, "IDLE_EVICT_S", 3.0)
    app = create_app(entries, ServerConfig(max_sessions=4))
    with BackgroundServer(app) as srv:
        socks = [raw_socket_client(srv.port, [{"type": "start", "model": MODEL, "layer": "output", "unit": "all",
                                               "chains": 10, "ack": ack}]) for _ in range(4)]
        try:
            assert wait_until(lambda: len(app.state.sessions) == 4)
            held: set = set()
            steps: dict = {}

            def all_held() -> bool:
                for s in list(app.state.sessions):
                    if s.held and s.sampler is not None:
                        held.add(s)
                        steps.setdefault(s, s.sampler.t)
                return len(held) == 4

            assert wait_until(all_held)  # nobody takes their frames: the workers idle
            assert wait_until(lambda: not app.state.sessions)  # then the clients are evicted, the slots freed
            assert all(not s.alive for s in held)
            assert all(s.sampler is None for s in held)
        finally:
            for s in socks:
                s.close()


# ---- 5. per-session memory ---------------------------------------------------------------------------

def test_recording_is_bounded_by_bytes_and_only_running_frames_count(entries, monkeypatch):
    monkeypatch.setattr(session_mod, "GIF_BYTES", 6000)
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        start(ws, unit=3, chains=2)  # frames of ~1.5 kB: a few fit under the cap
        (session,) = app.state.sessions
        ws.send_json({"type": "pause"})
        receive(ws, "paused")
        ws.send_json({"type": "record", "on": True})
        receive(ws, "recording")
        for _ in range(3):
            ws.send_json({"type": "reset"})
            ws.send_json({"type": "snapshot"})
            receive(ws, "snapshot")
        assert session.recording == []  # resets and snapshots are not frames of the running chains
        ws.send_json({"type": "resume"})
        capped = receive(ws, "recording")
        assert capped["capped"] and "the recording is full" in capped["message"]
        n = len(session.recording)
        assert 0 < n and session._recorded_bytes <= 6000
        assert session._recorded_bytes == sum(len(f) for f in session.recording)
        receive(ws, "frame")
        receive(ws, "frame")
        assert len(session.recording) == n
        ws.send_json({"type": "record", "on": False})
        assert receive(ws, "gif")["frames"] == n


def test_a_huge_unknown_message_is_not_echoed(entries):
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_text(json.dumps({"type": "x" * 2_800_000}))
        err = receive(ws, "error")
        assert "unknown message type" in err["message"] and len(json.dumps(err)) < 500
        ws.send_text(json.dumps({"type": "set", "y" * 60_000: 1}))
        err = receive(ws, "error")
        assert len(json.dumps(err)) < 500


# ---- 6. DNS rebinding ----------------------------------------------------------------------------------

def test_a_local_server_answers_only_to_loopback_host_names(entries):
    cfg = ServerConfig()
    for ok in ["127.0.0.1:8765", "localhost", "LOCALHOST:80", "[::1]:8765", "127.0.0.2", "app.localhost:9"]:
        assert host_allowed(ok, cfg), ok
    for bad in ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "", None, "10.0.0.5:8765"]:
        assert not host_allowed(bad, cfg), bad
    app = create_app(entries, cfg)
    with TestClient(app, base_url="http://rebound.evil.example:8765") as c:
        r = c.get("/api/health")
        assert r.status_code == 421 and "Host" in r.json()["error"]
        with pytest.raises(Exception):
            with c.websocket_connect("ws://rebound.evil.example:8765/ws") as ws:
                ws.receive_json()
    with TestClient(app, base_url="http://localhost:8765") as c:
        assert c.get("/api/health").json()["ok"]


def test_a_remote_server_answers_to_its_configured_names():
    named = ServerConfig(host="0.0.0.0", token="t", allowed_hosts=("ldam.lab.example",))
    assert host_allowed("ldam.lab.example:8765", named) and not host_allowed("evil.example:8765", named)
    assert host_allowed("192.168.1.7", ServerConfig(host="192.168.1.7", token="t"))
    assert not host_allowed("evil.example", ServerConfig(host="192.168.1.7", token="t"))
    assert host_allowed("anything.example", ServerConfig(host="0.0.0.0", token="t"))  # behind the token


# ---- 7. remote mode in a browser: the token once, then a cookie --------------------------------------

def test_the_token_url_sets_a_strict_cookie_that_authenticates_assets_and_socket(entries):
    app = create_app(entries, ServerConfig(token="s3cret"))
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/static/common.js").status_code == 401
        assert c.get("/api/health?token=%C3%A9t%C3%A9").status_code == 401  # non-ASCII: 401, not 500
        r = c.get("/?token=s3cret")
        assert r.status_code == 200
        cookie = r.headers["set-cookie"].lower()
        assert "ldam_token=s3cret" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/static/common.js").status_code == 200  # the cookie, no token in the URL
        with c.websocket_connect(WS) as ws:
            assert receive(ws, "hello")["type"] == "hello"
        c.cookies.clear()
        c.cookies.set("ldam_token", "wrong")
        assert c.get("/static/common.js").status_code == 401


# ---- 8. a busy port --------------------------------------------------------------------------------------

def test_a_busy_port_is_one_line_and_exit_code_2(capsys):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        code = main(["serve", "--port", str(port), "--no-data"])
    err = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in (err.out + err.err).splitlines() if ln.strip()]
    assert lines == [f"ldam: error: port {port} is in use; pass --port (e.g. --port {port + 1})"], lines


def test_a_token_server_works_in_a_real_browser(entries):
    """Item 7 in Chromium: the page is opened once with ?token=...; its scripts, styles and socket
    then authenticate with the cookie, and frames arrive on both pages."""
    app = create_app(entries, ServerConfig(token="s3cret"))
    with BackgroundServer(app) as srv, chromium() as b:
        pg = b.new_context().new_page()
        failed: list[str] = []
        pg.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        pg.goto(srv.url + "/?token=s3cret")
        pg.wait_for_function("window.ldam && window.ldam.frames >= 2", timeout=60_000)
        pg.goto(srv.url + "/activations")  # no token in this URL at all
        pg.wait_for_function("document.querySelectorAll('script').length > 0", timeout=30_000)
        assert pg.evaluate("document.readyState") == "complete"
        assert not failed, failed


def test_a_corrupt_copy_is_named_not_reported_as_missing(monkeypatch):
    """A checksum mismatch in the full data, or in the bundled subset, is said with its reason."""
    import ldam.data
    from ldam.errors import DataError

    def corrupt_full(split, download_missing=False):
        raise DataError("mnist/t10k-images-idx3-ubyte.gz: SHA-256 0123 does not match the expected 4567")

    def corrupt_bundled(name):
        raise DataError("mnist-test.npy.gz is corrupt: SHA-256 89ab does not match the expected cdef")

    monkeypatch.setattr(ldam.data, "load_mnist", corrupt_full)
    entry = ModelEntry.load(MODEL)
    assert entry.data_source == "bundled"
    assert "does not match the expected 4567" in entry.data_note()
    monkeypatch.setattr(ldam.data, "load_bundled", corrupt_bundled)
    entry = ModelEntry.load(MODEL)
    assert entry.data_source == "missing" and not entry.has_data
    note = entry.data_note()
    assert "No mnist images" in note and "4567" in note and "mnist-test.npy.gz is corrupt" in note


def test_the_hello_lists_every_method_of_the_core_once(entries):
    """The page builds its method menu, names and stability formulas from the hello: one list, the core's."""
    from ldam.samplers import METHODS

    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        hello = receive(ws, "hello")
    assert [m["value"] for m in hello["methods"]] == list(METHODS)
    bounds = {m["value"]: m["bound"] for m in hello["methods"]}
    # a formula is shown exactly for the methods that have a stability bound on the L2 term
    import ldam.samplers as smp

    for name in METHODS:  # Metropolis methods reject overshooting moves; ascent has no noise to be stable with
        method = smp.make_method(name)
        has = not isinstance(method, (smp.Metropolis, smp.Ascent))
        assert (bounds[name] is not None) == has, name
    # the formulas shown are the ones stable_step computes (T = 0.5, λ = 2)
    assert bounds["sgld"] == "4T/λ" and smp.make_method("sgld").stable_step(2.0, 0.5) == 4 * 0.5 / 2
    mu = smp.make_method("paper").momentum
    assert bounds["paper"] == "(1+μ)/(λ(1−μ))"
    assert smp.make_method("paper").stable_step(2.0, 0.5) == pytest.approx((1 + mu) / (2 * (1 - mu)))
