"""Federated LoRA fine-tuning bundles: what a client trains and sends of its adapters, and how the
server combines it.  All four move the LoRA factors as one flat vector ``[A_1, B_1, A_2, B_2, ...]``
(:class:`fllab.lora.layers.LoRALayout`; the base is frozen) and send a delta against the factors
the server sent, with zeros where nothing is sent.

``fedavg_lora`` -- both factors trained and averaged separately (the "LoRA + FedAvg" baseline of
    the three papers): ``A <- A + mean(dA_k)``, ``B <- B + mean(dB_k)``, so the server's product is
    ``mean(B_k) mean(A_k)``, not the mean of the clients' products.

``ffa_lora`` -- Sun, Li, Zeng, Su & Zhang 2024, "Improving LoRA in Privacy-preserving Federated
    Learning" (ICLR; arXiv 2403.12313).  ``A`` keeps its random initialisation (shared: it is part
    of what the server sends in round 0) and is frozen; clients train and send only ``B``, the
    server averages ``B``.  With one ``A`` the average of the products is the product of the
    averages (aggregation error 0), and DP-SGD's noise enters ``B`` linearly (no noise x noise
    cross term).  Trainable parameters and upload halve.

``fedsvd_lora`` -- Lee, Kim et al. 2025, "FedSVD: Adaptive Orthogonalization for Private Federated
    Learning with LoRA" (arXiv 2505.12805; github.com/seanie12/fed-svd).  Clients are FFA-LoRA
    clients (train and send ``B``, ``A`` frozen during local training); after averaging ``B`` the
    server re-factorises every layer's product ``B A = U S V^T`` (thin SVD) and sets ``A <- V_r^T``
    (top-r right singular vectors: orthonormal rows) and ``B <- U_r S_r``, which leaves ``B A``
    unchanged.  As the reference ``Server.on_round_complete``: after round ``t`` (counted from 1)
    when ``svd_period != 0``, ``t % svd_period == 0`` and ``t > svd_warmup``; the next round's
    clients receive the new ``A`` and ``B`` (reference ``receive_state_dict_from_server`` loads
    both after a re-factorisation).  ``svd_period: 0`` is FFA-LoRA.

``fedrand`` -- Park, Lee, Kim & Hwang 2025, "FedRand: Enhancing Privacy in Federated Learning with
    Randomized LoRA Subparameter Updates" (arXiv 2503.07216).  Each round each sampled client
    draws, per adapted layer, whether it takes ``A`` from the server (probability ``rho``) or ``B``;
    the other factor of that layer is its private one, cached on the client since its previous
    participation (the server's, at its first).  It trains both factors and sends back only the
    ones it took from the server.  The server updates each layer's ``A`` with the example-weighted
    mean over the clients that sent that ``A`` (and ``B`` likewise): the normalised average; a
    factor no client sent this round stays unchanged.  Which factor a client takes is drawn from a
    generator seeded by (``seed``, client, round), so the server can tell which factors an upload
    holds, as it would from the message itself.  The paper describes the selection per LoRA
    module; fllab draws it per adapted layer.

Every bundle trains through the client trainer (so ``dp_sgd`` privatises exactly the factors being
trained: ``B`` alone under FFA-LoRA and FedSVD) and reports, per round, ``run.upload_bytes`` (4
bytes per sent float32 entry, per client) and, through :meth:`round_metrics`,
``lora.aggregation_error`` = ``||mean(B_k A_k) - mean(B_k) mean(A_k)||_F`` over the clients' local
factors (:func:`fllab.lora.layers.aggregation_error`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from abc import ABC, abstractmethod

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, field_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.flat import flatten_params, load_flat_
from ..registry import ALGORITHMS
from ..state import AttrState
from ..seeding import torch_gen
from ..algorithms.fedavg import FedAvgParams, LocalSGDRecipe
from ..training.local import TrainReport, sgd_train
from ..types import ClientResult, ClientTask, UpdateKind
from .layers import LoRALayer, LoRALayout, aggregation_error

BYTES_PER_ENTRY = 4  # float32


class LoRATrainParams(FedAvgParams):
    """FedAvg's local recipe; ``server_lr`` scales the averaged factor deltas."""


@contextmanager
def train_only(model: nn.Module, parts: frozenset[str]) -> Iterator[None]:
    """Within the block only the factors in ``parts`` ("A", "B") require gradients."""
    factors = [(m.lora_A.weight, "A") for m in model.modules() if isinstance(m, LoRALayer)]
    factors += [(m.lora_B.weight, "B") for m in model.modules() if isinstance(m, LoRALayer)]
    try:
        for p, part in factors:
            p.requires_grad_(part in parts)
        yield
    finally:
        for p, _ in factors:
            p.requires_grad_(True)


@dataclass(frozen=True)
class ClientPlan:
    """One client round: the factors the client starts from, which it trains, which it sends."""

    start: Tensor  # flat factors loaded before training
    sent: Tensor  # (d,) bool: entries uploaded (as deltas against the server's factors)
    trains: frozenset[str]


class _LoRABundle(AttrState, LocalSGDRecipe, ABC):
    """Shared client loop and diagnostics; subclasses choose what is trained and sent
    (:meth:`client_plan`) and what the server does after averaging (:meth:`server_step`)."""

    state_attrs = ("rounds_done",)  # the server's round counter (FedSVD's period, FedRand's draws), for --resume

    Params = LoRATrainParams
    sends = UpdateKind.DELTA

    def __init__(self, params: LoRATrainParams):
        self.params = params
        self.layout: LoRALayout | None = None
        self.rounds_done = 0

    # ---------------------------------------------------------------------------- protocol
    def wrap_model(self, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        """Check that the model carries LoRA adapters and record their layout (the engine calls
        this once per run, so the server's round counter restarts here)."""
        with torch.random.fork_rng(devices=[]):
            net = build()
        try:
            self.layout = LoRALayout(net)
        except ValueError:
            raise ConfigError(f"algorithm {self.registry_name} needs LoRA adapters: set task.model.lora", "task.model") from None
        self.rounds_done = 0
        return build

    @abstractmethod
    def client_plan(self, task: ClientTask, layout: LoRALayout) -> ClientPlan:
        """What this client trains, starts from and sends this round."""

    def client_state(self, local: Tensor, task: ClientTask) -> Any:
        """What the client keeps for its next round (nothing, except under FedRand)."""
        return None

    def client_update(self, model: nn.Module, task: ClientTask, gen: torch.Generator, trainer: Callable[..., TrainReport] | None = None) -> ClientResult:
        layout = self.layout or LoRALayout(model)
        plan = self.client_plan(task, layout)
        load_flat_(model, plan.start)
        p = self.params
        train = trainer or sgd_train
        with train_only(model, plan.trains):
            report = train(model, task.data, steps=self.local_steps(len(task.data)), batch_size=p.batch_size, lr=p.lr,
                         momentum=p.momentum, weight_decay=p.weight_decay, gen=gen)
        local = flatten_params(model)
        update = torch.where(plan.sent, local - task.global_params, torch.zeros_like(local))
        used = torch.arange(len(task.data), device=task.data.x.device)
        return ClientResult(
            task.client_id, update, len(task.data),
            {"train_loss": report.loss, "run.upload_bytes": float(BYTES_PER_ENTRY * int(plan.sent.sum()))},
            {"used_index": used, "lora.local": local},
            state=self.client_state(local, task),
            training=report,
        )

    def server_step(self, global_params: Tensor, aggregate: Tensor) -> Tensor:
        self.rounds_done += 1
        return global_params + self.params.server_lr * aggregate

    # ---------------------------------------------------------------------------- server's view
    def assemble(self, previous: Tensor | None, global_sent: Tensor, upload: Tensor, client_id: int, rnd: int) -> Tensor:
        """The client's model as the server can put it together from what it received: the
        factors the client sent (``global_sent + upload`` there) and the server's own for the
        rest (exact here: a factor the client does not send is one it did not train)."""
        sent = self.sent_mask(client_id, rnd, global_sent.device)
        return torch.where(sent, global_sent + upload, global_sent)

    @abstractmethod
    def sent_mask(self, client_id: int, rnd: int, device: torch.device | str) -> Tensor:
        """(d,) bool: the entries client ``client_id`` uploads in round ``rnd`` (public)."""

    # ---------------------------------------------------------------------------- diagnostics
    def round_metrics(self, results: Sequence[ClientResult]) -> dict[str, float]:
        """``lora.aggregation_error`` of this round's clients (weights: their example counts)."""
        local = torch.stack([r.extras["lora.local"] for r in results])
        weights = torch.tensor([float(r.num_examples) for r in results])
        return {"lora.aggregation_error": aggregation_error(self.layout or _need_layout(), local, weights)}

    def summary_metrics(self, rounds: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Run-level figures: the largest aggregation error of any round, the mean upload per
        client and round, and (under DP-SGD) the mean fraction of clipped per-sample gradients."""
        out = {"lora.aggregation_error": max(r["lora.aggregation_error"] for r in rounds),
               "run.upload_bytes": float(np.mean([r["run.upload_bytes"] for r in rounds]))}
        clipped = [r["dp.clipped_fraction"] for r in rounds if "dp.clipped_fraction" in r]
        if clipped:
            out["dp.clipped_fraction"] = float(np.mean(clipped))
        return out


def _need_layout() -> LoRALayout:
    raise RuntimeError("the LoRA layout is unknown: the engine must call wrap_model first")


# --------------------------------------------------------------------------------- fedavg_lora
@ALGORITHMS.register("fedavg_lora")
class FedAvgLoRA(_LoRABundle):
    """Both LoRA factors trained, sent and averaged separately (aggregation error > 0)."""

    summary = "LoRA + FedAvg: clients train and send A and B; the server averages each"
    references = ("Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
                  "McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data, AISTATS 2017")

    def client_plan(self, task: ClientTask, layout: LoRALayout) -> ClientPlan:
        return ClientPlan(task.global_params, torch.ones(layout.size, dtype=torch.bool, device=task.global_params.device),
                    frozenset("AB"))

    def sent_mask(self, client_id: int, rnd: int, device: torch.device | str) -> Tensor:
        return torch.ones(_size(self), dtype=torch.bool, device=device)


def _size(bundle: _LoRABundle) -> int:
    return (bundle.layout or _need_layout()).size


# --------------------------------------------------------------------------------- ffa_lora
@ALGORITHMS.register("ffa_lora")
class FFALoRA(_LoRABundle):
    """FFA-LoRA: A random, shared and frozen; only B trained, sent and averaged (Sun et al. 2024)."""

    summary = "FFA-LoRA: A frozen at its shared random init; clients train and send B only"
    references = ("Sun, Li, Zeng, Su & Zhang, Improving LoRA in Privacy-preserving Federated Learning, ICLR 2024 (arXiv 2403.12313)",)

    def client_plan(self, task: ClientTask, layout: LoRALayout) -> ClientPlan:
        return ClientPlan(task.global_params, layout.mask("B", task.global_params.device), frozenset("B"))

    def sent_mask(self, client_id: int, rnd: int, device: torch.device | str) -> Tensor:
        return (self.layout or _need_layout()).mask("B", device)

    def server_step(self, global_params: Tensor, aggregate: Tensor) -> Tensor:
        keep_b = (self.layout or _need_layout()).mask("B", global_params.device)
        return super().server_step(global_params, torch.where(keep_b, aggregate, torch.zeros_like(aggregate)))


# --------------------------------------------------------------------------------- fedsvd_lora
class FedSVDParams(LoRATrainParams):
    svd_period: NonNegativeInt = Field(1, description="re-factorise B A by SVD every this many rounds (0: never, i.e. FFA-LoRA)")
    svd_warmup: NonNegativeInt = Field(0, description="no re-factorisation in the first this many rounds")


def refactorise(layout: LoRALayout, flat: Tensor) -> Tensor:
    """Every layer's ``(B, A)`` replaced by ``(U_r S_r, V_r^T)`` from the thin SVD of ``B A``
    (computed in float64): the product is kept and ``A``'s rows become orthonormal."""
    out = flat.clone()
    for s in layout.slots:
        a, b = layout.A(flat, s).double(), layout.B(flat, s).double()
        u, sv, vh = torch.linalg.svd(b @ a, full_matrices=False)
        r = s.rank
        layout.A(out, s).copy_(vh[:r].to(flat.dtype))
        layout.B(out, s).copy_((u[:, :r] * sv[:r]).to(flat.dtype))
    return out


@ALGORITHMS.register("fedsvd_lora")
class FedSVDLoRA(FFALoRA):
    """FedSVD: FFA-LoRA clients; the server re-factorises B A by SVD (A <- V_r^T, B <- U_r S_r)
    every ``svd_period`` rounds after ``svd_warmup`` (Lee et al. 2025)."""

    summary = "FedSVD: FFA-style clients; the server re-factorises B A by SVD so A stays orthonormal"
    references = ("Lee et al., FedSVD: Adaptive Orthogonalization for Private Federated Learning with LoRA, arXiv 2505.12805 "
                  "(code: github.com/seanie12/fed-svd)",)
    Params = FedSVDParams

    def server_step(self, global_params: Tensor, aggregate: Tensor) -> Tensor:
        new = super().server_step(global_params, aggregate)
        t, p = self.rounds_done, self.params
        if p.svd_period and t % p.svd_period == 0 and t > p.svd_warmup:
            new = refactorise(self.layout or _need_layout(), new)
        return new


# --------------------------------------------------------------------------------- fedrand
class FedRandParams(LoRATrainParams):
    rho: float = Field(0.5, description="probability that a client takes (and sends back) a layer's A; else its B")
    seed: NonNegativeInt = Field(0, description="seed of the per-client, per-round factor draws (known to the server)")

    @field_validator("rho")
    @classmethod
    def _rho(cls, rho: float) -> float:
        if not 0.0 < rho < 1.0:
            raise ValueError("must be in (0, 1) (0 or 1 would make one factor never private)")
        return rho


@dataclass(frozen=True)
class FedRandState:
    """A FedRand client's cache: its factors after its last round (the private halves come from it)."""

    local: Tensor


@ALGORITHMS.register("fedrand")
class FedRand(_LoRABundle):
    """FedRand: per layer a client takes A (probability rho) or B from the server, keeps the other
    private, trains both, sends back the taken one; the server averages each factor over its
    senders (Park et al. 2025)."""

    summary = "FedRand: clients send back one randomly chosen LoRA factor per layer, keep the other private"
    references = ("Park, Lee, Kim & Hwang, FedRand: Enhancing Privacy in Federated Learning with Randomized LoRA "
                  "Subparameter Updates, arXiv 2503.07216",)
    Params = FedRandParams

    def takes_a(self, client_id: int, rnd: int) -> Tensor:
        """(layers,) bool: per adapted layer, whether the client takes A (else B) this round."""
        layers = len((self.layout or _need_layout()).slots)
        return torch.rand(layers, generator=torch_gen(self.params.seed, "fedrand", client_id, rnd)) < self.params.rho

    def sent_mask(self, client_id: int, rnd: int, device: torch.device | str) -> Tensor:
        layout = self.layout or _need_layout()
        mask = torch.zeros(layout.size, dtype=torch.bool)
        for slot, a in zip(layout.slots, self.takes_a(client_id, rnd).tolist()):
            start, size = (slot.a_start, slot.a_size) if a else (slot.b_start, slot.b_size)
            mask[start : start + size] = True
        return mask.to(device)

    def client_plan(self, task: ClientTask, layout: LoRALayout) -> ClientPlan:
        sent = self.sent_mask(task.client_id, task.round, task.global_params.device)
        state: FedRandState | None = task.state
        start = task.global_params if state is None else torch.where(sent, task.global_params, state.local)
        return ClientPlan(start, sent, frozenset("AB"))

    def assemble(self, previous: Tensor | None, global_sent: Tensor, upload: Tensor, client_id: int, rnd: int) -> Tensor:
        """The stale stitch: the factors sent this round, and for the private ones the client's
        most recent earlier upload of each (``previous``), or the server's own if never seen."""
        sent = self.sent_mask(client_id, rnd, global_sent.device)
        return torch.where(sent, global_sent + upload, global_sent if previous is None else previous)

    def client_state(self, local: Tensor, task: ClientTask) -> FedRandState:
        return FedRandState(local.clone())

    def aggregate(self, updates: Tensor, weights: Tensor | None = None, client_ids: Any = None) -> Tensor:
        """The ``aggregate`` hook (replaces the scenario's aggregator): per entry, the weighted mean of the deltas of the clients that sent it (0 where none did)."""
        if client_ids is None:
            raise ConfigError("fedrand averages each factor over the clients that sent it; it needs per-client "
                              "uploads, not a secure-aggregation view", "defenses")
        rnd = self.rounds_done
        sent = torch.stack([self.sent_mask(int(c), rnd, updates.device) for c in client_ids]).to(updates.dtype)
        w = (torch.ones(len(client_ids), device=updates.device) if weights is None else weights.to(updates.dtype))
        mass = w @ sent
        return torch.where(mass > 0, (w @ (sent * updates)) / mass.clamp_min(torch.finfo(updates.dtype).tiny), 0.0)
