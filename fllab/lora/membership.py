"""Membership inference on federated LoRA at the three positions the FFA-LoRA / FedSVD / FedRand
papers argue about, each its own threat model:

``aggregate``  the final global adapters: what any outsider with query access to the released
               model attacks (and what the server itself holds);
``assembled``  the target client's model as the honest-but-curious server can put it together
               from that client's uploads (:meth:`fllab.lora.algorithms._LoRABundle.assemble`):
               exact under FedAvg-LoRA, FFA-LoRA and FedSVD (what is not sent is the public ``A``);
               under FedRand the stale stitch of the factors sent in the client's last round and,
               for the private ones, the client's earlier uploads of them (the server's own where
               the client never sent that factor);
``oracle``     the client's true local model after its last round (not observable by anyone but
               the client): the upper bound of what any position could leak.

The score at every position comes from the same attack (``lira`` or ``rmia``, with its own
parameters) and the same reference models: the references are LoRA fine-tunes of the public
pretrained base (the model handle builds them; each starts from fresh adapters) trained on random
halves of ``candidates + population``; only the target's logits change between positions.
Candidates are ``members`` records of each target client's training data and as many held-out
records (the first half of the test split); the population is the second half
(:func:`fllab.training.drivers.membership.split_with`, its own seeded draw); a target client that
no round samples is refused before training (sampling is seeded).  The driver builds the assembled
model from the uploads the server saw (:class:`~fllab.training.drivers.RoundView`); the client's
true model and its records (the truth) are used only for the oracle position and the scoring.  Scores are pooled over the target
clients; the figures are ``membership.<position>.auc``, ``membership.<position>.tpr_at_0.01_fpr``
and ``membership.<position>.tpr_at_0.001_fpr``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeInt
from torch import Tensor

from ..attacks.membership.outsider import LiRA, RMIA, reference_outputs
from ..errors import ConfigError
from ..hooks import FAMILY_HOOKS, KindHooks
from ..models.victim import VictimModel
from ..registry import ATTACKS, Params
from ..seeding import derive_seed, numpy_gen
from ..training.drivers.membership import check_targets, split_with
from ..training.drivers import DRIVERS, AttackOutcome, DriverContext, FinalState, MembershipDriver, RoundView, Truth
from ..training.stacked import model_logits
from ..types import ModelObservation, TensorData

Position = Literal["aggregate", "assembled", "oracle"]
POSITIONS: tuple[str, ...] = ("aggregate", "assembled", "oracle")

# The family's scoring is its inner lira / rmia attack's (checked when the attack is built), so it
# declares no hook of its own; its driver is :class:`LoRAMembershipDriver` (registered below).
FAMILY_HOOKS["lora_membership"] = KindHooks()


class LoRAMIAParams(Params):
    attack: dict[str, Any] = Field(default_factory=lambda: {"name": "lira"},
                                   description="the scoring attack, lira or rmia, with its parameters (reference models)")
    positions: list[Position] = Field(default_factory=lambda: list(POSITIONS), min_length=1,
                                      description="aggregate / assembled / oracle")
    members: int = Field(100, ge=2, description="member candidates per target client (and as many held-out records)")
    target_clients: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1,
                                                 description="clients whose records are attacked (scores pooled)")


@ATTACKS.register("lora_mia")
class LoRAMembership:
    """LiRA or RMIA against the aggregate adapters, the client model the server can assemble, and
    the true client model (oracle), on federated LoRA bundles."""

    summary = "membership inference on federated LoRA: aggregate, server-assembled client model, true client model"
    references = (
        "Carlini et al., Membership Inference Attacks From First Principles, IEEE S&P 2022",
        "Zarifzadeh, Liu, Cheng & Shokri, Low-Cost High-Power Membership Inference Attacks, ICML 2024",
        "Park, Lee, Kim & Hwang, FedRand, arXiv 2503.07216 (the assembled-client position)",
    )
    threat_model = ("aggregate: outsider queries to the released adapters; assembled: honest-but-curious server "
                    "holding one client's uploads; oracle: the client's own model (upper bound); all with a "
                    "population of same-distribution records and the public pretrained base")
    family = "lora_membership"
    needs = frozenset({"delta"})
    Params = LoRAMIAParams

    def __init__(self, params: LoRAMIAParams):
        self.params = params
        self.inner = ATTACKS.build(params.attack, "attacks.lora_mia.attack")
        if not isinstance(self.inner, (LiRA, RMIA)):
            raise ValueError(f"attack must be lira or rmia, got {self.inner.registry_name}")



class LoRAMembershipDriver(MembershipDriver):
    """Keeps, per target client, the model the server assembles from its uploads and its true
    local model, then scores all positions with one reference ensemble per client."""

    def __init__(self, attack: LoRAMembership, truth: Truth, ctx: DriverContext):
        self.attack, self.truth, self.ctx = attack, truth, ctx
        if not hasattr(ctx.algorithm, "assemble"):
            raise ConfigError("lora_mia needs a federated LoRA algorithm (fedavg_lora, ffa_lora, fedsvd_lora, fedrand)", "algorithm")
        check_targets(attack.params.target_clients, None, truth, ctx)  # before training: sampling is seeded
        self.assembled: dict[int, Tensor] = {}
        self.oracle: dict[int, Tensor] = {}

    def _split(self, pool: TensorData, purpose: object) -> tuple[TensorData, TensorData, Tensor]:
        """Its own candidates per target client (the draw of the figures in docs/results.md): its
        positions compare with each other on the same records, not with the membership family's."""
        return split_with(numpy_gen(self.ctx.root, "attack", self.attack.registry_name, "candidates", purpose),
                          pool, self.truth.test, self.attack.params.members)

    def on_round(self, view: RoundView) -> None:
        algo = self.ctx.algorithm
        targets = set(self.attack.params.target_clients)
        for upload in view.uploads:
            if len(upload.members) != 1:
                raise ConfigError("lora_mia's assembled position needs per-client uploads; drop the secure-aggregation view",
                                  self.ctx.path)
            (pos,) = upload.members
            cid = view.sampled[pos]
            if cid in targets:  # the server's view: what it sent and what it received
                self.assembled[cid] = algo.assemble(self.assembled.get(cid), view.global_params, upload.update, cid, view.round)
                self.oracle[cid] = view.results[pos].extras["lora.local"].clone()  # truth: the oracle position only

    def _position_scores(self, final: FinalState) -> dict[str, tuple[Tensor, Tensor]]:
        ctx, p, inner = self.ctx, self.attack.params, self.attack.inner
        online = inner.params.mode == "online"
        seed = derive_seed(ctx.root, "attack", self.attack.registry_name)
        scores: dict[str, list[Tensor]] = {pos: [] for pos in p.positions}
        labels: list[Tensor] = []
        global_params = final.global_params
        for cid in p.target_clients:
            if cid not in self.oracle:
                raise RuntimeError(f"lora_mia: client {cid} never took part; pick a sampled client")
            candidates, population, is_member = self._split(self.truth.records(cid), cid)
            aggregate = ModelObservation(ctx.model, global_params.clone(), population)
            out = reference_outputs(aggregate, candidates, inner.params, derive_seed(seed, cid), online=online)
            victim = VictimModel(ctx.model.build, global_params.device, global_params.dtype)
            params = {"aggregate": global_params, "assembled": self.assembled[cid], "oracle": self.oracle[cid]}
            for pos in p.positions:
                obs = replace(aggregate, params=params[pos].clone())
                at = replace(out, target_candidates=model_logits(victim, obs.params, candidates.x),
                             target_population=model_logits(victim, obs.params, population.x))
                scores[pos].append(inner._from_references(obs, candidates, at, online, derive_seed(seed, cid)).double().cpu())
            labels.append(is_member)
        is_member = torch.cat(labels)
        return {pos: (torch.cat(s), is_member) for pos, s in scores.items()}

    def finish(self, final: FinalState) -> AttackOutcome:
        from ..metrics.membership import membership_metrics
        from ..rundir import scores_csv

        metrics: dict[str, float] = {}
        table: list[dict[str, Any]] = []
        files: dict[str, bytes] = {}
        for pos, (scores, is_member) in self._position_scores(final).items():
            m = membership_metrics(scores, is_member)
            metrics.update({k.replace("membership.", f"membership.{pos}.", 1): v for k, v in m.items()})
            table.append({"position": pos, "attack": self.attack.inner.registry_name, "candidates": len(is_member),
                          **{k.split(".", 1)[1]: v for k, v in m.items()}})
            files[f"scores_{pos}.csv"] = scores_csv(scores, is_member)
        return AttackOutcome("membership", metrics, table, files)


DRIVERS["lora_membership"] = LoRAMembershipDriver
