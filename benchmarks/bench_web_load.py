"""The live UI's server under load (issue 13), side by side in one run on a real socket.

1. **Uploads and the other sessions.** Session B streams frames while client A sends 20 uploads of
   a 39.9-megapixel 16-bit PNG (311 kB on the wire). Reported: B's frames per second during the
   uploads ÷ B's frames per second alone just before, and the slowest ``/api/health`` reply.
2. **Clients that never read.** Four raw sockets send ``start`` (with acknowledgements off) and
   read nothing. Reported: the server's CPU use (process time ÷ wall time) in the window after
   the workers should have idled, and how long until every slot is free again.
3. **Open/start/close cycles.** 12 in a row; the extra threads still running afterwards.
4. **Recording memory.** A 100-chain VGG session records 150 frames; the bytes the recording
   holds ÷ the bytes the same frames would hold as full-resolution RGB images.

    python benchmarks/bench_web_load.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import threading
import time

import numpy as np
from PIL import Image

import ldam.web.server as server_mod
from ldam.web.server import BackgroundServer, ServerConfig, create_app
from ldam.web.session import GIF_BYTES, ModelEntry


def big_png() -> bytes:
    """A 39.9-megapixel 16-bit greyscale PNG with a gentle gradient (small on the wire)."""
    side = 6320
    ramp = (np.arange(side, dtype=np.uint32) * 10).astype(np.uint16)
    im = Image.fromarray(np.broadcast_to(ramp, (side, side)).copy())  # uint16: mode I;16
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def frames_in(ws, seconds: float) -> int:
    """Frames session ``ws`` receives in ``seconds`` (acknowledging each, as the page does)."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            m = json.loads(ws.recv(timeout=max(0.01, end - time.monotonic())))
        except TimeoutError:
            break
        if m["type"] == "frame":
            n += 1
            ws.send(json.dumps({"type": "ack", "seq": m["seq"]}))
    return n


def uploads_vs_frames(entries, quick: bool) -> None:
    from urllib.request import urlopen

    from websockets.sync.client import connect

    data = big_png()
    count = 5 if quick else 20
    with BackgroundServer(create_app(entries, ServerConfig())) as srv:
        url = srv.url.replace("http", "ws") + "/ws"
        with connect(url, max_size=2**26) as b, connect(url, max_size=2**26) as a:
            for ws in (a, b):
                json.loads(ws.recv(timeout=30))
            b.send(json.dumps({"type": "start", "model": "zoo:lenet-mnist", "layer": "output", "unit": "all",
                               "ack": True}))
            frames_in(b, 2.0)  # warm up
            alone_s = 4.0
            alone = frames_in(b, alone_s) / alone_s
            health: list[float] = []
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    urlopen(srv.url + "/api/health", timeout=60).read()
                    health.append(time.perf_counter() - t)
                    time.sleep(0.1)

            def upload() -> None:
                msg = json.dumps({"type": "activations", "model": "zoo:lenet-mnist", "layer": "conv1",
                                  "input": {"kind": "upload", "data": base64.b64encode(data).decode()}})
                done = 0
                while done < count:
                    a.send(msg)
                    while True:
                        m = json.loads(a.recv(timeout=120))
                        if m["type"] == "activations":
                            done += 1
                            break
                        if m["type"] == "error":  # busy or rate-limited: the server said so; try again
                            time.sleep(0.5)
                            break

            poller, uploader = threading.Thread(target=poll), threading.Thread(target=upload)
            t0 = time.monotonic()
            poller.start()
            uploader.start()
            during_frames = 0
            while uploader.is_alive():
                during_frames += frames_in(b, 0.5)
            during_s = time.monotonic() - t0
            stop.set()
            poller.join()
    print(f"1. {count} uploads of a {len(data) / 1024:.0f} kB, 39.9-megapixel 16-bit PNG over {during_s:.1f} s:")
    print(f"   the other session: {alone:.1f} fps alone, {during_frames / during_s:.1f} fps during "
          f"(ratio {during_frames / during_s / alone:.2f}); /api/health slowest {max(health) * 1e3:.0f} ms, "
          f"median {statistics.median(health) * 1e3:.0f} ms over {len(health)} polls")


def unread_clients(entries) -> None:
    import sys

    sys.path.insert(0, "tests")
    from test_web_attacks import raw_socket_client  # the same raw client the tests use

    app = create_app(entries, ServerConfig(max_sessions=4))
    with BackgroundServer(app) as srv:
        t0 = time.monotonic()
        socks = [raw_socket_client(srv.port, [{"type": "start", "model": "zoo:lenet-mnist", "layer": "output",
                                               "unit": "all", "chains": 10, "ack": False}]) for _ in range(4)]
        try:
            c0, w0 = time.process_time(), time.monotonic()
            while not (len(app.state.sessions) == 4 and all(s.held for s in list(app.state.sessions))):
                time.sleep(0.1)
            busy = (time.process_time() - c0) / (time.monotonic() - w0)
            idle_after = time.monotonic() - t0
            c0, w0 = time.process_time(), time.monotonic()
            time.sleep(5)
            cpu = (time.process_time() - c0) / (time.monotonic() - w0)
            held = sum(s.held for s in list(app.state.sessions))
            while app.state.sessions and time.monotonic() - t0 < 300:
                time.sleep(0.2)
            freed = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
    print(f"2. four clients that never read: the server used {busy * 100:.0f} % of a core while their socket buffers "
          f"filled; every worker idle {idle_after:.0f} s after they connected (no frame taken for "
          f"{server_mod.STALL_S:g} s), then {cpu * 100:.0f} % over 5 s with {held}/4 idle; every slot free "
          f"{freed:.0f} s after they connected (send timeout {server_mod.SEND_TIMEOUT_S:g} s)")


def cycles(entries) -> None:
    from websockets.sync.client import connect

    before = {t.ident for t in threading.enumerate()}
    app = create_app(entries, ServerConfig())
    with BackgroundServer(app) as srv:
        url = srv.url.replace("http", "ws") + "/ws"
        for i in range(12):
            with connect(url, max_size=2**24) as ws:
                first = json.loads(ws.recv(timeout=30))
                if first["type"] == "hello":
                    ws.send(json.dumps({"type": "start", "model": "zoo:lenet-mnist", "layer": "output",
                                        "unit": i % 10, "chains": 10}))
        time.sleep(5)
        extra = [t for t in threading.enumerate() if t.ident not in before and t.name == "ldam-session"]
        print(f"3. 12 open/start/close cycles: {len(extra)} session threads still running 5 s later; "
              f"/api/health sessions = {len(app.state.sessions)}")


def recording(quick: bool) -> None:
    from ldam.web.session import LiveSession

    entries = {"zoo:vgg-cifar10": ModelEntry.load("zoo:vgg-cifar10", with_data=False)}
    frames = 20 if quick else 150
    got: list[dict] = []
    s = LiveSession(entries, got.append)
    s.submit("start", {"model": "zoo:vgg-cifar10", "layer": "output", "unit": 3, "chains": 100})
    s.submit("record", True)
    while sum(m["type"] == "frame" for m in got) < frames + 2:
        time.sleep(0.1)
    s.submit("pause")
    time.sleep(1)
    kept, held = len(s.recording or []), s._recorded_bytes
    grid = Image.open(io.BytesIO(base64.b64decode([m for m in got if m["type"] == "frame"][-1]["grid"])))
    raw = grid.width * grid.height * 3 * kept
    s.stop()
    print(f"4. recording {kept} frames of a 100-chain VGG grid ({grid.width}x{grid.height}): {held / 2**20:.1f} MB held "
          f"vs {raw / 2**20:.1f} MB as RGB images (ratio {held / raw:.2f}); cap {GIF_BYTES / 2**20:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    entries = {"zoo:lenet-mnist": ModelEntry.load("zoo:lenet-mnist", with_data=False)}
    uploads_vs_frames(entries, args.quick)
    unread_clients(entries)
    cycles(entries)
    recording(args.quick)


if __name__ == "__main__":
    main()
