"""Regenerate the pictures in docs/ that the README shows. Run: python scripts/make_docs.py

1. docs/demo_*.png/.gif: the quick-start demo (10 LeNet digit logits x 10 chains).
   The GIF shows the chains during burn-in, then their moving average (τ = 200 steps).
2. docs/figure4.png: single samples vs averages, without and with L2 (the paper's Figure 4 rows).
3. docs/validation.png: for each conv1 unit of the trained LeNet, its 5x5 filter beside the
   L2 mean of one spatial neuron's samples (the paper's validation of LDAM), with cosines.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

import ldam
import ldam.zoo
from ldam.render import batch_grid

DOCS = Path(__file__).resolve().parent.parent / "docs"


def label(im: Image.Image, text: str) -> Image.Image:
    out = Image.new("L", (im.width + 150, im.height), 255)
    out.paste(im.convert("L"), (150, 0))
    ImageDraw.Draw(out).text((4, im.height // 2 - 6), text, fill=0)
    return out


def stack(rows: list[Image.Image]) -> Image.Image:
    w = max(r.width for r in rows)
    out = Image.new("L", (w, sum(r.height for r in rows)), 255)
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    model, info = ldam.zoo.load("lenet-mnist")
    box = ldam.Box.from_normalization(info.mean, info.std)

    # 1. the demo, with the CLI's defaults
    rec = ldam.GifRecorder(DOCS / "demo_chains.gif", every=50, zoom=1)
    res = ldam.sample(model, "output:0-9", info.input_shape, chains=10, steps=1500, step_size=0.004,
                      temperature=0.02, regularizers=[ldam.L2(0.3), box], burn_in=375, thin=10,
                      callbacks=[rec, ldam.ProgressBar(1500)])
    res.grid(zoom=2).save(DOCS / "demo_grid.png")
    res.target_grid(zoom=4).save(DOCS / "demo_targets.png")
    with torch.no_grad():
        pred = model(res.target_mean).argmax(1).tolist()
    print("demo: the model classifies each target's mean as", pred)

    # 2. Figure 4: no regularization vs L2, one sample vs the average
    rows = []
    for name, regs in (("no regularizer", []), ("L2 (0.3)", [ldam.L2(0.3)])):
        r = ldam.sample(model, "output:0-9", info.input_shape, chains=1, steps=1500, step_size=0.004,
                        temperature=0.02, regularizers=regs, burn_in=500, seed=1)
        rows.append(label(batch_grid(r.samples[:, -1], 10, zoom=2), f"{name}: one sample"))
        rows.append(label(batch_grid(r.mean, 10, zoom=2), f"{name}: average"))
    stack(rows).save(DOCS / "figure4.png")

    # 3. validation: the L2 mean of conv1:k@14,14 equals filter k on its receptive field
    tiles, cos = [], []
    for k in range(6):
        r = ldam.sample(model, f"conv1:{k}@14,14", info.input_shape, chains=16, steps=1500, burn_in=300,
                        step_size=1e-3, temperature=0.01, regularizers=[ldam.L2(1.0)])
        m = r.target_mean[0]
        w = model.conv1.weight[k].detach()
        patch = m[:, 12:17, 12:17]
        cos.append(float(torch.nn.functional.cosine_similarity(patch.flatten(), w.flatten(), dim=0)))
        full_w = torch.zeros_like(m)
        full_w[:, 12:17, 12:17] = w
        tiles.append((full_w[:, 8:21, 8:21], m[:, 8:21, 8:21]))
    # top row: the filters (zero outside the receptive field); bottom row: the L2 means
    im = batch_grid(torch.stack([t[0] for t in tiles] + [t[1] for t in tiles]), 6, zoom=8)
    im.save(DOCS / "validation.png")
    print("validation: cosine(filter, L2 mean) per conv1 unit:", [round(c, 4) for c in cos])


if __name__ == "__main__":
    main()
