"""Pre-aggregators: transform the round's n updates, then hand them to any inner aggregator.

Each takes ``then``, the inner aggregator's spec (a name or ``{name: ..., **params}``), e.g.
``{name: nnm, f: 10, then: {name: krum, f: 10}}``; ``check(n)`` checks the pre-aggregator and
then the inner rule with the number of vectors it will receive.

All three transforms are linear maps of the updates: a (rows, n) mixing matrix M (NNM's
nearest-neighbour weights, bucketing's averaging matrix) or per-row scales (ARC's clipping).  When
the inner aggregator is linear too (``mean``: ``coefficients``), the whole rule is one weighted
sum of the raw updates, ``(c @ M) @ x``, computed with the coefficients in float64 and one pass
over the data: no (rows, d) intermediate at all.  Otherwise the transformed updates are written
into a scratch buffer that the pre-aggregator keeps and reuses from round to round
(first-touching a fresh (n, d) buffer costs as much as the transformation itself; see
:mod:`.kernels`), and the inner aggregator therefore must not keep a reference to its input after
it returns; fllab's aggregators copy what they keep.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, PositiveInt, field_validator

from ...hooks import has_hook
from ...registry import AGGREGATORS, Params
from ...seeding import torch_gen
from . import kernels
from .base import HONEST_MAJORITY, Rule, call_inner, inner_spec
from .kernels import NonFiniteError
from .byzantine import FParams

THEN_DESCRIPTION = "inner aggregator applied to the transformed updates: a name or {name: ..., **params}"


class ThenParams(Params):
    then: Any = Field("median", description=THEN_DESCRIPTION)

    @field_validator("then")
    @classmethod
    def _valid_inner(cls, spec: Any) -> dict[str, Any]:
        return inner_spec(spec)


class PreAggregator(Rule):
    """A rule that maps the updates to new vectors and aggregates those with ``then``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.inner = AGGREGATORS.build(params.then, path="then")
        self.scratch: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """The inner aggregator's round-to-round state (e.g. a detector's history)."""
        return {"inner": self.inner.state_dict() if has_hook(self.inner, "state_dict") else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if has_hook(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state["inner"])

    def buffer(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The reused (rows, d) scratch buffer, reallocated when the shape, dtype or device changes."""
        s = self.scratch
        if s is None or s.shape != (rows, like.shape[1]) or s.dtype != like.dtype or s.device != like.device:
            s = self.scratch = kernels.empty_rows(rows, like)
        return s

    def combine(
        self, x: torch.Tensor, transform: torch.Tensor, weights: torch.Tensor | None, client_ids: list[int] | None, dropped: int
    ) -> torch.Tensor:
        """Aggregate the transformed updates with the inner rule.  ``transform`` is a (rows, n)
        float64 mixing matrix, or (n,) row scales; ``weights`` and ``client_ids`` are those the
        transformed rows carry.  A linear inner rule gets one weighted sum (module docstring)."""
        scales = transform.ndim == 1
        rows = x.shape[0] if scales else transform.shape[0]
        linear = getattr(self.inner, "coefficients", None)
        if linear is not None:
            c = linear(weights, rows, transform.device)
            return (c * transform if scales else c @ transform).to(x.dtype) @ x
        return call_inner(self.inner, kernels.apply_map(transform, x, self.buffer(rows, x)), weights, client_ids, dropped)


class HonestMajorityPreAggregator(PreAggregator):
    """A pre-aggregator with its own ``f`` that needs an honest majority (n > 2f) of the updates
    it maps, before its inner rule's own check."""

    feasibility = HONEST_MAJORITY

    def check(self, n):
        self.require(n, self.params.f)
        self.inner.check(n)


class NNMParams(ThenParams, FParams):
    """NNM's ``then`` and ``f``."""


@AGGREGATORS.register("nnm")
class NNM(HonestMajorityPreAggregator):
    """Nearest-neighbour mixing: replace each update by the mean of its n - f nearest neighbours
    (itself included), then aggregate the mixed updates with ``then``.  Computed as one (n, n)
    mixing matrix times the updates; the mixed update i keeps client i's weight and id."""

    summary = "nearest-neighbour mixing before another aggregator"
    references = ("Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan, Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity, AISTATS 2023",)
    threat_model = (
        "Tolerates f Byzantine updates while n > 2f, and makes an (f, kappa)-robust inner rule reach the optimal "
        "error under heterogeneous data (Allouah et al., AISTATS 2023)"
    )
    checks_finite = True
    Params = NNMParams

    def aggregate(self, x, weights, client_ids, dropped):
        f = self.effective_f(dropped)
        self.require(x.shape[0], f)
        return self.combine(x, kernels.nnm_weights(kernels.pairwise_sq_dists(x), f), weights, client_ids, dropped)


class BucketingParams(ThenParams):
    s: PositiveInt = Field(2, description="bucket size")
    seed: int = Field(0, description="seed of the per-round random permutation")


@AGGREGATORS.register("bucketing")
class Bucketing(PreAggregator):
    """Randomly permute the updates, average them in buckets of s (the last bucket keeps the
    remainder), and aggregate the ceil(n/s) bucket means with ``then``.  The permutation of the
    k-th call is drawn from ``derive_seed(seed, "bucketing", k)``: reproducible and independent
    of global RNGs.  Bucket means carry no weight and no client id."""

    summary = "average random buckets of s updates before another aggregator"
    references = ("Karimireddy, He and Jaggi, Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing, ICLR 2022",)
    threat_model = (
        "Keeps the inner rule's guarantee under heterogeneous data: each Byzantine update spoils at most one "
        "bucket, so the inner rule must tolerate f buckets among ceil(n/s) (Karimireddy et al., ICLR 2022)"
    )
    Params = BucketingParams

    def __init__(self, params: BucketingParams):
        super().__init__(params)
        self.calls = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.calls = int(state["calls"])

    def check(self, n):
        super().check(n)
        self.inner.check(-(-n // self.params.s))

    def aggregate(self, x, weights, client_ids, dropped):
        perm = torch.randperm(x.shape[0], generator=torch_gen(self.params.seed, "bucketing", self.calls))
        self.calls += 1
        return self.combine(x, kernels.bucket_matrix(x.shape[0], self.params.s, perm, x.device), None, None, dropped)


class ARCParams(ThenParams, FParams):
    """ARC's ``then`` and ``f``."""


@AGGREGATORS.register("arc")
class ARC(HonestMajorityPreAggregator):
    """Adaptive robust clipping: clip the floor(2 f (n - f) / n) largest updates to the norm of
    the largest remaining one, then aggregate with ``then``."""

    summary = "adaptive robust clipping before another aggregator"
    references = (
        "Allouah, Guerraoui, Gupta, Jellouli, Rizk and Stephan, Boosting Robustness by Clipping Gradients in Distributed Learning, arXiv:2405.14432, 2024",
    )
    threat_model = (
        "Tolerates f Byzantine updates while n > 2f; clipping the 2f(n - f)/n largest updates improves the inner "
        "rule's robustness (Allouah et al., 2024)"
    )
    checks_finite = True
    Params = ARCParams

    def aggregate(self, x, weights, client_ids, dropped):
        f = self.effective_f(dropped)
        self.require(x.shape[0], f)
        norms = kernels.row_norms(x)  # also the finiteness check (checks_finite)
        if not bool(torch.isfinite(norms).all()):
            raise NonFiniteError("the updates hold NaN, infinite or overflowing values")
        return self.combine(x, kernels.arc_scales(norms.to(torch.float64), f), weights, client_ids, dropped)
