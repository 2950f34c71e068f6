"""Registered datasets.  ``load()`` returns a :class:`fllab.types.DatasetBundle` with images as
float32 in [0, 1], shaped (N, C, H, W), and int64 labels.

Sources never need a network unless a scenario sets ``download: true``: ``digits`` ships with
scikit-learn; Fashion-MNIST is found in Debian's ``dataset-fashion-mnist`` package or any folder
of the standard IDX files; MNIST and CIFAR come from a folder or a checked download
(:mod:`fllab.data.locate` describes the search order).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import DATASETS, Params
from ..types import DatasetBundle, TensorData
from . import cifar, mnist
from .download import fetch_verified
from .integrity import DataIntegrityError, verify_checksum
from .locate import download_dir, search_dirs
from .subset import stratified_head

PATH = "task.dataset"


class FileParams(Params):
    """Options shared by the datasets read from files."""

    root: str | None = Field(None, description="the only folder searched (and the download target); default: search $FLLAB_DATA, the cache, system folders")
    download: bool = Field(False, description="fetch the official files, checked against the published digests, when none are found")
    train_limit: int | None = Field(None, ge=1, description="keep a stratified first-k subset of the training split (file order, no randomness)")
    test_limit: int | None = Field(None, ge=1, description="keep a stratified first-k subset of the test split")
    verify: bool = Field(True, description="check counts and digests against the official release")


def _limit(x: np.ndarray, y: np.ndarray, k: int | None, field: str) -> tuple[np.ndarray, np.ndarray]:
    if k is None:
        return x, y
    if k > len(y):
        raise ConfigError(f"{k} is more than the {len(y)} examples available; allowed 1..{len(y)}", f"{PATH}.{field}")
    idx = stratified_head(y, k)
    return x[idx], y[idx]


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorData:
    xf = torch.from_numpy(np.array(x, dtype=np.float32)).div_(255.0)
    return TensorData(xf, torch.from_numpy(np.asarray(y, dtype=np.int64).copy()))


def make_bundle(name, train, test, num_classes: int, class_names, train_limit=None, test_limit=None) -> DatasetBundle:
    """Bundle uint8 (N, C, H, W) images and integer labels, applying the optional stratified limits."""
    (xtr, ytr), (xte, yte) = _limit(*train, train_limit, "train_limit"), _limit(*test, test_limit, "test_limit")
    names = tuple(class_names) if len(class_names) == num_classes else tuple(str(c) for c in range(num_classes))
    return DatasetBundle(name, _tensors(xtr, ytr), _tensors(xte, yte), num_classes, tuple(xtr.shape[1:]), names)


@DATASETS.register("digits")
class Digits:
    """scikit-learn's 8x8 handwritten digits, split into train/test with a seeded stratified split."""

    summary = "1,797 real 8x8 handwritten digits shipped with scikit-learn (offline), stratified train/test split"
    references = ("E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning Repository, 1998.",)

    class Params(Params):
        test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of the 1,797 digits held out for testing")
        split_seed: int = Field(0, description="seed of the stratified train/test split")

    def __init__(self, params: Params):
        self.params = params

    def signature(self) -> tuple[tuple[int, ...], int]:
        """Input shape and number of classes, known without loading (``validate --no-data``)."""
        return (1, 8, 8), 10

    def load(self) -> DatasetBundle:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        n_test, classes = math.ceil(self.params.test_fraction * len(y)), len(np.unique(y))
        if n_test < classes or len(y) - n_test < classes:
            raise ConfigError(
                f"{self.params.test_fraction} leaves fewer than {classes} examples on one side of the split; "
                f"allowed {classes / len(y):.4f}..{1 - classes / len(y):.4f}",
                f"{PATH}.test_fraction",
            )
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=n_test, stratify=y, random_state=self.params.split_seed
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        train = TensorData(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
        test = TensorData(torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx]))
        return DatasetBundle("digits", train, test, 10, (1, 8, 8), tuple(str(d) for d in range(10)))


class _IdxDataset:
    """A dataset of four IDX files (see :mod:`fllab.data.mnist`)."""

    layout: ClassVar[mnist.IdxLayout]
    Params = FileParams

    def __init__(self, params: FileParams):
        self.params = params

    def files(self) -> dict[str, Path]:
        """Locate the four IDX files, downloading them only when allowed and nowhere found."""
        lay, p = self.layout, self.params
        dirs = search_dirs(lay.folder, p.root, lay.system_dirs)
        for d in dirs:
            found = mnist.find_idx_files(d)
            if found:
                return found
        if not p.download:
            names = ", ".join(mnist.FILE_NAMES[r] + ".gz" for r in mnist.ROLES)
            where = ", ".join(map(str, dirs))
            raise ConfigError(
                f"no {lay.title} IDX files in {where}; {lay.install_hint}put {names} (or unzipped) there, or set download: true",
                f"{PATH}.root",
            )
        target = download_dir(lay.folder, p.root)
        for role in mnist.ROLES:
            name = mnist.FILE_NAMES[role] + ".gz"
            fetch_verified([m + name for m in lay.mirrors], target / name, lay.gz_md5[role], "md5")
        return mnist.find_idx_files(target)

    def signature(self) -> tuple[tuple[int, ...], int]:
        """Input shape and number of classes, known without loading (``validate --no-data``)."""
        return (1, *self.layout.image_hw), len(self.layout.class_names)

    def load(self) -> DatasetBundle:
        train, test = mnist.read_idx_split(self.files(), self.layout, self.params.verify)
        lay = self.layout
        return make_bundle(
            self.registry_name, train, test, len(lay.class_names), lay.class_names, self.params.train_limit, self.params.test_limit
        )


@DATASETS.register("fashion_mnist")
class FashionMNIST(_IdxDataset):
    """Fashion-MNIST from IDX files; Debian's dataset-fashion-mnist folder is searched after $FLLAB_DATA and the cache."""

    summary = "Fashion-MNIST 60k/10k 28x28 grey clothing images (Debian dataset-fashion-mnist, a folder, or download)"
    references = ("H. Xiao, K. Rasul, R. Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms. arXiv:1708.07747, 2017.",)
    layout = mnist.FASHION_MNIST


@DATASETS.register("mnist")
class MNIST(_IdxDataset):
    """MNIST from IDX files in $FLLAB_DATA/mnist, the cache or ``root``; downloads are MD5-checked."""

    summary = "MNIST 60k/10k 28x28 handwritten digits (a folder of IDX files, or download)"
    references = ("Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to document recognition. Proc. IEEE 86(11), 1998.",)
    layout = mnist.MNIST


class _CifarDataset:
    """A CIFAR variant read from its official binary distribution (see :mod:`fllab.data.cifar`)."""

    layout: ClassVar[cifar.CifarLayout]
    Params = FileParams

    def __init__(self, params: FileParams):
        self.params = params

    def label_choice(self) -> tuple[int, int, str]:
        """(label byte index, number of classes, names file) of the labels used."""
        return 0, self.layout.num_classes, self.layout.names_file

    def signature(self) -> tuple[tuple[int, ...], int]:
        """Input shape and number of classes, known without loading (``validate --no-data``)."""
        return (3, 32, 32), self.label_choice()[1]

    def source(self) -> tuple[Path, bool]:
        """The extracted folder or archive, and whether it was just downloaded (hence already checked)."""
        lay, p = self.layout, self.params
        dirs = search_dirs(lay.folder, p.root)
        for d in dirs:
            found = cifar.find_source(d, lay)
            if found:
                return found, False
        if not p.download:
            raise ConfigError(
                f"no {lay.title} binary files in {', '.join(map(str, dirs))}; put {lay.archive} "
                f"(or its extracted {lay.folder}/ folder) there, or set download: true",
                f"{PATH}.root",
            )
        target = download_dir(lay.folder, p.root) / lay.archive
        return fetch_verified([lay.url], target, lay.md5, "md5"), True

    def load(self) -> DatasetBundle:
        lay, p = self.layout, self.params
        src, checked = self.source()
        if p.verify and src.is_file() and not checked:
            verify_checksum(src, lay.md5, "md5")
        label_index, num_classes, names_file = self.label_choice()
        train, test, names = cifar.load_cifar(src, lay, label_index, names_file)
        for split, (x, y), count in (("train", train, lay.train_count), ("test", test, lay.test_count)):
            if y.size and int(y.max()) >= num_classes:
                raise DataIntegrityError(f"{src}: {split} label {int(y.max())} outside 0..{num_classes - 1}")
            if p.verify and len(y) != count:
                raise DataIntegrityError(f"{src}: {lay.title} {split} split should hold {count} images, found {len(y)}")
        return make_bundle(self.registry_name, train, test, num_classes, names, p.train_limit, p.test_limit)


@DATASETS.register("cifar10")
class CIFAR10(_CifarDataset):
    """CIFAR-10 from cifar-10-binary.tar.gz or its extracted folder; the archive is MD5-checked."""

    summary = "CIFAR-10 50k/10k 32x32 colour images, read from the official binary version (no pickle)"
    references = ("A. Krizhevsky. Learning Multiple Layers of Features from Tiny Images. Tech. report, University of Toronto, 2009.",)
    layout = cifar.CIFAR10


class Cifar100Params(FileParams):
    label: Literal["fine", "coarse"] = Field("fine", description="100 fine classes or 20 coarse superclasses")


@DATASETS.register("cifar100")
class CIFAR100(_CifarDataset):
    """CIFAR-100 from cifar-100-binary.tar.gz or its extracted folder, fine or coarse labels."""

    summary = "CIFAR-100 50k/10k 32x32 colour images, 100 fine or 20 coarse classes, official binary version"
    references = CIFAR10.references
    layout = cifar.CIFAR100
    Params = Cifar100Params

    def label_choice(self) -> tuple[int, int, str]:
        if self.params.label == "coarse":
            return 0, 20, "coarse_label_names.txt"
        return 1, 100, "fine_label_names.txt"
