"""The task: sklearn digits (offline), an MLP, fllab's seeded IID partition, and the run config."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import torch

from fllab.registry import DATASETS, MODELS, PARTITIONS, load_plugins
from fllab.seeding import numpy_gen
from fllab.types import DatasetBundle, ModelHandle, TensorData

#: the defaults of pyproject.toml's [tool.flwr.app.config], used where a run config lacks a key
DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 3, "num-partitions": 5, "seed": 0, "aggregator": "krum", "f": 1, "dp-fedavg": False,
    "noise-multiplier": 1.0, "clip": 3.0, "client-mod": "clip_noise", "mod-sigma": 0.001, "capture": "", "results": "",
}


def config(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**DEFAULTS, **dict(run_config), **dict(overrides or {})}


@lru_cache(maxsize=1)
def bundle() -> DatasetBundle:
    load_plugins()
    return DATASETS.build("digits").load()


def model() -> ModelHandle:
    b = bundle()
    builder = MODELS.build({"name": "mlp", "hidden": [64]})
    return ModelHandle(lambda: builder.build(b.input_shape, b.num_classes), b.input_shape, b.num_classes)


@lru_cache(maxsize=8)
def partition(pid: int, num_partitions: int, seed: int) -> TensorData:
    """Client ``pid``'s share: fllab's IID split of the training set, drawn from the root seed."""
    b = bundle()
    parts = PARTITIONS.build("iid").split(b.train.y.numpy(), num_partitions, numpy_gen(seed, "partition"))
    return b.train.subset(torch.as_tensor(parts[pid]))
