"""Inverting Gradients (Geiping, Bauermeister, Droege & Moeller 2020).

Minimise over a candidate batch x in the data range

    1 - cos(grad_w L(x, y), g_observed) + alpha_TV * TV(x)

with Adam on the *signed* gradient, the step size dropped tenfold at 3/8, 5/8 and 7/8 of the
iterations, and a projection onto the data range after each step ("boxed"); of several restarts,
keep the one whose gradient matches best.  The reference settings are those of inversefed's
``reconstruct_image.py`` (``optim="ours"``) and breaching's ``attack=invertinggradients`` (cosine
similarity over all parameters, signed Adam, step-lr schedule, boxed, anisotropic TV).  Unlike
both, fllab's images are not mean/std normalised: the candidate lives in the data range itself,
and the step size (0.05 range units, twice the references' 0.1 normalised units for runs a
fraction as long) is discussed at :class:`~fllab.attacks.base.AdamInversionParams`.

Against a HyperFL upload (a hypernetwork change) the attack inverts through the public model,
whose stand-in client state takes the place of the unknown private embedding and head; the
structure-aware attack is :mod:`.hyperfl`.

K targets (and R restarts each) are solved as one ``vmap``-ed computation; Adam is elementwise,
so each target follows exactly the path it would follow alone.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ...registry import ATTACKS
from ...types import UpdateObservation
from ..base import AdamInversionParams
from .common import AdamInversion, InversionResult, Problem, labels_for, total_variation


def ig_objective(problem: Problem, tv_weight: float):
    """The per-target objective ``(x, target, y, params) -> (total, (match, {"match", "tv"}))``:
    the gradient cosine (:meth:`~fllab.models.victim.VictimModel.cosine_distance`, in closed form
    through a network that has one, e.g. HyperFL's) plus the TV prior."""

    def objective(x: Tensor, target: Tensor, y: Tensor, params: Tensor):
        match = problem.victim.cosine_distance(params, x, y, target)
        tv = total_variation(x)
        return match + tv_weight * tv, (match, {"match": match, "tv": tv})

    return objective


@ATTACKS.register("inverting_gradients")
class InvertingGradients(AdamInversion):
    """Gradient inversion by cosine-similarity matching with a TV prior (Geiping et al. 2020)."""

    summary = "Inverting Gradients: cosine gradient matching + TV, signed Adam, boxed, restarts"
    references = (
        "Geiping, Bauermeister, Droege & Moeller 2020, Inverting Gradients - How easy is it to break "
        "privacy in federated learning? (NeurIPS)",
        "Zhao, Mopuri & Bilen 2020, iDLG: Improved Deep Leakage from Gradients (arXiv:2001.02610)",
        "Wainakh, Ventola, Muessig, Keim, Cordero, Zimmer, Grube, Kersting & Muehlhaeuser 2022, User-Level "
        "Label Leakage from Gradients in Federated Learning (PoPETs)",
        "Geng, Mou, Li, Li, Beyan, Decker & Rong 2021, Towards General Deep Leakage in Federated Learning "
        "(arXiv:2110.09074)",
    )
    threat_model = (
        "honest-but-curious server: one client's update (gradient, or a FedAvg delta / HyperFL hypernetwork "
        "update as an averaged-gradient proxy), the global weights it sent, the public model and "
        "hyper-parameters; against HyperFL the private embedding and head are unknown and the public model's "
        "reference client state stands in for them (labels must then be known)"
    )
    family = "inversion"
    needs = frozenset({"gradient", "delta", "hypernetwork"})

    Params = AdamInversionParams

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        y = labels_for(problem, labels, num_images)
        objective = ig_objective(problem, self.params.tv_weight)
        return self.search(
            problem, y, seeds, objective, (problem.gradients, y, problem.params), (0, 0, problem.params_in_dim)
        )
