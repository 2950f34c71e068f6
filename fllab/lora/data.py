"""A class subset of a registered dataset: the private split of a fine-tuning scenario whose
pretrained base saw the other classes (``task.model.pretrained``)."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, NonNegativeInt, field_validator

from ..errors import ConfigError
from ..registry import DATASETS, Params
from ..types import DatasetBundle, TensorData


def keep_classes(bundle: DatasetBundle, classes: list[int], path: str) -> DatasetBundle:
    """The examples of ``classes`` (both splits), relabelled ``0..k-1`` in the order given."""
    bad = [c for c in classes if c >= bundle.num_classes]
    if bad:
        raise ConfigError(f"{bad} not among {bundle.name}'s classes; allowed 0..{bundle.num_classes - 1}", path)
    relabel = torch.full((bundle.num_classes,), -1, dtype=torch.long)
    relabel[torch.as_tensor(classes)] = torch.arange(len(classes))

    def part(data: TensorData) -> TensorData:
        idx = (relabel[data.y] >= 0).nonzero().squeeze(1)
        return TensorData(data.x[idx], relabel[data.y[idx]])

    names = tuple(bundle.class_names[c] for c in classes) if bundle.class_names else ()
    return DatasetBundle(f"{bundle.name}[{','.join(map(str, classes))}]", part(bundle.train), part(bundle.test),
                         len(classes), bundle.input_shape, names)


def distinct(v: list[int]) -> list[int]:
    """Pydantic check shared by the class lists: no class twice."""
    if len(set(v)) != len(v):
        raise ValueError("classes must be distinct")
    return v


class ClassSubsetParams(Params):
    base: dict[str, Any] = Field(default_factory=lambda: {"name": "fashion_mnist"}, description="the dataset to take classes from")
    classes: list[NonNegativeInt] = Field(min_length=2, description="classes kept, relabelled 0..k-1 in this order")

    _distinct = field_validator("classes")(distinct)


@DATASETS.register("class_subset")
class ClassSubset:
    """Some classes of another registered dataset, relabelled from 0 (both splits)."""

    summary = "a class subset of another dataset (e.g. the clients' private classes 5-9 of Fashion-MNIST)"
    Params = ClassSubsetParams

    def __init__(self, params: ClassSubsetParams):
        self.params = params

    def load(self) -> DatasetBundle:
        base = DATASETS.build(self.params.base, "task.dataset.base").load()
        return keep_classes(base, self.params.classes, "task.dataset.classes")
