"""Flower's ``ArrayRecord`` <-> fllab's flat update vector, and what a client's reply holds.

fllab moves a model as one flat (d,) vector of its trainable parameters in ``parameters()`` order
(:mod:`fllab.models.flat`); Flower moves an ``ArrayRecord`` of named arrays.  A record maps onto
the flat vector by concatenating its arrays in key order, so any Flower app whose record holds the
trainable parameters in model order (``ArrayRecord(model.state_dict())`` of a model without
buffers, or fllab's own :func:`flat_to_record`) is read exactly as fllab reads its own uploads.

What a reply's record holds is the ``upload`` kind:

* ``weights`` -- the client's new weights (the Flower convention: stock Flower clients);
* ``delta``   -- new weights minus the weights it received (fllab's FedAvg upload);
* ``gradient``-- a loss gradient at the received weights (fllab's FedSGD upload).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

Upload = Literal["weights", "delta", "gradient"]
UPLOADS: tuple[str, ...] = ("weights", "delta", "gradient")


def check_upload(upload: str, field: str = "upload") -> str:
    """Refuse an unknown upload kind with a ValueError naming the field and the allowed values."""
    if upload not in UPLOADS:
        raise ValueError(f"{field} must be one of {', '.join(UPLOADS)}; got {upload!r}")
    return upload


def record_to_flat(record: ArrayRecord) -> torch.Tensor:
    """Concatenate the record's arrays (key order) into one float32 (d,) tensor.

    A record holding a non-floating array (an integer ranking, as Federated Rank Learning sends)
    is a ValueError: fllab's update defenses and aggregators work on real-valued updates."""
    arrays = [record[k].numpy() for k in record.keys()]
    for key, a in zip(record.keys(), arrays):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"array {key!r} holds {a.dtype} values (a ranking?); fllab update defenses need real-valued updates")
    if not arrays:
        return torch.zeros(0)
    return torch.from_numpy(np.concatenate([a.reshape(-1).astype(np.float32, copy=False) for a in arrays]))


def flat_to_record(flat: torch.Tensor, like: ArrayRecord | Sequence[tuple[str, tuple[int, ...]]]) -> ArrayRecord:
    """Split ``flat`` into arrays with the keys and shapes of ``like`` (a record, or ``(key, shape)``
    pairs) as float32 numpy arrays."""
    layout = [(k, tuple(like[k].shape)) for k in like.keys()] if isinstance(like, ArrayRecord) else list(like)
    values = flat.detach().to("cpu", torch.float32).numpy()
    out, offset = {}, 0
    for key, shape in layout:
        n = int(np.prod(shape, dtype=np.int64))
        out[key] = Array(np.ascontiguousarray(values[offset : offset + n].reshape(shape)))
        offset += n
    if offset != values.size:
        raise ValueError(f"flat vector has {values.size} entries, the record layout {offset}")
    return ArrayRecord(array_dict=out)


def model_record(model: torch.nn.Module) -> ArrayRecord:
    """The model's trainable parameters as an ArrayRecord keyed by parameter name (flat order)."""
    return flat_to_record(
        torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]),
        [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad],
    )


def as_update(reply: torch.Tensor, sent: torch.Tensor, upload: str) -> torch.Tensor:
    """What fllab calls the client's update: the reply itself, or ``reply - sent`` for weights."""
    return reply - sent if upload == "weights" else reply


def as_reply(update: torch.Tensor, sent: torch.Tensor, upload: str) -> torch.Tensor:
    """Inverse of :func:`as_update`: what goes back into the reply's record."""
    return sent + update if upload == "weights" else update
