"""Backdoor (targeted data) poisoning: a pixel-pattern trigger with model-replacement boosting
(Bagdasaryan et al. 2020) and the distributed backdoor attack DBA (Xie et al. 2020).

Each malicious client stamps a trigger on a fraction of its local images and relabels them to
the target class, then trains honestly on that data; optionally it boosts (scales) its update so
that it survives averaging.  The attack's ``score_final_model`` hook scores the final model with the
*full* trigger: ``poisoning.backdoor_success_rate`` is the fraction of triggered test images
whose true label is not the target that the model classifies as the target.

Triggers are boolean (H, W) masks set to ``value`` in every channel of an (N, C, H, W) image.
A ``position`` (row, col) is the trigger's top-left pixel; a negative coordinate counts from the
bottom / right edge, the trigger's last row / column landing there (``(-1, -1)``: the trigger
touches the bottom-right corner).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from ...errors import ConfigError
from ...registry import ATTACKS
from ...types import PoisonObservation, TensorData
from ..base import PoisoningParams

ALL_KINDS = frozenset({"gradient", "delta", "ranking", "hypernetwork"})
UPDATE_KINDS = frozenset({"gradient", "delta"})
METRIC = "poisoning.backdoor_success_rate"


# ------------------------------------------------------------------------------- kernels
def place(image_hw: tuple[int, int], size_hw: tuple[int, int], position: tuple[int, int]) -> tuple[int, int]:
    """Top-left pixel of a ``size_hw`` block at ``position`` (see the module docstring); raises
    ConfigError when the block does not fit in the image."""
    (h, w), (sh, sw), (r, c) = image_hw, size_hw, position
    top = r if r >= 0 else h + r - sh + 1
    left = c if c >= 0 else w + c - sw + 1
    if top < 0 or left < 0 or top + sh > h or left + sw > w:
        raise ConfigError(f"a {sh}x{sw} trigger at position {tuple(position)} does not fit in {h}x{w} images")
    return top, left


def block_mask(image_hw: tuple[int, int], top: int, left: int, size_hw: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(image_hw, dtype=torch.bool)
    mask[top : top + size_hw[0], left : left + size_hw[1]] = True
    return mask


def stamp(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """Copy of the images ``x`` (N, C, H, W) with the ``mask`` pixels set to ``value``."""
    return torch.where(mask.to(x.device), torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


def poison_fraction(data: TensorData, mask: torch.Tensor, value: float, target: int, fraction: float, gen: torch.Generator) -> TensorData:
    """Stamp the trigger on ``round(fraction * n)`` (at least one) randomly chosen examples and
    relabel them ``target``; the other examples stay clean."""
    n = len(data)
    k = min(n, max(1, round(fraction * n)))
    idx = torch.randperm(n, generator=gen)[:k].to(data.x.device)
    x, y = data.x.clone(), data.y.clone()
    x[idx] = stamp(x[idx], mask, value)
    y[idx] = target
    return TensorData(x, y)


@torch.no_grad()
def backdoor_success_rate(model: nn.Module, test: TensorData, mask: torch.Tensor, value: float, target: int, batch_size: int = 1024) -> float:
    """Fraction of the test images whose true label is not ``target`` that the model assigns to
    ``target`` once the trigger is stamped on them."""
    model.eval()
    keep = (test.y != target).nonzero().flatten()
    hits = 0
    for i in range(0, len(keep), batch_size):
        idx = keep[i : i + batch_size]
        hits += int((model(stamp(test.x[idx], mask, value)).argmax(dim=1) == target).sum())
    return hits / max(len(keep), 1)


def image_hw(data: TensorData) -> tuple[int, int]:
    if data.x.ndim != 4:
        raise ConfigError(f"backdoor triggers need image data (N, C, H, W); got features of shape {tuple(data.x.shape)}")
    return int(data.x.shape[2]), int(data.x.shape[3])


# ------------------------------------------------------------------------------- attacks
class BackdoorParams(PoisoningParams):
    target: int = Field(0, ge=0, description="label the triggered inputs should receive")
    poison_fraction: float = Field(0.3, gt=0.0, le=1.0, description="share of each malicious client's examples stamped and relabelled")
    value: float = Field(1.0, description="pixel value of the trigger (images are in [0, 1])")
    boost: PositiveFloat | Literal["auto"] = Field(
        1.0,
        description="model replacement: the upload is boost x the honest update; auto = n/m (the round's clients over its malicious "
        "clients: with equal weights, mean aggregation and a unit server step the malicious models replace the global one)",
    )


class Backdoor(ABC):
    """Shared body: ``poison_data`` stamps the next malicious client's trigger, ``craft_uploads`` boosts,
    ``score_final_model`` stamps the full trigger on the test set."""

    family = "poisoning"
    knowledge = "own"
    needs = ALL_KINDS

    def __init__(self, params: BackdoorParams):
        self.params = params
        if params.boost != 1.0:
            self.needs = UPDATE_KINDS  # scaling is defined for gradients and deltas only

    @abstractmethod
    def next_client_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        """Trigger of the next malicious client; the engine equips its malicious clients one
        after another (``poison_data`` once each, in a seeded order)."""

    @abstractmethod
    def full_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        """The trigger used at evaluation time."""

    def poison_data(self, data: TensorData, gen: torch.Generator, num_classes: int) -> TensorData:
        p = self.params
        if p.target >= num_classes:
            raise ConfigError(f"target {p.target} is not a class of this task; allowed 0..{num_classes - 1}")
        return poison_fraction(data, self.next_client_mask(image_hw(data)), p.value, p.target, p.poison_fraction, gen)

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        boost = obs.num_clients / obs.num_malicious if self.params.boost == "auto" else self.params.boost
        return boost * obs.own_updates

    def score_final_model(self, model: nn.Module, test: TensorData) -> dict[str, float]:
        p = self.params
        return {METRIC: backdoor_success_rate(model, test, self.full_mask(image_hw(test)), p.value, p.target)}


class PixelParams(BackdoorParams):
    size: PositiveInt = Field(3, description="side of the square trigger, in pixels")
    position: tuple[int, int] = Field((-1, -1), description="(row, col) of the trigger's top-left pixel; negative: from the bottom/right edge")


@ATTACKS.register("pixel_backdoor")
class PixelBackdoor(Backdoor):
    """Pixel-pattern backdoor with model replacement: every malicious client stamps the same
    square trigger on a share of its images, relabels them to the target, trains on the mix of
    clean and backdoored examples, and scales its update by ``boost`` (Bagdasaryan et al.'s
    gamma = n / eta, so that the malicious model survives averaging)."""

    summary = "backdoor: square pixel trigger -> target label, with model-replacement boosting"
    threat_model = "malicious clients; own data only; train on triggered data and may scale their update"
    references = (
        "Bagdasaryan, Veit, Hua, Estrin and Shmatikov, How To Backdoor Federated Learning, AISTATS 2020",
        "Gu, Dolan-Gavitt and Garg, BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain, 2017",
    )
    Params = PixelParams

    def full_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        size = (self.params.size, self.params.size)
        return block_mask(hw, *place(hw, size, self.params.position), size)

    def next_client_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        return self.full_mask(hw)


class DBAParams(BackdoorParams):
    parts: PositiveInt = Field(4, description="number of local triggers the global trigger is split into")
    part_shape: tuple[PositiveInt, PositiveInt] = Field((1, 4), description="(height, width) of each local trigger")
    gap: NonNegativeInt = Field(2, description="pixels between neighbouring local triggers")
    columns: PositiveInt = Field(2, description="local triggers per row of the global trigger's grid")
    position: tuple[int, int] = Field((0, 0), description="(row, col) of the global trigger's top-left pixel; negative: from the bottom/right edge")


@ATTACKS.register("dba")
class DBA(Backdoor):
    """Distributed backdoor attack: the global trigger is a grid of ``parts`` local triggers
    (by default four 1x4 bars, two per row, two pixels apart: the paper's MNIST layout).  The
    malicious clients take the local triggers in turn (client i embeds part i mod parts), each
    training only on its own part; the backdoor is evaluated with the full global trigger."""

    summary = "backdoor: distributed trigger, each malicious client embeds one local part (DBA)"
    threat_model = "malicious clients; own data only; each embeds its own part of a shared trigger, may scale its update"
    references = ("Xie, Huang, Chen and Li, DBA: Distributed Backdoor Attacks against Federated Learning, ICLR 2020",)
    Params = DBAParams

    def __init__(self, params: DBAParams):
        super().__init__(params)
        self.assigned = 0  # malicious clients equipped so far

    def part_masks(self, hw: tuple[int, int]) -> torch.Tensor:
        """(parts, H, W) boolean masks of the local triggers, in the order clients receive them."""
        p = self.params
        (ph, pw), cols = p.part_shape, min(p.columns, p.parts)
        rows = -(-p.parts // cols)
        extent = (rows * ph + (rows - 1) * p.gap, cols * pw + (cols - 1) * p.gap)
        top, left = place(hw, extent, p.position)
        return torch.stack([
            block_mask(hw, top + (i // cols) * (ph + p.gap), left + (i % cols) * (pw + p.gap), (ph, pw)) for i in range(p.parts)
        ])

    def full_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        return self.part_masks(hw).any(dim=0)

    def next_client_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        mask = self.part_masks(hw)[self.assigned % self.params.parts]
        self.assigned += 1
        return mask
