"""Aggregator-tailored model poisoning with full knowledge: Fang et al.'s attacks on Krum and on
trimmed mean / median, and a defense-aware scale search against any aggregator.

These attacks declare ``knowledge = "omniscient"``: the engine hands them the round's benign
updates (and the server's aggregator), and they refuse to run without them.  In a round whose
sampled clients are all malicious there is no benign update to deviate from; the malicious
clients then send their honest updates.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, get_args

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from ...registry import ATTACKS
from ...types import PoisonObservation
from ..base import PoisoningParams
from . import kernels
from .statistical import UPDATE_KINDS, replicate


def benign_of(obs: PoisonObservation, name: str) -> torch.Tensor:
    """The round's benign updates (possibly none); an omniscient attack cannot work without them."""
    if obs.benign_updates is None:
        raise ValueError(f"{name} needs the round's benign updates (omniscient knowledge)")
    return obs.benign_updates


class OmniscientAttack(ABC):
    """Shared frame of the attacks here: hold the params, hand :meth:`craft_from` the round's
    benign updates, and send the honest updates in a round without any (module docstring)."""

    family = "poisoning"
    needs = UPDATE_KINDS
    knowledge = "omniscient"
    registered: str

    def __init__(self, params: PoisoningParams):
        self.params = params

    def benign(self, obs: PoisonObservation) -> torch.Tensor:
        return benign_of(obs, self.registered)

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        benign = self.benign(obs)
        if benign.shape[0] == 0:
            return obs.own_updates.clone()
        return self.craft_from(benign, obs)

    @abstractmethod
    def craft_from(self, benign: torch.Tensor, obs: PoisonObservation) -> torch.Tensor:
        """The crafted (m, d) updates of the round's m malicious clients, given the benign ones."""


class FangKrumParams(PoisoningParams):
    f: NonNegativeInt | None = Field(None, description="the f of the server's Krum; null = the number of malicious clients in the round")
    threshold: PositiveFloat = Field(1e-5, description="lambda halves until Krum selects the crafted update or lambda falls below this")


@ATTACKS.register("fang_krum")
class FangKrum(OmniscientAttack):
    """Fang et al.'s full-knowledge attack on Krum (directed deviation): every malicious client
    sends ``-lambda * s``, ``s`` the sign of the benign mean, with the largest lambda (from the
    paper's upper bound, halved step by step) for which Krum selects it
    (:func:`.kernels.fang_krum`).  Works in update space, where the zero update is the paper's
    before-attack global model."""

    summary = "model poisoning: Fang et al.'s full-knowledge attack on Krum"
    threat_model = "colluding malicious clients; know every benign update of the round and that the server runs Krum"
    references = ("Fang, Cao, Jia and Gong, Local Model Poisoning Attacks to Byzantine-Robust Federated Learning, USENIX Security 2020",)
    Params = FangKrumParams
    registered = "fang_krum"

    def craft_from(self, benign: torch.Tensor, obs: PoisonObservation) -> torch.Tensor:
        update, _ = kernels.fang_krum(benign, obs.num_malicious, self.params.f, self.params.threshold)
        return replicate(update, obs.num_malicious)


class FangTrimParams(PoisoningParams):
    b: float = Field(2.0, gt=1.0, description="range factor: values are drawn up to b times beyond the benign extremes (2 in the paper)")


@ATTACKS.register("fang_trimmed_mean")
class FangTrimmedMean(OmniscientAttack):
    """Fang et al.'s full-knowledge attack on trimmed mean, which the paper also uses against the
    coordinate-wise median: per coordinate, each malicious client draws a value just beyond the
    benign extreme that lies against the benign direction (:func:`.kernels.fang_trim`)."""

    summary = "model poisoning: Fang et al.'s full-knowledge attack on trimmed mean and median"
    threat_model = "colluding malicious clients; know every benign update of the round"
    references = ("Fang, Cao, Jia and Gong, Local Model Poisoning Attacks to Byzantine-Robust Federated Learning, USENIX Security 2020",)
    Params = FangTrimParams
    registered = "fang_trimmed_mean"

    def craft_from(self, benign: torch.Tensor, obs: PoisonObservation) -> torch.Tensor:
        gen = torch.Generator().manual_seed(obs.seed)
        return kernels.fang_trim(benign, obs.num_malicious, self.params.b, gen)


class DefenseAwareParams(PoisoningParams):
    perturbation: Literal["best", "std", "unit_vec", "sign"] = Field(
        "best",
        description="direction p of the update mu - gamma * p: best (each of std, unit_vec and sign searched, the one that moves "
        "the aggregate furthest kept), std (coordinate std), unit_vec (mu/||mu||), sign (sign of mu)",
    )
    gamma_min: PositiveFloat = Field(1e-3, description="smallest scale tried")
    gamma_max: PositiveFloat = Field(1e3, description="largest scale tried")
    grid: PositiveInt = Field(17, ge=2, description="geometric grid of scales between gamma_min and gamma_max (one aggregator run each)")
    refine: NonNegativeInt = Field(8, description="golden-section steps around the best grid scale (one aggregator run each)")

    @model_validator(mode="after")
    def _ordered(self) -> "DefenseAwareParams":
        if self.gamma_min >= self.gamma_max:
            raise ValueError(f"gamma_min ({self.gamma_min}) must be below gamma_max ({self.gamma_max})")
        return self


@ATTACKS.register("defense_aware_scaling")
class DefenseAwareScaling(OmniscientAttack):
    """Defense-aware scaling: every malicious client sends ``mu - gamma * p`` (``mu`` the benign
    mean, ``p`` a perturbation as in Shejwalkar & Houmansadr's AGR-tailored attacks), with the
    direction and scale gamma that move the server's own aggregator output furthest from ``mu``.
    Each candidate gamma is scored by running (a copy of) the aggregator on the crafted and benign
    updates, unweighted; gamma is searched on a geometric grid refined by golden section
    (:func:`.kernels.scale_search`), so a round costs ``grid + refine + 2`` aggregator runs per
    direction tried (three with ``perturbation: best``, as no direction wins everywhere: ``std``
    is the strongest on the NDSS'21 heat-map setting, ``unit_vec`` on small digits runs)."""

    summary = "model poisoning: scale mu - gamma*p to maximise the server aggregator's deviation"
    threat_model = "colluding malicious clients; know every benign update of the round and the server's aggregation rule"
    references = (
        "Shejwalkar and Houmansadr, Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning, NDSS 2021",
        "Fang, Cao, Jia and Gong, Local Model Poisoning Attacks to Byzantine-Robust Federated Learning, USENIX Security 2020",
    )
    Params = DefenseAwareParams
    registered = "defense_aware_scaling"

    def search(self, obs: PoisonObservation) -> tuple[torch.Tensor, float, float]:
        """``(crafted update, gamma, aggregate shift)`` for this round (at least one benign update)."""
        benign = self.benign(obs)
        if obs.aggregator is None:
            raise ValueError("defense_aware_scaling needs the server's aggregator (omniscient knowledge)")
        p_ = self.params
        mu = benign.mean(dim=0)
        m = obs.num_malicious
        stack = torch.cat([benign[:1].expand(m, -1), benign])  # the first m rows take each candidate
        kinds = get_args(kernels.Perturbation) if p_.perturbation == "best" else (p_.perturbation,)
        best: tuple[torch.Tensor, float, float] | None = None
        for kind in kinds:
            p = kernels.perturbation(benign, mu, kind)

            def shift(gamma: float) -> float:
                stack[:m] = mu - gamma * p
                return kernels.aggregate_shift(obs.aggregator, stack, mu)

            gamma, value = kernels.scale_search(shift, p_.gamma_min, p_.gamma_max, p_.grid, p_.refine)
            if best is None or value > best[2]:
                best = (mu - gamma * p, gamma, value)
        return best

    def craft_from(self, benign: torch.Tensor, obs: PoisonObservation) -> torch.Tensor:
        update, _, _ = self.search(obs)
        return replicate(update, obs.num_malicious)
