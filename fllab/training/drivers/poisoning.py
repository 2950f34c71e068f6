"""The poisoning driver: malicious clients poison their data before round 0 and replace their
uploads each round; the attack may score the final model (backdoor success)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...hooks import has_hook
from ...seeding import derive_seed, torch_gen
from ...types import Aggregator, PoisonObservation
from .base import AttackOutcome, DriverContext, FinalState, RoundView, Stateless, Truth


class PoisoningDriver(Stateless):
    """Puts one poisoning attack to work through its malicious ``clients`` (drawn by the wiring).

    When built, ``poison_data`` (if the attack has it) edits each of its clients' data once, in
    order, with the generator ``("attack", name, "data", client)``.  Each round, :meth:`poison`
    replaces the uploads of its sampled clients (from ``start_round`` on) with what
    ``craft_uploads`` returns; only attacks that declare ``knowledge = "omniscient"`` receive the
    honest uploads of the round and the aggregator.  After training ``score_final_model`` (if
    any) scores the final model."""

    def __init__(self, attack: Any, truth: Truth, ctx: DriverContext, clients: Sequence[int]):
        self.attack, self.truth, self.ctx = attack, truth, ctx
        self.clients = tuple(int(c) for c in clients)
        self.crafts = has_hook(attack, "craft_uploads")
        self.poisons_data = has_hook(attack, "poison_data")
        if self.poisons_data:
            for cid in self.clients:
                gen = torch_gen(ctx.root, "attack", attack.registry_name, "data", cid)
                data = truth.client_data[cid]
                truth.client_data[cid] = attack.poison_data(data.to("cpu"), gen, truth.num_classes).to(data.x.device)

    def acting(self, rnd: int, cid: int) -> bool:
        """Whether client ``cid``'s upload of round ``rnd`` is this attack's: a data-poisoning
        client's always, a model-poisoning client's from ``start_round`` on (the truth that
        detection is scored against)."""
        return cid in self.clients and (self.poisons_data or rnd >= self.attack.params.start_round)

    def poison(self, rnd: int, sampled: list[int], updates: torch.Tensor, global_params: torch.Tensor, aggregator: Aggregator) -> None:
        """Replace this attack's sampled clients' uploads (rows of ``updates``) in place."""
        if not self.crafts or rnd < self.attack.params.start_round:
            return
        pos = [i for i, cid in enumerate(sampled) if cid in self.clients]
        if not pos:
            return
        name = self.attack.registry_name
        omniscient = getattr(self.attack, "knowledge", "own") == "omniscient"
        honest = torch.tensor([cid not in self.truth.malicious for cid in sampled], device=updates.device)
        obs = PoisonObservation(
            round=rnd,
            num_clients=len(sampled),
            num_malicious=len(pos),
            global_params=global_params.clone(),
            own_updates=updates[pos].clone(),
            kind=self.ctx.algorithm.sends,
            seed=derive_seed(self.ctx.root, "attack", name, rnd),
            benign_updates=updates[honest].clone() if omniscient else None,
            aggregator=aggregator if omniscient else None,
        )
        crafted = self.attack.craft_uploads(obs)
        if crafted.shape != (len(pos), updates.shape[1]):
            raise RuntimeError(f"{name}.craft_uploads returned {tuple(crafted.shape)}, expected {(len(pos), updates.shape[1])}")
        updates[pos] = crafted.to(updates.dtype)

    def on_round(self, view: RoundView) -> None:
        """Poisoning acts in :meth:`poison`, before the server's view."""

    def finish(self, final: FinalState) -> AttackOutcome | None:
        if not has_hook(self.attack, "score_final_model"):
            return None
        return AttackOutcome(self.attack.family, dict(self.attack.score_final_model(final.model, self.truth.test)))
