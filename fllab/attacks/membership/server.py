"""Membership inference from the server position: an honest-but-curious server scores candidate
records against one client's uploads.

Interface (what the engine driver calls)::

    scores = attack.score(obs: UpdateObservation, candidates: TensorData, seed: int) -> Tensor (n,)
    scores = attack.score_rounds(observations: Sequence[UpdateObservation], candidates, seed) -> Tensor (n,)

``obs`` is one client's upload in one round (the global weights sent, the update received, its
kind and the public hyper-parameters); ``score_rounds`` takes the same client's uploads over the
rounds it took part in and combines the per-round scores (``combine``: their mean, which ranks
like their sum, or the mean of per-round standardized scores so that late rounds, whose raw
scores shrink as training converges, weigh as much as early ones).  Scores are float64 on the
CPU, higher meaning "more likely in this client's data".  The signals are deterministic; ``seed``
is accepted for a uniform interface.

=====================  ============================================================================
``update_cosine``      cosine between the client's update direction and the candidate's gradient
                       at the global weights (Li, Li & Ribeiro 2023)
``update_loss``        the candidate's loss under the client's updated model (global + delta), minus
                       its loss under the global model when ``calibrated`` (Watson et al. 2022)
``update_gradnorm``    the norm of the candidate's gradient under the updated model, relative to the
                       global model when ``calibrated`` (Nasr, Shokri & Houmansadr 2019)
=====================  ============================================================================

The client's updated weights are ``global + delta`` for a FedAvg delta and ``global - lr * g`` for
a FedSGD gradient (the step the server itself would take with it).  Per-example gradients are
``torch.func.vmap(torch.func.grad(...))`` over the candidates, in chunks that bound memory.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.func import grad, vmap

from ...errors import CapabilityError
from ...registry import ATTACKS
from ...types import TensorData, UpdateKind, UpdateObservation
from ..base import MembershipParams
from ...models.victim import VictimModel
from . import kernels
from ...training.stacked import model_logits

SERVER_THREAT = (
    "honest-but-curious server: one client's uploads (gradient or FedAvg delta), the global weights it sent, "
    "the public model and hyper-parameters, and the candidate records to test"
)

#: Entries of one chunk of per-example gradients (n_chunk x d) kept below this.
_GRAD_BUDGET = 1 << 24


class ServerParams(MembershipParams):
    position: Literal["server"] = Field("server", description="per-client updates (the only position of this attack)")
    combine: Literal["mean", "zscore"] = Field(
        "mean", description="across rounds: mean of per-round scores, or mean of per-round standardized scores"
    )


class CalibratedServerParams(ServerParams):
    calibrated: bool = Field(True, description="subtract the same signal under the global model (per-record difficulty)")


def _kind(obs: UpdateObservation) -> UpdateKind:
    kind = UpdateKind(obs.kind)
    if kind not in (UpdateKind.GRADIENT, UpdateKind.DELTA):
        raise CapabilityError(f"update-based membership inference needs a gradient or delta update; the observation holds a {kind.value}")
    return kind


def client_weights(obs: UpdateObservation) -> Tensor:
    """The client's model after its local work: ``global + delta`` or ``global - lr * gradient``."""
    if _kind(obs) is UpdateKind.DELTA:
        return obs.global_params + obs.update
    return obs.global_params - obs.hyper.lr * obs.update


def descent_direction(obs: UpdateObservation) -> Tensor:
    """The direction the client moved the weights against: the gradient itself, or ``-delta``
    (a positive multiple of the mean local gradient after one SGD step, a proxy after several)."""
    return obs.update if _kind(obs) is UpdateKind.GRADIENT else -obs.update


def per_example_gradients(model: VictimModel, params: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """(n, d) flat gradients of each record's cross-entropy at ``params``."""

    def loss(p: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(model.logits(p, xi.unsqueeze(0)), yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def chunked_gradient_map(model: VictimModel, params: Tensor, data: TensorData, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` applied to chunks of per-example gradients (chunk, d) -> (chunk,), concatenated."""
    chunk = max(1, _GRAD_BUDGET // max(1, model.num_params))
    return torch.cat(
        [fn(per_example_gradients(model, params, data.x[i : i + chunk], data.y[i : i + chunk])) for i in range(0, len(data), chunk)]
    )


class _UpdateAttack(ABC):
    """Shared plumbing: checks, the model function, and the combination over rounds."""

    family = "membership"
    threat_model = SERVER_THREAT
    needs = frozenset({"gradient", "delta"})

    def __init__(self, params: ServerParams):
        self.params = params

    @abstractmethod
    def _round_scores(self, obs: UpdateObservation, model: VictimModel, data: TensorData) -> Tensor:
        """One score per candidate from one upload."""

    def score(self, obs: UpdateObservation, candidates: TensorData, seed: int) -> Tensor:
        return self.score_rounds([obs], candidates, seed)

    def score_rounds(self, observations: Sequence[UpdateObservation], candidates: TensorData, seed: int) -> Tensor:
        if not observations:
            raise ValueError(f"{self.registry_name}: no observation to score against")
        if len(candidates) == 0:
            raise ValueError(f"{self.registry_name}: no candidate record to score")
        first = observations[0]
        device, dtype = first.global_params.device, first.global_params.dtype
        model = VictimModel(first.model.build, device, dtype)
        if model.num_params != first.global_params.numel():
            raise ValueError(f"the model has {model.num_params} parameters, the observation {first.global_params.numel()}")
        data = TensorData(candidates.x.to(device=device, dtype=dtype), candidates.y.to(device))
        rows = torch.stack([self._round_scores(obs, model, data).to(torch.float64) for obs in observations])
        if self.params.combine == "zscore":
            rows = kernels.standardize(rows)
        return rows.mean(dim=0).detach().cpu()


@ATTACKS.register("update_cosine")
class UpdateCosine(_UpdateAttack):
    """Gradient-alignment attack (Li, Li & Ribeiro 2023): a client's update is (minus) a sum of its
    records' gradients, so a member's gradient at the global weights points along it.  Score: the
    cosine between the candidate's gradient at the global weights and the update's descent
    direction (the FedSGD gradient, or ``-delta`` for FedAvg)."""

    summary = "cosine between a client's update and the candidate's gradient at the global model"
    references = (
        "Li, Li & Ribeiro 2023, Effective passive membership inference attacks in federated learning against overparameterized models (ICLR)",
        "Nasr, Shokri & Houmansadr 2019, Comprehensive Privacy Analysis of Deep Learning (IEEE S&P)",
    )
    Params = ServerParams

    def _round_scores(self, obs: UpdateObservation, model: VictimModel, data: TensorData) -> Tensor:
        direction = descent_direction(obs).to(obs.global_params.dtype)
        return chunked_gradient_map(model, obs.global_params, data, lambda g: kernels.cosine_to(g, direction))


class _CalibratedAttack(_UpdateAttack):
    """A per-record signal that local training lowers on the client's records: the score is its
    negation under the client's updated model, or, ``calibrated`` (Watson et al. 2022), how much
    the update lowered it from the global model (per-record difficulty removed)."""

    @abstractmethod
    def _signal(self, model: VictimModel, weights: Tensor, data: TensorData) -> Tensor:
        """The signal of every candidate under ``weights``."""

    def _round_scores(self, obs: UpdateObservation, model: VictimModel, data: TensorData) -> Tensor:
        after = self._signal(model, client_weights(obs), data)
        if not self.params.calibrated:
            return -after
        return self._signal(model, obs.global_params, data) - after


@ATTACKS.register("update_loss")
class UpdateLoss(_CalibratedAttack):
    """Loss under the client's updated model: local training on a record lowers its loss.
    Calibrated (Watson et al. 2022), the score is how much the update lowered the record's loss
    (global-model loss minus updated-model loss); otherwise the negated updated-model loss (Yeom et
    al. 2018 applied to the client's model)."""

    summary = "candidate's loss under the client's updated model (global + delta), optionally minus its global loss"
    references = (
        "Yeom, Giacomelli, Fredrikson & Jha 2018, Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting (CSF)",
        "Watson, Guo, Cormode & Sablayrolles 2022, On the Importance of Difficulty Calibration in Membership Inference Attacks (ICLR)",
    )
    Params = CalibratedServerParams

    def _signal(self, model: VictimModel, weights: Tensor, data: TensorData) -> Tensor:
        return kernels.record_loss(model_logits(model, weights, data.x), data.y)


@ATTACKS.register("update_gradnorm")
class UpdateGradNorm(_CalibratedAttack):
    """Gradient norm under the client's updated model: training drives its records' gradients
    towards zero (Nasr et al. 2019 use gradient norms as membership features).  Score: the
    negated norm, or, calibrated, the drop of the norm from the global to the updated model."""

    summary = "candidate's gradient norm under the client's updated model, optionally relative to the global model"
    references = (
        "Nasr, Shokri & Houmansadr 2019, Comprehensive Privacy Analysis of Deep Learning (IEEE S&P)",
        "Watson, Guo, Cormode & Sablayrolles 2022, On the Importance of Difficulty Calibration in Membership Inference Attacks (ICLR)",
    )
    Params = CalibratedServerParams

    def _signal(self, model: VictimModel, weights: Tensor, data: TensorData) -> Tensor:
        return chunked_gradient_map(model, weights, data, lambda g: g.norm(dim=1))
