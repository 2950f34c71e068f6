"""Model poisoning against Federated Rank Learning (``frl``): the malicious clients upload
rankings crafted against the server's vote.

* ``rank_reversal`` -- the attack of the FRL paper and its code: the malicious clients compute
  their honest rankings and send the reversed (aggregated) ranking.
* ``rank_adaptive`` -- an omniscient attack built against the vote: all malicious clients vote
  against the honest clients' *update* of the ranking, at the extreme positions
  (:func:`fllab.attacks.rank.kernels.reversed_update`).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ...registry import ATTACKS
from ...types import PoisonObservation
from ..base import PoisoningParams
from .kernels import reversed_update, reversed_vote

RANKING = frozenset({"ranking"})
FRL_REFERENCE = (
    "Mozaffari, Shejwalkar & Houmansadr, Every Vote Counts: Ranking-Based Training of Federated Learning "
    "to Resist Poisoning Attacks, USENIX Security 2023 (code: github.com/SPIN-UMass/FRL)"
)


class RankReversalParams(PoisoningParams):
    aligned: bool = Field(
        True,
        description="all malicious clients send the reversal of their summed honest rankings (reference code); "
        "false: each reverses its own",
    )


@ATTACKS.register("rank_reversal")
class RankReversal:
    """Each malicious client trains honestly on its own data, then uploads the reversed ranking:
    its highest-scored edges are voted lowest.  With ``aligned`` (the reference code), the
    malicious clients first sum their honest positions and all send the reversal of that
    consensus.

    Two things blunt it.  The vote adds bounded positions, so against an honest majority that
    agrees, a reversed vote shifts every edge's total by an amount that decreases with its honest
    position and the order mostly survives.  And FRL's mask keeps the largest ``|score|``, i.e.
    both ends of the ranking: reversing a ranking sends its kept top end onto the kept bottom end,
    so even a reversal that won the vote outright would leave almost the same subnetwork (99.6% of
    a 10,000-edge layer's mask bits unchanged with uniform initial scores)."""

    family = "poisoning"
    summary = "model poisoning on FRL: send the reversed honest ranking (the FRL paper's attack)"
    threat_model = "malicious clients; own data and honest rankings; colluding when aligned"
    references = (FRL_REFERENCE,)
    needs = RANKING
    Params = RankReversalParams

    def __init__(self, params: RankReversalParams):
        self.params = params

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        own = obs.own_updates
        if self.params.aligned:
            return reversed_vote(own).to(own.dtype).expand_as(own).clone()
        return -own


@ATTACKS.register("rank_adaptive")
class RankAdaptive:
    """Omniscient attack on FRL's vote: from the round's benign rankings and the public global
    scores, the malicious clients compute how far the honest clients moved every edge in the
    ranking, and all upload one ranking that puts the edges moved up most at the bottom and those
    moved down most at the top, cancelling (and, where the honest consensus is weak, reversing)
    the round's progress.  Against 20% malicious clients it costs FRL several times what the
    paper's rank reversal does (tests/test_frl.py, scenarios/poisoning/frl_fmnist_rank_*.yaml)."""

    family = "poisoning"
    summary = "model poisoning on FRL: aligned rankings that reverse the honest clients' update of the ranking"
    threat_model = "malicious clients colluding; omniscient: the round's benign rankings and the vote's layer sizes"
    references = (
        FRL_REFERENCE,
        "Fang, Cao, Jia & Gong, Local Model Poisoning Attacks to Byzantine-Robust Federated Learning, "
        "USENIX Security 2020 (full-knowledge attacks that deviate against the benign update)",
    )
    needs = RANKING
    knowledge = "omniscient"
    Params = PoisoningParams

    def __init__(self, params: PoisoningParams):
        self.params = params

    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor:
        sizes = getattr(obs.aggregator, "sizes", None)
        if obs.benign_updates is None or sizes is None:
            raise ValueError(
                "rank_adaptive needs the round's benign rankings and FRL's vote (its layer sizes) in its "
                "omniscient observation"
            )
        ranking = reversed_update(obs.benign_updates, obs.global_params, sizes)
        return ranking.to(obs.own_updates.dtype).expand_as(obs.own_updates).clone()
