"""The plain (weighted) average: FedAvg's aggregation rule (McMahan et al., AISTATS 2017)."""
from __future__ import annotations

import torch

from ...registry import AGGREGATORS, NoParams


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the rows of ``updates`` (n, d), weighted by ``weights`` (n,) when given."""
    if weights is None:
        return updates.mean(dim=0)
    w = weights.to(updates.dtype)
    return (w / w.sum()) @ updates


@AGGREGATORS.register("mean")
class Mean:
    """Weighted average of the client updates (weights = client dataset sizes). Not robust:
    one Byzantine client moves it arbitrarily far."""

    summary = "weighted average of client updates (FedAvg)"
    threat_model = "Tolerates no Byzantine update: one malicious client moves the average arbitrarily far"
    references = ("McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data, AISTATS 2017",)
    Params = NoParams

    def __init__(self, params: NoParams):
        self.params = params

    def check(self, n: int) -> None:
        """Raise ValueError when the rule cannot work with ``n`` updates per round."""
        if n < 1:
            raise ValueError("needs at least one update per round")

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, client_ids: object = None) -> torch.Tensor:
        """``client_ids`` is part of the aggregator protocol and unused here."""
        return weighted_mean(updates, weights)

    @staticmethod
    def coefficients(weights: torch.Tensor | None, rows: int, device: torch.device | str) -> torch.Tensor:
        """The mean is linear, ``mean(y) = coefficients @ y``: the (rows,) float64 normalised
        weights.  A pre-aggregator whose transform is linear too (NNM, bucketing, ARC) folds it
        into these and reads the raw updates once (:meth:`PreAggregator.combine`)."""
        if weights is None:
            return torch.full((rows,), 1.0 / rows, dtype=torch.float64, device=device)
        w = weights.to(device, torch.float64)
        return w / w.sum()
