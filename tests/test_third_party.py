"""Real third-party architectures (Hugging Face transformers, built from small configs with random
weights): ldam's activations equal the layer's output read with a plain forward hook, the unit
rule counts features, and layers that fold examples are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ldam
from ldam.guard import model_guard
from ldam.targets import probe_layers, resolve

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")


def hooked(model: nn.Module, name: str, x: torch.Tensor, pick=lambda out: out) -> torch.Tensor:
    """The output of submodule ``name`` for ``x``, copied at the moment it is produced."""
    got = []
    h = dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, out: got.append(pick(out).detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return got[0]


def ldam_values(model, targets, x):
    with model_guard(model):
        ts = resolve(model, targets, tuple(x.shape[1:]), chains=1)
        with ts.attached():
            return ts.value_and_grad(x)[0]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=12, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=20, num_labels=5)
    return T.ViTForImageClassification(cfg).eval()


def test_vit_logits_and_token_features(vit):
    x = torch.randn(3, 3, 16, 16)
    with model_guard(vit):
        layers = probe_layers(vit, (3, 16, 16))
    fc1 = next(n for n in layers if n.endswith("layers.0.mlp.fc1"))
    assert (layers[fc1].units, layers[fc1].spatial) == (20, (17,))  # 20 features at 17 tokens
    block = fc1.rsplit(".mlp", 1)[0]
    assert layers[block].units == 12 and layers[block].unit_dim == "last"
    assert layers["output"].alias_of == "output.logits"
    f = ldam_values(vit, ["output:3", f"{fc1}:7", f"{fc1}:2@4"], x)
    with torch.no_grad():
        logits = vit(x).logits
    a = hooked(vit, fc1, x)  # [B, 17, 20]
    torch.testing.assert_close(f, torch.stack([logits[0, 3], a[1, :, 7].mean(), a[2, 4, 2]]), rtol=1e-5, atol=1e-5)


def test_sampling_a_vit_leaves_it_untouched(vit):
    before = state(vit)
    vit.train()
    res = ldam.sample(vit, ["output:0-1"], input_shape=(3, 16, 16), chains=2, steps=6, step_size=1e-3,
                      regularizers=[ldam.L2(1.0)])
    assert res.samples.shape[:2] == (4, 5)
    after = state(vit)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(after[1]) and all(not m._forward_hooks for m in vit.modules())
    vit.eval()


def test_swin_window_attention_is_refused_and_the_rest_works():
    torch.manual_seed(0)
    cfg = T.SwinConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                       window_size=2, num_labels=4)
    swin = T.SwinForImageClassification(cfg).eval()
    with model_guard(swin):
        layers = probe_layers(swin, (3, 16, 16))
    q = next(n for n in layers if n.endswith("layers.0.blocks.0.attention.q_proj"))
    assert "first axis is not one row per example (output [32, 4, 8] for 2 inputs, [48, 4, 8] for 3)" in layers[q].reason
    with pytest.raises(ldam.TargetError, match="cannot be a target: its first axis"):
        ldam.Sampler(swin, f"{q}:0", (3, 16, 16))
    fc1 = next(n for n in layers if n.endswith("layers.0.blocks.0.mlp.fc1"))
    assert layers[fc1].addressable and layers[fc1].units == 32 and layers[fc1].spatial == (64,)
    x = torch.randn(2, 3, 16, 16)
    f = ldam_values(swin, ["output:2", f"{fc1}:5"], x)
    with torch.no_grad():
        logits = swin(x).logits
    a = hooked(swin, fc1, x)
    torch.testing.assert_close(f, torch.stack([logits[0, 2], a[1, :, 5].mean()]), rtol=1e-5, atol=1e-5)


def test_convnext_channels_last_block_and_channels_first_stage():
    torch.manual_seed(0)
    cfg = T.ConvNextConfig(num_channels=3, hidden_sizes=[12, 20], depths=[1, 1], num_stages=2, num_labels=3)
    model = T.ConvNextForImageClassification(cfg).eval()
    with model_guard(model):
        layers = probe_layers(model, (3, 32, 32))
    pw = next(n for n in layers if n.endswith("stages.0.layers.0.pwconv1"))
    stage = next(n for n in layers if n.endswith("stages.1.layers.0") and layers[n].addressable)
    assert (layers[pw].units, layers[pw].spatial, layers[pw].unit_dim) == (48, (8, 8), "last")
    assert (layers[stage].units, layers[stage].spatial, layers[stage].unit_dim) == (20, (4, 4), "channels")
    x = torch.randn(2, 3, 32, 32)
    f = ldam_values(model, [f"{pw}:9@3,5", f"{stage}:4"], x)
    a, b = hooked(model, pw, x), hooked(model, stage, x)
    torch.testing.assert_close(f, torch.stack([a[0, 3, 5, 9], b[1, 4].mean()]), rtol=1e-5, atol=1e-5)


def test_gpt2_through_inputs_embeds():
    torch.manual_seed(0)

    class Embeds(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = T.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0,
                               eos_token_id=0)
            self.gpt = T.GPT2LMHeadModel(cfg)

        def forward(self, x):
            return self.gpt(inputs_embeds=x)

    model = Embeds().eval()
    with model_guard(model):
        layers = probe_layers(model, (5, 16))
    assert (layers["output"].units, layers["output"].spatial) == (20, (5,))
    c_fc = next(n for n in layers if n.endswith("h.0.mlp.c_fc"))
    assert layers[c_fc].units == 64 and layers[c_fc].unit_dim == "last"  # Hugging Face's Conv1D: features last
    x = torch.randn(2, 5, 16)
    f = ldam_values(model, ["output:7", f"{c_fc}:3@2"], x)
    with torch.no_grad():
        logits = model(x).logits
    a = hooked(model, c_fc, x)
    torch.testing.assert_close(f, torch.stack([logits[0, :, 7].mean(), a[1, 2, 3]]), rtol=1e-5, atol=1e-5)
