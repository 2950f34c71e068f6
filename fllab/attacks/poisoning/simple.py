"""Knowledge-free poisoning baselines: label flipping, sign flipping and Gaussian noise.

These need nothing but the malicious clients' own data/updates ("own" knowledge)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveFloat

from ...registry import ATTACKS
from ...types import PoisonObservation, TensorData
from ..base import PoisoningParams

ALL_UPDATES = frozenset({"gradient", "delta"})


class LabelFlipParams(PoisoningParams):
    mode: Literal["reverse", "random", "targeted"] = Field(
        "reverse", description="reverse: y -> C-1-y; random: uniform other label; targeted: source -> target"
    )
    source: int = Field(0, ge=0, description="targeted mode: class whose examples are relabelled")
    target: int = Field(1, ge=0, description="targeted mode: label they receive")


@ATTACKS.register("label_flip")
class LabelFlip:
    """Malicious clients train honestly on relabelled data (Tolpegin et al., ESORICS 2020)."""

    family = "poisoning"
    summary = "data poisoning: malicious clients train on flipped labels"
    threat_model = "malicious clients; own data only; follow the protocol on poisoned data"
    references = ("Tolpegin et al., Data Poisoning Attacks Against Federated Learning Systems, ESORICS 2020",)
    needs = frozenset({"gradient", "delta", "ranking", "hypernetwork"})
    Params = LabelFlipParams

    def __init__(self, params: LabelFlipParams):
        self.params = params

    def poison_data(self, data: TensorData, gen: torch.Generator, num_classes: int) -> TensorData:
        y = data.y.clone()
        p = self.params
        if p.mode == "reverse":
            y = num_classes - 1 - y
        elif p.mode == "random":
            shift = torch.randint(1, num_classes, y.shape, generator=gen)
            y = (y + shift) % num_classes
        else:
            y[data.y == p.source] = p.target
        return TensorData(data.x, y)


class SignFlipParams(PoisoningParams):
    scale: PositiveFloat = Field(1.0, description="the upload is -scale times the honest update")


@ATTACKS.register("sign_flip")
class SignFlip:
    """Each malicious client sends its honest update negated and scaled (Allen-Zhu et al. 2020;
    a standard Byzantine baseline in Karimireddy et al. 2021)."""

    family = "poisoning"
    summary = "model poisoning: send -scale x the honest update"
    threat_model = "malicious clients; own data only"
    references = ("Allen-Zhu et al., Byzantine-Resilient Non-Convex Stochastic Gradient Descent, ICLR 2021",)
    needs = ALL_UPDATES
    Params = SignFlipParams

    def __init__(self, params: SignFlipParams):
        self.params = params

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        return -self.params.scale * obs.own_updates


class NoiseParams(PoisoningParams):
    std: PositiveFloat = Field(1.0, description="standard deviation of each coordinate")
    mean: float = 0.0


@ATTACKS.register("gaussian_noise")
class GaussianNoise:
    """Malicious clients send i.i.d. Gaussian vectors instead of updates (Blanchard et al. 2017)."""

    family = "poisoning"
    summary = "model poisoning: send N(mean, std^2) noise"
    threat_model = "malicious clients; no knowledge needed"
    references = ("Blanchard et al., Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent, NeurIPS 2017",)
    needs = ALL_UPDATES
    Params = NoiseParams

    def __init__(self, params: NoiseParams):
        self.params = params

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        gen = torch.Generator().manual_seed(obs.seed)
        noise = torch.randn(obs.own_updates.shape, generator=gen, dtype=obs.own_updates.dtype)
        return (self.params.mean + self.params.std * noise).to(obs.own_updates.device)
