"""A handful of real photographs for ImageNet models, from the ``scikit-image`` package.

``scikit-image`` ships these files inside the package, so they need no download. Each is
resized so its short side is ``resize`` pixels (bicubic) and centre-cropped to ``size``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

# name → (file in skimage/data, what the photo shows, ImageNet classes that describe it)
PHOTOS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chelsea": ("chelsea.png", "a tabby cat", ("tabby", "tiger cat", "Egyptian cat")),
    "coffee": ("coffee.png", "a cup of coffee", ("espresso", "cup", "coffee mug")),
    "rocket": ("rocket.jpg", "a rocket on its launch pad", ("missile", "projectile", "space shuttle")),
    "motorcycle": ("motorcycle_left.png", "a motorcycle", ("moped", "motor scooter", "crash helmet")),
    "astronaut": ("astronaut.png", "astronaut Eileen Collins in her suit", ()),
}


def _skimage_data() -> Path:
    try:
        import skimage
    except ImportError:
        raise DataError("the sample photos come from scikit-image; install it with "
                        "pip install -c constraints.txt -e '.[imagenet]'") from None
    return Path(skimage.__file__).parent / "data"


def photo_names() -> list[str]:
    return list(PHOTOS)


def load_photo(name: str, size: int = 224, resize: int = 256) -> torch.Tensor:
    """Photo ``name`` as float pixels in [0, 1], ``[3, size, size]``."""
    if name not in PHOTOS:
        raise DataError(f"no sample photo named {name!r}; available: {', '.join(PHOTOS)}")
    path = _skimage_data() / PHOTOS[name][0]
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resize / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            arr = np.array(im.crop((left, top, left + size, top + size)), dtype=np.float32)
    except OSError as e:
        raise DataError(f"cannot read the sample photo {path} ({e}); reinstall scikit-image") from None
    return torch.from_numpy(arr).permute(2, 0, 1).div_(255).contiguous()
