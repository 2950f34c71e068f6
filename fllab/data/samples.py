"""The 20 real CIFAR-10 test images shipped inside fllab (from foolbox's sample data, MIT
licence: ``sample_images/LICENSE``).  They are the standard targets of gradient-inversion
experiments and let the inversion scenarios run offline with no download."""
from __future__ import annotations

import re
from importlib import resources

import numpy as np
from PIL import Image

from ..registry import DATASETS, NoParams
from ..types import DatasetBundle
from .datasets import make_bundle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NAME = re.compile(r"^cifar10_(\d+)_(\d+)\.png$")


def read_samples() -> tuple[np.ndarray, np.ndarray]:
    """(20, 3, 32, 32) uint8 images in file order and their labels (the last number of each name)."""
    folder = resources.files("fllab.data") / "sample_images"
    entries = sorted((m.group(1), m.group(2), f) for f in folder.iterdir() if (m := _NAME.match(f.name)))
    images = [np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1) for _, _, f in entries]
    return np.stack(images), np.array([int(label) for _, label, _ in entries], dtype=np.int64)


@DATASETS.register("cifar10_samples")
class Cifar10Samples:
    """Twenty real CIFAR-10 images (32x32 RGB) shipped with fllab, for inversion experiments.

    Train and test are the same 20 images: a federation built on them measures what leaks from
    the clients' uploads, not generalisation, so ``utility.accuracy`` here is training accuracy."""

    summary = "20 real CIFAR-10 images shipped with fllab (inversion targets; train = test)"
    references = ("Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",)
    Params = NoParams

    def __init__(self, params: NoParams):
        self.params = params

    def signature(self) -> tuple[tuple[int, ...], int]:
        """Input shape and number of classes, known without loading (``validate --no-data``)."""
        return (3, 32, 32), 10

    def load(self) -> DatasetBundle:
        x, y = read_samples()
        return make_bundle("cifar10_samples", (x, y), (x, y), 10, CIFAR10_CLASSES)
