"""The membership driver (server or outsider position) and the one-run canary audit."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...hooks import has_hook
from ...seeding import derive_seed, numpy_gen, torch_gen
from ...types import ModelObservation, TensorData, UpdateObservation
from .contract import checked_scores
from .base import AttackOutcome, DriverContext, FinalState, RoundView, Stateless, Truth, audit_delta


def candidate_split(root: int, pool: TensorData, test: TensorData, members: int, purpose: object) -> tuple[TensorData, TensorData, torch.Tensor]:
    """``members`` records of ``pool`` and as many from the first half of the test split (the
    candidates, members first, and their truth); the second half is the population.  The draw
    depends on the root seed and ``purpose`` (the position, or the target client) only, so every
    attack asking for the same number of members scores the same records (a smaller ``members``
    draws a different subset)."""
    return split_with(numpy_gen(root, "membership", "candidates", purpose), pool, test, members)


def split_with(rng: np.random.Generator, pool: TensorData, test: TensorData, members: int) -> tuple[TensorData, TensorData, torch.Tensor]:
    """:func:`candidate_split` with the draws taken from ``rng``."""
    half = len(test) // 2
    k = min(members, len(pool), half)
    inside = pool.subset(torch.as_tensor(np.sort(rng.choice(len(pool), k, replace=False)), device=pool.x.device))
    outside = test.subset(torch.as_tensor(np.sort(rng.choice(half, k, replace=False)), device=test.x.device))
    population = test.subset(torch.arange(half, len(test), device=test.x.device))
    candidates = TensorData(torch.cat([inside.x, outside.x]), torch.cat([inside.y, outside.y]))
    is_member = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
    return candidates, population, is_member


def check_targets(clients: Sequence[int], rounds: Sequence[int] | None, truth: Truth, ctx: DriverContext) -> None:
    """Refuse, before training, target clients that do not exist or that no round of ``rounds``
    (default: all) samples -- the server would never see an upload of theirs."""
    path = f"{ctx.path}.target_clients"
    for cid in clients:
        if cid >= len(truth.client_data):
            raise ConfigError(f"client {cid} does not exist; the federation has {len(truth.client_data)} clients", path)
    seen = ctx.taking_part(rounds)
    missing = [c for c in clients if seen is not None and c not in seen]
    if missing:
        fed = ctx.federation
        when = f"rounds {list(rounds)}" if rounds is not None else f"any of the {fed.rounds} rounds"
        raise ConfigError(
            f"client {missing[0]} is not sampled in {when} ({fed.per_round} of {fed.num_clients} clients per round, seed "
            f"{ctx.root}), so the server never sees its upload; clients that are: {sorted(seen)[:20]}", path,
        )


class MembershipDriver:
    """Membership inference from either position, scored as AUC / TPR at low FPR plus an
    empirical epsilon lower bound (Jagielski et al. 2020) from the same scores.

    Candidates: ``members`` records of the attacked training data (each target client's data at
    the server position, scored against that client's uploads and pooled; any honest client's at
    the outsider position: a malicious client's poisoned data is no member pool) and as many
    held-out records (the first half of the test split).  The outsider's population data is the
    second half of the test split, disjoint from every candidate.  Target clients are honest:
    the wiring draws malicious clients among the others.

    The candidates derive from the root seed and the position alone (:func:`candidate_split`),
    not from the attack: every membership attack of a run (and ``fllab attack RUN_DIR`` on the
    finished run) scores the same records, so their figures compare.  A server-position target
    client that no attacked round samples is refused before training (sampling is seeded)."""

    def __init__(self, attack: Any, truth: Truth, ctx: DriverContext):
        self.attack, self.truth, self.ctx = attack, truth, ctx
        p = attack.params
        hook = "score_rounds" if p.position == "server" else "score"
        if not has_hook(attack, hook):
            raise ConfigError(f"{attack.registry_name} cannot attack from the {p.position} position", f"{ctx.path}.position")
        if p.position == "server":
            check_targets(p.target_clients, p.rounds, truth, ctx)
        self.observations: dict[int, list[UpdateObservation]] = {c: [] for c in p.target_clients}

    def _split(self, pool: TensorData, purpose: object) -> tuple[TensorData, TensorData, torch.Tensor]:
        return candidate_split(self.ctx.root, pool, self.truth.test, self.attack.params.members, purpose)

    def on_round(self, view: RoundView) -> None:
        p = self.attack.params
        if p.position != "server" or (p.rounds is not None and view.round not in p.rounds):
            return
        for upload in view.uploads:
            for cid in (view.sampled[m] for m in upload.members):
                if cid in self.observations:
                    self.observations[cid].append(
                        self.ctx.observe(view.round, cid, view.global_params, upload.update, upload.num_examples)
                    )

    def state_dict(self) -> dict[str, Any]:
        """The target clients' uploads observed so far (what the server kept)."""
        return {"observations": {
            cid: [(o.round, o.global_params, o.update, o.hyper.num_examples) for o in obs] for cid, obs in self.observations.items()
        }}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observations = {
            cid: [self.ctx.observe(rnd, cid, g, u, n) for rnd, g, u, n in obs] for cid, obs in state["observations"].items()
        }

    def _scores(self, final: FinalState) -> tuple[torch.Tensor, torch.Tensor]:
        p, truth = self.attack.params, self.truth
        seed = derive_seed(self.ctx.root, "attack", self.attack.registry_name)
        if p.position == "outsider":
            parts = [truth.records(c) for c in truth.honest()]
            pool = TensorData(torch.cat([d.x for d in parts]), torch.cat([d.y for d in parts]))
            candidates, population, is_member = self._split(pool, "outsider")
            obs = ModelObservation(self.ctx.model, final.global_params.clone(), population)
            return checked_scores(self.attack, "score", self.attack.score(obs, candidates, seed), len(candidates), self.ctx.path), is_member
        scores, labels = [], []
        for cid, observed in self.observations.items():
            if not observed:
                raise RuntimeError(f"{self.attack.registry_name}: client {cid} was never observed; check rounds")
            candidates, _, is_member = self._split(truth.records(cid), cid)
            scores.append(checked_scores(self.attack, "score_rounds", self.attack.score_rounds(observed, candidates, seed),
                                         len(candidates), self.ctx.path))
            labels.append(is_member)
        return torch.cat(scores), torch.cat(labels)

    def finish(self, final: FinalState) -> AttackOutcome:
        from ...metrics.membership import membership_metrics
        from ...privacy.audit import jagielski_epsilon_lower_bound
        from ...rundir import SCORES, scores_csv

        p = self.attack.params
        scores, is_member = self._scores(final)
        metrics = membership_metrics(scores, is_member)
        bound = jagielski_epsilon_lower_bound(
            scores.numpy(), is_member.numpy(), delta=audit_delta(final.privacy), alpha=0.05, bonferroni=True
        )  # the threshold is chosen on the same scores: correct for every threshold tried
        metrics["privacy.epsilon_lower_bound"] = float(bound.epsilon)
        files = {SCORES: scores_csv(scores, is_member)}
        observed = sum(len(v) for v in self.observations.values()) if p.position == "server" else None
        table = [{"position": p.position, "candidates": len(is_member), "uploads_observed": observed,
                  **{k.split(".", 1)[1]: v for k, v in metrics.items()}}]
        return AttackOutcome("membership", metrics, table, files)


class CanaryAuditDriver(Stateless):
    """The one-run canary audit (Steinke, Nasr & Jagielski 2023; :mod:`fllab.attacks.membership.canary`).

    Planting happens when the driver is built (after partitioning and data poisoning, before
    round 0): the attack crafts ``canaries`` canaries for the audited (honest) client (consuming
    some of its records, which leave its data), and each canary is appended to the client's data
    independently with probability 1/2 (the draws derive from the root seed).  After training the
    attack scores every canary from the outsider's observation (the final model; the test split
    as population) and the driver counts its guesses against the inclusion truth.  Membership
    attacks in the same scenario do not count the planted canaries as members
    (:meth:`Truth.records`)."""

    def __init__(self, attack: Any, truth: Truth, ctx: DriverContext):
        self.attack, self.truth, self.ctx = attack, truth, ctx
        p = attack.params
        if p.client >= len(truth.client_data):
            raise ConfigError(f"client {p.client} does not exist; the federation has {len(truth.client_data)} clients", f"{ctx.path}.client")
        data = truth.client_data[p.client]
        gen = torch_gen(ctx.root, "attack", attack.registry_name, "canaries")
        try:
            self.canaries, consumed = attack.craft_canaries(data.to("cpu"), truth.num_classes, gen)
        except ValueError as err:
            raise ConfigError(f"{err} (client {p.client})", f"{ctx.path}.canaries") from None
        self.inserted = torch.rand(len(self.canaries), generator=gen) < 0.5
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[consumed] = False
        rest = data.subset(keep.nonzero().squeeze(1).to(data.x.device))
        planted = self.canaries.subset(self.inserted.nonzero().squeeze(1)).to(data.x.device)
        truth.client_data[p.client] = TensorData(torch.cat([rest.x, planted.x]), torch.cat([rest.y, planted.y]))
        truth.planted[p.client] = truth.planted.get(p.client, 0) + len(planted)
        self.client, self.planted = p.client, len(planted)

    def on_round(self, view: RoundView) -> None:
        """The audit looks only at the final model."""

    def finish(self, final: FinalState) -> AttackOutcome:
        from ...metrics.membership import auc
        from ...privacy.audit import one_run_epsilon_from_scores
        from ...rundir import SCORES, scores_csv

        p = self.attack.params
        obs = ModelObservation(self.ctx.model, final.global_params.clone(), self.truth.test)
        scores = self.attack.score_canaries(obs, self.canaries).detach().double().cpu()
        audit = one_run_epsilon_from_scores(
            scores.numpy(), self.inserted.numpy(), p.guess_members, p.guess_nonmembers, audit_delta(final.privacy), p.beta
        )
        metrics = {"privacy.epsilon_lower_bound_one_run": audit.epsilon}
        inserted = int(self.inserted.sum())
        table = [{"client": p.client, "kind": p.kind, "canaries": audit.m, "inserted": inserted,
                  "guesses": audit.guesses, "correct": audit.correct,
                  "canary_auc": auc(scores, self.inserted) if 0 < inserted < audit.m else None,
                  "epsilon_lower_bound_one_run": audit.epsilon}]
        return AttackOutcome("audit", metrics, table, {SCORES: scores_csv(scores, self.inserted)})
