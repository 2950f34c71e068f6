"""Attack families and the position each one acts from (DESIGN.md "Three attack families").

Every attack is a registered class with ``family`` and ``threat_model`` attributes, a typed
``Params`` deriving from its family's base params below (which hold the engine-level knobs: who
attacks, when), and family-specific hooks:

* poisoning -- malicious clients.  Optional ``poison_data(data, gen) -> TensorData`` (data
  poisoning, applied once to each malicious client's local data), optional
  ``craft_uploads(obs: PoisonObservation) -> Tensor (m, d)`` (model poisoning: replaces the
  malicious clients' uploads), optional ``score_final_model(model, test) -> dict`` (e.g. backdoor
  success rate).  :mod:`fllab.hooks` lists every family's hooks, checked at registration.
* inversion -- curious server.  ``reconstruct(obs: UpdateObservation, ...)`` on chosen uploads;
  the attacks that search the images with Inverting Gradients' optimiser share
  :class:`AdamInversionParams`.
* membership -- server (per-client updates) or outsider (final model).

``needs`` is the set of :class:`fllab.types.UpdateKind` values the attack can work with; the
scenario is refused before training when the algorithm sends something else.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ..registry import Params


class PoisoningParams(Params):
    fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of all clients that are malicious")
    start_round: NonNegativeInt = Field(0, description="first round in which the malicious clients act")


class InversionParams(Params):
    round: NonNegativeInt = Field(0, description="round whose upload is attacked")
    targets: int = Field(1, ge=1, description="how many sampled (honest) uploads to attack, reconstructed as one batch")
    labels: Literal["recovered", "known"] = Field(
        "recovered", description="recovered from the update, or known to the attacker (a stronger threat model)"
    )
    lpips: bool = Field(True, description="score reconstructions with LPIPS (needs the offline AlexNet trunk)")


Init = Literal["randn", "rand"]


class AdamInversionParams(InversionParams):
    """The optimiser of Inverting Gradients (Geiping, Bauermeister, Droege & Moeller 2020, Sec. 4;
    inversefed ``optim="ours"``, breaching ``attack=invertinggradients``), shared by the attacks
    that search the candidate images with it: Adam, optionally on the sign of the gradient, step
    size dropped tenfold at 3/8, 5/8 and 7/8 of the run, projection onto the data range, a TV
    prior, independent restarts of which the best gradient match is kept.  Attacks override the
    defaults their own reference uses.

    The references optimise mean/std-normalised images, fllab's candidates live in the data range;
    with one standard deviation taken as a quarter of the range (the convention of
    :func:`~fllab.attacks.inversion.common.initial_images`), their step size 0.1 is 0.025 here.
    That step is made for their 4,000 (inversefed) to 24,000 (breaching) iterations; over the
    2,000 here it leaves some images stuck; 0.05 measured 29.99 dB on the 20 CIFAR-10 samples
    against 29.31 dB at 0.025 (CPU) and 29.87 dB at 0.1 (H100; benchmarks/results/ig_step_size.md).  Short
    runs (a few hundred steps) do better with 0.1.
    """

    iterations: PositiveInt = Field(2000, description="Adam steps per restart")
    lr: PositiveFloat = Field(
        0.05, description="Adam step size of the images in data-range units (0.2 in units of the data's standard deviation)"
    )
    tv_weight: NonNegativeFloat = Field(0.01, description="weight of the total-variation prior")
    signed: bool = Field(True, description="step on the sign of the gradient")
    boxed: bool = Field(True, description="project the images onto the data range after every step")
    lr_decay: bool = Field(True, description="divide the step sizes by 10 at 3/8, 5/8 and 7/8 of the run")
    restarts: PositiveInt = Field(1, description="independent starts; the best match is kept")
    init: Init = Field("randn", description="starting images: centred normal or uniform")


class MembershipParams(Params):
    position: Literal["outsider", "server"] = Field("outsider", description="final-model queries or per-client updates")
    members: int = Field(250, ge=2, description="member candidates scored (and as many non-members from held-out data)")
    target_clients: list[NonNegativeInt] = Field(
        [0], min_length=1, description="server position: clients whose uploads are scored (scores pooled over them)"
    )
    rounds: list[NonNegativeInt] | None = Field(
        None, description="server position: rounds to score (null = every round a target client is sampled)"
    )
