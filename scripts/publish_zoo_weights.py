"""Copy a trained model into the zoo: weights + a JSON record of recipe, accuracy and SHA-256.

    python scripts/publish_zoo_weights.py runs/train-lenet-mnist lenet-mnist \
        --recipe "ldam train --arch lenet5 --dataset mnist --epochs 10 --lr 2e-4 --batch-size 64 --seed 0 --out runs/train-lenet-mnist"
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="folder written by `ldam train` (model.pt, train.json)")
    p.add_argument("name", help="zoo name, e.g. lenet-mnist")
    p.add_argument("--recipe", required=True, help="the exact command that trained it")
    a = p.parse_args()
    blob = torch.load(a.run / "model.pt", map_location="cpu", weights_only=True)
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
        "test_accuracy": record["test_accuracy"],
        "test_set": "MNIST t10k, 10,000 images",
        "seconds_per_epoch": round(sum(h["seconds"] for h in record["history"]) / len(record["history"]), 2),
        "history": record["history"],
        "trained_on": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
    }
    (WEIGHTS / f"{a.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {WEIGHTS / (a.name + '.pt')} (test accuracy {info['test_accuracy']:.4f})")


if __name__ == "__main__":
    main()
