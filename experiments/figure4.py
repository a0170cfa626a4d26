"""Paper Figure 4: MNIST logits without regularization against L2, one sample against the average.

The paper (PAPER.md §5): without regularization the samples are noise; with L2 they become
gradient-like maps; with L2 and averaging clear patterns appear. Measured here, per row:

* the mean logit of the target class (what the sampler maximizes);
* whether the model classifies the picture as the target class;
* the cosine similarity between the picture and the class's "template", the mean training
  image of that class minus the mean of all training images: an independent reference for
  "a clear pattern of the digit".

    python experiments/figure4.py            # docs/repro/figure4.md, figure4.png
"""

from __future__ import annotations

import torch

import ldam
import ldam.zoo
from ldam.render import batch_grid
from ldam.train import load_dataset

from _common import Report, fmt, infer, labeled, on, parser, setup, stack


def class_templates(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[10, 1, 28, 28]``: mean image of each class minus the mean of all images (model units)."""
    overall = x.mean(0)
    return torch.stack([x[y == c].mean(0) - overall for c in range(10)])


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def main() -> None:
    args = parser(__doc__).parse_args()
    setup(args)
    steps, burn, chains = (30, 10, 2) if args.quick else (1500, 500, 4)
    model, info = ldam.zoo.load("lenet-mnist")
    model = on(model, args.device)
    d = load_dataset("mnist")
    templates = class_templates(d["x_train"], d["y_train"])
    rows, table = [], []
    for name, regs in (("no regularizer", []), ("L2 (λ = 0.3)", [ldam.L2(0.3)])):
        r = ldam.sample(model, "output:0-9", info.input_shape, chains=chains, steps=steps, step_size=0.004,
                        temperature=0.02, regularizers=regs, burn_in=burn, seed=1)
        cls = torch.arange(10).repeat_interleave(chains)
        for kind, x in (("one sample", r.samples[:, -1]), ("average", r.mean)):
            logits = infer(model, x)
            f = logits.gather(1, cls[:, None]).squeeze(1)
            agree = (logits.argmax(1) == cls).double().mean()
            cos = cosine_rows(x, templates[cls])
            table.append([name, kind, fmt(float(f.mean()), float(f.std() / len(f) ** 0.5), 2),
                          f"{float(agree):.2f}", fmt(float(cos.mean()), float(cos.std() / len(cos) ** 0.5))])
            first = x.view(10, chains, *x.shape[1:])[:, 0]
            rows.append(labeled(batch_grid(first, 10, zoom=2), f"{name.replace('λ = ', '')}:\n{kind}"))
    rep = Report(args.out / "figure4.md", "Paper Figure 4, measured: MNIST logits, no regularizer vs L2, "
                 "one sample vs the average", args.quick)
    rep.text(f"`zoo:lenet-mnist`, targets `output:0-9`, {chains} chains per class, {steps} SGLD steps "
             f"(ε = 0.004, T = 0.02), the first {burn} discarded; the average is over the kept samples. "
             "Display: the paper's signed grey (grey 0, white positive, black negative), each tile on its own scale.")
    rep.image(stack(rows), "figure4.png", "Columns: digits 0-9 (chain 0 of each). Rows: one sample and the "
              "average, without and with L2.")
    rep.table(["regularizer", "picture", "target logit (mean ± s.e.)", "classified as the target",
               "cosine to the class template"], table)
    cos = {(r[0], r[1]): r[4].split(" ")[0] for r in table}
    rep.text("**The paper said** that unregularized samples are noise, that L2 gives gradient-like maps, and "
             "that averaging brings out clear patterns. **Measured**, as the cosine to the class template (0 for "
             "noise, 1 for the template itself): no regularizer " + cos[("no regularizer", "one sample")]
             + " (one sample) and " + cos[("no regularizer", "average")] + " (average); L2 "
             + cos[("L2 (λ = 0.3)", "one sample")] + " (one sample) and " + cos[("L2 (λ = 0.3)", "average")]
             + " (average). The classification column says whether the model itself still sees the digit.")
    rep.write()


if __name__ == "__main__":
    main()
