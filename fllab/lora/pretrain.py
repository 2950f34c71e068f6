"""An offline pretrained base: the task's architecture trained once on a public split (classes of a
dataset no client holds), cached under fllab's cache root keyed by its configuration.

The cache entry ``<key>.pt`` holds the state dict; ``<key>.json`` its SHA-256 and what produced
it.  A load checks the digest and reads the weights with ``torch.load(weights_only=True)`` (no
pickled code runs); an entry that fails the check is retrained and rewritten (atomically, so
parallel sweep cells never read half a file).  The key is the SHA-256 of the base model's spec,
input shape, number of classes and every pretraining setting, so any change retrains.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from ..data.locate import cache_root
from ..errors import ConfigError
from ..registry import DATASETS, Params
from ..seeding import derive_seed, torch_gen
from ..training.local import evaluate, sgd_train, steps_for
from .data import distinct, keep_classes

#: Bump when the pretraining recipe changes meaning (old cache entries are then ignored).
FORMAT = 1
PATH = "task.model.pretrained"


class PretrainParams(Params):
    dataset: dict[str, Any] = Field(default_factory=lambda: {"name": "fashion_mnist"}, description="public dataset")
    classes: list[NonNegativeInt] = Field(min_length=2, description="public classes the base is trained on (relabelled 0..k-1)")
    epochs: PositiveFloat = 2.0
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    seed: NonNegativeInt = Field(0, description="seed of the base's initial weights and batches")
    freeze: bool = Field(False, description="without task.model.lora: freeze the base (nothing left to train is refused)")

    _distinct = field_validator("classes")(distinct)


def cache_dir() -> Path:
    """``<cache root>/pretrained`` (the cache root is ``${XDG_CACHE_HOME:-~/.cache}/fllab``)."""
    return cache_root().parent / "pretrained"


def cache_key(model_spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, p: PretrainParams) -> str:
    blob = json.dumps(
        {"format": FORMAT, "model": model_spec, "input_shape": list(input_shape), "num_classes": num_classes,
         "pretrain": p.model_dump(mode="json", exclude={"freeze"})},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def pretrain(base: Any, input_shape: tuple[int, ...], num_classes: int, p: PretrainParams) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train ``base.build(input_shape, num_classes)`` on the public classes' training examples with
    seeded mini-batch SGD; return its state dict and its accuracy on those classes' test split."""
    data = keep_classes(DATASETS.build(p.dataset, f"{PATH}.dataset").load(), p.classes, f"{PATH}.classes")
    if data.num_classes != num_classes or tuple(data.input_shape) != tuple(input_shape):
        raise ConfigError(
            f"the public split has {data.num_classes} classes of shape {tuple(data.input_shape)}, the task "
            f"{num_classes} of shape {tuple(input_shape)}; give as many public classes as the task has",
            f"{PATH}.classes",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(p.seed, "pretrain", "init"))
        net = base.build(input_shape, num_classes)
    steps = steps_for(len(data.train), p.batch_size, p.epochs, None)
    sgd_train(net, data.train, steps=steps, batch_size=p.batch_size, lr=p.lr, momentum=p.momentum, weight_decay=0.0,
              gen=torch_gen(p.seed, "pretrain", "batches"))
    score = evaluate(net, data.test)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, {"public_test_accuracy": score["accuracy"], "steps": steps}


_MEMO: dict[str, dict[str, torch.Tensor]] = {}


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _atomic_write(path: Path, raw: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def load_cached(key: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict for ``key`` if present and its digest checks out, else None."""
    weights, meta = cache_dir() / f"{key}.pt", cache_dir() / f"{key}.json"
    if not (weights.exists() and meta.exists()):
        return None
    raw = weights.read_bytes()
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (ValueError, KeyError):
        return None
    if _digest(raw) != expected:
        return None
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def pretrained_state(base: Any, model_spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int,
                     p: PretrainParams) -> dict[str, torch.Tensor]:
    """The base's pretrained weights: from memory, else the verified cache, else trained now and cached."""
    key = cache_key(model_spec, input_shape, num_classes, p)
    if key in _MEMO:
        return _MEMO[key]
    state = load_cached(key)
    if state is None:
        with torch.device("cpu"):  # whatever default device the caller has set
            state, info = pretrain(base, input_shape, num_classes, p)
        buf = io.BytesIO()
        torch.save(state, buf)
        raw = buf.getvalue()
        cache_dir().mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_dir() / f"{key}.pt", raw)
        meta = {"sha256": _digest(raw), "model": model_spec, "input_shape": list(input_shape), "num_classes": num_classes,
                "pretrain": p.model_dump(mode="json"), **info}
        _atomic_write(cache_dir() / f"{key}.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    _MEMO[key] = state
    return state
