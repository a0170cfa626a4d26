"""Devices (issue 11): ``--device`` parsing and errors, results on the CPU, frames and GIF frames that copy
only what they show, and training and evaluation on a named device.

This machine has no GPU: the CUDA branches are reached by monkeypatching ``torch.cuda``; copies to the
host are counted by patching ``Tensor.cpu``/``Tensor.to`` (on a GPU those are the device→host transfers).
The tests at the end run only where a CUDA GPU is present.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

import ldam
import ldam.device
from ldam.cli import main
from ldam.device import resolve_device
from ldam.errors import DeviceError, LdamError

from models import SmallConvNet

CUDA = torch.cuda.is_available()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ldam: error: "), err
    assert "Traceback" not in err
    return err


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ldam.device, "_mps_available", lambda: False)


# ---- resolve_device ----------------------------------------------------------------------------
def test_cpu_and_auto(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"  # what this machine has
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    # with a (pretend) GPU, auto takes it: cuda first, at the current device's index
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ldam.device, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_cuda_without_a_gpu_names_the_cause_and_the_fix(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda")
    msg = str(e.value)
    assert isinstance(e.value, LdamError) and "\n" not in msg
    assert "'cuda'" in msg and "CPU-only build" in msg and "--device cpu" in msg and "install a CUDA build" in msg
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build on a machine without a visible GPU
    with pytest.raises(DeviceError, match="no CUDA GPU is visible.*CUDA_VISIBLE_DEVICES.*--device cpu"):
        resolve_device("cuda:0")
    with pytest.raises(DeviceError, match="'mps' asked for.*not available.*--device cpu"):
        resolve_device("mps")


def test_a_gpu_index_past_the_count_names_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda:3")
    msg = str(e.value)
    assert "\n" not in msg and "'cuda:3' does not exist" in msg and "1 CUDA GPU (cuda:0)" in msg
    assert "--device cuda:0" in msg
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:1", "cuda0", ""])
def test_a_malformed_spec_lists_the_choices(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    msg = str(e.value)
    assert f"unknown device {spec!r}" in msg
    for choice in ("auto", "cpu", "cuda", "cuda:N", "mps"):
        assert choice in msg


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "zoo:lenet-mnist", "--target", "output:1", "--steps", "5"],
    ["demo", "--steps", "5"],
    ["layers", "zoo:lenet-mnist"],
    ["serve"],
    ["train", "--out", "never"],
    ["eval", "zoo:lenet-mnist"],
])
def test_every_command_prints_a_device_error_as_one_line_with_exit_code_2(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    no_gpu(monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert main([*argv, "--device", "cuda"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("ldam: error: device 'cuda' asked for") and "--device cpu" in err
    assert main([*argv, "--device", "gpu"]) == 2
    assert "unknown device 'gpu'; choose one of auto" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # refused before anything was loaded or written


# ---- results -----------------------------------------------------------------------------------
def test_sample_on_the_cpu_is_bit_identical_to_the_default_run(tmp_path, capsys, monkeypatch):
    no_gpu(monkeypatch)  # the default, auto, is then the CPU on any machine
    common = ["sample", "--model", "zoo:lenet-mnist", "--target", "output:0-1", "--chains", "2", "--steps", "30",
              "--quiet"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert "on cpu" in capsys.readouterr().out
    a, b = (ldam.Result.load(tmp_path / d / "result.pt") for d in ("default", "cpu"))
    for name in ("samples", "mean", "activations", "ema", "last"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.samples.shape == (4, a.samples.shape[1], 1, 28, 28) and a.samples.shape[1] > 0
    assert a.config["device"] == b.config["device"] == "cpu"


def test_result_tensors_are_on_the_cpu_or_kept_where_they_are():
    model = SmallConvNet().eval()
    s = ldam.Sampler(model, "fc:0-1", (1, 12, 12), chains=3, step_size=1e-3, temperature=0.1,
                     regularizers=[ldam.L2(1.0)], method="mala", burn_in=5)
    s.run(12)
    default, kept = s.result(), s.result(device=None)
    names = ("samples", "mean", "activations", "ema", "last", "acceptance")
    for name in names:
        d, k = getattr(default, name), getattr(kept, name)
        assert d.device == torch.device("cpu"), name
        assert k.device == s.device, name
        assert torch.equal(d, k), name
    # the values are the sampler's own, computed independently here
    assert torch.equal(kept.last, s.x) and torch.equal(kept.samples, torch.stack(s._samples, 1))
    assert torch.equal(kept.mean, torch.stack(s._samples).mean(0)) and torch.equal(kept.activations, s._act[:12])
    # the argument is obeyed: tensors go where they are asked to (the meta device, which any build has)
    meta = s.result(device="meta")
    assert all(getattr(meta, n).device.type == "meta" for n in names)


# ---- what is copied to the host ----------------------------------------------------------------
SYNCS = {"__float__", "__int__", "__bool__", "__index__", "__complex__", "__format__", "item", "tolist", "numpy"}


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _to_cpu(args, kwargs) -> bool:
    dev = kwargs.get("device")
    if dev is None:
        dev = next((a for a in args if isinstance(a, (str, torch.device))), None)
    return dev is not None and torch.device(dev).type == "cpu"


class Transfers(TorchFunctionMode):
    """Pretends the CPU is two places: every tensor that existed before the mode (the model, the chains,
    their trace) or is computed from one lives on "the device"; a tensor that ``.cpu()`` or
    ``.to("cpu")`` copies from the device, and anything computed only from such copies (or from
    nothing), lives on the host. Counts the copies (and their elements) and the scalar reads
    (``float()``, ``.item()``, ``.numpy()``, ...) of device tensors: on a GPU, the transfers."""

    def __init__(self):
        super().__init__()
        self.host: dict[int, torch.Tensor] = {}  # keeps the host tensors alive, so ids are not reused
        self.copies = self.elements = self.syncs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = _tensors((args, kwargs))
        on_device = any(id(t) not in self.host for t in inputs)
        out = func(*args, **kwargs)
        if name == "cpu" or (name == "to" and _to_cpu(args[1:], kwargs)):
            if on_device:
                self.copies += 1
                self.elements += args[0].numel()
                out = out.clone()  # a copy has its own identity, as it would coming from a GPU
            on_device = False
        elif name in SYNCS and on_device:
            self.syncs += 1
        elif not inputs and kwargs.get("device") is not None:
            on_device = True  # made on a named device (the chains' own)
        if not on_device:
            for t in _tensors(out):
                self.host[id(t)] = t
        return out


def decode(png: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(png))) as im:
        return np.asarray(im.convert("L"))


def test_a_live_frame_copies_only_the_frame_it_sends():
    from ldam.render import display_array, grid_array
    from ldam.web.session import LiveSession, ModelEntry

    entry = ModelEntry.from_model("toy", SmallConvNet().eval(), (1, 12, 12), device="cpu")
    assert entry.device == torch.device("cpu")
    sent: list[dict] = []
    session = LiveSession({"toy": entry}, sent.append)
    session.stop()  # drive the session from this thread: the worker's code, without races
    session._start({"model": "toy", "layer": "output", "unit": "all", "chains": 10})
    s = session.sampler
    assert s is not None and s.device == entry.device
    assert next(session.model.parameters()).device == entry.device  # the session's copy stays on the device
    batch, pixels = s.batch, 144  # 5 targets x 10 chains, 1x12x12 inputs
    for _ in range(3):  # what the worker does: steps_per_frame steps, then a frame
        with Transfers() as steps:
            s.run(10)
        assert steps.elements == 0  # the steps themselves copy nothing to the host
        ema, last = s.ema.clone(), s.activations[-1].clone()
        with Transfers() as t:
            msg = session.frame()
        # One copy of the chains' pictures and one of the numbers (last activations, jitter). Copying the
        # chains at every step would be 10x this; a second copy of the chains, or a separate copy of the
        # per-target means, would exceed it; one copy per chain would make 50 copies; and no number is
        # read from the device one at a time.
        assert t.elements == batch * pixels + batch + 1 and t.copies == 2, (t.elements, t.copies)
        assert t.syncs == 0, t.syncs
        # what was sent, against the same pictures and numbers computed here from the sampler's state
        assert np.array_equal(decode(msg["grid"]), np.asarray(grid_array(display_array(ema, "signed"), 10, zoom=1)))
        per_target = ema.view(5, 10, 1, 12, 12).mean(1)
        assert np.array_equal(decode(msg["means"]), np.asarray(grid_array(display_array(per_target, "signed"), 5,
                                                                            zoom=1)))
        np.testing.assert_allclose(msg["target_activation"], last.view(5, 10).mean(1).tolist(), rtol=1e-6)
        assert msg["stats"]["jitter"] == pytest.approx(float((s.x - ema).pow(2).mean().sqrt()), rel=1e-6)


def test_a_gif_recorder_copies_only_the_frames_it_records(tmp_path):
    gif = ldam.GifRecorder(tmp_path / "c.gif", every=5, what="state")
    s = ldam.Sampler(SmallConvNet().eval(), "fc:0-1", (1, 12, 12), chains=4, step_size=1e-3, temperature=0.1,
                     regularizers=[ldam.L2(1.0)], callbacks=[gif])
    with Transfers() as t:
        s.run(20)
    assert len(gif.frames) == 4  # steps 0, 5, 10, 15
    assert t.copies == 4 and t.elements == 4 * s.batch * 144, (t.copies, t.elements)


def test_serve_loads_its_models_on_the_device_it_is_given(monkeypatch, capsys):
    import uvicorn

    from ldam.web.server import serve

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    calls = []
    real = ldam.device.resolve_device
    monkeypatch.setattr(ldam.device, "resolve_device", lambda spec: calls.append(spec) or real(spec))
    serve(["zoo:lenet-mnist"], with_data=False, device="auto")
    assert calls == ["auto"] and "app" in served
    assert f"zoo:lenet-mnist (on {real('auto')}) on http://127.0.0.1" in capsys.readouterr().out
    no_gpu(monkeypatch)
    with pytest.raises(DeviceError):
        serve(["zoo:lenet-mnist"], with_data=False, device="cuda")


def test_uploads_go_to_the_models_device_before_the_forward(monkeypatch):
    import ldam.web.session as session_module
    from ldam.web.server import decode_upload
    from ldam.web.session import ModelEntry, activation_maps

    entry = ModelEntry.from_model("toy", SmallConvNet().eval(), (1, 12, 12))
    buf = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buf, format="PNG")
    x = decode_upload(base64.b64encode(buf.getvalue()).decode(), entry)
    assert x.shape == (1, 12, 12) and x.device.type == "cpu"  # decoded on the host
    seen = []
    real_capture = session_module.capture

    def spy(model, layers, inputs, batch_size=None):
        seen.append(inputs.device)
        return real_capture(model, layers, torch.zeros(inputs.shape), batch_size)  # the forward, on this CPU

    monkeypatch.setattr(session_module, "capture", spy)
    monkeypatch.setattr(ModelEntry, "device", property(lambda self: torch.device("meta")))  # a stand-in device
    out = activation_maps(entry, "conv1", x)
    assert seen == [torch.device("meta")] * 2  # the layer's maps and the logits: both inputs were moved
    assert out["units"] == 4


# ---- training and evaluation -------------------------------------------------------------------
def toy(n=128, n_test=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n + n_test,), generator=g)
    x = torch.randn(n + n_test, 1, 28, 28, generator=g) * 0.5
    for i in range(n + n_test):
        x[i, 0, 2 * y[i] + 2:2 * y[i] + 5, 4:24] += 2.0
    return {"x_train": x[:n], "y_train": y[:n], "x_val": x[n:n + 32], "y_val": y[n:n + 32],
            "x_test": x[n:], "y_test": y[n:]}


def test_train_and_eval_on_the_cpu_match_the_library_run(tmp_path, monkeypatch, capsys):
    import ldam.train as tr
    from ldam.zoo import load_checkpoint

    monkeypatch.setattr(tr, "load_dataset", lambda name, val_size=0: toy())
    out = tmp_path / "run"
    assert main(["train", "--arch", "lenet5", "--epochs", "1", "--average-last", "0", "--batch-size", "32",
                 "--lr", "1e-3", "--seed", "3", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(trained on cpu)" in text
    # the reference: the library's own training, without a device
    ref = tr.train(tr.TrainConfig(arch="lenet5", epochs=1, average_last=0, batch_size=32, lr=1e-3, seed=3),
                   tmp_path / "ref", data=toy(), progress=False)
    model, _ = load_checkpoint(out / "model.pt")
    for k, v in ref["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    rec = json.loads((out / "train.json").read_text())
    assert rec["test_accuracy"] == ref["test_accuracy"]
    assert text.strip().splitlines()[-1] == f"accuracy: {ref['test_accuracy']:.4f}"
    # ldam eval --device cpu on the same test images: the accuracy computed here by hand
    d = toy()
    pixels = ((d["x_test"] * 0.3081 + 0.1307) * 255).round().clamp(0, 255).to(torch.uint8)
    spec = tr.DATASETS["mnist"]
    monkeypatch.setitem(tr.DATASETS, "mnist", replace(spec, load=lambda split: (pixels, d["y_test"])))
    assert main(["eval", str(out / "model.pt"), "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()
    x = tr.normalize(pixels, (0.1307,), (0.3081,))
    with torch.no_grad():
        want = float((model.eval()(x).argmax(1) == d["y_test"]).double().mean())
    assert "on cpu" in last[0] and last[-1] == f"accuracy: {want:.4f}"


# ---- on a real GPU (skipped here) --------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_the_chains_run_there_and_results_come_back_on_the_cpu(tmp_path, capsys):
    model = SmallConvNet().eval().cuda()
    s = ldam.Sampler(model, "fc:0-1", (1, 12, 12), chains=3, step_size=1e-3, temperature=0.1,
                     regularizers=[ldam.L2(1.0), ldam.Box(-2, 2)], method="mala", burn_in=5)
    s.run(20)
    assert s.x.device.type == "cuda" and s.ema.device.type == "cuda" and s.activations.device.type == "cuda"
    res, kept = s.result(), s.result(device=None)
    assert res.mean.device.type == "cpu" and kept.mean.device.type == "cuda"
    assert torch.equal(res.mean, kept.mean.cpu())
    # the discriminator: its critic on the model's device, real images on the host, one batch at a time
    real = torch.randn(64, 1, 12, 12)
    disc = ldam.Discriminator(real, weight=0.5, training=ldam.CriticTraining(every=2, batch_size=6))
    s = ldam.Sampler(model, "fc:0-1", (1, 12, 12), chains=3, step_size=1e-3, temperature=0.1,
                     regularizers=[ldam.L2(1.0), disc], burn_in=2)
    s.run(6)
    assert disc.updates == 3 and next(disc.critic.parameters()).device.type == "cuda" and real.device.type == "cpu"
    assert main(["sample", "--model", "zoo:lenet-mnist", "--target", "output:0-1", "--chains", "2", "--steps", "30",
                 "--device", "cuda", "--quiet", "--out", str(tmp_path / "g")]) == 0
    r = ldam.Result.load(tmp_path / "g" / "result.pt")
    assert r.config["device"].startswith("cuda") and r.mean.device.type == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_the_live_session_and_training_run_there(tmp_path, monkeypatch):
    import ldam.train as tr
    from ldam.web.session import LiveSession, ModelEntry, activation_maps

    entry = ModelEntry.from_model("toy", SmallConvNet().eval(), (1, 12, 12), device="cuda")
    sent: list[dict] = []
    session = LiveSession({"toy": entry}, sent.append)
    session.stop()
    session._start({"model": "toy", "layer": "output", "unit": "all", "chains": 10})
    assert session.sampler.x.device.type == "cuda"
    session.sampler.run(5)
    assert session.frame()["type"] == "frame"
    assert activation_maps(entry, "conv1", torch.randn(1, 12, 12))["units"] == 4  # a host input
    rec = tr.train(tr.TrainConfig(epochs=1, average_last=1, batch_size=32, lr=1e-3, seed=3), tmp_path, data=toy(),
                   progress=False, device="cuda")
    assert next(rec["model"].parameters()).device.type == "cuda" and rec["test_accuracy"] >= 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert all(v.device.type == "cpu" for v in saved.values())
    resumed = tr.train(tr.TrainConfig(epochs=2, average_last=1, batch_size=32, lr=1e-3, seed=3), tmp_path / "r",
                       data=toy(), progress=False, device="cuda", stop_after=1)
    resumed = tr.train(tr.TrainConfig(epochs=2, average_last=1, batch_size=32, lr=1e-3, seed=3), tmp_path / "r",
                       data=toy(), progress=False, device="cuda", resume=True)
    assert resumed["epochs_done"] == 2 and next(resumed["model_avg"].parameters()).device.type == "cuda"
