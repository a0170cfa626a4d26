"""The live UI in a newcomer's hands, without a browser: the bundled data, ``ldam data fetch``,
what a model tells the pages (class names, the first feature layer, what data is missing), and the
numbers a frame carries (stability bound, Metropolis adaptation, divergence)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ldam.cli import main  # noqa: E402
from ldam.data import bundled, cifar10, mnist  # noqa: E402
from ldam.errors import DataError  # noqa: E402
from ldam.web.server import ServerConfig, create_app  # noqa: E402
from ldam.web.session import ModelEntry, NormalizedImages, top_images  # noqa: E402
from web_helpers import LOCAL, WS, receive  # noqa: E402

MODEL = "zoo:lenet-mnist"
ROOT = Path(__file__).resolve().parents[1]
# Per-class counts of the canonical sets (shared/data/MANIFEST.md), an independent reference.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_TEST1000_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A fresh machine: no LDAM_DATA_DIR, an empty cache."""
    monkeypatch.delenv("LDAM_DATA_DIR", raising=False)
    monkeypatch.setenv("LDAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


# ---- the bundled subset ----------------------------------------------------------------------

def test_the_bundled_subsets_are_the_canonical_test_images():
    x, y = bundled.load_bundled("mnist")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # MNIST's first test labels
    c, cy = bundled.load_bundled("cifar10")
    assert c.shape == (1000, 3, 32, 32)
    assert torch.bincount(cy, minlength=10).tolist() == CIFAR_TEST1000_COUNTS
    assert cy[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # The canonical rows (red plane first) of test[0] start 158,159,165, of test[2] 158,158,139 (MANIFEST.md)
    assert c[0, 0, 0, :3].tolist() == [158, 159, 165] and c[2, 0, 0, :3].tolist() == [158, 158, 139]
    hwc = c.permute(0, 2, 3, 1).contiguous().numpy().tobytes()
    assert hashlib.sha256(hwc).hexdigest() == "da362006b99671213d1a5d856cab2bedf64d40bad4501630ee60f4ceb2d3ec7f"


def test_the_bundled_subsets_equal_the_real_files():
    from conftest import require_data

    root = require_data("mnist/t10k-images-idx3-ubyte.gz", "cifar10/cifar10_test_first1000.npz")
    x, y = bundled.load_bundled("mnist")
    images = mnist._read_idx(root / "mnist/t10k-images-idx3-ubyte.gz", 0x803, 3)
    labels = mnist._read_idx(root / "mnist/t10k-labels-idx1-ubyte.gz", 0x801, 1)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    with np.load(root / "cifar10/cifar10_test_first1000.npz") as z:
        assert np.array_equal(bundled.load_bundled("cifar10")[0].numpy(), z["images"].transpose(0, 3, 1, 2))


def test_the_script_rebuilds_the_bundled_files_byte_for_byte(tmp_path):
    from conftest import require_data

    root = require_data("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz",
                        "cifar10/cifar10_test_first1000.npz")
    subprocess.run([sys.executable, str(ROOT / "scripts/make_bundled_data.py"), "--source", str(root),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    shipped = bundled.manifest()["files"]
    for name, entry in shipped.items():
        data = (tmp_path / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] == hashlib.sha256(
            (bundled.BUNDLED_DIR / name).read_bytes()).hexdigest()


def test_the_script_refuses_a_source_with_a_wrong_checksum(tmp_path):
    (tmp_path / "src/mnist").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "src/mnist" / name).write_bytes(gzip.compress(b"not mnist"))
    r = subprocess.run([sys.executable, str(ROOT / "scripts/make_bundled_data.py"), "--source", str(tmp_path / "src"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0 and "does not match the expected" in r.stderr
    assert not (tmp_path / "out" / bundled.FILES["mnist"]).exists()


def test_a_corrupt_bundled_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    for name in ("manifest.json", bundled.FILES["mnist"]):
        (tmp_path / name).write_bytes((bundled.BUNDLED_DIR / name).read_bytes())
    data = bytearray((tmp_path / bundled.FILES["mnist"]).read_bytes())
    data[1000] ^= 0xFF
    (tmp_path / bundled.FILES["mnist"]).write_bytes(bytes(data))
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    with pytest.raises(DataError, match="corrupt.*ldam data fetch mnist"):
        bundled.load_bundled("mnist")


def test_without_data_the_server_uses_the_bundled_subset(no_data):
    entry = ModelEntry.load(MODEL)
    assert entry.data_source == "bundled" and entry.has_data
    d = entry.describe()
    assert d["discriminator"] and d["dataset_examples"] == 1000
    assert d["data"]["command"] == "ldam data fetch mnist" and "ldam data fetch mnist" in d["data"]["note"]
    real = entry.real_images()
    assert len(real) == 10000  # the critic's real images: all bundled digits
    x, _ = bundled.load_bundled("mnist")
    assert torch.allclose(real[5], (x[5].float() / 255 - 0.1307) / 0.3081, atol=1e-6)
    # The top-9 of the "7" logit: the test images with the largest logit, recomputed here.
    top = top_images(entry, "output", 7)
    inputs = NormalizedImages(entry.test_images, entry.info.mean, entry.info.std)
    with torch.no_grad():
        logits = entry.model(torch.stack([inputs[i] for i in range(len(inputs))]))[:, 7]
    assert np.allclose(top["scores"], torch.topk(logits, 9).values.numpy(), atol=1e-4)
    assert (entry.test_labels[torch.topk(logits, 9).indices] == 7).all()


def test_with_the_full_data_nothing_is_said_missing(monkeypatch):
    from conftest import require_data

    monkeypatch.setenv("LDAM_DATA_DIR", str(require_data("mnist/t10k-images-idx3-ubyte.gz")))
    entry = ModelEntry.load(MODEL)
    assert entry.data_source == "full" and entry.describe()["data"] == {"source": "full", "note": None, "command": None}


def test_no_data_mode_says_what_is_off():
    entry = ModelEntry.load(MODEL, with_data=False)
    assert not entry.has_data and "--no-data" in entry.describe()["data"]["note"]


# ---- ldam data fetch ---------------------------------------------------------------------------

def _fake_mnist(folder: Path) -> dict[str, str]:
    """Four small idx files under the canonical names, and their SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sums = {}
    for name in mnist.MNIST_FILES:
        n = 7 if "train" in name else 3
        if "images" in name:
            raw = np.array([0x803, n, 28, 28], ">u4").tobytes() + rng.integers(0, 256, n * 784, np.uint8).tobytes()
        else:
            raw = np.array([0x801, n], ">u4").tobytes() + rng.integers(0, 10, n, np.uint8).tobytes()
        data = gzip.compress(raw, mtime=0)
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def test_data_fetch_mnist_downloads_and_verifies(no_data, monkeypatch, capsys):
    mirror = no_data / "mirror"
    sums = _fake_mnist(mirror)
    monkeypatch.setattr(mnist, "MNIST_FILES", sums)
    assert main(["data", "fetch", "mnist", "--mirror", mirror.as_uri()]) == 0
    cache = no_data / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)  # no .part files left
    for name, digest in sums.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest
    x, y = mnist.load_mnist("train", download_missing=False)  # the loaders find them in the cache
    assert x.shape == (7, 28, 28)
    assert "downloaded, SHA-256 verified" in capsys.readouterr().out
    assert main(["data", "fetch", "mnist", "--mirror", mirror.as_uri()]) == 0
    assert capsys.readouterr().out.count("already there") == 4


def test_data_fetch_refuses_a_corrupt_download_and_keeps_nothing(no_data, monkeypatch, capsys):
    mirror = no_data / "mirror"
    sums = _fake_mnist(mirror)
    monkeypatch.setattr(mnist, "MNIST_FILES", sums)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    assert main(["data", "fetch", "mnist", "--mirror", mirror.as_uri()]) == 2
    err = capsys.readouterr().err
    bad = hashlib.sha256(b"corrupt").hexdigest()
    assert f"SHA-256 {bad} != expected {sums['t10k-labels-idx1-ubyte.gz']}" in err
    assert not (no_data / "cache/mnist/t10k-labels-idx1-ubyte.gz").exists()
    assert not list((no_data / "cache/mnist").glob("*.part"))


def test_data_fetch_mnist_from_the_real_files():
    from conftest import require_data

    root = require_data(*(f"mnist/{n}" for n in mnist.MNIST_FILES))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert main(["data", "fetch", "mnist", "--dir", d, "--mirror", (root / "mnist").as_uri()]) == 0
        for name, digest in mnist.MNIST_FILES.items():
            assert hashlib.sha256((Path(d) / "mnist" / name).read_bytes()).hexdigest() == digest


def _cifar_tarball(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz of the canonical layout holding 2 images per batch; the test batch."""
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (2, 3072), np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, 2)]
            blob = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return data, np.array(labels)


def test_data_fetch_cifar10_checks_the_md5_then_unpacks(no_data, monkeypatch, capsys):
    mirror = no_data / "mirror"
    mirror.mkdir()
    data, labels = _cifar_tarball(mirror / cifar10.TAR_NAME)
    assert main(["data", "fetch", "cifar10", "--mirror", mirror.as_uri()]) == 2  # the canonical MD5: refused
    assert "MD5" in capsys.readouterr().err
    assert not (no_data / "cache/cifar10/cifar-10-batches-py").exists()
    monkeypatch.setattr(cifar10, "TAR_MD5", hashlib.md5((mirror / cifar10.TAR_NAME).read_bytes()).hexdigest())
    assert main(["data", "fetch", "cifar10", "--mirror", mirror.as_uri()]) == 0
    x, y = cifar10.load_cifar10("test", download_missing=False)
    assert np.array_equal(x.numpy(), data.reshape(2, 3, 32, 32)) and y.tolist() == labels.tolist()
    assert not list((no_data / "cache/cifar10").glob("*.part"))


# ---- what a model tells the pages --------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet():
    pytest.importorskip("efficientnet_lite_pytorch")
    return ModelEntry.load("zoo:efficientnet-lite0-imagenet", with_data=False)


def test_imagenet_sends_every_class_name_and_starts_on_a_feature_layer(imagenet):
    d = imagenet.describe()
    assert len(d["classes"]) == 1000 and d["classes"][1] == "goldfish"
    layers = {l["name"]: l for l in d["layers"]}
    # ZeroPad2d of the input repeats it (plus zeros): not a feature layer, so not the first one shown.
    assert layers["_conv_stem.static_padding"]["copies"] == "input"
    assert layers["_fc"]["copies"] == "output" and layers["_conv_stem"]["copies"] is None
    assert d["maps_layer"] == "_conv_stem"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(imagenet.model._conv_stem.static_padding(x), torch.nn.functional.pad(x, (0, 1, 0, 1)))
    assert [n for n, l in layers.items() if l["copies"] == "input"] == ["_conv_stem.static_padding"]
    assert "not shipped" in d["data"]["note"] and d["data"]["command"] is None


def test_lenet_starts_its_maps_on_conv1():
    d = ModelEntry.load(MODEL, with_data=False).describe()
    assert d["maps_layer"] == "conv1" and not [l for l in d["layers"] if l["copies"] == "input"]
    assert [l["name"] for l in d["layers"] if l["copies"] == "output"] == ["fc3"]


# ---- the numbers a frame carries ---------------------------------------------------------------

@pytest.fixture(scope="module")
def entries():
    return {MODEL: ModelEntry.load(MODEL, with_data=False)}


def frame_where(ws, cond, limit: int = 3000) -> dict:
    for _ in range(limit):
        f = receive(ws, "frame")
        if cond(f):
            return f
    raise AssertionError("no such frame")


def test_frames_carry_the_stability_bound_of_the_knobs(entries):
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_json({"type": "set", "temperature": 0.02, "step_size": 0.004, "l2": 0.3})
        ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": 3, "chains": 4})
        f = frame_where(ws, lambda f: f["params"]["l2"] == 0.3)
        assert f["stats"]["stable_step"] == pytest.approx(4 * 0.02 / 0.3)  # SGLD: ε < 4T/λ
        ws.send_json({"type": "set", "temperature": 1e-4})
        f = frame_where(ws, lambda f: f["params"]["temperature"] == 1e-4)
        assert f["stats"]["stable_step"] == pytest.approx(4e-4 / 0.3) and 4e-4 / 0.3 < f["params"]["step_size"]
        ws.send_json({"type": "set", "l2": 0})
        assert frame_where(ws, lambda f: f["params"]["l2"] == 0)["stats"]["stable_step"] is None
        ws.send_json({"type": "set", "method": "paper", "l2": 0.5})
        f = frame_where(ws, lambda f: f["params"]["method"] == "paper" and f["params"]["l2"] == 0.5)
        assert f["stats"]["stable_step"] == pytest.approx(1.9 / (0.5 * 0.1))  # (1+μ)/(λ(1−μ)), μ = 0.9


def test_mala_adapts_its_step_at_the_default_knobs_and_again_after_a_knob_changes(entries):
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_json({"type": "set", "temperature": 0.02, "step_size": 0.004, "l2": 0.3, "method": "mala",
                      "steps_per_frame": 10})
        ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": "all", "chains": 3})
        first = frame_where(ws, lambda f: f["params"]["method"] == "mala" and "adapted_step" in f["stats"])
        assert first["stats"]["adapting"] is True
        (session,) = app.state.sessions
        m = session.sampler.method
        f = frame_where(ws, lambda f: f["t"] >= 600)  # past the 500-step window: adapted and frozen
        assert f["stats"]["adapting"] is False and f["stats"]["acceptance"] > 0.2
        scale = m.step_scale()
        mean, lo, hi = f["stats"]["adapted_step"]
        assert mean == pytest.approx(0.004 * float(scale.mean())) and lo <= mean <= hi < 0.004
        ws.send_json({"type": "set", "l2": 1.0})  # the density changed: adapt again
        f = frame_where(ws, lambda f: f["params"]["l2"] == 1.0)
        assert f["stats"]["adapting"] is True and m._n_adapt < m.adapt_steps


def test_divergence_reaches_the_page_with_the_bound(entries):
    """Chains that explode (here: set to infinity) are reported as the CLI reports them, with the
    method's bound, and the session pauses."""
    app = create_app(entries, ServerConfig())
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(WS) as ws:
        receive(ws, "hello")
        ws.send_json({"type": "set", "temperature": 1e-4, "step_size": 0.004, "l2": 0.3})
        ws.send_json({"type": "start", "model": MODEL, "layer": "output", "unit": 3, "chains": 2})
        frame_where(ws, lambda f: f["params"]["temperature"] == 1e-4)
        ws.send_json({"type": "pause"})
        while not receive(ws, "paused")["paused"]:
            pass
        (session,) = app.state.sessions
        session.sampler.x.fill_(float("inf"))
        ws.send_json({"type": "resume"})
        err = receive(ws, "error")["message"]
        assert "diverged" in err and "4·T/λ = 0.00133" in err and "paused" in err
        assert session.paused
