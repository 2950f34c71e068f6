"""The Randomized Quantization Mechanism as a client defense, with exact Renyi-DP accounting.

Youn, Hu, Ziani & Abernethy 2023, "Randomized Quantization is All You Need for Differential
Privacy in Federated Learning", FL-ICML workshop, arXiv:2306.11913.

Every client clips each coordinate of its update to ``[-c, c]`` and replaces it by a randomly
quantized level (:func:`fllab.privacy.rqm.rqm_quantize`: ``m`` levels on ``[-(c+delta), c+delta]``,
interior levels kept with probability ``q``, unbiased randomized rounding between the nearest kept
levels).  No noise is added: the randomness of the quantizer is the privacy mechanism, and the
server sees only quantized vectors (local, user-level DP).

Accounting (:func:`fllab.privacy.rqm.rqm_epsilon`): the exact per-coordinate Renyi DP, times the
``d`` coordinates of an update, times the number of rounds a client has taken part in, converted
to ``(epsilon, target_delta)``.  ``account`` reports the epsilon of the client that has taken part
most often (no amplification by client sampling is claimed).  Each client's quantizer draws from
the generator the engine seeds from the client's task seed, so runs are reproducible.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from pydantic import Field, PositiveFloat, PositiveInt

from ..privacy import rqm_epsilon, rqm_quantize
from ..registry import DEFENSES, Params
from ..state import AttrState
from ..types import ClientResult


class RQMParams(Params):
    c: PositiveFloat = Field(0.1, description="each update coordinate is clipped to [-c, c]")
    delta: PositiveFloat = Field(0.1, description="quantization margin: levels span [-(c+delta), c+delta]")
    m: PositiveInt = Field(16, ge=2, description="number of quantization levels")
    q: float = Field(0.5, ge=0.0, lt=1.0, description="probability that an interior level is kept (1 keeps every level: no privacy)")
    target_delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the reported (epsilon, delta)")


@DEFENSES.register("rqm")
class RQM(AttrState):
    """Clip every coordinate to [-c, c] and quantize it with RQM; epsilon from the exact RDP
    composed over coordinates and rounds (see the module docstring)."""

    summary = "randomized quantization (RQM): clip coordinates, quantize to randomly kept levels; exact RDP accounting"
    references = (
        "Youn, Hu, Ziani and Abernethy, Randomized Quantization is All You Need for Differential Privacy "
        "in Federated Learning, arXiv:2306.11913, 2023",
        "Mironov, Renyi Differential Privacy, CSF 2017",
    )
    Params = RQMParams
    needs = frozenset({"gradient", "delta"})
    state_attrs = ("_rounds",)  # per-client participation, for the accountant

    def __init__(self, params: RQMParams):
        self.params = params
        self._rounds: dict[int, int] = {}  # client id -> rounds taken part in

    def memory_bytes(self, *, num_params: int, clients_per_round: int) -> int:
        """Peak memory (:func:`fllab.limits.estimate_memory`): the exact accountant's output
        distributions, about four float64 arrays of (breakpoints ~ m) x m x m, and a float64 copy of
        each quantized update."""
        m = self.params.m
        return 4 * 8 * (m + 2) * m * m + 3 * 8 * num_params

    def transform(self, update: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Quantize on the CPU with the client's generator (the same levels on every device)."""
        p = self.params
        return rqm_quantize(update.cpu(), p.c, p.delta, p.m, p.q, generator=gen).to(update.device)

    def account(self, round: int, sampled_ids: Sequence[int], results: Sequence[ClientResult], num_clients: int) -> Mapping[str, float]:
        """Epsilon of the client that has sent most often so far (a run starts at round 0)."""
        if round == 0:
            self._rounds.clear()
        for cid in sampled_ids:
            self._rounds[cid] = self._rounds.get(cid, 0) + 1
        p = self.params
        dims = int(results[0].update.numel())
        eps = rqm_epsilon(p.c, p.delta, p.m, p.q, dims, max(self._rounds.values()), p.target_delta)
        return {"privacy.epsilon": eps, "privacy.delta": p.target_delta}
