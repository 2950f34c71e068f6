"""Honest client algorithms (what a client computes and sends, and how the server applies the
aggregate).  Each algorithm is a registered component with a ``sends`` capability:

* ``fedsgd`` -- one gradient per round (McMahan et al. 2017, "FedSGD"); the server takes a step.
* ``fedavg`` -- local SGD epochs/steps, the client sends its weight delta (McMahan et al. 2017).
"""
from __future__ import annotations

from typing import Callable

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import nn

from ..models.flat import flatten_params, load_flat_
from ..registry import ALGORITHMS, Params
from ..types import ClientResult, ClientTask, PublicHyperParams, UpdateKind
from ..training.local import TrainReport, batch_gradient, batch_order, sgd_train, steps_for

# A trainer runs local optimisation in place and returns a TrainReport.  DP-SGD replaces it.
Trainer = Callable[..., TrainReport]


class FedSGDParams(Params):
    lr: PositiveFloat = Field(0.1, description="server learning rate applied to the aggregated gradient")
    batch_size: PositiveInt | None = Field(
        None, description="examples per client gradient; null = the client's whole dataset"
    )


@ALGORITHMS.register("fedsgd")
class FedSGD:
    """Each sampled client sends the gradient of its loss at the global weights on one batch; the
    server moves the weights by ``-lr * aggregate``."""

    summary = "clients send one gradient per round; server takes an SGD step"
    references = ("McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data, AISTATS 2017",)
    Params = FedSGDParams
    sends = UpdateKind.GRADIENT

    def __init__(self, params: FedSGDParams):
        self.params = params

    def public_hyper(self, num_examples: int) -> PublicHyperParams:
        bs = min(self.params.batch_size or num_examples, num_examples)
        return PublicHyperParams("fedsgd", self.params.lr, bs, 1, None, num_examples)

    def client_update(self, model: nn.Module, task: ClientTask, gen: torch.Generator, trainer: Trainer | None = None) -> ClientResult:
        n = len(task.data)
        idx = batch_order(n, self.params.batch_size or n, 1, gen)[0].to(task.data.x.device)
        grad, loss = batch_gradient(model, task.data.x[idx], task.data.y[idx])
        return ClientResult(task.client_id, grad, int(idx.numel()), {"train_loss": loss}, {"used_index": idx})

    def server_step(self, global_params: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        return global_params - self.params.lr * aggregate


class FedAvgParams(Params):
    local_epochs: PositiveFloat | None = Field(1.0, description="passes over the local data per round")
    local_steps: PositiveInt | None = Field(None, description="optimizer steps per round; overrides local_epochs")
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    server_lr: PositiveFloat = Field(1.0, description="server step size on the averaged delta")

    @model_validator(mode="after")
    def _one_budget(self) -> "FedAvgParams":
        if self.local_epochs is None and self.local_steps is None:
            raise ValueError("set local_epochs or local_steps")
        return self


class LocalSGDRecipe:
    """What FedAvg-style clients share: local SGD for ``local_epochs`` or ``local_steps`` of
    ``batch_size`` (a :class:`FedAvgParams` in ``self.params``), and the public hyper-parameters an
    inversion attacker knows of it."""

    params: FedAvgParams

    def local_steps(self, num_examples: int) -> int:
        p = self.params
        return steps_for(num_examples, p.batch_size, p.local_epochs, p.local_steps)

    def public_hyper(self, num_examples: int) -> PublicHyperParams:
        p = self.params
        return PublicHyperParams(
            self.registry_name, p.lr, min(p.batch_size, num_examples), self.local_steps(num_examples),
            p.local_epochs if p.local_steps is None else None, num_examples, p.momentum, p.weight_decay,
        )


@ALGORITHMS.register("fedavg")
class FedAvg(LocalSGDRecipe):
    """Clients run local SGD from the global weights and send ``local - global``; the server adds
    ``server_lr`` times the aggregated delta."""

    summary = "local SGD epochs/steps; clients send weight deltas"
    references = ("McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data, AISTATS 2017",)
    Params = FedAvgParams
    sends = UpdateKind.DELTA

    def __init__(self, params: FedAvgParams):
        self.params = params

    def client_update(self, model: nn.Module, task: ClientTask, gen: torch.Generator, trainer: Trainer | None = None) -> ClientResult:
        p = self.params
        train = trainer or sgd_train
        report = train(
            model, task.data, steps=self.local_steps(len(task.data)), batch_size=p.batch_size,
            lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, gen=gen,
        )
        delta = flatten_params(model) - task.global_params
        used = torch.arange(len(task.data), device=task.data.x.device)
        return ClientResult(
            task.client_id, delta, len(task.data), {"train_loss": report.loss}, {"used_index": used}, training=report
        )

    def server_step(self, global_params: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        return global_params + self.params.server_lr * aggregate


def start_from(model: nn.Module, task: ClientTask) -> nn.Module:
    """Load the round's global weights into the worker's model copy."""
    return load_flat_(model, task.global_params)

