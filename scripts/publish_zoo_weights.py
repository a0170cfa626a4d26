"""Copy a trained model into the zoo: weights + a JSON record of recipe, accuracy and SHA-256.

    python scripts/publish_zoo_weights.py runs/train-lenet-mnist lenet-mnist --recipe "ldam train ..."
    python scripts/publish_zoo_weights.py runs/train-lenet-mnist lenet-mnist-avg --averaged --recipe "ldam train ..."

``--averaged`` publishes ``model-avg.pt`` (the parameter-averaged weights) instead of ``model.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent.parent / "src" / "ldam" / "zoo" / "weights"
TEST_SETS = {"mnist": "MNIST t10k, 10,000 images", "cifar10": "CIFAR-10 test images 0-999 (the 1,000 available here)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="folder written by `ldam train` (model.pt, train.json)")
    p.add_argument("name", help="zoo name, e.g. lenet-mnist")
    p.add_argument("--recipe", required=True, help="the exact command that trained it")
    p.add_argument("--averaged", action="store_true", help="publish the parameter-averaged model-avg.pt")
    a = p.parse_args()
    blob = torch.load(a.run / ("model-avg.pt" if a.averaged else "model.pt"), map_location="cpu", weights_only=True)
    record = json.loads((a.run / "train.json").read_text())
    buf = io.BytesIO()
    torch.save(blob["state_dict"], buf)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    (WEIGHTS / f"{a.name}.pt").write_bytes(buf.getvalue())
    info = {
        "name": a.name,
        "arch": blob["arch"],
        "recipe": a.recipe,
        "seed": record["config"]["seed"],
        "config": record["config"],
        "weights": "parameter-averaged (model-avg.pt)" if a.averaged else "final (model.pt)",
        "test_accuracy": record["test_accuracy_param_avg"] if a.averaged else record["test_accuracy"],
        "test_accuracy_base": record["test_accuracy"],
        "test_accuracy_param_avg": record.get("test_accuracy_param_avg"),
        "test_accuracy_pred_avg": record.get("test_accuracy_pred_avg"),
        "test_set": TEST_SETS[record["config"]["dataset"]],
        "seconds_per_epoch": round(sum(h["seconds"] for h in record["history"]) / len(record["history"]), 2),
        "history": record["history"],
        "trained_on": record.get("trained_on", f"{platform.machine()}, torch {torch.__version__}"),
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
    }
    (WEIGHTS / f"{a.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {WEIGHTS / (a.name + '.pt')} (test accuracy {info['test_accuracy']:.4f})")


if __name__ == "__main__":
    main()
