"""Local differential privacy on what a client sends: per-coordinate numeric LDP mechanisms.

Every client clips each coordinate of its flat update to ``[-c, c]``, divides by ``c`` (values in
[-1, 1]), perturbs the vector with Wang et al.'s d-dimensional scheme
(:func:`fllab.privacy.ldp.numeric.perturb_vectors`: ``m`` sampled coordinates, each with budget
``epsilon / m`` through Duchi's, the piecewise or the hybrid mechanism, scaled by ``d / m``) and
multiplies by ``c`` again.  The server receives an unbiased estimate of the clipped update, and
each report is ``epsilon``-LDP with respect to the client's whole update (any two updates, so
any two local datasets): no trusted server, no secure aggregation needed.

Accounting: pure epsilon-LDP composes additively, so a client that has sent ``r`` reports has
spent ``r * epsilon``; ``account`` reports the largest such total over clients as
``privacy.epsilon`` (with ``privacy.delta = 0``) after every round, and the per-report budget as
``privacy.epsilon_per_round``.

Setting ``coordinates`` to the model size perturbs every coordinate with ``epsilon / d`` (the
whole budget still covers the whole update); per-coordinate budgets as used by LDP-FL-style
papers correspond to ``epsilon = d * eps_coordinate`` here, and are reported as such.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from ..privacy.ldp.numeric import perturb_vectors
from ..registry import DEFENSES, Params
from ..state import AttrState
from ..types import ClientResult


class LDPUpdateParams(Params):
    mechanism: Literal["duchi", "piecewise", "hybrid"] = Field("piecewise", description="per-coordinate mechanism for values in [-1, 1]")
    epsilon: PositiveFloat = Field(1.0, description="LDP budget of one client's whole update in one round")
    clip: PositiveFloat = Field(0.01, description="each coordinate is clipped to [-clip, clip] before perturbation")
    coordinates: PositiveInt | None = Field(
        None, description="coordinates perturbed per report (None: Wang et al.'s max(1, min(d, floor(eps/2.5))))"
    )


@DEFENSES.register("ldp_update")
class LDPUpdate(AttrState):
    """Clip coordinates to [-c, c], perturb with an epsilon-LDP numeric mechanism (sampled
    coordinates, unbiased rescale); composed epsilon reported per round (module docstring)."""

    summary = "local DP on the update: clip coordinates, Duchi / piecewise / hybrid perturbation of sampled coordinates; epsilon per round"
    references = (
        "Duchi, Jordan and Wainwright, Minimax Optimal Procedures for Locally Private Estimation, JASA 2018",
        "Wang, Xiao, Yang, Zhao, Hui, Shin, Shin and Yu, Collecting and Analyzing Multidimensional Data with Local "
        "Differential Privacy, ICDE 2019",
    )
    Params = LDPUpdateParams
    needs = frozenset({"gradient", "delta"})
    state_attrs = ("_reports",)  # per-client participation, for the accountant

    def __init__(self, params: LDPUpdateParams):
        self.params = params
        self._reports: dict[int, int] = {}  # client id -> reports sent

    def transform(self, update: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Perturb on the CPU in float64 with a numpy generator seeded from the client's ``gen``."""
        p = self.params
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        x = (update.detach().cpu().double() / p.clip).clamp(-1.0, 1.0).numpy().reshape(1, -1)
        y = perturb_vectors(x, p.epsilon, p.mechanism, np.random.default_rng(seed), p.coordinates)
        return torch.from_numpy(p.clip * y.reshape(update.shape)).to(dtype=update.dtype, device=update.device)

    def account(self, round: int, sampled_ids: Sequence[int], results: Sequence[ClientResult], num_clients: int) -> Mapping[str, float]:
        """Composed epsilon of the client that has reported most often (a run starts at round 0)."""
        if round == 0:
            self._reports.clear()
        for cid in sampled_ids:
            self._reports[cid] = self._reports.get(cid, 0) + 1
        eps = self.params.epsilon
        return {"privacy.epsilon": eps * max(self._reports.values()), "privacy.delta": 0.0, "privacy.epsilon_per_round": eps}
