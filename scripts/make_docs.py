"""Regenerate the quick-start pictures in docs/ that the README shows. Run: python scripts/make_docs.py

docs/demo_*.png/.gif: the quick-start demo (10 LeNet digit logits x 10 chains). The GIF shows
the chains during burn-in, then their moving average (τ = 200 steps). The reproductions of the
paper's figures are made by the scripts in experiments/ (into docs/repro/).
"""

from __future__ import annotations

from pathlib import Path

import torch

import ldam
import ldam.zoo

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    model, info = ldam.zoo.load("lenet-mnist")
    box = ldam.Box.from_normalization(info.mean, info.std)

    # the demo, with the CLI's defaults
    rec = ldam.GifRecorder(DOCS / "demo_chains.gif", every=50, zoom=1)
    res = ldam.sample(model, "output:0-9", info.input_shape, chains=10, steps=1500, step_size=0.004,
                      temperature=0.02, regularizers=[ldam.L2(0.3), box], burn_in=375, thin=10,
                      callbacks=[rec, ldam.ProgressBar(1500)])
    res.grid(zoom=2).save(DOCS / "demo_grid.png")
    res.target_grid(zoom=4).save(DOCS / "demo_targets.png")
    with torch.no_grad():
        pred = model(res.target_mean).argmax(1).tolist()
    print("demo: the model classifies each target's mean as", pred)


if __name__ == "__main__":
    main()
