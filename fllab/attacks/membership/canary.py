"""One-run privacy audit with canaries (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One
(1) Training Run", NeurIPS).

An auditor crafts ``m`` canaries, each included in one client's training data independently with
probability 1/2, lets the federation train once, then scores every canary by the final model's
loss (the paper's black-box auditor; :func:`.outsider.target_loss_scores`).  It guesses "member"
for the ``guess_members`` canaries with the highest score (lowest loss), "non-member" for the
``guess_nonmembers`` lowest, abstains on the rest, and turns the number of right guesses into an
epsilon lower bound that holds with probability ``1 - beta``
(:func:`fllab.privacy.audit.one_run_epsilon_from_scores`).  Under (epsilon, delta)-DP for the
canary's records the bound exceeds epsilon with probability at most ``beta``; a bound above the
accounted epsilon means the accounting (or the implementation it describes) is wrong.

Canaries are records the training would otherwise not contain, made to stand out:

* ``mislabeled``: records drawn from the client's own data (removed from it whether inserted or
  not, so that no correctly labelled copy competes), each given a uniformly drawn wrong label:
  only a model that trained on the canary fits it.
* ``noise``: uniform-noise inputs in [0, 1] with uniform labels: out of distribution, so nothing
  but the canary itself teaches the model its label.

The planting is the engine driver's job (:class:`fllab.training.drivers.CanaryAuditDriver`, the
trusted side that edits a client's data and keeps the inclusion truth); this class crafts the
canaries and scores them from the outsider's observation only.  The outcome is
``privacy.epsilon_lower_bound_one_run`` in ``summary.json``, beside the accounted
``privacy.epsilon``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import Tensor

from ...registry import ATTACKS, Params
from ...types import ModelObservation, TensorData
from .outsider import ANY_UPDATE, target_loss_scores


class CanaryAuditParams(Params):
    canaries: PositiveInt = Field(100, ge=2, description="m: canaries crafted, each inserted with probability 1/2")
    kind: Literal["mislabeled", "noise"] = Field(
        "mislabeled", description="mislabeled: the client's own records with a wrong label; noise: uniform-noise inputs"
    )
    client: NonNegativeInt = Field(0, description="the client whose training data receives the inserted canaries")
    guess_members: NonNegativeInt = Field(10, description="k+: canaries with the lowest loss guessed to be members")
    guess_nonmembers: NonNegativeInt = Field(10, description="k-: canaries with the highest loss guessed to be non-members")
    beta: float = Field(0.05, gt=0.0, lt=1.0, description="the bound holds with probability 1 - beta")

    @model_validator(mode="after")
    def _guesses_fit(self) -> "CanaryAuditParams":
        if self.guess_members + self.guess_nonmembers > self.canaries:
            raise ValueError(
                f"guess_members + guess_nonmembers = {self.guess_members + self.guess_nonmembers} exceeds canaries = {self.canaries}"
            )
        if self.guess_members + self.guess_nonmembers == 0:
            raise ValueError("guess_members + guess_nonmembers must be at least 1")
        return self


@ATTACKS.register("canary_audit")
class CanaryAudit:
    """One-run privacy audit (Steinke, Nasr & Jagielski 2023): m canaries, each inserted into one
    client's training data with probability 1/2; after training the k+ canaries with the lowest
    final-model loss are guessed inserted and the k- with the highest guessed left out, and the
    number of right guesses gives an epsilon lower bound holding with probability 1 - beta."""

    family = "audit"
    summary = "one-run privacy audit: canaries in one client's data, loss guesses on the final model -> epsilon lower bound"
    threat_model = (
        "auditor: inserts a random half of its canaries into one client's training data before training, then "
        "queries the final model's loss on every canary (black box)"
    )
    references = ("Steinke, Nasr & Jagielski 2023, Privacy Auditing with One (1) Training Run (NeurIPS)",)
    needs = ANY_UPDATE
    Params = CanaryAuditParams

    def __init__(self, params: CanaryAuditParams):
        self.params = params

    def craft_canaries(self, data: TensorData, num_classes: int, gen: torch.Generator) -> tuple[TensorData, Tensor]:
        """``canaries`` canaries for a client holding ``data`` (on the CPU), and the indices of the
        records of ``data`` they consume (which must leave the client's data): ``mislabeled`` takes
        a random choice of the client's records and relabels them; ``noise`` consumes none."""
        m = self.params.canaries
        if self.params.kind == "mislabeled":
            if m > len(data):
                raise ValueError(f"{m} mislabeled canaries need as many records; the client holds {len(data)}")
            taken = torch.randperm(len(data), generator=gen)[:m]
            shift = torch.randint(1, num_classes, (m,), generator=gen)
            return TensorData(data.x[taken].clone(), (data.y[taken] + shift) % num_classes), taken
        x = torch.rand((m, *data.x.shape[1:]), generator=gen, dtype=data.x.dtype)
        return TensorData(x, torch.randint(0, num_classes, (m,), generator=gen)), torch.zeros(0, dtype=torch.long)

    def score_canaries(self, obs: ModelObservation, canaries: TensorData) -> Tensor:
        """Negated loss of the final model on each canary (higher = more likely inserted)."""
        return target_loss_scores(obs, canaries)
