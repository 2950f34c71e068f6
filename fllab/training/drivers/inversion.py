"""The inversion driver: the curious server reconstructs honest clients' uploads."""
from __future__ import annotations

import json
import warnings
from typing import Any

import torch

from ...errors import ConfigError
from ...hooks import has_hook
from ...seeding import derive_seed, numpy_gen
from ...types import TensorData
from .contract import checked_reconstructions
from .base import AttackOutcome, DriverContext, FinalState, RoundView, Truth


class InversionDriver:
    """At ``params.round``, reconstruct the uploads of ``params.targets`` honest sampled clients
    (chosen by a seeded draw; an upload that holds a malicious client's update is never a target)
    and score them: PSNR, SSIM, LPIPS, label accuracy after optimal matching
    (:func:`fllab.metrics.image.score_reconstructions`).  Targets of different sizes are
    reconstructed in groups of equal size.

    Refused before training (:meth:`check`): an attacked round the run never reaches, more
    targets than honest uploads can reach the server in a round, and ``dp_sgd`` where Poisson
    sampling puts a random subset of a client's records in its upload.  A round that holds fewer
    honest uploads than ``targets`` (malicious clients sampled, secure-aggregation groups) attacks
    those it has, with a one-line warning."""

    def __init__(self, attack: Any, truth: Truth, ctx: DriverContext):
        self.attack, self.truth, self.ctx = attack, truth, ctx
        self.outcome: AttackOutcome | None = None
        self.check()

    def check(self) -> None:
        """The refusals of the class docstring, as ConfigErrors naming the field and the limit."""
        p, truth, ctx, name = self.attack.params, self.truth, self.ctx, self.attack.registry_name
        fed = ctx.federation
        if fed is None:
            return
        if p.round >= fed.rounds:
            raise ConfigError(f"round {p.round} is never reached: the run has {fed.rounds} rounds (0 to {fed.rounds - 1})", f"{ctx.path}.round")
        limit = min(fed.per_round, len(truth.honest()))
        if p.targets > limit:
            raise ConfigError(
                f"{p.targets} targets, but at most {limit} honest uploads reach the server in a round ({fed.per_round} clients "
                f"per round, {len(truth.malicious)} malicious); set targets to at most {limit}", f"{ctx.path}.targets",
            )
        batch = getattr(getattr(ctx.algorithm, "params", None), "batch_size", None)
        largest = max(len(d) for d in truth.client_data)
        if batch is not None and batch < largest and any(d.registry_name == "dp_sgd" for d in ctx.defenses):
            raise ConfigError(
                f"{name} under dp_sgd: Poisson sampling at rate batch_size/records ({batch}/{largest}) puts a random subset "
                f"of a client's records in its upload, which cannot be scored as the client's batch; give every client at "
                f"most {batch} records (rate 1), or drop dp_sgd or the attack", ctx.path,
            )

    def on_round(self, view: RoundView) -> None:
        p, truth, ctx = self.attack.params, self.truth, self.ctx
        if view.round != p.round:
            return
        honest = [u for u in view.uploads if all(view.sampled[m] not in truth.malicious for m in u.members)]
        if len(honest) < p.targets:
            warnings.warn(f"{ctx.path}.targets = {p.targets}, but round {p.round} has {len(honest)} honest uploads; "
                          f"attacking {len(honest)}", RuntimeWarning, stacklevel=2)
        order = numpy_gen(ctx.root, "attack", self.attack.registry_name, "targets").permutation(len(honest))
        picks = [honest[i] for i in order[: p.targets]]
        if not picks:
            return
        observations, truths, seeds = [], [], []
        for upload in picks:
            ids = [view.sampled[m] for m in upload.members]
            parts = []
            for m in upload.members:
                data = truth.client_data[view.sampled[m]]
                parts.append(data.subset(view.results[m].extras["used_index"].to(data.x.device)))
            truths.append(TensorData(torch.cat([t.x for t in parts]), torch.cat([t.y for t in parts])))
            observations.append(ctx.observe(view.round, ids[0], view.global_params, upload.update, upload.num_examples))
            seeds.append(derive_seed(ctx.root, "attack", self.attack.registry_name, *ids))
        recs: list[Any] = [None] * len(picks)
        for size in sorted({len(t) for t in truths}):  # one batched call per target size
            group = [i for i, t in enumerate(truths) if len(t) == size]
            for i, rec in zip(group, self._reconstruct([observations[i] for i in group], size,
                                                       [truths[i].y for i in group] if p.labels == "known" else None,
                                                       [seeds[i] for i in group])):
                recs[i] = rec
        self.outcome = score_inversion(self.attack, observations, recs, truths)

    def _reconstruct(self, observations: list[Any], num_images: int, labels: list[torch.Tensor] | None, seeds: list[int]) -> list[TensorData]:
        """The attack's reconstructions of uploads of ``num_images`` images each, checked against
        the contract (one TensorData per upload, images of the model's input shape)."""
        if has_hook(self.attack, "reconstruct_many"):
            hook, recs = "reconstruct_many", self.attack.reconstruct_many(observations, num_images, labels, seeds)
        else:
            hook = "reconstruct"
            recs = [self.attack.reconstruct(o, num_images, None if labels is None else labels[i], s)
                    for i, (o, s) in enumerate(zip(observations, seeds))]
        shape = (num_images, *self.ctx.model.input_shape)
        return checked_reconstructions(self.attack, hook, recs, [shape] * len(observations), self.ctx.path)

    def finish(self, final: FinalState) -> AttackOutcome | None:
        return self.outcome

    def state_dict(self) -> dict[str, Any]:
        """The scored outcome once the attacked round has passed (None before)."""
        o = self.outcome
        return {"outcome": None if o is None else {"family": o.family, "metrics": o.metrics, "table": o.table, "files": o.files}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        o = state["outcome"]
        self.outcome = None if o is None else AttackOutcome(o["family"], dict(o["metrics"]), list(o["table"]), dict(o["files"]))


def random_guess_psnr(x: torch.Tensor, seed: int) -> float:
    """Mean PSNR of uniform-noise guesses against the targets: the no-information baseline a
    defense should push an attack down to."""
    from ...metrics.image import psnr

    gen = torch.Generator().manual_seed(seed)
    return float(psnr(torch.rand(x.shape, generator=gen), x).mean())


def score_inversion(attack: Any, observations, recs, truths) -> AttackOutcome:
    from ...metrics.image import score_reconstructions
    from ...report.images import image_grid_png

    use_lpips = attack.params.lpips
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
