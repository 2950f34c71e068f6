"""Engine-side drivers that put server-position attacks to work.

A driver is trusted code: it sees the engine's truth (which examples a client used), builds the
attack's observation from what the server legitimately sees, runs the attack, and scores the
result against the truth.  The attack itself only ever holds the observation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..seeding import derive_seed, numpy_gen, torch_gen
from ..types import ClientResult, TensorData, UpdateObservation

if TYPE_CHECKING:
    from .engine import AttackOutcome, Engine


@dataclass(frozen=True)
class Upload:
    """One vector the server receives: a client's update, or under secure aggregation the
    weighted mean of a group's updates (``members`` are positions in the round's sample)."""

    members: tuple[int, ...]
    update: torch.Tensor
    num_examples: int


@dataclass
class RoundView:
    """One round as the server saw it: the uploads after client-side defenses, poisoning and
    any secure-aggregation grouping; ``results`` hold the engine's truth about each client."""

    round: int
    sampled: list[int]
    results: Sequence[ClientResult]
    uploads: list[Upload]
    global_params: torch.Tensor  # the weights the server sent this round


class InversionDriver:
    """At ``params.round``, reconstruct the uploads of ``params.targets`` honest sampled clients
    (chosen by a seeded draw) and score them: PSNR, SSIM, LPIPS, label accuracy after optimal
    matching (:func:`fllab.metrics.image.score_reconstructions`)."""

    def __init__(self, attack: Any, engine: "Engine"):
        self.attack = attack
        self.engine = engine
        self.outcome: "AttackOutcome | None" = None

    def on_round(self, view: RoundView) -> None:
        p = self.attack.params
        if view.round != p.round:
            return
        eng = self.engine
        honest = [u for u in view.uploads if all(view.sampled[m] not in eng.malicious for m in u.members)]
        order = numpy_gen(eng.root, "attack", self.attack.registry_name, "targets").permutation(len(honest))
        picks = [honest[i] for i in order[: p.targets]]
        if not picks:
            return
        observations, truths, seeds = [], [], []
        for upload in picks:
            ids = [view.sampled[m] for m in upload.members]
            parts = [eng.client_data[view.sampled[m]].subset(view.results[m].extras["used_index"].to(eng.client_data[view.sampled[m]].x.device))
                     for m in upload.members]
            truths.append(TensorData(torch.cat([t.x for t in parts]), torch.cat([t.y for t in parts])))
            observations.append(
                UpdateObservation(
                    round=view.round, client_id=ids[0], model=eng.model_handle,
                    global_params=view.global_params.clone(), update=upload.update.clone(), kind=eng.setup.algorithm.sends,
                    hyper=eng.setup.algorithm.public_hyper(upload.num_examples),
                )
            )
            seeds.append(derive_seed(eng.root, "attack", self.attack.registry_name, *ids))
        num_images = len(truths[0])
        if any(len(t) != num_images for t in truths):
            raise RuntimeError("inversion targets used different numbers of examples; give the clients equal data")
        labels = [t.y for t in truths] if getattr(p, "labels", "recovered") == "known" else None
        if hasattr(self.attack, "reconstruct_many"):
            recs = self.attack.reconstruct_many(observations, num_images, labels, seeds)
        else:
            recs = [self.attack.reconstruct(o, num_images, None if labels is None else labels[i], s)
                    for i, (o, s) in enumerate(zip(observations, seeds))]
        self.outcome = score_inversion(self.attack, observations, recs, truths, eng.sc.evaluation)

    def finish(self) -> "AttackOutcome | None":
        return self.outcome


def random_guess_psnr(x: torch.Tensor, seed: int) -> float:
    """Mean PSNR of uniform-noise guesses against the targets: the no-information baseline a
    defense should push an attack down to."""
    from ..metrics.image import psnr

    gen = torch.Generator().manual_seed(seed)
    return float(psnr(torch.rand(x.shape, generator=gen), x).mean())


def score_inversion(attack: Any, observations, recs, truths, evaluation: Any) -> "AttackOutcome":
    from ..metrics.image import score_reconstructions
    from ..report.images import image_grid_png
    from .engine import AttackOutcome

    use_lpips = getattr(attack.params, "lpips", True)
    rows, per_target, files = [], [], {}
    for obs, rec, truth in zip(observations, recs, truths):
        score = score_reconstructions(rec.x.cpu(), truth.x.cpu(), rec.y.cpu(), truth.y.cpu(), lpips=use_lpips)
        per_target.append(score)
        row = {"client": obs.client_id, "round": obs.round, "images": len(truth)}
        row.update({k: float(score[k]) for k in ("psnr", "ssim", "lpips", "label_accuracy") if k in score})
        rows.append(row)
        perm = torch.as_tensor(score["permutation"])
        files[f"client{obs.client_id}_reconstruction.png"] = image_grid_png(
            [truth.x.cpu(), rec.x.detach().cpu()[perm]], ["original", "reconstruction"]
        )
    keys = [k for k in ("psnr", "ssim", "lpips", "label_accuracy") if k in rows[0]]
    metrics = {f"inversion.{k}": float(sum(r[k] for r in rows) / len(rows)) for k in keys}
    metrics["inversion.psnr_random_guess"] = random_guess_psnr(torch.cat([t.x.cpu() for t in truths]), observations[0].round)
    files["scores.json"] = json.dumps({"targets": rows, "per_image": [s["per_image"] for s in per_target]}, default=float).encode()
    return AttackOutcome("inversion", metrics, rows, files)


#: delta of the audited bounds when no accounting defense reports one (an undefended run).
DEFAULT_AUDIT_DELTA = 1e-5


def audit_delta(engine: "Engine") -> float:
    """The delta an audit tests against: the accounted one, else :data:`DEFAULT_AUDIT_DELTA`."""
    return float(engine.privacy.get("privacy.delta", DEFAULT_AUDIT_DELTA))


def client_records(engine: "Engine", cid: int) -> TensorData:
    """Client ``cid``'s training data without the canaries an audit planted at its end: the
    records a membership attack's members are drawn from."""
    data = engine.client_data[cid]
    planted = sum(d.planted for d in engine.drivers if isinstance(d, CanaryAuditDriver) and d.client == cid)
    return data.subset(torch.arange(len(data) - planted, device=data.x.device)) if planted else data


class MembershipDriver:
    """Membership inference from either position, scored as AUC / TPR at low FPR plus an
    empirical epsilon lower bound (Jagielski et al. 2020) from the same scores.

    Candidates: ``members`` records of the attacked training data (each target client's data at
    the server position, scored against that client's uploads and pooled; any client's at the
    outsider position) and as many held-out records (the first half of the test split).  The
    outsider's population data is the second half of the test split, disjoint from every
    candidate."""

    def __init__(self, attack: Any, engine: "Engine"):
        self.attack = attack
        self.engine = engine
        self.observations: dict[int, list[UpdateObservation]] = {c: [] for c in attack.params.target_clients}

    def _split(self, pool: TensorData, purpose: object) -> tuple[TensorData, TensorData, torch.Tensor]:
        """``members`` records of ``pool`` and as many from the first half of the test split; the
        second half is the population."""
        eng, p = self.engine, self.attack.params
        rng = numpy_gen(eng.root, "attack", self.attack.registry_name, "candidates", purpose)
        test = eng.test
        half = len(test) // 2
        k = min(p.members, len(pool), half)
        members = pool.subset(torch.as_tensor(np.sort(rng.choice(len(pool), k, replace=False)), device=pool.x.device))
        outside = test.subset(torch.as_tensor(np.sort(rng.choice(half, k, replace=False)), device=test.x.device))
        population = test.subset(torch.arange(half, len(test), device=test.x.device))
        candidates = TensorData(torch.cat([members.x, outside.x]), torch.cat([members.y, outside.y]))
        is_member = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
        return candidates, population, is_member

    def on_round(self, view: RoundView) -> None:
        p = self.attack.params
        if p.position != "server" or (p.rounds is not None and view.round not in p.rounds):
            return
        eng = self.engine
        for upload in view.uploads:
            for cid in (view.sampled[m] for m in upload.members):
                if cid in self.observations:
                    self.observations[cid].append(
                        UpdateObservation(
                            round=view.round, client_id=cid, model=eng.model_handle,
                            global_params=view.global_params.clone(), update=upload.update.clone(),
                            kind=eng.setup.algorithm.sends, hyper=eng.setup.algorithm.public_hyper(upload.num_examples),
                        )
                    )

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        eng, p = self.engine, self.attack.params
        seed = derive_seed(eng.root, "attack", self.attack.registry_name)
        if p.position == "outsider":
            from ..types import ModelObservation

            parts = [client_records(eng, c) for c in range(len(eng.client_data))]
            pool = TensorData(torch.cat([d.x for d in parts]), torch.cat([d.y for d in parts]))
            candidates, population, is_member = self._split(pool, "outsider")
            obs = ModelObservation(eng.model_handle, eng.global_params.clone(), population)
            return self.attack.score(obs, candidates, seed), is_member
        scores, labels = [], []
        for cid, observed in self.observations.items():
            if not observed:
                raise RuntimeError(f"{self.attack.registry_name}: client {cid} was never observed; check rounds")
            candidates, _, is_member = self._split(client_records(eng, cid), cid)
            scores.append(self.attack.score_rounds(observed, candidates, seed))
            labels.append(is_member)
        return torch.cat(scores), torch.cat(labels)

    def finish(self) -> "AttackOutcome | None":
        from ..metrics.membership import membership_metrics
        from ..privacy.audit import jagielski_epsilon_lower_bound
        from ..report.rundir import SCORES, scores_csv
        from .engine import AttackOutcome

        p = self.attack.params
        scores, is_member = self._scores()
        scores = scores.detach().double().cpu()
        metrics = membership_metrics(scores, is_member)
        bound = jagielski_epsilon_lower_bound(
            scores.numpy(), is_member.numpy(), delta=audit_delta(self.engine), alpha=0.05, bonferroni=True
        )  # the threshold is chosen on the same scores: correct for every threshold tried
        metrics["privacy.epsilon_lower_bound"] = float(bound.epsilon)
        files = {SCORES: scores_csv(scores, is_member)}
        observed = sum(len(v) for v in self.observations.values()) if p.position == "server" else None
        table = [{"position": p.position, "candidates": len(is_member), "uploads_observed": observed,
                  **{k.split(".", 1)[1]: v for k, v in metrics.items()}}]
        return AttackOutcome("membership", metrics, table, files)


class CanaryAuditDriver:
    """The one-run canary audit (Steinke, Nasr & Jagielski 2023; :mod:`fllab.attacks.membership.canary`).

    Planting happens when the engine builds the driver (after partitioning, before round 0): the
    attack crafts ``canaries`` canaries for the audited client (consuming some of its records,
    which leave its data), and each canary is appended to the client's data independently with
    probability 1/2 (the draws derive from the root seed).  After training the attack scores
    every canary from the outsider's observation (the final model; the test split as population)
    and the driver counts its guesses against the inclusion truth.  Membership attacks in the
    same scenario do not count the planted canaries as members (:func:`client_records`)."""

    def __init__(self, attack: Any, engine: "Engine"):
        self.attack = attack
        self.engine = engine
        p = attack.params
        path = f"attacks.{engine.setup.attacks.index(attack)}"
        if p.client >= len(engine.client_data):
            raise ConfigError(f"client {p.client} does not exist; the federation has {len(engine.client_data)} clients", f"{path}.client")
        data = engine.client_data[p.client]
        gen = torch_gen(engine.root, "attack", attack.registry_name, "canaries")
        try:
            self.canaries, consumed = attack.craft(data.to("cpu"), engine.bundle.num_classes, gen)
        except ValueError as err:
            raise ConfigError(f"{err} (client {p.client})", f"{path}.canaries") from None
        self.inserted = torch.rand(len(self.canaries), generator=gen) < 0.5
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[consumed] = False
        rest = data.subset(keep.nonzero().squeeze(1).to(data.x.device))
        planted = self.canaries.subset(self.inserted.nonzero().squeeze(1)).to(data.x.device)
        engine.client_data[p.client] = TensorData(torch.cat([rest.x, planted.x]), torch.cat([rest.y, planted.y]))
        self.client, self.planted = p.client, len(planted)

    def on_round(self, view: RoundView) -> None:
        """The audit looks only at the final model."""

    def finish(self) -> "AttackOutcome":
        from ..metrics.membership import auc
        from ..privacy.audit import one_run_epsilon_from_scores
        from ..report.rundir import SCORES, scores_csv
        from ..types import ModelObservation
        from .engine import AttackOutcome

        eng, p = self.engine, self.attack.params
        obs = ModelObservation(eng.model_handle, eng.global_params.clone(), eng.test)
        scores = self.attack.score(obs, self.canaries).detach().double().cpu()
        audit = one_run_epsilon_from_scores(
            scores.numpy(), self.inserted.numpy(), p.guess_members, p.guess_nonmembers, audit_delta(eng), p.beta
        )
        metrics = {"privacy.epsilon_lower_bound_one_run": audit.epsilon}
        inserted = int(self.inserted.sum())
        table = [{"client": p.client, "kind": p.kind, "canaries": audit.m, "inserted": inserted,
                  "guesses": audit.guesses, "correct": audit.correct,
                  "canary_auc": auc(scores, self.inserted) if 0 < inserted < audit.m else None,
                  "epsilon_lower_bound_one_run": audit.epsilon}]
        return AttackOutcome("audit", metrics, table, {SCORES: scores_csv(scores, self.inserted)})


DRIVERS = {"inversion": InversionDriver, "membership": MembershipDriver, "audit": CanaryAuditDriver}
