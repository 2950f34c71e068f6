"""Surrogate Model Extension (SME; Zhu, Yao & Blaschko 2023).

A FedAvg client turns the global weights ``W0`` into ``WT`` by ``T`` local SGD steps on its
``n`` images and sends ``delta = WT - W0``.  Inverting ``delta`` as if it were one gradient at
``W0`` (Geiping et al. 2020, Sec. 5) ignores that the gradients were taken along the way from
``W0`` to ``WT``.  SME observes that this trajectory stays close to a two-dimensional plane and
that the update is low-rank, and inverts the update at a *surrogate* model on the line between
the two weight vectors,

    W_a = W0 + a (WT - W0),   a in [0, 1] learnable,

minimising over the candidate batch ``x`` and ``a`` jointly

    1 - < grad_W L(x, y; W_a) / |.| ,  (W0 - WT) / |W0 - WT| >  + lambda * TV(x)

(the cosine distance between the candidate's gradient at the surrogate and the normalised weight
difference, paper eq. 7).  The settings follow the authors' code
(JunyiZhu-AI/surrogate_model_extension, ``sme/Adversary/adversary.py`` and the
``femnist``/``cifar`` configs): ``a`` starts at 0.5 and is clamped to [0, 1]; two Adam
optimisers, step size 1 for the images (in mean/std-normalised units) and 0.001 for ``a``, both
divided by 10 at 3/8, 5/8 and 7/8 of 1,000 iterations; unsigned gradients; images projected onto
the data range after every step; labels known or recovered beforehand.

fllab's candidate lives in the data range itself, not in a normalised space.  Taking one data
standard deviation to be a quarter of the range (the convention of
:func:`~.common.initial_images`), the reference's step size 1 becomes 0.25 range units, and its
TV weight 0.01 on ``(mean|dx| + mean|dy|) / 2`` of normalised images becomes 0.02 on
:func:`~.common.total_variation` (``mean|dx| + mean|dy|``) of range-valued images.

With ``learn_alpha=False`` and ``alpha_init=0`` the surrogate is ``W0`` itself and SME is plain
gradient inversion with the (normalised) delta as the gradient proxy.

K targets (and R restarts each) are one ``vmap``-ed computation; Adam is elementwise, so each
target follows the path it would follow alone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor

from ...registry import ATTACKS
from ...types import UpdateObservation
from ..base import AdamInversionParams
from .common import AdamInversion, InversionResult, Problem, cosine_distance, labels_for, stacked_updates, total_variation


def sme_objective(problem: Problem, tv_weight: float):
    """The per-target objective ``(x, alpha, direction, y, params) -> (total, (match, figures))``
    with ``direction = W0 - WT`` (flat) and ``params = W0``: the surrogate is
    ``W0 - alpha * direction``, built per parameter tensor so that the gradient with respect to
    ``alpha`` is ``-sum_i <dL/dW_i, direction_i>`` with no flat scatter."""
    victim = problem.victim
    names = [name for name, _ in victim.shapes]

    def objective(x: Tensor, alpha: Tensor, direction: Tensor, y: Tensor, params: Tensor):
        d = victim.split(direction)
        surrogate = {n: w - alpha * di for n, w, di in zip(names, victim.split(params), d)}
        match = cosine_distance(victim.gradient(surrogate, x, y), d)
        tv = total_variation(x)
        return match + tv_weight * tv, (match, {"match": match, "tv": tv, "alpha": alpha})

    return objective


@ATTACKS.register("sme")
class SurrogateModelExtension(AdamInversion):
    """SME: invert a FedAvg weight update at a learnable surrogate model on the line between the
    sent and the returned weights (Zhu, Yao & Blaschko 2023)."""

    summary = "SME: gradient inversion of a FedAvg delta at a learnable surrogate W0 + a (WT - W0), cosine + TV"
    references = (
        "Zhu, Yao & Blaschko 2023, Surrogate Model Extension (SME): A Fast and Accurate Weight Update Attack "
        "on Federated Learning (ICML)",
        "Geiping, Bauermeister, Droege & Moeller 2020, Inverting Gradients - How easy is it to break "
        "privacy in federated learning? (NeurIPS)",
    )
    threat_model = (
        "honest-but-curious server: one client's FedAvg weight delta and the global weights it sent (so the "
        "returned weights too), the public model; labels known, or recovered from the delta scaled to an averaged "
        "gradient (the only use of the public lr and step count); the batch order is not needed"
    )
    family = "inversion"
    needs = frozenset({"delta"})

    class Params(AdamInversionParams):
        iterations: PositiveInt = Field(1000, description="Adam steps per restart")
        lr: PositiveFloat = Field(0.25, description="Adam step size of the images (in data-range units)")
        tv_weight: NonNegativeFloat = Field(0.02, description="weight of the total-variation prior")
        signed: bool = Field(False, description="step on the sign of the gradients")
        alpha_init: float = Field(0.5, ge=0.0, le=1.0, description="starting position of the surrogate on W0 -> WT")
        learn_alpha: bool = Field(True, description="optimise the surrogate's position jointly with the images")
        alpha_lr: PositiveFloat = Field(0.001, description="Adam step size of the surrogate's position")

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        """The history holds the loss curves and ``alpha``, the surrogate's position at every
        iteration."""
        p = self.params
        y = labels_for(problem, labels, num_images)
        directions = -stacked_updates(problem, observations)
        k, r, ref = problem.num_targets, p.restarts, problem.gradients
        objective = sme_objective(problem, p.tv_weight)
        fixed, dims = (directions, y, problem.params), (0, 0, problem.params_in_dim)
        if p.learn_alpha:  # a searched unknown, one per row
            alpha = torch.full((k * r,), p.alpha_init, device=ref.device, dtype=ref.dtype)
            return self.search(problem, y, seeds, objective, fixed, dims, [(alpha, p.alpha_lr, p.signed, (0.0, 1.0))])
        alpha = torch.full((k,), p.alpha_init, device=ref.device, dtype=ref.dtype)  # a fixed input per target
        return self.search(problem, y, seeds, objective, (alpha, *fixed), (0, *dims))
