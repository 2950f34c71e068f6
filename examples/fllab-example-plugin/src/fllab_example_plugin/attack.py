"""``random_direction``: malicious clients replace their update with a random direction whose
norm is ``scale`` times the norm of their honest update.

Importing this module registers the attack; fllab imports it through the ``fllab.plugins``
entry point declared in this package's pyproject.toml, so after ``pip install`` it shows up in
``fllab list attack`` and can be named in any scenario.
"""
from __future__ import annotations

import torch
from pydantic import Field

from fllab.attacks.base import PoisoningParams
from fllab.registry import ATTACKS
from fllab.types import PoisonObservation


class RandomDirectionParams(PoisoningParams):
    scale: float = Field(10.0, gt=0, description="norm of the upload relative to the honest update's norm")


@ATTACKS.register("random_direction")
class RandomDirection:
    """Send a uniformly random direction, scaled relative to the honest update's norm."""

    family = "poisoning"
    summary = "example plugin: random direction, scale x the honest norm"
    threat_model = "malicious clients; own updates only"
    references = ()
    needs = frozenset({"gradient", "delta"})
    Params = RandomDirectionParams

    def __init__(self, params: RandomDirectionParams):
        self.params = params

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        gen = torch.Generator().manual_seed(obs.seed)
        direction = torch.randn(obs.own_updates.shape, generator=gen)
        direction = direction / direction.norm(dim=1, keepdim=True)
        norms = obs.own_updates.norm(dim=1, keepdim=True)
        return (self.params.scale * norms * direction).to(obs.own_updates)
