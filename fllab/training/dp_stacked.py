"""DP-SGD of K clients as one stacked computation: the ``dp_sgd`` defense in the vectorized executor.

Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS (Algorithm 1), exactly as
:func:`fllab.defenses.dp_train.dp_sgd_train` runs it through Opacus, for every client at once:

1. client k's generator first seeds its noise generator, then draws every step's **Poisson batch**
   (each of its ``n_k`` records with probability ``q_k``; :func:`~fllab.defenses.dp_train.poisson_batch`),
   the same draws in the same order as the serial trainer;
2. **per-sample gradients** of the cross-entropy over clients x samples: for MLPs from the stacked
   kernel's hand-written backward (:class:`~fllab.training.stacked.StackedMLP`): a Linear layer's
   per-sample gradient is the outer product ``g_i x_i^T`` (and ``g_i`` for the bias), so its squared
   norm is ``|g_i|^2 (|x_i|^2 + 1)`` and the clipped sum is one ``bmm`` of the clip-scaled output
   gradients -- the per-sample gradients are never materialised (the "ghost norm" identity,
   Goodfellow 2015, "Efficient Per-Example Gradient Computations", arXiv:1510.01799); for other
   models from ``torch.func`` (``vmap`` over clients of ``vmap`` over samples of ``grad``);
3. **flat clipping** of each per-sample gradient to ``C``: factor ``min(1, C / (|g_i| + 1e-6))``
   (Opacus's);
4. the sum of clipped gradients plus N(0, (sigma C)^2) per coordinate (Opacus's draw: one
   ``torch.normal`` per parameter tensor from the client's noise generator -- runs of tensors
   merged into one call where the generator yields the same numbers, :func:`draw_groups` --
   in place in one (K, d) buffer), divided by the **expected** batch size ``q_k n_k``; an empty batch still releases the noise.  Momentum and
   weight decay are torch SGD's, applied after, as with Opacus's wrapped optimizer.

A client's steps are ``steps`` applications of the sampled Gaussian mechanism ``(sigma, q, steps)``
-- the segment the serial trainer reports, so the accountants give the same epsilon.  The
trajectory follows the serial one up to float rounding (another summation order), which the
clipping factors and the sampled noise carry on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from ..models.victim import VictimModel
from .stacked import BatchSchedule, StackedMLP, gather, run_sgd, stacked_views

#: Opacus's guard against dividing by a zero per-sample norm.
_EPS = 1e-6


@dataclass(frozen=True)
class PoissonPlan:
    """Every client's Poisson batches (``schedule``), the seeds of their noise generators and the
    slot weights ``1 / (q_k n_k)`` (T, K, B) of the expected-batch-size mean."""

    schedule: BatchSchedule
    noise_seeds: list[int]
    inv_expected: Tensor  # (K,) 1 / (q_k n_k)

    @property
    def scale(self) -> Tensor:
        return self.schedule.weight * self.inv_expected.view(1, -1, 1)


def poisson_plan(members: list[Tensor], sample_rates: Sequence[float], steps: Sequence[int], gens: Sequence[torch.Generator]) -> PoissonPlan:
    """Draw what :func:`~fllab.defenses.dp_train.dp_sgd_train` draws from each client's generator,
    in its order: the noise seed, then ``steps[k]`` Poisson batches of the client's records
    (:func:`~fllab.defenses.dp_train.poisson_batch`: ``rand(n) < q`` per step; one ``rand(steps, n)``
    consumes the CPU generator identically).  A batch's records keep their order, padded to the
    widest batch with zero-weight slots."""
    seeds, masks = [], []
    for m, q, s, gen in zip(members, sample_rates, steps, gens):
        seeds.append(int(torch.randint(0, 2**62, (1,), generator=gen)))
        masks.append(torch.rand(s, m.numel(), generator=gen) < q)
    counts = [mask.sum(dim=1) for mask in masks]
    width = max([1] + [int(c.max()) for c in counts if c.numel()])
    k, t = len(members), max(steps)
    index = torch.zeros(t, k, width, dtype=torch.long)
    weight = torch.zeros(t, k, width)
    active = torch.zeros(t, k, dtype=torch.bool)
    for j, (m, mask, count) in enumerate(zip(members, masks, counts)):
        s, w = mask.shape[0], min(width, m.numel())
        first = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :w]  # the batch's records, in order
        index[:s, j, :w] = m[first]
        weight[:s, j, :w] = (torch.arange(w) < count.unsqueeze(1)).to(weight.dtype)
        active[:s, j] = True
    expected = torch.tensor([q * m.numel() for m, q in zip(members, sample_rates)], dtype=weight.dtype)
    return PoissonPlan(BatchSchedule(index, weight, active), seeds, 1.0 / expected)


def clip_factors(sq_norms: Tensor, max_grad_norm: float) -> Tensor:
    """Opacus's flat clipping factor ``min(1, C / (|g_i| + 1e-6))`` from squared per-sample norms."""
    return (max_grad_norm / (sq_norms.sqrt() + _EPS)).clamp(max=1.0)


def draw_groups(sizes: Sequence[int], dtype: torch.dtype, device: torch.device) -> list[tuple[int, int]]:
    """``[start, end)`` slices of a flat parameter vector that each take one Gaussian draw and
    still consume the generator exactly as one ``torch.normal`` per parameter tensor does.

    torch's CPU kernel for a contiguous float32/float64 tensor of at least 16 entries fills it
    with uniforms in order, then Box-Muller-transforms them 16 at a time (a partial last block is
    redrawn; smaller tensors take another path).  Consecutive tensors whose sizes are multiples of
    16 therefore draw the very same numbers in one call as in one call each; any other tensor, and
    every tensor off the CPU or in another dtype, is drawn alone."""
    mergeable = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    groups: list[list[int]] = []
    start, open_run = 0, False
    for size in sizes:
        merge = mergeable and size % 16 == 0
        if merge and open_run:
            groups[-1][1] += size
        else:
            groups.append([start, start + size])
        open_run, start = merge, start + size
    return [(a, b) for a, b in groups]


class _Noise:
    """Per-client Gaussian noise ``N(0, (sigma_k C)^2)`` for each parameter tensor, drawn as Opacus
    draws it (one ``torch.normal`` per tensor, in order; consecutive tensors merged into one call
    where that draws the same numbers, :func:`draw_groups`) from each client's own generator, only
    on the steps the client takes, and divided by its expected batch size ``q_k n_k``: the std is
    ``sigma_k C / (q_k n_k)`` (Opacus divides after drawing: equal up to rounding)."""

    def __init__(self, seeds: list[int], shapes: list[torch.Size], stds: Tensor, active: Tensor, dtype: torch.dtype,
                 device: torch.device):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.stds, self.active = stds.tolist(), active.tolist()
        self.buffer = torch.zeros(len(seeds), sum(s.numel() for s in shapes), dtype=dtype, device=device)
        groups = draw_groups([s.numel() for s in shapes], dtype, torch.device(device))
        self.rows = [[row[a:b] for a, b in groups] for row in self.buffer]
        self.t = 0

    def next(self) -> Tensor:
        """(K, d) noise of the next step (zero rows for clients that are done); overwritten by the next call."""
        for k, gen in enumerate(self.gens):
            if self.active[self.t][k] and self.stds[k] > 0:
                for view in self.rows[k]:
                    view.normal_(0.0, self.stds[k], generator=gen)
            else:
                self.buffer[k].zero_()
        self.t += 1
        return self.buffer


class _DPEngine:
    """What both clipping engines share: the clip norm, the noise and ``1 / (q_k n_k)``."""

    max_grad_norm: float
    noise: _Noise

    def dp(self, max_grad_norm: float, noise: _Noise) -> "_DPEngine":
        self.max_grad_norm, self.noise = max_grad_norm, noise
        return self

    @staticmethod
    def batch_loss(nll: Tensor, mask: Tensor) -> Tensor:
        """Each client's mean loss over the batch actually drawn (0 for an empty one)."""
        return (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class ClippedStackedMLP(StackedMLP, _DPEngine):
    """The stacked MLP kernel with flat per-sample clipping and noise: ``scale`` (K, B, 1) is the
    slot weight ``1 / (q n)`` (0 for padding); returns the noisy clipped mean in the (K, d) buffer."""

    def __init__(self, layers: list, flat: Tensor, shapes: list, x: Tensor, y: Tensor):
        super().__init__(layers, flat, shapes, x, y)
        # the first Linear layer's inputs are the records themselves (after Flattens): |x_i|^2 once
        self.input_sq = x.flatten(1).square().sum(dim=1)

    def __call__(self, xb: Tensor, idx: Tensor, scale: Tensor) -> list[Tensor]:
        acts = self.forward(xb)
        z = acts[-1] - acts[-1].amax(dim=-1, keepdim=True)
        onehot = gather(self.onehot, idx)
        if self.track_loss:
            z_y = (z * onehot).sum(dim=-1)
        p = z.exp_()
        total = p.sum(dim=-1, keepdim=True)
        if self.track_loss:
            self.last_loss = self.batch_loss(total.squeeze(-1).log() - z_y, (scale.squeeze(-1) > 0).to(z.dtype))
        grad = p.div_(total).sub_(onehot)  # per-sample d loss_i / d logits
        outputs = {}  # parameter layer -> its per-sample output gradient (K, B, out)
        sq = torch.zeros(scale.shape[:2], dtype=xb.dtype, device=xb.device)
        for i in range(len(self.layers) - 1, self.first - 1, -1):
            layer = self.layers[i]
            if layer.num_params:  # a Linear layer: per-sample gradient g_i x_i^T and bias g_i
                outputs[i] = grad
                inputs = gather(self.input_sq, idx) if i == self.first else torch.linalg.vecdot(acts[i], acts[i])
                sq.addcmul_(torch.linalg.vecdot(grad, grad), inputs.add_(1.0) if i != self.first else inputs + 1.0)
                grad = torch.bmm(grad, self.layer_params[i][0]) if i > self.first else None
            else:
                grad = layer.backward(self.layer_params[i], acts[i], acts[i + 1], grad, [], True)
        factor = clip_factors(sq, self.max_grad_norm).unsqueeze(-1) * scale
        for i, g in outputs.items():  # the clipped sum / (q n): one bmm of the scaled output gradients
            self.layers[i].backward(self.layer_params[i], acts[i], acts[i + 1], g * factor, self.layer_grads[i], False)
        self.grad.add_(self.noise.next())
        return [self.grad]


class ClippedVmap(_DPEngine):
    """Per-sample gradients of any buffer-free model by ``torch.func`` (``vmap`` over clients of
    ``vmap`` over samples of ``grad``), flat-clipped, summed with the slot weights, plus noise."""

    track_loss = False
    last_loss: Tensor

    def __init__(self, model: VictimModel, flat: Tensor, y: Tensor):
        self.y = y
        self.shapes = [shape for _, shape in model.shapes]
        self.params = [t.clone() for t in stacked_views(flat, model.shapes)]
        names = [name for name, _ in model.shapes]

        def loss(ps: list[Tensor], x: Tensor, target: Tensor) -> Tensor:
            logits = functional_call(model.module, (dict(zip(names, ps)), model.buffers), (x.unsqueeze(0),))
            return torch.nn.functional.cross_entropy(logits, target.unsqueeze(0))

        self.per_sample = vmap(vmap(grad_and_value(loss), in_dims=(None, 0, 0)))

    def __call__(self, xb: Tensor, idx: Tensor, scale: Tensor) -> list[Tensor]:
        grads, nll = self.per_sample(self.params, xb, gather(self.y, idx))
        w = scale.squeeze(-1)
        if self.track_loss:
            self.last_loss = self.batch_loss(nll.detach(), (w > 0).to(nll.dtype))
        sq = sum(g.flatten(2).square().sum(-1) for g in grads)
        factor = clip_factors(sq, self.max_grad_norm) * w  # (K, B)
        noise = stacked_views(self.noise.next(), list(zip(range(len(self.shapes)), self.shapes)))
        return [torch.einsum("kb,kb...->k...", factor, g) + e for g, e in zip(grads, noise)]

    def flat(self) -> Tensor:
        return torch.cat([p.flatten(1) for p in self.params], dim=1)


def run_dp_sgd(
    model: VictimModel, x: Tensor, y: Tensor, flat: Tensor, plan: PoissonPlan, *, lr: float, momentum: float,
    weight_decay: float, noise_multipliers: Sequence[float], max_grad_norm: float,
) -> tuple[Tensor, Tensor]:
    """DP-SGD of K clients from weights ``flat`` (K, d) along ``plan`` (see the module docstring),
    client k with noise multiplier ``noise_multipliers[k]``;
    returns the final weights and each client's mean loss over its non-empty batches (NaN when
    every batch was empty), as :func:`~fllab.defenses.dp_train.dp_sgd_train` reports."""

    shapes = [shape for _, shape in model.shapes]
    stds = torch.tensor(noise_multipliers, dtype=torch.float64) * max_grad_norm * plan.inv_expected.double()
    noise = _Noise(plan.noise_seeds, shapes, stds, plan.schedule.active, x.dtype, x.device)

    def engine(m: VictimModel, f: Tensor, xs: Tensor, ys: Tensor) -> _DPEngine:
        layers = StackedMLP.layers_of(m)
        built = ClippedStackedMLP(layers, f, m.shapes, xs, ys) if layers is not None else ClippedVmap(m, f, ys)
        return built.dp(max_grad_norm, noise)

    params, losses = run_sgd(model, x, y, flat, plan.schedule, lr=lr, momentum=momentum, weight_decay=weight_decay,
                             track_loss=True, engine=engine, scale=plan.scale)
    nonempty = (plan.schedule.weight.sum(dim=-1) > 0) & plan.schedule.active
    steps = plan.schedule.active.sum(dim=0).to(losses)
    return params, losses * steps / nonempty.sum(dim=0).to(losses)
