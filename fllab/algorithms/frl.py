"""Federated Rank Learning (FRL): clients train supermask scores over frozen random weights and
send only, per layer, the *ranking* of their edges; the server aggregates the rankings by a vote
(Mozaffari, Shejwalkar & Houmansadr, "Every Vote Counts: Ranking-Based Training of Federated
Learning to Resist Poisoning Attacks", USENIX Security 2023).

Followed line by line from the authors' code (github.com/SPIN-UMass/FRL: ``FL_train.FRL_train``,
``utils.FRL_Vote``, ``models/modules.MaskConv``):

1. The network is the scenario's model turned into a supermask network
   (:func:`fllab.algorithms.supermask.to_supermask`): frozen signed-Kaiming-constant weights from
   a fixed ``seed``, trainable scores, per layer the top ``k`` fraction of edges by ``|score|``.
2. Round r, client: load the global scores, train them for ``local_epochs`` passes over the local
   data with SGD (lr ``lr * lr_decay**r``, momentum, weight decay; cosine annealing over the local
   epochs, stepped once per epoch, as the reference's ``CosineAnnealingLR(T_max=local_epochs)``),
   then send each layer's ranking: the position of every edge when the layer's *raw* scores are
   sorted ascending (reference ``Find_rank``), as a flat ``(d,)`` float vector.
3. Server: every upload is read as the ranking it induces within each layer, the positions are
   summed over the round's clients (unweighted: every vote counts the same), and the sums are
   ranked (:func:`fllab.algorithms.ranking.vote`).  The new global scores give the edge with the
   j-th smallest vote the j-th smallest of the layer's score values (:func:`assign_by_rank`), so the
   values are the sorted initial scores forever; only their order is learned.  Clients start the
   next round from these scores.

Because the mask keeps the largest ``|score|``, the kept edges are the two *ends* of the global
ranking (most negative and most positive scores), exactly as in the reference code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from ..errors import ConfigError
from ..models.flat import flatten_params
from ..registry import ALGORITHMS, Params
from ..types import ClientResult, ClientTask, PublicHyperParams, UpdateKind
from ..training.local import batch_order, run_batches, sgd_train
from .ranking import MAX_LAYER, assign_by_rank, rank_within, vote
from .supermask import score_sizes, to_supermask


class FRLParams(Params):
    k: float = Field(0.5, gt=0.0, le=1.0, description="fraction of each layer's edges kept by the mask (reference `sparsity`)")
    local_epochs: PositiveInt = Field(2, description="passes over the local data per round (reference MNIST config: 2)")
    batch_size: PositiveInt = Field(8, description="local mini-batch size (reference: 8)")
    lr: PositiveFloat = Field(0.4, description="local SGD learning rate on the scores in round 0 (reference: 0.4)")
    lr_decay: float = Field(0.999, gt=0.0, le=1.0, description="round r trains with lr * lr_decay**r (reference `lrdc`)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    seed: NonNegativeInt = Field(0, description="seed of the frozen random weights, shared by every party")


@dataclass(frozen=True)
class SupermaskBuilder:
    """Model factory: the scenario's network turned into its supermask version (picklable when
    ``build`` is)."""

    build: Callable[[], nn.Module]
    k: float
    seed: int

    def __call__(self) -> nn.Module:
        return to_supermask(self.build(), self.k, self.seed)


class RankVote:
    """FRL's aggregator: ``(n, d)`` uploads -> ``(d,)`` global within-layer positions.

    Public protocol state, which omniscient attacks read from it: ``sizes`` (the per-layer
    segments of the flat vector, known once the network is built) and ``k`` (the mask density)."""

    def __init__(self, k: float):
        self.k = k
        self._sizes: tuple[int, ...] | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        if self._sizes is None:
            raise RuntimeError("the FRL vote needs the network's layer sizes: call FRL.wrap_model first")
        return self._sizes

    @sizes.setter
    def sizes(self, value: tuple[int, ...]) -> None:
        self._sizes = tuple(int(v) for v in value)

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, client_ids=None) -> torch.Tensor:
        return vote(updates, self.sizes).to(updates.dtype)


@ALGORITHMS.register("frl")
class FRL:
    """Federated Rank Learning: supermask scores trained locally, per-layer edge rankings sent,
    aggregated by a vote on rank positions; resists poisoning because every client's vote carries
    the same bounded mass."""

    summary = "Federated Rank Learning: clients send per-layer edge rankings of a supermask; server votes"
    references = (
        "Mozaffari, Shejwalkar & Houmansadr, Every Vote Counts: Ranking-Based Training of Federated Learning "
        "to Resist Poisoning Attacks, USENIX Security 2023 (code: github.com/SPIN-UMass/FRL)",
        "Ramanujan, Wortsman, Kembhavi, Farhadi & Rastegari, What's Hidden in a Randomly Weighted Neural "
        "Network?, CVPR 2020 (edge-popup, signed Kaiming constant)",
    )
    Params = FRLParams
    sends = UpdateKind.RANKING

    def __init__(self, params: FRLParams):
        self.params = params
        self.vote = RankVote(params.k)

    @property
    def aggregate(self) -> RankVote:
        """The vote on rank positions: replaces the scenario's aggregator (the ``aggregate`` hook)."""
        return self.vote

    # ---------------------------------------------------------------------------- network
    def wrap_model(self, build: Callable[[], nn.Module]) -> SupermaskBuilder:
        """Supermask version of the scenario's network; records its layer sizes for the vote."""
        builder = SupermaskBuilder(build, self.params.k, self.params.seed)
        with torch.random.fork_rng(devices=[]):  # probing the layout leaves the caller's RNG as it was
            try:
                sizes = score_sizes(builder())
            except ValueError as err:
                raise ConfigError(str(err), "task.model") from None
        if max(sizes) > MAX_LAYER:
            raise ConfigError(f"frl ranks at most {MAX_LAYER} edges per layer; the model has a layer of {max(sizes)}", "task.model")
        self.vote.sizes = sizes
        return builder

    # ---------------------------------------------------------------------------- client
    def _epoch_steps(self, num_examples: int) -> int:
        return math.ceil(num_examples / min(self.params.batch_size, num_examples))

    def public_hyper(self, num_examples: int) -> PublicHyperParams:
        p = self.params
        return PublicHyperParams(
            "frl", p.lr, min(p.batch_size, num_examples), p.local_epochs * self._epoch_steps(num_examples),
            float(p.local_epochs), num_examples, p.momentum, p.weight_decay,
        )

    def client_update(self, model: nn.Module, task: ClientTask, gen: torch.Generator, trainer=None) -> ClientResult:
        """Train the scores (model already holds the global scores), send the per-layer ranking."""
        if trainer is not None and trainer is not sgd_train:
            raise ConfigError(
                "frl trains supermask scores with its own local schedule; a client-training defense "
                "(e.g. DP-SGD) cannot wrap it", "defenses",
            )
        p, data = self.params, task.data
        n = len(data)
        per_epoch = self._epoch_steps(n)
        base_lr = p.lr * p.lr_decay**task.round
        scores = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.SGD(scores, lr=base_lr, momentum=p.momentum, weight_decay=p.weight_decay)
        batches = batch_order(n, p.batch_size, per_epoch * p.local_epochs, gen)

        def cosine(step: int, opt: torch.optim.Optimizer) -> None:
            if step % per_epoch == 0:  # CosineAnnealingLR(T_max=local_epochs), stepped after each epoch
                lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * (step // per_epoch) / p.local_epochs))
                for group in opt.param_groups:
                    group["lr"] = lr

        loss = run_batches(model, opt, data, batches, cosine)
        ranking = rank_within(flatten_params(model), score_sizes(model))
        return ClientResult(task.client_id, ranking.to(task.global_params.dtype), n, {"train_loss": loss})

    # ---------------------------------------------------------------------------- server
    def server_step(self, global_params: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """Global scores from the voted ranking: the layer's sorted score values in vote order."""
        return assign_by_rank(global_params, aggregate, self.vote.sizes)
