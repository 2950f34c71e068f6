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
(:meth:`fllab.training.drivers.MembershipDriver._split`).  Scores are pooled over the target
clients; the figures are ``membership.<position>.auc``, ``membership.<position>.tpr_at_0.01_fpr``
and ``membership.<position>.tpr_at_0.001_fpr``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, NonNegativeInt
from torch import Tensor

from ..attacks.inversion.common import VictimModel
from ..attacks.membership.ensemble import model_logits
from ..attacks.membership.outsider import LiRA, RMIA, reference_outputs
from ..errors import ConfigError
from ..registry import ATTACKS, Params
from ..seeding import derive_seed
from ..training.drivers import DRIVERS, MembershipDriver, RoundView, client_records
from ..types import ModelObservation

if TYPE_CHECKING:
    from ..training.engine import AttackOutcome, Engine

Position = Literal["aggregate", "assembled", "oracle"]
POSITIONS: tuple[str, ...] = ("aggregate", "assembled", "oracle")


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

    def __init__(self, attack: LoRAMembership, engine: "Engine"):
        self.attack, self.engine = attack, engine
        algo = engine.setup.algorithm
        if not hasattr(algo, "assemble"):
            raise ConfigError("lora_mia needs a federated LoRA algorithm (fedavg_lora, ffa_lora, fedsvd_lora, fedrand)", "algorithm")
        if any(hasattr(d, "server_view") for d in engine.setup.defenses):
            raise ConfigError("lora_mia's assembled position needs per-client uploads; drop the secure-aggregation view",
                              "attacks")
        self.assembled: dict[int, Tensor] = {}
        self.oracle: dict[int, Tensor] = {}

    def on_round(self, view: RoundView) -> None:
        algo = self.engine.setup.algorithm
        targets = set(self.attack.params.target_clients)
        for upload in view.uploads:
            (pos,) = upload.members
            cid = view.sampled[pos]
            if cid in targets:
                self.assembled[cid] = algo.assemble(self.assembled.get(cid), view.global_params, upload.update, cid, view.round)
                self.oracle[cid] = view.results[pos].extras["lora.local"].clone()

    def _position_scores(self) -> dict[str, tuple[Tensor, Tensor]]:
        eng, p, inner = self.engine, self.attack.params, self.attack.inner
        online = inner.params.mode == "online"
        seed = derive_seed(eng.root, "attack", self.attack.registry_name)
        scores: dict[str, list[Tensor]] = {pos: [] for pos in p.positions}
        labels: list[Tensor] = []
        for cid in p.target_clients:
            if cid not in self.oracle:
                raise RuntimeError(f"lora_mia: client {cid} never took part; pick a sampled client")
            candidates, population, is_member = self._split(client_records(eng, cid), cid)
            aggregate = ModelObservation(eng.model_handle, eng.global_params.clone(), population)
            out = reference_outputs(aggregate, candidates, inner.params, derive_seed(seed, cid), online=online)
            victim = VictimModel(eng.model_handle.build, eng.global_params.device, eng.global_params.dtype)
            params = {"aggregate": eng.global_params, "assembled": self.assembled[cid], "oracle": self.oracle[cid]}
            for pos in p.positions:
                obs = replace(aggregate, params=params[pos].clone())
                at = replace(out, target_candidates=model_logits(victim, obs.params, candidates.x),
                             target_population=model_logits(victim, obs.params, population.x))
                scores[pos].append(inner._from_references(obs, candidates, at, online, derive_seed(seed, cid)).double().cpu())
            labels.append(is_member)
        truth = torch.cat(labels)
        return {pos: (torch.cat(s), truth) for pos, s in scores.items()}

    def finish(self) -> "AttackOutcome":
        from ..metrics.membership import membership_metrics
        from ..report.rundir import scores_csv
        from ..training.engine import AttackOutcome

        metrics: dict[str, float] = {}
        table: list[dict[str, Any]] = []
        files: dict[str, bytes] = {}
        for pos, (scores, truth) in self._position_scores().items():
            m = membership_metrics(scores, truth)
            metrics.update({k.replace("membership.", f"membership.{pos}.", 1): v for k, v in m.items()})
            table.append({"position": pos, "attack": self.attack.inner.registry_name, "candidates": len(truth),
                          **{k.split(".", 1)[1]: v for k, v in m.items()}})
            files[f"scores_{pos}.csv"] = scores_csv(scores, truth)
        return AttackOutcome("membership", metrics, table, files)


DRIVERS["lora_membership"] = LoRAMembershipDriver
