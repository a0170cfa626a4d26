"""``--arch MODULE:CALLABLE``: third-party architectures from the command line, never unpickled.

The factories live in tests/arch_fixtures.py (tests/ is on sys.path under pytest). References are
independent of ldam: ``model.named_modules()`` and forward hooks of our own, the original model's
weights and outputs, and accuracy computed by hand from the MNIST test files.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import arch_fixtures
import ldam
from ldam.cli import main
from ldam.zoo import LeNet5, ModelInfo, load_model, save_checkpoint

SHAPE = ["--input-shape", "1", "28", "28"]
ARCH = ["--arch", "arch_fixtures:make"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ldam: error: "), err
    return err


def direct_shapes(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every named module's output shape (without batch) from one forward pass, by our own hooks."""
    out: dict[str, tuple[int, ...]] = {}
    def hook(name: str):
        def record(_m, _i, o) -> None:
            out.setdefault(name, tuple(o.shape[1:]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        y = model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    out["output"] = tuple(y.shape[1:])
    return out


def parse_table(text: str) -> tuple[str, list[str], dict[str, dict[str, str]]]:
    """``ldam layers`` output → (header, body lines, {layer: {column: cell}}), cut at the header's offsets."""
    lines = text.splitlines()
    header, body = lines[1], lines[2:]
    start = {c: header.index(c) for c in ("type", "output shape", "target example", "note")}
    units_end = header.index("units") + len("units")  # a right-aligned column
    rows = {}
    for ln in body:
        assert ln[units_end - 1].isdigit() and ln[units_end:units_end + 2] == "  ", ln  # units end at the header's end
        shape, units = ln[start["output shape"]:units_end].rsplit(None, 1)
        rows[ln[:start["type"]].strip()] = {
            "type": ln[start["type"]:start["output shape"]].strip(), "output shape": shape.strip(), "units": units,
            "target example": ln[start["target example"]:start["note"]].strip(), "note": ln[start["note"]:].strip(),
        }
    return header, body, rows


def test_layers_of_a_random_model_list_named_modules_with_direct_shapes(capsys):
    assert main(["layers", "random", *ARCH, *SHAPE]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "random (--arch arch_fixtures:make): input [1, 28, 28]"
    _, _, rows = parse_table(text)
    ref = arch_fixtures.make()
    shapes = direct_shapes(ref, (1, 28, 28))
    assert set(rows) == {n for n, _ in ref.named_modules() if n} | {"output"}
    for name, row in rows.items():
        assert row["output shape"] == str(list(shapes[name])), name
        assert row["units"] == str(shapes[name][0])
    assert rows["conv1"]["type"] == "Conv2d" and rows["conv1"]["target example"] == "conv1:0@14,14"


def test_kwargs_reach_the_factory_and_class_methods_work(capsys):
    assert main(["layers", "random", *ARCH, "--arch-kwargs", '{"width": 5, "classes": 3}', *SHAPE]) == 0
    _, _, rows = parse_table(capsys.readouterr().out)
    assert rows["conv1"]["output shape"] == "[5, 28, 28]" and rows["conv1"]["units"] == "5"
    assert rows["output"]["output shape"] == "[3]"
    assert main(["layers", "random", "--arch", "arch_fixtures:Net.from_config",
                 "--arch-kwargs", '{"config": {"width": 2, "channels": 3}}', "--input-shape", "3", "28", "28"]) == 0
    _, _, rows = parse_table(capsys.readouterr().out)
    assert rows["conv1"]["output shape"] == "[2, 28, 28]" and rows["output"]["output shape"] == "[10]"


def test_the_table_stays_aligned_with_names_longer_than_40_characters(capsys):
    assert main(["layers", "random", *ARCH, *SHAPE]) == 0
    header, body, rows = parse_table(capsys.readouterr().out)
    long_names = [n for n in rows if len(n) > 40]
    assert long_names and f"{arch_fixtures.LONG}.0" in long_names
    for col in ("type", "output shape", "target example"):
        at = header.index(col)
        for ln in body:  # every row's cell starts exactly at the header's column
            assert ln[at - 2:at] == "  " and ln[at] != " ", (col, ln)
    assert header.rstrip().endswith("note")  # the last column, filled where ldam has something to say


def test_the_last_column_is_the_layer_note(capsys):
    assert main(["layers", "random", "--arch", "arch_fixtures:Twice", "--input-shape", "4"]) == 0
    _, _, rows = parse_table(capsys.readouterr().out)
    from ldam.targets import LayerInfo

    if not hasattr(LayerInfo, "note"):
        pytest.skip("this ldam.targets has no layer notes")
    assert rows["act"]["note"] and rows["act"]["target example"] == "-"  # called twice: not a target by itself
    assert rows["a"]["note"] == "" and rows["a"]["target example"] == "a:0"


def test_a_saved_state_dict_loads_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    original = arch_fixtures.make(width=6).eval()
    sd = original.state_dict()
    for name, blob in [("plain.pt", sd), ("wrapped.pt", {"model": sd, "epoch": 3}),
                       ("dp.pt", {f"module.{k}": v for k, v in sd.items()})]:  # DataParallel's prefix
        torch.save(blob, tmp_path / name)
        model, info = load_model(str(tmp_path / name), arch="arch_fixtures:make", arch_kwargs='{"width": 6}',
                                 input_shape=(1, 28, 28))
        assert not model.training and info.input_shape == (1, 28, 28) and info.class_names is None
        assert info.mean == (0.0,) and info.std == (1.0,) and info.meta["arch_kwargs"] == {"width": 6}
        for k, v in original.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (name, k)
        x = torch.randn(4, 1, 28, 28)
        assert torch.equal(model(x), original(x))
    # random initialization repeats (seeded) and leaves the global random state alone
    state = torch.random.get_rng_state()
    a, _ = load_model("random", arch="arch_fixtures:make", input_shape=(1, 28, 28))
    b, _ = load_model("random", arch="arch_fixtures:make", input_shape=(1, 28, 28))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_sample_from_a_state_dict_equals_sample_from_an_ldam_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    net = LeNet5()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    ckpt = save_checkpoint(net, "lenet5", tmp_path / "ckpt.pt", ModelInfo("m", "lenet5", (1, 28, 28)))
    common = ["--target", "conv2:3", "--target", "fc1:0-1", "--chains", "2", "--steps", "30", "--quiet"]
    assert main(["sample", "--model", str(tmp_path / "weights.pt"), "--arch", "arch_fixtures:lenet", *SHAPE,
                 *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", "--model", str(ckpt), *common, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = ldam.Result.load(tmp_path / "a" / "result.pt"), ldam.Result.load(tmp_path / "b" / "result.pt")
    assert torch.equal(a.samples, b.samples) and torch.equal(a.activations, b.activations)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["arch"] == "arch_fixtures:lenet" and cfg["arch_kwargs"] == {}


def test_mean_and_std_set_the_pixel_range(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sample", "--model", "random", *ARCH, *SHAPE, "--target", "fc:0", "--chains", "2", "--steps", "20",
                 "--pixel-range", "--mean", "0.5", "--std", "0.25", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    res = ldam.Result.load(out / "result.pt")
    assert res.samples.min() >= -2 - 1e-5 and res.samples.max() <= 2 + 1e-5  # (0 - .5)/.25 .. (1 - .5)/.25
    cfg = json.loads((out / "config.json").read_text())
    assert any(r.startswith("Box(low=[-2.0], high=[2.0]") for r in cfg["regularizers"])


@pytest.mark.parametrize("argv,match", [
    (["random", "--arch", "no_such_module_xyz:make", *SHAPE],
     r"cannot import module 'no_such_module_xyz' \(ModuleNotFoundError: No module named 'no_such_module_xyz'\)"),
    (["random", "--arch", "arch_fixtures:mkae", *SHAPE],
     r"module 'arch_fixtures' has no attribute 'mkae'\. Did you mean make\?"),
    (["random", "--arch", "arch_fixtures:Net.from_confg", *SHAPE],
     r"'arch_fixtures:Net' has no attribute 'from_confg'\. Did you mean from_config\?"),
    (["random", "--arch", "arch_fixtures:CONSTANT", *SHAPE],
     r"arch_fixtures:CONSTANT is not callable \(it is of type int\)"),
    (["random", "--arch", "arch_fixtures:not_a_module", *SHAPE], r"returned a builtins\.dict, not a torch\.nn\.Module"),
    (["random", "--arch", "arch_fixtures:broken", *SHAPE], r"raised RuntimeError: the factory failed on purpose"),
    (["random", "--arch", "arch_fixtures", *SHAPE], r"--arch expects MODULE:CALLABLE"),
    (["random", *ARCH, "--arch-kwargs", "{width: 3}", *SHAPE], r"--arch-kwargs is not valid JSON .*'\{width: 3\}'"),
    (["random", *ARCH, "--arch-kwargs", "[3]", *SHAPE], r"--arch-kwargs must be a JSON object .*JSON array"),
    (["random", *ARCH, "--arch-kwargs", '{"depth": 3}', *SHAPE],
     r"calling it with \(depth=3\) raised TypeError: .*'depth'\. Check --arch-kwargs"),
    (["random", *ARCH], r"needs its input shape: pass --input-shape"),
    (["random", *ARCH, *SHAPE, "--mean", "0.1", "0.2"], r"--mean takes 1 value or one per channel \(1\), got 2"),
    (["random"], r"'random' needs --arch MODULE:CALLABLE"),
    (["zoo:lenet-mnist", *ARCH, *SHAPE], r"zoo:lenet-mnist has its own architecture"),
    (["nowhere.pt", *ARCH, *SHAPE], r"weights file nowhere\.pt does not exist"),
])
def test_errors_name_the_cause_and_the_fix(argv, match, capsys):
    assert main(["layers", *argv]) == 2
    err = one_line_error(capsys)
    assert re.search(match, err), err


def test_state_dict_mismatches_name_the_keys(tmp_path, capsys):
    sd = arch_fixtures.make().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "keys.pt")
    assert main(["layers", str(tmp_path / "keys.pt"), *ARCH, *SHAPE]) == 2
    err = one_line_error(capsys)
    assert "missing keys: fc.bias; unexpected keys: extra.weight" in err and "Check --arch and --arch-kwargs" in err
    torch.save(arch_fixtures.make(width=4).state_dict(), tmp_path / "w4.pt")
    assert main(["layers", str(tmp_path / "w4.pt"), *ARCH, *SHAPE]) == 2
    err = one_line_error(capsys)
    assert "shape mismatch: conv1.weight is [4, 1, 3, 3] in the file but [8, 1, 3, 3] in the model" in err
    assert main(["layers", str(tmp_path / "w4.pt"), *ARCH, "--arch-kwargs", '{"width": 4}', *SHAPE]) == 0
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nodict.pt")
    assert main(["layers", str(tmp_path / "nodict.pt"), *ARCH, *SHAPE]) == 2
    assert "holds a dict with keys 'epoch', 'lr', not a state dict of tensors" in one_line_error(capsys)


def test_a_pickled_model_is_refused_with_a_pointer_to_arch(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save(arch_fixtures.make(), tmp_path / "full.pt")
    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    for argv in (["layers", str(tmp_path / "full.pt"), *ARCH, *SHAPE], ["layers", str(tmp_path / "full.pt")]):
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert "cannot load" in err and "safely (it holds a pickled arch_fixtures.Net object" in err
        assert "torch.save(model.state_dict(), path)" in err and "--arch" in err
    assert main(["layers", str(tmp_path / "evil.pt"), *ARCH, *SHAPE]) == 2
    assert "cannot load" in one_line_error(capsys) and not (tmp_path / "pwned").exists()
    torch.save(arch_fixtures.make().state_dict(), tmp_path / "sd.pt")
    assert main(["layers", str(tmp_path / "sd.pt")]) == 2  # a plain state dict without --arch
    err = one_line_error(capsys)
    assert "is not an ldam checkpoint" in err and "pass --arch MODULE:FACTORY" in err


def test_sample_errors_leave_no_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--model", "random", "--arch", "arch_fixtures:mkae", *SHAPE, "--target", "fc:0"]) == 2
    assert "Did you mean make" in one_line_error(capsys) and list(tmp_path.iterdir()) == []


def test_arch_modules_import_from_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "cwd_only_nets_xyz.py").write_text(
        "from torch import nn\n\ndef tiny(n=3):\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, n))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert main(["layers", "random", "--arch", "cwd_only_nets_xyz:tiny", "--arch-kwargs", '{"n": 7}',
                 "--input-shape", "2", "2"]) == 0
    assert "[7]" in capsys.readouterr().out
    assert str(tmp_path) not in __import__("sys").path  # the folder was on the path only while importing


def test_eval_with_arch_on_mnist_matches_a_direct_computation(tmp_path, capsys):
    from conftest import require_data

    root = require_data("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")
    import gzip

    import numpy as np

    net, _ = load_model("zoo:lenet-mnist")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    with gzip.open(root / "mnist/t10k-images-idx3-ubyte.gz") as f:
        images = torch.from_numpy(np.frombuffer(f.read(), np.uint8, offset=16).copy()).view(-1, 1, 28, 28)
    with gzip.open(root / "mnist/t10k-labels-idx1-ubyte.gz") as f:
        labels = torch.from_numpy(np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64))
    for norm, (mean, std) in [(["--mean", "0.1307", "--std", "0.3081"], (0.1307, 0.3081)), ([], (0.0, 1.0))]:
        assert main(["eval", str(tmp_path / "w.pt"), "--arch", "arch_fixtures:lenet", "--dataset", "mnist", *norm]) == 0
        out = capsys.readouterr().out.splitlines()
        with torch.no_grad():
            pred = net((images.float() / 255 - mean) / std).argmax(1)
        direct = float((pred == labels).double().mean())
        assert out[-1] == f"accuracy: {direct:.4f}", (out, direct)
        assert f"(10000 images, inputs (pixel - [{mean}]) / [{std}], on cpu)" in out[0]
    assert direct < 0.99  # without the model's normalization it is worse: the flags matter
    assert main(["eval", str(tmp_path / "w.pt"), "--arch", "arch_fixtures:lenet"]) == 2
    assert "needs the test set: add --dataset mnist|cifar10" in one_line_error(capsys)
    assert main(["eval", str(tmp_path / "w.pt"), "--arch", "arch_fixtures:lenet", "--dataset", "mnist",
                 "--input-shape", "3", "32", "32"]) == 2
    assert "the mnist test images have shape [1, 28, 28] but the model's inputs have shape [3, 32, 32]" in \
        one_line_error(capsys)


def test_serve_passes_arch_to_the_loader_and_offers_only_the_named_models(tmp_path, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import ldam.web.server as server

    torch.manual_seed(2)
    original = arch_fixtures.make(width=3).eval()
    torch.save(original.state_dict(), tmp_path / "w.pt")
    seen = {}
    monkeypatch.setattr(server, "serve", lambda models, cfg, with_data=True, **opts: seen.update(models=models, **opts))
    spec = str(tmp_path / "w.pt")
    assert main(["serve", spec, "zoo:lenet-mnist", *ARCH, "--arch-kwargs", '{"width": 3}', *SHAPE,
                 "--mean", "0.5", "--std", "0.25", "--no-data"]) == 0
    capsys.readouterr()
    assert seen["models"] == [spec, "zoo:lenet-mnist"] and seen["arch"] == "arch_fixtures:make"
    opts = {k: v for k, v in seen.items() if k != "models"}
    entries = server.load_entries(seen["models"], with_data=False, **opts)
    e = entries[spec]
    assert e.info.input_shape == (1, 28, 28) and e.info.mean == (0.5,) and e.info.std == (0.25,)
    assert e.info.class_names is None
    assert all(torch.equal(p, q) for p, q in zip(e.model.parameters(), original.parameters()))
    assert entries["zoo:lenet-mnist"].info.mean == (0.1307,)  # zoo models keep their own description
    with TestClient(server.create_app(entries), base_url="http://localhost") as c:
        models = {m["name"]: m for m in c.get("/api/models").json()["models"]}
        assert set(models) == {spec, "zoo:lenet-mnist"} and models[spec]["input_shape"] == [1, 28, 28]
        assert "conv1" in {layer["name"] for layer in models[spec]["layers"]}
        with c.websocket_connect("ws://localhost/ws") as ws:  # the Host a local browser sends
            ws.receive_json()  # hello
            ws.send_json({"type": "start", "model": str(tmp_path / "other.pt"), "layer": "output", "unit": 0})
            msg = ws.receive_json()
            assert msg["type"] == "error" and "unknown model" in msg["message"]
    assert main(["serve", *ARCH, *SHAPE]) == 2
    assert "--arch needs the weights files it builds" in one_line_error(capsys)


def test_help_shows_the_arch_options_with_an_example(capsys):
    example = ("ldam layers weights.pt --arch mypkg.nets:resnet18 --arch-kwargs '{\"num_classes\": 10}' "
               "--input-shape 3 224 224")
    for cmd in ("layers", "sample", "serve", "eval"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for flag in ("--arch MODULE:CALLABLE", "--arch-kwargs JSON", "--input-shape", "--mean", "--std"):
            assert flag in text, (cmd, flag)
        if cmd == "layers":
            assert example in text


def test_safetensors_weights_load_when_the_package_is_installed(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(3)
    original = arch_fixtures.make().eval()
    st.save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    model, _ = load_model(str(tmp_path / "w.safetensors"), arch="arch_fixtures:make", input_shape=(1, 28, 28))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.state_dict().items())
