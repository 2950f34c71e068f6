"""Shared value types, and the threat-model boundary (DESIGN.md principle 1).

An attack only ever receives one of the ``*Observation`` objects below, built by the engine from
what its position allows.  Ground truth (the victim's batch, membership labels, which clients are
malicious) is kept in ``*Truth`` objects that only metrics receive.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn


class UpdateKind(str, enum.Enum):
    """What a client transmits to the server each round."""

    GRADIENT = "gradient"  # FedSGD: the loss gradient at the global weights
    GRADIENT_DIFFERENCE = "gradient_difference"  # DIFF2: gradients, or differences of gradients at the last two iterates
    DELTA = "delta"  # FedAvg: local weights minus global weights
    RANKING = "ranking"  # Federated Rank Learning: per-layer edge rankings
    HYPERNETWORK = "hypernetwork"  # HyperFL: hypernetwork parameters (delta)


@dataclass(frozen=True)
class TensorData:
    """Features in [0, 1] (images N x C x H x W, tabular N x D) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: Any) -> "TensorData":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData(self.x[idx], self.y[idx])

    def to(self, device: str | torch.device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DatasetBundle:
    """A task's data: train split (partitioned across clients), test split (for the server),
    and metadata the models need."""

    name: str
    train: TensorData
    test: TensorData
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelHandle:
    """How to build a fresh copy of the task's model: what any party legitimately knows."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class PublicHyperParams:
    """Training hyper-parameters the protocol makes public to the server."""

    algorithm: str
    lr: float
    batch_size: int
    local_steps: int  # optimizer steps per round (1 for FedSGD)
    local_epochs: float | None
    num_examples: int  # the client's dataset size (used for weighting, so it is sent)
    momentum: float = 0.0
    weight_decay: float = 0.0


# ----------------------------------------------------------------------------------------- client
@dataclass(frozen=True)
class ClientTask:
    """Everything one client needs for one round: a pure function of these fields."""

    client_id: int
    round: int
    global_params: torch.Tensor  # flat
    data: TensorData
    seed: int  # derived from (root, "client", id, round)
    device: str = "cpu"
    state: Any = None  # what this client kept from its previous round (None the first time)


@dataclass(frozen=True)
class ClientResult:
    client_id: int
    update: torch.Tensor  # flat, what is transmitted
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # seen by the engine only (e.g. which examples were used)
    state: Any = None  # kept by the client for its next round (private: never observed by the server)
    training: Any = None  # the local trainer's TrainReport (loss, steps, DP segments), when it trained through one

    def with_update(self, update: torch.Tensor) -> "ClientResult":
        return replace(self, update=update)


FitFn = Callable[[ClientTask], ClientResult]
Aggregator = Callable[..., torch.Tensor]  # (updates (n, d), weights (n,) | None) -> (d,)


@dataclass(frozen=True)
class EvalContext:
    """What an algorithm bundle's own evaluation may use (the engine's view, after training)."""

    model: ModelHandle
    global_params: torch.Tensor
    test: TensorData
    client_data: tuple[TensorData, ...]
    client_states: Mapping[int, Any]
    num_classes: int


# ------------------------------------------------------------------------------ observations
@dataclass(frozen=True)
class UpdateObservation:
    """What an honest-but-curious server sees of one client's upload in one round."""

    round: int
    client_id: int
    model: ModelHandle
    global_params: torch.Tensor  # flat weights the server sent
    update: torch.Tensor  # flat, what came back (after client-side defenses)
    kind: UpdateKind
    hyper: PublicHyperParams
    data_range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class PoisonObservation:
    """What the malicious clients (colluding) see in one round.

    ``own_updates`` are the honest updates the malicious clients computed on their own (possibly
    poisoned) data.  ``benign_updates`` and ``aggregator`` are present only for attacks that
    declare omniscient knowledge.
    """

    round: int
    num_clients: int  # sampled this round, malicious included
    num_malicious: int
    global_params: torch.Tensor
    own_updates: torch.Tensor  # (m, d)
    kind: UpdateKind
    seed: int
    benign_updates: torch.Tensor | None = None  # (n - m, d)
    aggregator: Aggregator | None = None


@dataclass(frozen=True)
class ModelObservation:
    """What an outsider sees after training: black-box access to the final model and a
    population of records from the same distribution (not the training members)."""

    model: ModelHandle
    params: torch.Tensor
    population: TensorData


# ------------------------------------------------------------------------------------ truth
@dataclass(frozen=True)
class InversionTruth:
    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class MembershipTruth:
    is_member: torch.Tensor  # bool per scored record


@dataclass(frozen=True)
class PoisonTruth:
    malicious_ids: tuple[int, ...]
