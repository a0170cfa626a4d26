"""Datasets: MNIST and CIFAR-10, each found locally or downloaded with checksums; sample photos."""

from .bundled import has_bundled, load_bundled
from .cifar10 import load_cifar10
from .mnist import MNIST_FILES, load_mnist, search_paths
from .photos import PHOTOS, load_photo, photo_names
from .pixels import to_model_units

__all__ = ["load_mnist", "load_cifar10", "load_bundled", "has_bundled", "MNIST_FILES", "search_paths", "PHOTOS", "load_photo", "photo_names",
           "to_model_units"]
