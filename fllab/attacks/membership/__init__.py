"""Membership inference: does a record belong to the training data?

Two positions (:attr:`fllab.attacks.base.MembershipParams.position`):

* ``outsider`` (:mod:`.outsider`): black-box queries to the final model plus population data.
  ``score(obs: ModelObservation, candidates: TensorData, seed) -> Tensor (n,)``.
  Attacks: ``loss``, ``population``, ``shadow``, ``lira``, ``rmia``.
* ``server`` (:mod:`.server`): one client's uploads.
  ``score(obs: UpdateObservation, candidates, seed)`` and
  ``score_rounds(observations, candidates, seed) -> Tensor (n,)``.
  Attacks: ``update_cosine``, ``update_loss``, ``update_gradnorm``.

The one-run canary audit (:mod:`.canary`, family ``audit``) plants canaries in one client's data
and scores them from the outsider position to bound epsilon from below.

Scores are float64 CPU tensors, higher = more likely a member; :mod:`fllab.metrics.membership`
turns them and the ground truth into AUC and TPR at low FPR.  Shadow and reference models are
trained as one vectorized ensemble (:mod:`fllab.training.stacked`).
"""
from .canary import CanaryAudit
from ...training.stacked import Ensemble, balanced_masks, ensemble_logits, init_ensemble, model_logits, train_ensemble
from .outsider import RMIA, LiRA, LossAttack, PopulationAttack, ShadowAttack, reference_outputs, target_loss_scores, tune_offline_a
from .server import UpdateCosine, UpdateGradNorm, UpdateLoss, client_weights, descent_direction, per_example_gradients

__all__ = [
    "CanaryAudit",
    "Ensemble",
    "LiRA",
    "LossAttack",
    "PopulationAttack",
    "RMIA",
    "ShadowAttack",
    "UpdateCosine",
    "UpdateGradNorm",
    "UpdateLoss",
    "balanced_masks",
    "client_weights",
    "descent_direction",
    "ensemble_logits",
    "init_ensemble",
    "model_logits",
    "per_example_gradients",
    "reference_outputs",
    "target_loss_scores",
    "train_ensemble",
    "tune_offline_a",
]
