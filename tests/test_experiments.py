"""Every reproduction in experiments/ runs end to end in its reduced mode, so none can rot.

The reduced runs' numbers mean nothing; what is checked is that each script writes its report
with the tables it promises and pictures that decode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import require_data, require_module

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "figure4": (("mnist/train-images-idx3-ubyte.gz",), ["target logit", "cosine to the class template"]),
    "validation": ((), ["cosine(mean, filter)"]),
    "param_averaging": ((), ["modes (cut 0.5)", "gradient region: effective area", "the paper's claim, tested"]),
    "cifar10": (("cifar10/cifar10_test_first1000.npz",), ["class means classified as target", "colour temperature"]),
    "priors": (("cifar10/cifar10_train.npz", "cifar10/cifar10_test_first1000.npz"),
               ["Lite2 top-5", "judge top-5", "spectral + transforms · ascent", "feature distance", "cost / step"]),
    "imagenet": ((), ["top-5", "model's top-1 for the average", "_blocks.8:3"]),
    "figure1": (("mnist/train-images-idx3-ubyte.gz", "cifar10/cifar10_test_first1000.npz"),
                ["realism (held-out D of the means)", "class agreement (independent)", "ship", "diversity within a class"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reproduction_runs_in_reduced_mode(name, tmp_path):
    needs, phrases = CASES[name]
    if needs:
        require_data(*needs)
    if name in ("imagenet", "priors"):
        require_module("efficientnet_lite_pytorch")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--quick", "--out", str(tmp_path),
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / f"{name}.md").read_text()
    assert "Reduced mode" in report
    for phrase in phrases:
        assert phrase in report, phrase
    pictures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert pictures
    for pic in pictures:
        with Image.open(tmp_path / pic) as im:
            im.load()
            assert im.width > 50 and im.height > 20
