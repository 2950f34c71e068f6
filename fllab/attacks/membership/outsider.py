"""Membership inference from the outsider position: black-box queries to the final model.

Interface (what the engine driver calls)::

    scores = attack.score(obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor (n,)

``obs`` holds the public model handle, the final flat weights and a population: records from the
task's distribution that were not used in training.  ``candidates`` are the records to judge
(members and non-members mixed, labels included: the attacker knows the record it asks about).
The result is one float64 CPU score per candidate, higher meaning "more likely a member"; ground
truth never enters.  Population and candidates must be disjoint (the engine draws them from
disjoint pools).  Everything random (reference-model masks, initial weights, batches, the shadow
classifier) derives from ``seed``.

=============  ====================================================================================
``loss``       Yeom et al. 2018: the target model's loss on the record
``population`` Ye et al. 2022, attack P: the loss compared with the target's losses on population data
``shadow``     Shokri et al. 2017: shadow models on population data + a classifier on sorted softmax
``lira``       Carlini et al. 2022: Gaussian likelihood ratio of the logit-scaled confidence over
               reference models; online (IN and OUT), offline (OUT only), fixed or per-record variance
``rmia``       Zarifzadeh et al. 2024: Pr(x|theta)/Pr(x) compared with population records z
=============  ====================================================================================

The shadow / reference models of the last three are trained as one ensemble
(:func:`.ensemble.train_ensemble`) with the recipe in the attack's parameters, which should mimic
the target's training.  Offline variants train them on the population alone; online variants on
random halves of ``candidates + population``, so that every candidate is IN for half the models.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from ...metrics.membership import auc
from ...registry import ATTACKS
from ...seeding import derive_seed, torch_gen
from ...types import ModelObservation, TensorData, UpdateKind
from ..base import MembershipParams
from ...models.victim import VictimModel
from . import kernels
from ...training.stacked import balanced_masks, ensemble_logits, model_logits, train_ensemble

#: Outsider attacks work whatever the clients transmit.
ANY_UPDATE = frozenset(kind.value for kind in UpdateKind)

OUTSIDER_THREAT = (
    "outsider after training: black-box queries (logits) to the final model, a population of records from "
    "the same distribution that were not used in training, the public architecture"
)


class OutsiderParams(MembershipParams):
    position: Literal["outsider"] = Field("outsider", description="final-model queries (the only position of this attack)")


class ReferenceParams(OutsiderParams):
    """How the attacker trains its shadow / reference models (meant to mimic the target's recipe)."""

    num_models: PositiveInt = Field(16, description="reference (shadow) models, trained as one vectorized ensemble")
    epochs: PositiveFloat = Field(30.0, description="passes over each reference model's training subset")
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    pkeep: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of the pool each reference model trains on")


def _check(obs: ModelObservation, candidates: TensorData, attack: str) -> None:
    if len(candidates) == 0:
        raise ValueError(f"{attack}: no candidate record to score")
    if len(obs.population) == 0:
        raise ValueError(f"{attack}: the observation holds no population record")


def _target(obs: ModelObservation) -> VictimModel:
    model = VictimModel(obs.model.build, obs.params.device, obs.params.dtype)
    if model.num_params != obs.params.numel():
        raise ValueError(f"the model has {model.num_params} parameters, the observation {obs.params.numel()}")
    return model


def _on(data: TensorData, obs: ModelObservation) -> TensorData:
    return TensorData(data.x.to(device=obs.params.device, dtype=obs.params.dtype), data.y.to(obs.params.device))


@dataclass(frozen=True)
class ReferenceOutputs:
    """Logits of the target and K reference models on the candidates (n) and the population (m),
    with which references trained on which record."""

    target_candidates: Tensor  # (n, C)
    target_population: Tensor  # (m, C)
    ref_candidates: Tensor  # (K, n, C)
    ref_population: Tensor  # (K, m, C)
    in_candidates: Tensor  # (K, n) bool
    in_population: Tensor  # (K, m) bool


def reference_outputs(
    obs: ModelObservation, candidates: TensorData, p: ReferenceParams, seed: int, online: bool
) -> ReferenceOutputs:
    """Train the reference ensemble (on ``candidates + population`` when ``online``, else on the
    population alone) and query it and the target on both sets."""
    target = _target(obs)
    cand, pop = _on(candidates, obs), _on(obs.population, obs)
    pool_x = torch.cat([cand.x, pop.x]) if online else pop.x
    pool_y = torch.cat([cand.y, pop.y]) if online else pop.y
    masks = balanced_masks(p.num_models, int(pool_y.numel()), p.pkeep, torch_gen(seed, "membership", "masks"))
    ens = train_ensemble(
        obs.model.build, pool_x, pool_y, masks.to(pool_x.device), epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
        momentum=p.momentum, weight_decay=p.weight_decay, seed=derive_seed(seed, "membership", "references"),
    )
    n = len(cand)
    in_cand = masks[:, :n] if online else torch.zeros(p.num_models, n, dtype=torch.bool)
    in_pop = masks[:, n:] if online else masks
    return ReferenceOutputs(
        model_logits(target, obs.params, cand.x), model_logits(target, obs.params, pop.x),
        ensemble_logits(ens, cand.x), ensemble_logits(ens, pop.x), in_cand.to(cand.x.device), in_pop.to(cand.x.device),
    )


def _cpu(scores: Tensor) -> Tensor:
    return scores.detach().to(device="cpu", dtype=torch.float64)


def _target_losses(obs: ModelObservation, records: TensorData) -> Tensor:
    """Cross-entropy of the final model on each record."""
    data = _on(records, obs)
    return kernels.record_loss(model_logits(_target(obs), obs.params, data.x), data.y)


def target_loss_scores(obs: ModelObservation, candidates: TensorData) -> Tensor:
    """The negated cross-entropy of the final model on each candidate (Yeom et al. 2018): the
    signal of the ``loss`` attack and of the one-run canary audit."""
    return _cpu(kernels.loss_scores(_target_losses(obs, candidates)))


# ---------------------------------------------------------------------------------------- attacks


class _OutsiderAttack(ABC):
    """Shared plumbing of the outsider attacks: family, threat model, what they can work with,
    and the checks before scoring; each attack computes its scores in ``_score``."""

    family = "membership"
    threat_model = OUTSIDER_THREAT
    needs = ANY_UPDATE

    def __init__(self, params: OutsiderParams):
        self.params = params

    def score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor:
        _check(obs, candidates, self.registry_name)
        return _cpu(self._score(obs, candidates, seed))

    @abstractmethod
    def _score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor:
        """One score per candidate, higher = more likely a member."""


class _ReferenceAttack(_OutsiderAttack):
    """An attack scored from the target's and its reference models' outputs
    (:func:`reference_outputs`), online when its params say ``mode: online``."""

    def _score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor:
        online = getattr(self.params, "mode", "offline") == "online"
        out = reference_outputs(obs, candidates, self.params, seed, online=online)
        return self._from_references(obs, candidates, out, online, seed)

    @abstractmethod
    def _from_references(
        self, obs: ModelObservation, candidates: TensorData, out: ReferenceOutputs, online: bool, seed: int
    ) -> Tensor:
        """Scores from the target's and the references' logits."""


@ATTACKS.register("loss")
class LossAttack(_OutsiderAttack):
    """Loss threshold (Yeom et al. 2018): a record the model fits unusually well was likely
    trained on.  Score: the negated cross-entropy of the target model on the record."""

    summary = "membership by the target model's loss on the record (lower loss = member)"
    references = (
        "Yeom, Giacomelli, Fredrikson & Jha 2018, Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting (CSF)",
    )
    Params = OutsiderParams

    def _score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor:
        return target_loss_scores(obs, candidates)


@ATTACKS.register("population")
class PopulationAttack(_OutsiderAttack):
    """Population attack (Ye et al. 2022, attack P): the target model's loss on a record against
    its losses on population records.  Scores are ``1 - p`` for the conformal p-value of "x is a
    non-member", so ``score >= 1 - alpha`` is a test with false-positive rate at most ``alpha``.
    The score is a non-decreasing function of the negated loss: the ROC is the loss attack's,
    coarsened where candidates fall between the same two population losses."""

    summary = "loss compared with the target's population losses: a calibrated-threshold loss attack"
    references = (
        "Ye, Maddi, Murakonda, Bindschaedler & Shokri 2022, Enhanced Membership Inference Attacks against Machine Learning Models (CCS)",
    )
    Params = OutsiderParams

    def _score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> Tensor:
        return kernels.population_scores(_target_losses(obs, candidates), _target_losses(obs, obs.population))


class ShadowParams(ReferenceParams):
    top_k: PositiveInt | None = Field(3, description="largest softmax entries fed to the attack classifier; null: all")
    classifier: Literal["mlp", "logistic"] = Field("mlp", description="attack model: sklearn MLPClassifier or LogisticRegression")
    hidden: PositiveInt = Field(64, description="hidden units of the MLP attack model")


@ATTACKS.register("shadow")
class ShadowAttack(_ReferenceAttack):
    """Shadow-model attack (Shokri et al. 2017).  K shadow models mimic the target, each trained on
    a random half of the population; an attack classifier learns IN vs OUT from their sorted
    softmax vectors on the population records (label-free features, the single-classifier variant
    of Salem et al. 2019), then scores the target's outputs on the candidates."""

    summary = "shadow models + an attack classifier on sorted softmax vectors"
    references = (
        "Shokri, Stronati, Song & Shmatikov 2017, Membership Inference Attacks Against Machine Learning Models (IEEE S&P)",
        "Salem, Zhang, Humbert, Berrang, Fritz & Backes 2019, ML-Leaks: Model and Data Independent Membership Inference Attacks and Defenses on Machine Learning Models (NDSS)",
    )
    Params = ShadowParams

    def _from_references(
        self, obs: ModelObservation, candidates: TensorData, out: ReferenceOutputs, online: bool, seed: int
    ) -> Tensor:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        p = self.params
        features = kernels.sorted_probabilities(out.ref_population, p.top_k).flatten(0, 1).cpu().numpy()
        labels = out.in_population.flatten().cpu().numpy().astype(np.int64)
        rng_seed = derive_seed(seed, "membership", "classifier") % 2**32
        model = (
            MLPClassifier(hidden_layer_sizes=(p.hidden,), max_iter=300, early_stopping=True, random_state=rng_seed)
            if p.classifier == "mlp"
            else LogisticRegression(max_iter=1000)
        )
        clf = make_pipeline(StandardScaler(), model).fit(features, labels)
        queries = kernels.sorted_probabilities(out.target_candidates, p.top_k).cpu().numpy()
        member = list(clf.classes_).index(1)
        return torch.from_numpy(clf.predict_proba(queries)[:, member].astype(np.float64))


class LiRAParams(ReferenceParams):
    mode: Literal["online", "offline"] = Field(
        "online", description="online: references trained with and without each candidate; offline: population only"
    )
    fix_variance: bool = Field(True, description="one global variance per distribution (recommended below ~64 references)")


@ATTACKS.register("lira")
class LiRA(_ReferenceAttack):
    """Likelihood-ratio attack (Carlini et al. 2022).  The signal is the logit-scaled confidence
    ``phi = log(p_y / (1 - p_y))``, approximately Gaussian over training runs.  Online: Gaussians
    fitted to IN and OUT reference models of each candidate, score = log-likelihood ratio.
    Offline: OUT references only (trained on the population), one-sided test ``log Pr[Z <= phi]``."""

    summary = "LiRA: Gaussian likelihood ratio of logit-scaled confidence over reference models"
    references = ("Carlini, Chien, Nasr, Song, Terzis & Tramer 2022, Membership Inference Attacks From First Principles (IEEE S&P)",)
    Params = LiRAParams

    def _from_references(
        self, obs: ModelObservation, candidates: TensorData, out: ReferenceOutputs, online: bool, seed: int
    ) -> Tensor:
        y = _on(candidates, obs).y
        phi = kernels.logit_confidence(out.target_candidates, y)
        ref_phi = kernels.logit_confidence(out.ref_candidates, y)
        stat = kernels.lira_online if online else kernels.lira_offline
        return stat(phi, ref_phi, out.in_candidates, self.params.fix_variance)


class RMIAParams(ReferenceParams):
    mode: Literal["online", "offline"] = Field(
        "offline", description="online: references trained with and without each candidate; offline: population only"
    )
    gamma: PositiveFloat = Field(1.0, description="likelihood-ratio threshold against each population record z")
    offline_a: float | None = Field(
        None, ge=0.0, le=1.0,
        description="offline Pr(x) = (1+a)/2 Pr_OUT(x) + (1-a)/2; null: tuned on a reference model as in privacy_meter",
    )


def tune_offline_a(ref_p: Tensor, inside: Tensor, gamma: float) -> float:
    """privacy_meter's choice of ``a``: attack reference model 0 with the others over the pool
    records and keep the ``a`` in {0, 0.1, ..., 1} with the best AUC (first on ties)."""
    usable = (~inside[1:]).any(dim=0)  # records OUT for at least one of the other references
    labels = inside[0, usable]
    if labels.all() or not labels.any():
        raise ValueError("tuning offline_a needs more reference models (at least 3); or set offline_a")
    target, others, others_in = ref_p[0, usable], ref_p[1:, usable], inside[1:, usable]
    best_a, best_auc = 0.0, -1.0
    for a in [i / 10 for i in range(11)]:
        ratio = target / kernels.rmia_marginal(others, others_in, online=False, offline_a=a)
        value = auc(kernels.rmia_scores(ratio, ratio, gamma), labels)
        if value > best_auc:
            best_a, best_auc = a, value
    return best_a


@ATTACKS.register("rmia")
class RMIA(_ReferenceAttack):
    """Robust membership inference (Zarifzadeh et al. 2024).  For a candidate x and each
    population record z, the likelihood ratio ``(Pr(x|theta)/Pr(x)) / (Pr(z|theta)/Pr(z))``
    compares how much the target model raises x's probability relative to the reference models,
    against the same for z; the score is the fraction of z it beats by more than ``gamma``.
    ``Pr(.|theta)`` is the softmax probability of the true label; offline, ``Pr(x)`` is the OUT
    references' mean corrected by ``a`` (:func:`.kernels.rmia_marginal`)."""

    summary = "RMIA: likelihood ratio Pr(x|theta)/Pr(x) against population records z"
    references = (
        "Zarifzadeh, Liu, Cheng & Shokri 2024, Low-Cost High-Power Membership Inference Attacks (ICML)",
        "privacy_meter (privacytrustlab/ml_privacy_meter): run_rmia, tune_offline_a",
    )
    Params = RMIAParams

    def _from_references(
        self, obs: ModelObservation, candidates: TensorData, out: ReferenceOutputs, online: bool, seed: int
    ) -> Tensor:
        p = self.params
        y_x, y_z = _on(candidates, obs).y, _on(obs.population, obs).y
        ref_x = kernels.true_class_probability(out.ref_candidates, y_x)
        ref_z = kernels.true_class_probability(out.ref_population, y_z)
        a = p.offline_a
        if not online and a is None:
            a = tune_offline_a(ref_z, out.in_population, p.gamma)
        ratio_x = kernels.true_class_probability(out.target_candidates, y_x) / kernels.rmia_marginal(ref_x, out.in_candidates, online, a)
        ratio_z = kernels.true_class_probability(out.target_population, y_z) / kernels.rmia_marginal(ref_z, out.in_population, online, a)
        return kernels.rmia_scores(ratio_x, ratio_z, p.gamma)
