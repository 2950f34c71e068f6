"""Inverting a multi-step FedAvg weight update by simulating the client's local training.

A FedAvg client starts from the global weights ``W0``, runs ``T`` local SGD steps on its ``n``
examples (mini-batches of ``b``, step size ``lr``, momentum, weight decay: all public, see
:class:`~fllab.types.PublicHyperParams`) and sends ``delta = WT - W0``.  The attacker runs the
same local training on a candidate batch ``x`` through a differentiable, unrolled SGD
(:func:`simulate_local_training`: ``torch.func.grad`` inside the objective, so the outer
gradient flows through every inner step) and moves ``x`` until the simulated delta points the
way the observed one does:

    1 - cos(delta_sim(x), delta) + alpha_TV * TV(x)

minimised with Inverting Gradients' optimiser (signed Adam, step 0.05 with tenfold drops at
3/8, 5/8, 7/8 of the run, projection onto the data range; of several restarts the best match is
kept).  This is the multi-step attack of Geiping, Bauermeister, Droege & Moeller 2020 (Sec. 5,
"Federated averaging": inversefed's ``FedAvgReconstructor`` / ``loss_steps``) and breaching's
multi-step objective (``local_hyperparams``); Dimitrov, Balunovic, Konstantinov & Vechev 2022
("Data Leakage in Federated Averaging", TMLR) analyse the same simulation and add epoch-order
priors this attack does not use.

**Batch order.**  The client draws a fresh random permutation every epoch; the attacker does not
know it.  Like both references, the simulation feeds the candidate batch in a fixed order: epoch
after epoch the same in-order split into mini-batches of ``b`` (the last one partial, as the
client's :func:`~fllab.training.local.batch_order` keeps it), so every simulated step has the
client's batch size and the simulated delta its number of steps.  Which candidate images share a
mini-batch is therefore fixed; since the candidates are free, the attack only loses what the
changing composition of the real batches (and label order, with recovered labels: they come
sorted) adds.

All K targets of one architecture and one public recipe are solved as one ``vmap``-ed
computation; Adam is elementwise, so each target follows the path it would follow alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from ...registry import ATTACKS
from ...types import UpdateObservation
from ..base import AdamInversionParams
from .common import (
    AdamInversion,
    InversionResult,
    Problem,
    VictimModel,
    cosine_distance,
    labels_for,
    stacked_updates,
    total_variation,
)


@dataclass(frozen=True)
class LocalTraining:
    """The client's local SGD recipe, as the protocol makes it public."""

    lr: float
    batch_size: int
    steps: int
    momentum: float = 0.0
    weight_decay: float = 0.0

    @classmethod
    def of(cls, attack: str, observations: Sequence[UpdateObservation]) -> "LocalTraining":
        """The recipe every observation shares (one simulation is ``vmap``-ed over all targets)."""
        recipes = {
            cls(float(o.hyper.lr), int(o.hyper.batch_size), int(o.hyper.local_steps), float(o.hyper.momentum),
                float(o.hyper.weight_decay))
            for o in observations
        }
        if len(recipes) != 1:
            raise ValueError(f"{attack}: observations reconstructed together must share the public local-training "
                             f"hyper-parameters (lr, batch size, steps, momentum, weight decay)")
        return recipes.pop()

    def batches(self, n: int) -> list[slice]:
        """Index ranges of the ``steps`` simulated mini-batches over ``n`` candidates: epochs of the
        same in-order split into batches of ``batch_size``, the last partial batch kept."""
        b = min(self.batch_size, n)
        epoch = [slice(i, min(i + b, n)) for i in range(0, n, b)]
        return (epoch * math.ceil(self.steps / len(epoch)))[: self.steps]


def simulate_local_training(
    victim: VictimModel, params: Tensor, x: Tensor, y: Tensor, training: LocalTraining
) -> list[Tensor]:
    """The weight update ``WT - W0`` (per parameter tensor) of local SGD from the flat weights
    ``params`` on the batch ``(x, y)``, differentiable in ``x`` (and ``params``).

    Each step is ``torch.optim.SGD``'s rule (dampening 0, no Nesterov), as the client's
    :func:`~fllab.training.local.sgd_train` runs it: ``g = grad + wd * w``; ``buf = g`` at the first
    step, then ``buf = momentum * buf + g``; ``w = w - lr * buf``.
    """
    w0 = victim.split(params)
    names = [name for name, _ in victim.shapes]
    w, buf = list(w0), None
    for sl in training.batches(x.shape[0]):
        g = victim.gradient(dict(zip(names, w)), x[sl], y[sl])
        if training.weight_decay:
            g = [gi + training.weight_decay * wi for gi, wi in zip(g, w)]
        if training.momentum:
            buf = g if buf is None else [training.momentum * bi + gi for bi, gi in zip(buf, g)]
            g = buf
        w = [wi - training.lr * gi for wi, gi in zip(w, g)]
    return [wt - wi for wt, wi in zip(w, w0)]


@ATTACKS.register("fedavg_inversion")
class FedAvgInversion(AdamInversion):
    """Multi-step FedAvg inversion: match the observed weight delta with the delta of a simulated,
    unrolled local training on the candidate images (Geiping et al. 2020, Sec. 5)."""

    summary = "FedAvg inversion: unrolled local SGD on the candidate, cosine delta matching + TV, signed Adam"
    references = (
        "Geiping, Bauermeister, Droege & Moeller 2020, Inverting Gradients - How easy is it to break "
        "privacy in federated learning? (NeurIPS), Sec. 5 'Federated averaging'",
        "Dimitrov, Balunovic, Konstantinov & Vechev 2022, Data Leakage in Federated Averaging (TMLR)",
    )
    threat_model = (
        "honest-but-curious server: one client's FedAvg weight delta, the global weights it sent, the public "
        "model and local-training hyper-parameters (lr, batch size, local steps, momentum, weight decay, "
        "number of examples); not the client's batch order"
    )
    family = "inversion"
    needs = frozenset({"delta"})

    Params = AdamInversionParams

    def objective(self, problem: Problem, training: LocalTraining):
        """The per-target objective ``(x, delta, y, params) -> (total, (match, {"match", "tv"}))``."""
        victim, tv_weight = problem.victim, self.params.tv_weight

        def objective(x: Tensor, delta: Tensor, y: Tensor, params: Tensor):
            simulated = simulate_local_training(victim, params, x, y, training)
            match = cosine_distance(simulated, victim.split(delta))
            tv = total_variation(x)
            return match + tv_weight * tv, (match, {"match": match, "tv": tv})

        return objective

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        """All K targets share one public recipe; unknown labels are recovered from the delta as an
        averaged-gradient proxy."""
        training = LocalTraining.of(self.registry_name, observations)
        examples = {int(o.hyper.num_examples) for o in observations}
        if examples != {num_images}:
            raise ValueError(f"{self.registry_name} simulates training on the client's whole local data: "
                             f"num_images {num_images}, the clients hold {sorted(examples)}")
        y = labels_for(problem, labels, num_images)
        deltas = stacked_updates(problem, observations)
        return self.search(
            problem, y, seeds, self.objective(problem, training), (deltas, y, problem.params), (0, 0, problem.params_in_dim)
        )
