"""Robust aggregation rules: thin registered classes over :mod:`.kernels`.

Weights.  Only ``geometric_median`` (RFA's alpha_i) and ``norm_clipping`` (a clipped FedAvg) use
the per-client ``weights``; the other rules ignore them, because a Byzantine client could claim a
huge dataset and the rules' guarantees are stated for unweighted updates.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ...registry import AGGREGATORS, NoParams, Params
from ...state import AttrState
from . import kernels
from .base import BULYAN, HONEST_MAJORITY, KRUM, Rule
from .byzantine import FParams


@AGGREGATORS.register("median")
class CoordinateMedian(Rule):
    """Per coordinate, the median of the n values (the mean of the two middle ones when n is even).
    Tolerates any minority of Byzantine updates per coordinate."""

    summary = "coordinate-wise median"
    threat_model = "Tolerates any minority of Byzantine updates, coordinate by coordinate (breakdown point 1/2; Yin et al., ICML 2018)"
    references = ("Yin, Chen, Ramchandran and Bartlett, Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates, ICML 2018",)
    Params = NoParams

    def aggregate(self, x, weights, client_ids, dropped):
        return kernels.coordinate_median(x)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean(Rule):
    """Per coordinate, drop the f largest and the f smallest values and average the remaining
    n - 2f; f = 0 is the plain mean."""

    summary = "coordinate-wise trimmed mean (f trimmed on each side)"
    references = ("Yin, Chen, Ramchandran and Bartlett, Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates, ICML 2018",)
    threat_model = (
        "Tolerates f Byzantine updates per round while n > 2f (Yin et al., ICML 2018 analyse a fraction below 1/2 "
        "with order-optimal error for i.i.d. honest gradients)"
    )
    Params = FParams
    feasibility = HONEST_MAJORITY

    def aggregate(self, x, weights, client_ids, dropped):
        f = self.effective_f(dropped)
        self.require(x.shape[0], f)
        return kernels.trimmed_mean(x, f)


@AGGREGATORS.register("krum")
class Krum(Rule):
    """Select the update whose n - f - 2 nearest neighbours are closest to it (smallest sum of
    squared distances)."""

    summary = "Krum: the update closest to its n - f - 2 nearest neighbours"
    references = ("Blanchard, El Mhamdi, Guerraoui and Stainer, Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent, NeurIPS 2017",)
    checks_finite = True
    threat_model = "Tolerates f Byzantine updates among n while n > 2f + 2: (alpha, f)-Byzantine resilient (Blanchard et al., NeurIPS 2017)"
    Params = FParams
    feasibility = KRUM

    def aggregate(self, x, weights, client_ids, dropped):
        f = self.effective_f(dropped)
        self.require(x.shape[0], f)
        return kernels.krum(x, f)


class MultiKrumParams(FParams):
    m: PositiveInt | None = Field(None, description="number of updates averaged; null = n - f (ByzFL's choice)")
    selection: Literal["one_shot", "iterative"] = Field(
        "one_shot",
        description="one_shot: the m lowest Krum scores (Blanchard et al., ByzFL); "
        "iterative: repeat Krum on the remaining updates m times (El Mhamdi et al.'s selection)",
    )


@AGGREGATORS.register("multi_krum")
class MultiKrum(Rule):
    """Average the m updates with the lowest Krum scores (n - f - 2 neighbours).  ``selection:
    iterative`` re-scores the remaining updates after each pick, as Bulyan's selection phase."""

    summary = "Multi-Krum: mean of the m best-scored updates"
    references = (
        "Blanchard, El Mhamdi, Guerraoui and Stainer, Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent, NeurIPS 2017",
        "El Mhamdi, Guerraoui and Rouault, The Hidden Vulnerability of Distributed Learning in Byzantium, ICML 2018",
        "González, Guerraoui, Pinot, Rizk, Stephan and Taïani, ByzFL: Research Framework for Robust Federated Learning, arXiv:2505.24802, 2025",
    )
    checks_finite = True
    threat_model = "Tolerates f Byzantine updates among n while n > 2f + 2, as Krum (Blanchard et al., NeurIPS 2017)"
    Params = MultiKrumParams
    feasibility = KRUM

    def require(self, n, f):
        super().require(n, f)
        m = self.params.m
        if m is not None and m > n - f:
            raise ValueError(f"multi_krum needs m <= n - f (m={m}, f={f}, n={n}): lower m to at most {n - f}")

    def aggregate(self, x, weights, client_ids, dropped):
        n, f = x.shape[0], self.effective_f(dropped)
        super().require(n, f)
        m = n - f if self.params.m is None else min(self.params.m, n - f)
        return kernels.multi_krum(x, f, m, iterative=self.params.selection == "iterative")


@AGGREGATORS.register("bulyan")
class Bulyan(Rule):
    """Select theta = n - 2f updates by repeated Krum, then per coordinate average the
    beta = theta - 2f selected values closest to their median."""

    summary = "Bulyan over Krum (n >= 4f + 3)"
    references = ("El Mhamdi, Guerraoui and Rouault, The Hidden Vulnerability of Distributed Learning in Byzantium, ICML 2018",)
    checks_finite = True
    threat_model = (
        "Tolerates f Byzantine updates among n while n >= 4f + 3, with each coordinate's deviation bounded too "
        "(El Mhamdi et al., ICML 2018)"
    )
    Params = FParams
    feasibility = BULYAN

    def aggregate(self, x, weights, client_ids, dropped):
        f = self.effective_f(dropped)
        self.require(x.shape[0], f)
        return kernels.bulyan(x, f)


class GeometricMedianParams(Params):
    nu: PositiveFloat = Field(1e-6, description="smoothing: distances below nu count as nu (RFA's epsilon)")
    max_iter: NonNegativeInt = Field(100, description="most smoothed Weiszfeld iterations")
    tol: NonNegativeFloat = Field(1e-6, description="stop when the objective changes by at most tol times its value")


@AGGREGATORS.register("geometric_median")
class GeometricMedian(Rule):
    """The weighted geometric median of the updates (weights = client dataset sizes, as in RFA),
    approximated by the smoothed Weiszfeld algorithm starting from the weighted mean."""

    summary = "geometric median by smoothed Weiszfeld (RFA)"
    references = ("Pillutla, Kakade and Harchaoui, Robust Aggregation for Federated Learning, IEEE Transactions on Signal Processing 2022",)
    threat_model = "Tolerates any minority of the total weight corrupted (breakdown point 1/2; Pillutla et al., IEEE TSP 2022)"
    checks_finite = True
    Params = GeometricMedianParams

    def aggregate(self, x, weights, client_ids, dropped):
        p = self.params
        return kernels.geometric_median(x, weights, nu=p.nu, max_iter=p.max_iter, tol=p.tol)


class CenteredClippingParams(Params):
    tau: NonNegativeFloat = Field(100.0, description="clipping radius around the center")
    iterations: PositiveInt = Field(1, description="clipping iterations per round (L)")


@AGGREGATORS.register("centered_clipping")
class CenteredClipping(AttrState, Rule):
    """Clip each update's difference to the center at radius tau and move the center by the
    mean clipped difference, ``iterations`` times.  The center is the previous round's aggregate
    (server-side momentum, zero in the first round), so the rule keeps state between calls."""

    summary = "centered clipping around the previous aggregate"
    references = ("Karimireddy, He and Jaggi, Learning from History for Byzantine Robust Optimization, ICML 2021",)
    threat_model = (
        "Tolerates a minority fraction of Byzantine workers, with tau set to the honest updates' spread around the "
        "previous aggregate; no f to declare (Karimireddy et al., ICML 2021)"
    )
    checks_finite = True
    Params = CenteredClippingParams
    state_attrs = ("center",)

    def __init__(self, params: CenteredClippingParams):
        super().__init__(params)
        self.center: torch.Tensor | None = None

    def aggregate(self, x, weights, client_ids, dropped):
        c = self.center
        if c is None or c.shape[0] != x.shape[1]:
            c = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        out = kernels.centered_clipping(x, c.to(x.device, x.dtype), self.params.tau, self.params.iterations)
        self.center = out.detach().clone()
        return out


class NormClippingParams(Params):
    max_norm: PositiveFloat = Field(1.0, description="L2 norm bound of each update")


@AGGREGATORS.register("norm_clipping")
class NormClipping(Rule):
    """Scale every update to L2 norm at most max_norm, then take the weighted mean: bounds what one
    (backdoor) update can contribute."""

    summary = "clip each update's L2 norm, then weighted mean"
    references = ("Sun, Kairouz, Suresh and McMahan, Can You Really Backdoor Federated Learning?, arXiv:1911.07963, 2019",)
    threat_model = (
        "No Byzantine tolerance as such: bounds what each update adds to max_norm, which blunts scaled and "
        "backdoor updates without excluding them (Sun et al., 2019)"
    )
    Params = NormClippingParams

    def aggregate(self, x, weights, client_ids, dropped):
        return kernels.norm_clipped_mean(x, self.params.max_norm, weights)


class MoNNAParams(FParams):
    trusted_client: NonNegativeInt = Field(0, description="id of the client whose update anchors the neighbourhood")


@AGGREGATORS.register("monna")
class MoNNA(Rule):
    """The mean of the n - f updates nearest to a trusted client's update (MoNNA's robust step;
    the trusted update must arrive every round, so use it with full participation)."""

    summary = "mean of the n - f updates nearest to a trusted client's update"
    references = ("Farhadkhani, Guerraoui, Gupta, Hoang, Pinot and Stephan, Robust Collaborative Learning with Linear Gradient Overhead, ICML 2023",)
    threat_model = "Tolerates f Byzantine clients while n > 2f, given one trusted honest client (Farhadkhani et al., ICML 2023)"
    Params = MoNNAParams
    feasibility = HONEST_MAJORITY

    def aggregate(self, x, weights, client_ids, dropped):
        n, f = x.shape[0], self.effective_f(dropped)
        self.require(n, f)
        ids = list(range(n)) if client_ids is None else client_ids
        trusted = self.params.trusted_client
        if trusted not in ids:
            raise ValueError(f"monna: trusted client {trusted} sent no finite update this round (clients: {ids})")
        return kernels.monna(x, f, ids.index(trusted))


class FlagParams(Params):
    dim: PositiveInt = Field(1, description="dimension of the fitted subspace (the authors' r_col)")
    lam: NonNegativeFloat = Field(0.0, description="weight of the pairwise-difference terms (the authors' lambda_)")
    iterations: NonNegativeInt = Field(4, description="FlagIRLS re-weighting steps after the flag-mean start")


@AGGREGATORS.register("flag")
class FlagAggregator(Rule):
    """Flag Aggregator: fit a low-dimensional subspace to the unit-normalised updates by
    iteratively re-weighted least squares on the flag-median objective and return the sum of the
    projected unit updates divided by the subspace dimension.  The output does not carry the
    updates' scale (its norm is at most n / dim): tune the learning rate accordingly."""

    summary = "Flag Aggregator: subspace fit by FlagIRLS on normalised updates"
    references = (
        "Almasi, Mishra, Vamanan and Ravi, Flag Aggregator: Scalable Distributed Training under Failures and Augmented Losses using Convex Optimization, ICLR 2024",
    )
    threat_model = (
        "Tolerates a minority of failed or adversarial workers, down-weighted by the robust subspace fit; no f to declare "
        "(Almasi et al., ICLR 2024)"
    )
    checks_finite = True
    Params = FlagParams

    def aggregate(self, x, weights, client_ids, dropped):
        p = self.params
        return kernels.flag_aggregate(x, dim=p.dim, lam=p.lam, iterations=p.iterations)
