"""Local training kernels shared by the client algorithms: seeded mini-batch SGD on a client's
tensors, and one full-batch / mini-batch gradient for FedSGD."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..types import TensorData


Segment = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps) of one DP-SGD run


@dataclass(frozen=True)
class TrainReport:
    """What one local training run did: its mean loss over the steps, how many optimizer steps it
    took, and the DP-SGD segments it spent (empty for non-private training).  A trainer returns
    it and the algorithm hands it on in :attr:`fllab.types.ClientResult.training`, so an
    accounting defense reads what ran from the result (no side channel).  ``clipped`` is
    DP-SGD's ``(clipped per-sample gradients, samples)`` count (``dp.clipped_fraction``)."""

    loss: float
    steps: int
    privacy: tuple[Segment, ...] = ()
    clipped: tuple[int, int] = (0, 0)


def batch_order(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Index batches for ``steps`` SGD steps: epochs of seeded permutations, last partial batch kept."""
    batch_size = min(batch_size, n)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return out[:steps]


def steps_for(n: int, batch_size: int, epochs: float | None, steps: int | None) -> int:
    """Number of optimizer steps: explicit ``steps`` wins, else ``epochs`` passes over ``n`` examples."""
    if steps is not None:
        return steps
    per_epoch = math.ceil(n / min(batch_size, n))
    return max(1, round(per_epoch * float(epochs or 1.0)))


def sgd_train(
    model: nn.Module,
    data: TensorData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    gen: torch.Generator,
) -> TrainReport:
    """Run ``steps`` SGD steps in place; report the mean training loss over the steps."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return TrainReport(run_batches(model, opt, data, batch_order(len(data), batch_size, steps, gen)), steps)


def run_batches(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: TensorData,
    batches: list[torch.Tensor],
    before_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> float:
    """Cross-entropy steps of ``opt`` over ``batches`` of ``data`` in train mode (``before_step(step,
    opt)`` may set a learning-rate schedule); returns the mean loss over the steps."""
    model.train()
    total = torch.zeros((), device=data.x.device)
    for step, idx in enumerate(batches):
        if before_step is not None:
            before_step(step, opt)
        idx = idx.to(data.x.device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        loss.backward()
        opt.step()
        total += loss.detach()
    return float(total) / len(batches)


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Gradient of the mean cross-entropy over (x, y) at the model's weights, flattened."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]), float(loss.detach())


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1024) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(data), batch_size):
        logits = model(data.x[i : i + batch_size])
        y = data.y[i : i + batch_size]
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}
