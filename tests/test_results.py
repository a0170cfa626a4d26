"""Results: saving, safe loading, the paper's signed display, grids and GIFs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import ldam
from ldam.render import pixel_display, signed_display
from models import SmallConvNet


@pytest.fixture(scope="module")
def result():
    return ldam.sample(SmallConvNet(), ["fc:0-2"], input_shape=(1, 12, 12), chains=4, steps=60, burn_in=20,
                       regularizers=[ldam.L2(1.0)], method="mala", step_size=0.05)


def test_signed_display_is_the_papers_mapping():
    x = torch.tensor([[[-2.0, 0.0], [1.0, 0.5]]])
    # largest |value| (2) → 127, then + 128
    np.testing.assert_array_equal(signed_display(x), np.array([[[1, 128], [192, 160]]], np.uint8))
    assert (signed_display(torch.zeros(1, 2, 2)) == 128).all()


def test_pixel_display_undoes_normalization():
    x = torch.tensor([[[(0.0 - 0.5) / 0.25, (1.0 - 0.5) / 0.25, (0.6 - 0.5) / 0.25, 10.0]]])
    np.testing.assert_array_equal(pixel_display(x, [0.5], [0.25]), np.array([[[0, 255, 153, 255]]], np.uint8))


def test_grid_png_holds_the_signed_means(result, tmp_path):
    path = result.save_grid(tmp_path / "grid.png", zoom=1)
    im = np.asarray(Image.open(path))
    pad = 2
    assert im.shape == (pad + 3 * (12 + pad), pad + 4 * (12 + pad))
    for row, col in ((0, 0), (2, 3)):
        y, x = pad + row * (12 + pad), pad + col * (12 + pad)
        want = signed_display(result.mean[row * 4 + col])[0]
        np.testing.assert_array_equal(im[y:y + 12, x:x + 12], want)


def test_gif_has_the_frames(result, tmp_path):
    path = result.save_gif(tmp_path / "chains.gif", frames=10)
    with Image.open(path) as im:
        assert im.n_frames == 10
        assert im.size == result.grid().size


def test_rgb_grid():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 2))
    res = ldam.sample(m, "output:0-1", input_shape=(3, 8, 8), chains=2, steps=10, burn_in=2)
    im = res.grid(display="pixel", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), zoom=1)
    assert im.mode == "RGB" and im.size == (2 + 2 * 10, 2 + 2 * 10)


def test_save_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "r.pt")
    back = ldam.Result.load(path)
    for k in ("samples", "mean", "activations", "ema", "last", "acceptance"):
        assert torch.equal(getattr(back, k), getattr(result, k)), k
    assert back.targets == result.targets and back.chains == 4 and back.burn_in == result.burn_in
    assert back.config == result.config
    assert back.config["targets"] == ["fc:0", "fc:1", "fc:2"] and back.config["method"].startswith("MALA")
    assert len(back.config["model_sha256"]) == 64


def test_loading_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"format": "ldam-result-v1", "x": Evil()}, fh)
    with pytest.raises(ldam.CheckpointError, match="cannot load result file"):
        ldam.Result.load(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ldam.CheckpointError):
        ldam.Result.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(ldam.CheckpointError, match="not an ldam result"):
        ldam.Result.load(other)


def test_gif_recorder_and_progress_callbacks(tmp_path):
    events = []

    class Log(ldam.Callback):
        def on_begin(self, s):
            events.append("begin")

        def on_step(self, s, info):
            events.append(info.t)

        def on_end(self, s, r):
            events.append("end")

    rec = ldam.GifRecorder(tmp_path / "rec.gif", every=5)
    ldam.sample(SmallConvNet(), "fc:0", input_shape=(1, 12, 12), chains=2, steps=20, burn_in=5,
                callbacks=[Log(), rec, ldam.ProgressBar(total=20, disable=True)])
    assert events == ["begin", *range(20), "end"]
    with Image.open(tmp_path / "rec.gif") as im:
        assert im.n_frames == 4


class _Events(ldam.Callback):
    def __init__(self, fail_on_end: bool = False):
        self.events: list = []
        self.fail_on_end = fail_on_end

    def on_begin(self, s):
        self.events.append("begin")

    def on_end(self, s, r):
        self.events.append("end" if r is not None else "end:error")
        if self.fail_on_end:
            raise RuntimeError("on_end broke")


def test_on_end_runs_once_after_a_divergence_and_the_divergence_is_what_is_raised(tmp_path):
    from models import LinearNeuron

    log, broken = _Events(), _Events(fail_on_end=True)
    gif = ldam.GifRecorder(tmp_path / "to_divergence.gif", every=1, what="state")
    bar = ldam.ProgressBar(total=200, disable=True)
    with pytest.warns(UserWarning, match="_Events.on_end failed while the run stopped.*on_end broke"):
        with pytest.raises(ldam.DivergenceError):
            ldam.sample(LinearNeuron(torch.ones(1, 4, 4)), "output:0", input_shape=(1, 4, 4), steps=200, burn_in=0,
                        step_size=10.0, regularizers=[ldam.L2(10.0)], callbacks=[broken, log, gif, bar])
    assert log.events == ["begin", "end:error"] and broken.events == ["begin", "end:error"]
    assert bar.bar is None  # the bar was closed
    # the GIF of the steps before the error is written: the check after step 9 (every 10 steps) raises
    # before that step's callbacks, so steps 0-8 were recorded
    with Image.open(tmp_path / "to_divergence.gif") as im:
        assert im.n_frames == len(gif.frames) == 9


def test_a_streaming_sampler_ends_its_callbacks_once_per_run():
    log = _Events()
    with ldam.Sampler(SmallConvNet(), "fc:0", input_shape=(1, 12, 12), chains=2, callbacks=[log]) as s:
        s.run(3)
        s.run(2)  # the same run: no second begin
        s.result()
        s.result()  # already ended: no second end
        s.run(1)  # a new run after the result
    assert log.events == ["begin", "end", "begin", "end:error"]


def test_gif_recorder_reads_only_the_step_info(tmp_path):
    # Callbacks never need the Sampler: the recorder works from StepInfo alone (sampler=None).
    rec = ldam.GifRecorder(tmp_path / "info.gif", every=1, what="auto", display="pixel", mean=[0.0], std=[1.0])
    state = torch.rand(6, 1, 4, 4)
    ema = torch.rand(6, 1, 4, 4)
    for t, e in enumerate([None, ema]):
        rec.on_step(None, ldam.StepInfo(t, torch.zeros(6), 1.0, 0.1, e is not None, {}, chains=3,
                                        images=lambda: state, ema=e))
    rec.on_end(None, None)
    with Image.open(tmp_path / "info.gif") as im:
        assert im.n_frames == 2
    # frame 0 is the state (burn-in), frame 1 the moving average; each differs from the other's picture
    from ldam.render import batch_grid

    for frame, x, other in [(rec.frames[0], state, ema), (rec.frames[1], ema, state)]:
        assert np.array_equal(np.asarray(frame), np.asarray(batch_grid(x, 3, "pixel", zoom=1, mean=[0.0], std=[1.0])))
        assert not np.array_equal(np.asarray(frame), np.asarray(batch_grid(other, 3, "pixel", zoom=1, mean=[0.0], std=[1.0])))


def test_callbacks_module_does_not_import_the_sampler():
    import ast
    import inspect

    import ldam.callbacks as cbmod

    tree = ast.parse(inspect.getsource(cbmod))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "sampler" not in imported and "Sampler" not in inspect.getsource(cbmod)
