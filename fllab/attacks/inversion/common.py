"""Shared pieces of the optimisation-based gradient inversion attacks.

A curious server holds one client's upload (:class:`~fllab.types.UpdateObservation`) and the
weights it sent.  It rebuilds the model from the public :class:`~fllab.types.ModelHandle`,
recomputes what the client computed (the gradient of the *mean* cross-entropy over the batch)
for a candidate batch, and moves the candidate until that gradient matches the observed one.

Everything here is a pure function of tensors, written for one target and lifted to K
independent targets with :func:`torch.func.vmap`: reconstructing K uploads (or K restarts) is one
batched computation whose numbers equal K separate runs.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from ...errors import CapabilityError, ConfigError
from ...models.victim import VictimModel, cosine_distance
from ...seeding import torch_gen
from ...types import PublicHyperParams, UpdateKind, UpdateObservation
from ..base import AdamInversionParams, Init, InversionParams
from .labels import recover_labels

__all__ = ["Init", "VictimModel", "cosine_distance"]  # re-exported: the attacks name them


@dataclass(frozen=True)
class InversionResult:
    """A reconstruction: ``x`` (B, C, H, W) inside the observation's data range, ``y`` (B,) the
    labels the reconstruction used (given or recovered), ``history`` loss curves (one float per
    iteration) and other per-run figures."""

    x: Tensor
    y: Tensor
    history: dict[str, list[float]] = field(default_factory=dict)


def momentum_count(steps: int, momentum: float) -> float:
    """How often ``steps`` steps of heavy-ball SGD (``torch.optim.SGD``: ``buf = m * buf + g``,
    ``w -= lr * buf``) count a gradient that stays the same: ``sum_{k=1..s} (1 - m^k) / (1 - m)``,
    which is ``s`` without momentum."""
    s = max(1, int(steps))
    if momentum == 0.0:
        return float(s)
    return sum((1.0 - momentum**k) / (1.0 - momentum) for k in range(1, s + 1))


def averaged_gradient(update: Tensor, start: Tensor, hyper: PublicHyperParams) -> Tensor:
    """The average local gradient behind a weight change ``update`` made by local SGD from the
    weights ``start`` with the public recipe ``hyper``.

    ``s`` steps at step size ``lr``, momentum ``m`` and weight decay ``wd`` on gradients ``g_t``
    move the weights by ``-lr * sum_t c_t (g_t + wd * w_t)`` with momentum weights ``c_t``; taking
    the gradients and weights as constant gives ``-update / (lr * momentum_count(s, m)) - wd *
    start``: exact for one step, a proxy for more (Geiping et al. 2020, Sec. 5, show that
    inverting it still leaks the images).  Only the weight-decay term changes the direction (and
    so the cosine objectives); the momentum count fixes the scale that label counting reads.
    """
    g = -update / (hyper.lr * momentum_count(hyper.local_steps, hyper.momentum))
    if hyper.weight_decay:
        g = g - hyper.weight_decay * start
    return g


def observed_gradient(obs: UpdateObservation) -> Tensor:
    """The flat batch-loss gradient an observation reveals.

    A FedSGD ``gradient`` update is the gradient itself.  A FedAvg ``delta`` and a HyperFL
    ``hypernetwork`` upload (the hypernetwork's change over the client's local steps) are weight
    changes, turned into their average local gradient by :func:`averaged_gradient`.
    """
    kind = UpdateKind(obs.kind)
    if kind is UpdateKind.GRADIENT:
        return obs.update
    if kind in (UpdateKind.DELTA, UpdateKind.HYPERNETWORK):
        return averaged_gradient(obs.update, obs.global_params.to(obs.update), obs.hyper)
    raise CapabilityError(f"gradient inversion needs a gradient or weight update; the observation holds a {kind.value}")


def check_kinds(attack: str, needs: frozenset[str], observations: Sequence[UpdateObservation]) -> None:
    for obs in observations:
        if UpdateKind(obs.kind).value not in needs:
            allowed = " or ".join(sorted(needs))
            raise CapabilityError(f"{attack} needs a {allowed} update; the observation holds a {UpdateKind(obs.kind).value}")


def squared_distance(gs: Sequence[Tensor], ts: Sequence[Tensor]) -> Tensor:
    """``|g - t|^2`` over all parameters, the matching loss of Deep Leakage from Gradients
    (Zhu et al. 2019, eq. 4)."""
    return torch.stack([(g - t).pow(2).sum() for g, t in zip(gs, ts)]).sum()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation ``mean|dx| + mean|dy|`` of an image batch (B, C, H, W), the
    prior of Geiping et al. 2020 (inversefed ``metrics.total_variation``)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def initial_images(seed: int, shape: tuple[int, ...], data_range: tuple[float, float], init: Init) -> Tensor:
    """Random starting images of ``shape`` from ``seed`` alone (CPU generator, so every device
    starts from the same numbers).

    ``randn`` is centred in the data range with a quarter of its width as standard deviation
    (a standard normal in the mean/std-normalised space the reference implementations work in);
    ``rand`` is uniform over the range.
    """
    lo, hi = data_range
    g = torch_gen(seed, "inversion", "init")
    if init == "randn":
        return (lo + hi) / 2 + (hi - lo) / 4 * torch.randn(shape, generator=g)
    return lo + (hi - lo) * torch.rand(shape, generator=g)


@dataclass(frozen=True)
class Problem:
    """K reconstruction targets over one architecture, ready for a batched solver.

    ``params`` is (d,) when every target shares the global weights (the usual case: one round),
    else (K, d); ``gradients`` is (K, d).
    """

    victim: VictimModel
    params: Tensor
    gradients: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    data_range: tuple[float, float]
    kind: UpdateKind

    @property
    def shared_params(self) -> bool:
        return self.params.dim() == 1

    @property
    def num_targets(self) -> int:
        return int(self.gradients.shape[0])

    def repeat(self, r: int) -> tuple[Tensor, Tensor]:
        """(params, gradients) with every target repeated ``r`` times in a row (restarts)."""
        grads = self.gradients.repeat_interleave(r, dim=0)
        params = self.params if self.shared_params else self.params.repeat_interleave(r, dim=0)
        return params, grads

    @property
    def params_in_dim(self) -> int | None:
        return None if self.shared_params else 0


def build_problem(
    attack: str, needs: frozenset[str], observations: Sequence[UpdateObservation]
) -> Problem:
    """Check that the observations can be inverted together and stack what the solver needs."""
    if not observations:
        raise ValueError(f"{attack}: no observation to reconstruct")
    check_kinds(attack, needs, observations)
    first = observations[0]
    for obs in observations[1:]:
        same = (
            tuple(obs.model.input_shape) == tuple(first.model.input_shape)
            and obs.model.num_classes == first.model.num_classes
            and obs.global_params.numel() == first.global_params.numel()
            and tuple(obs.data_range) == tuple(first.data_range)
            and UpdateKind(obs.kind) is UpdateKind(first.kind)
        )
        if not same:
            raise ValueError(f"{attack}: observations reconstructed together must share the architecture, data range and update kind")
    device, dtype = first.global_params.device, first.global_params.dtype
    victim = VictimModel(first.model.build, device, dtype)
    if victim.num_params != first.global_params.numel():
        raise ValueError(
            f"{attack}: the model has {victim.num_params} parameters, the observation {first.global_params.numel()}"
        )
    params = [obs.global_params.to(device=device, dtype=dtype) for obs in observations]
    shared = all(p is params[0] or torch.equal(p, params[0]) for p in params[1:])
    stacked_params = params[0] if shared else torch.stack(params)
    gradients = torch.stack([observed_gradient(obs).to(device=device, dtype=dtype) for obs in observations])
    return Problem(
        victim=victim,
        params=stacked_params,
        gradients=gradients,
        input_shape=tuple(int(s) for s in first.model.input_shape),
        num_classes=int(first.model.num_classes),
        data_range=(float(first.data_range[0]), float(first.data_range[1])),
        kind=UpdateKind(first.kind),
    )


def normalise_labels(labels: Sequence[Tensor | None] | None, k: int, num_images: int) -> list[Tensor | None]:
    if labels is None:
        return [None] * k
    if len(labels) != k:
        raise ValueError(f"got {len(labels)} label tensors for {k} observations")
    out: list[Tensor | None] = []
    for y in labels:
        if y is not None:
            y = torch.as_tensor(y).reshape(-1).long()
            if y.numel() != num_images:
                raise ValueError(f"got {y.numel()} labels for {num_images} images")
        out.append(y)
    return out


def stack_history(curves: Mapping[str, Tensor | Sequence[Tensor]], rows: Tensor) -> list[dict[str, list[float]]]:
    """Per-target loss curves: ``curves[name]`` is a (T, N) tensor (or a list over iterations of
    (N,) tensors), ``rows`` (K,) picks each target's row; one host transfer in all."""
    names = list(curves)
    table = torch.stack(
        [(c if isinstance(c, Tensor) else torch.stack(list(c)))[:, rows].T for c in curves.values()], dim=1
    ).cpu().tolist()  # (K, names, T)
    return [dict(zip(names, per_target)) for per_target in table]


class CurveRecorder:
    """Per-iteration figures (one (N,) tensor per name and iteration) written into buffers of
    ``iterations`` rows allocated at the first iteration, so that a run's history allocates
    nothing per iteration and keeps no small tensor alive per iteration.

    (Appending a fresh clone per iteration does: with glibc's allocator those long-lived tiny
    blocks land in the holes the iteration's large temporaries (activations, gradients) leave, so
    the next iteration's temporaries no longer fit and the heap grows by about their size every
    iteration, ~4 MB for Inverting Gradients on 150 images, unboundedly.)
    """

    def __init__(self, iterations: int):
        self.iterations = iterations
        self.recorded = 0
        self.curves: dict[str, Tensor] = {}

    def record(self, figures: Mapping[str, Tensor]) -> None:
        """Write the next iteration's figures (copied: a figure may alias a variable)."""
        with torch.no_grad():
            for name, value in figures.items():
                buf = self.curves.get(name)
                if buf is None:
                    buf = self.curves[name] = value.new_empty((self.iterations, *value.shape))
                buf[self.recorded].copy_(value.detach())
        self.recorded += 1


def labels_for(problem: Problem, labels: list[Tensor | None], num_images: int) -> Tensor:
    """(K, B) labels: the known ones where given, else recovered from the last layer."""
    device = problem.gradients.device
    out = torch.empty(problem.num_targets, num_images, dtype=torch.long, device=device)
    missing = [k for k, y in enumerate(labels) if y is None]
    if missing and problem.kind is UpdateKind.HYPERNETWORK:
        raise ConfigError(
            "a hypernetwork upload does not hold the private classifier head, so the labels cannot be read off "
            "its last layer; set labels: known", "attacks",
        )
    if missing:
        idx = torch.tensor(missing, device=device)
        params = problem.params if problem.shared_params else problem.params[idx]
        out[idx] = recover_labels(problem.gradients[idx], params, problem.victim.shapes, problem.num_classes, num_images)
    for k, y in enumerate(labels):
        if y is not None:
            out[k] = y.to(device)
    return out


def stacked_updates(problem: Problem, observations: Sequence[UpdateObservation]) -> Tensor:
    """The observed weight changes (K, d) as they came (not turned into gradients), on the
    problem's device and dtype."""
    ref = problem.gradients
    return torch.stack([obs.update.to(device=ref.device, dtype=ref.dtype) for obs in observations])


# ---------------------------------------------------------------------------------------- search
Variable = tuple[Tensor, float, bool, tuple[float, float]]  # leaf tensor, step size, signed, box
Objective = Callable[..., tuple[Tensor, tuple[Tensor, dict[str, Tensor]]]]


def step_milestones(iterations: int) -> list[int]:
    """Learning-rate drops at 3/8, 5/8 and 7/8 of the run (inversefed's ``lr_decay``)."""
    return [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]


def adam_solve(
    step: Callable[..., tuple[tuple[Tensor, ...], tuple[Tensor, dict[str, Tensor]]]],
    variables: Sequence[Variable],
    iterations: int,
    lr_decay: bool,
) -> dict[str, Tensor]:
    """Run Adam on ``variables`` (leaf tensor, step size, signed, box) for ``iterations`` steps.

    ``step(*values)`` returns ``(grads, (loss, curves))`` for the current values (one gradient per
    variable, ``curves`` a dict of per-row figures).  The step sizes drop tenfold at 3/8, 5/8 and
    7/8 of the run when ``lr_decay`` (one Adam with a parameter group per variable: the same
    numbers as one Adam and one scheduler per variable); after every step each variable is
    clamped to its box.  Returns the curves, one (iterations, N) tensor per name (``loss``
    first), row t taken at the values iteration t started from (:class:`CurveRecorder`).
    """
    leaves = [v for v, *_ in variables]
    optimizer = torch.optim.Adam([{"params": [v], "lr": lr} for v, lr, _, _ in variables])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=step_milestones(iterations) if lr_decay else [], gamma=0.1
    )
    recorder = CurveRecorder(iterations)
    for _ in range(iterations):
        grads, (loss, figures) = step(*leaves)
        recorder.record({"loss": loss, **figures})
        for (v, _, signed, _), g in zip(variables, grads):
            v.grad = g.sign() if signed else g
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for v, _, _, (lo, hi) in variables:
                v.clamp_(lo, hi)
    return recorder.curves


def best_restarts(score: Tensor, k: int, r: int) -> Tensor:
    """Row index of each target's best restart (lowest ``score``, laid out (K * R,))."""
    return torch.arange(k, device=score.device) * r + score.view(k, r).argmin(dim=1)


class BatchedInversion(ABC):
    """What every inversion attack shares.  ``reconstruct_many(observations, num_images, labels,
    seeds)`` checks and stacks the K observations (:func:`build_problem`) and hands them to the
    attack's ``invert``, which solves all K targets as one batched computation with the same
    numbers as K separate calls; ``reconstruct`` is its one-target case."""

    registry_name: str
    needs: frozenset[str]

    def __init__(self, params: InversionParams):
        self.params = params

    def reconstruct(self, obs: UpdateObservation, num_images: int, labels: Tensor | None, seed: int) -> InversionResult:
        return self.reconstruct_many([obs], num_images, [labels], [seed])[0]

    def reconstruct_many(
        self,
        observations: Sequence[UpdateObservation],
        num_images: int,
        labels: Sequence[Tensor | None] | None,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        """Reconstruct K uploads of one architecture at once; target k uses ``seeds[k]`` and gives
        the same result as ``reconstruct(observations[k], ..., seeds[k])``."""
        problem = build_problem(self.registry_name, self.needs, observations)
        if len(seeds) != problem.num_targets:
            raise ValueError(f"got {len(seeds)} seeds for {problem.num_targets} observations")
        given = normalise_labels(labels, problem.num_targets, num_images)
        return self.invert(problem, given, observations, num_images, seeds)

    @abstractmethod
    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        """The attack proper: K targets, their known labels (None where unknown), seeds."""


class AdamInversion(BatchedInversion):
    """An attack that searches the candidate images with Inverting Gradients' optimiser
    (:class:`~fllab.attacks.base.AdamInversionParams`), possibly jointly with other unknowns."""

    params: AdamInversionParams

    def search(
        self,
        problem: Problem,
        y: Tensor,
        seeds: Sequence[int],
        objective: Objective,
        inputs: Sequence[Tensor],
        in_dims: Sequence[int | None],
        unknowns: Sequence[Variable] = (),
    ) -> list[InversionResult]:
        """Run ``restarts`` searches per target from :func:`initial_images` and keep the best.

        ``objective(x, *unknowns, *inputs) -> (total, (match, figures))`` is one row's loss; it is
        ``vmap``-ed over the K * R rows (target-major, restarts of a target next to each other).
        ``inputs`` are per target (in_dim 0: repeated for the restarts here) or shared (None);
        ``unknowns`` are further variables searched with the images, one row per K * R.  The
        images (and unknowns) start a row each and of a target's restarts the one with the lowest
        ``match`` at its final images (projected onto the data range) is returned, with its loss
        curves and every restart's match (``restart_match``).
        """
        p = self.params
        k, r, b = problem.num_targets, p.restarts, int(y.shape[1])
        lo, hi = problem.data_range
        ref = problem.gradients
        shape = (r, b, *problem.input_shape)
        x = torch.cat([initial_images(s, shape, problem.data_range, p.init) for s in seeds]).to(ref.device, ref.dtype)
        rows = [t.repeat_interleave(r, dim=0) if d == 0 else t for t, d in zip(inputs, in_dims)]
        variables = [(x, p.lr, p.signed, (lo, hi) if p.boxed else (-math.inf, math.inf)), *unknowns]
        dims = (0,) * len(variables) + tuple(in_dims)
        batched = vmap(grad_and_value(objective, argnums=tuple(range(len(variables))), has_aux=True), in_dims=dims)

        def step(*values: Tensor):
            grads, (loss, (_, figures)) = batched(*values, *rows)
            return grads, (loss, figures)

        curves = adam_solve(step, variables, p.iterations, p.lr_decay)
        with torch.no_grad():
            x_out = x.detach().clamp(lo, hi)
            _, (score, _) = vmap(objective, in_dims=dims)(x_out, *(v.detach() for v, *_ in unknowns), *rows)
        best = best_restarts(score, k, r)
        histories = stack_history(curves, best)
        scores = score.view(k, r).cpu().tolist()
        return [
            InversionResult(x=x_out[best[i]], y=y[i], history={**histories[i], "restart_match": scores[i]})
            for i in range(k)
        ]
