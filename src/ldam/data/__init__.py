"""Datasets: MNIST for the zoo's LeNet (CIFAR-10 and photos come with the model zoo release)."""

from .mnist import MNIST_FILES, load_mnist, search_paths

__all__ = ["load_mnist", "MNIST_FILES", "search_paths"]
