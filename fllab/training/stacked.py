"""K models of one architecture trained at once: the shadow / reference models of membership
inference (Shokri et al. 2017; Carlini et al. 2022; Zarifzadeh et al. 2024) as one computation.

The K parameter vectors are stacked into one ``(K, d)`` tensor.  One optimizer step of all K
models is one batched forward, one backward and one fused SGD update on the stack, with the
gradients from one of two engines:

* :class:`StackedMLP`, for ``nn.Sequential`` stacks of Flatten / Linear / element-wise activations
  (:class:`fllab.models.mlp.MLP`, the shadow models of the membership scenarios): each layer runs
  on all K models at once (``baddbmm`` on stacked weights) and the backward pass is written out
  by hand into a preallocated ``(K, d)`` gradient buffer.  No autograd graph, no vmap batching
  rules: a step is ~20 tensor operations, most of its time in the batched matrix products.
* :class:`VmapGradient`, for any other architecture: the model as a pure function of its
  weights (``torch.func.functional_call``) lifted over the K models with ``torch.func.vmap``,
  one autograd backward.

Each model trains on its own subset of a shared pool of records, given as a boolean mask row
``masks[k]``.  Model ``k`` sees exactly the mini-batches that :func:`fllab.training.local.sgd_train`
would draw for it alone: epochs of permutations of its ``n_k`` records from its own generator
``torch_gen(seed, "ensemble", "batches", k)``, the last partial batch kept.  Subsets of different
sizes give different batch and step counts; batches are padded to a common size with zero-weight
slots and a model whose steps are done is frozen, so every model follows the trajectory it would
follow trained alone (:func:`train_ensemble` documents the exact optimizer).

On a CPU this pays for small dense models (MLPs), whose per-model steps are dominated by
per-call overhead (``benchmarks/bench_shadow_ensemble.py``: 16 MLPs 64-128-10, >= 4x over 16
``sgd_train`` runs); for convolutions on a CPU the cores are the limit and batching gains little.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.func import functional_call, vmap

from .. import progress
from ..models.flat import flatten_params
from ..seeding import derive_seed, torch_gen
from .local import batch_order, steps_for
from ..models.victim import VictimModel

#: Entries of one (chunk, K, hidden) activation block kept below this when evaluating.
_EVAL_BUDGET = 1 << 24


@dataclass(frozen=True)
class Ensemble:
    """K trained models: ``params`` (K, d) flat weights, ``masks`` (K, N) which pool records each
    model trained on, ``model`` the shared architecture as a function of flat weights."""

    model: VictimModel
    params: Tensor
    masks: Tensor

    @property
    def size(self) -> int:
        return int(self.params.shape[0])


@dataclass(frozen=True)
class BatchSchedule:
    """Mini-batches of K models for T steps: ``index`` (T, K, B) pool indices, ``weight`` (T, K, B)
    1 for a real slot and 0 for padding, ``active`` (T, K) whether model k takes step t."""

    index: Tensor
    weight: Tensor
    active: Tensor


def balanced_masks(num_models: int, num_records: int, pkeep: float, gen: torch.Generator) -> Tensor:
    """(K, N) membership masks in which every record is in exactly ``round(pkeep * K)`` models,
    which models chosen at random (Carlini et al. 2022, ``train.py``: ``keep = rand(K, N).argsort(0)
    < pkeep * K``), so each record has the same number of IN and OUT models when ``pkeep = 0.5``."""
    if not 0.0 < pkeep < 1.0:
        raise ValueError(f"pkeep must be in (0, 1), got {pkeep}")
    order = torch.rand(num_models, num_records, generator=gen).argsort(dim=0)
    return order < round(pkeep * num_models)


def init_ensemble(build: Callable[[], nn.Module], num_models: int, seed: int) -> Tensor:
    """(K, d) initial weights: model k is ``build()`` with torch's layer initialisers seeded by
    ``derive_seed(seed, "ensemble", "init", k)``.

    The zoo's builders draw from torch's global generator (:mod:`fllab.models`); each build runs
    inside :func:`torch.random.fork_rng`, so the caller's RNG state is left untouched."""
    rows = []
    for k in range(num_models):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "ensemble", "init", k))
            rows.append(flatten_params(build()))
    return torch.stack(rows)


def batch_schedule(masks: Tensor, batch_size: int, epochs: float, seed: int) -> BatchSchedule:
    """The mini-batches each model draws (see the module docstring); steps per model are
    ``ceil(n_k / min(batch_size, n_k)) * epochs`` as in :func:`fllab.training.local.steps_for`."""
    masks = masks.to("cpu", torch.bool)
    members = [row.nonzero().squeeze(1) for row in masks]
    if any(m.numel() == 0 for m in members):
        raise ValueError("every model needs at least one training record")
    steps = [steps_for(m.numel(), batch_size, epochs, None) for m in members]
    gens = [torch_gen(seed, "ensemble", "batches", j) for j in range(len(members))]
    return schedule(members, batch_size, steps, gens)


def schedule(members: list[Tensor], batch_size: int, steps: list[int], gens: list[torch.Generator]) -> BatchSchedule:
    """The mini-batches of K models: model k draws ``steps[k]`` batches of its pool records
    ``members[k]`` from ``gens[k]`` exactly as :func:`fllab.training.local.batch_order` would for
    it alone (padded to a common width with zero-weight slots; inactive once its steps are done)."""
    batches = [batch_order(m.numel(), batch_size, s, g) for m, s, g in zip(members, steps, gens)]
    return pack(members, batches)


def pack(members: list[Tensor], batches: list[list[Tensor]]) -> BatchSchedule:
    """The schedule of K models where model k takes one step per batch of ``batches[k]`` (indices
    into its records ``members[k]``): padded to the widest batch with zero-weight slots (an empty
    batch is all padding), inactive once its batches are done."""
    width = max(1, max((b.numel() for bs in batches for b in bs), default=1))
    k, t = len(members), max(len(bs) for bs in batches)
    index = torch.zeros(t, k, width, dtype=torch.long)
    weight = torch.zeros(t, k, width)
    active = torch.zeros(t, k, dtype=torch.bool)
    slots = torch.arange(width)
    for j, (m, bs) in enumerate(zip(members, batches)):
        s = len(bs)
        if not s:
            continue
        padded = pad_sequence(bs, batch_first=True)  # (s, <= width), zeros after a partial batch
        index[:s, j, : padded.shape[1]] = m[padded]
        weight[:s, j] = (slots < torch.tensor([b.numel() for b in bs]).unsqueeze(1)).to(weight.dtype)
        active[:s, j] = True
    return BatchSchedule(index, weight, active)


def train_ensemble(
    build: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    masks: Tensor,
    *,
    epochs: float,
    batch_size: int,
    lr: float,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    init: Tensor | None = None,
) -> Ensemble:
    """Train K models, model k on the pool records ``masks[k]`` of ``(x, y)``, as one computation.

    The optimizer is :class:`torch.optim.SGD` (no dampening, no Nesterov) on the mean
    cross-entropy of each mini-batch: ``v <- momentum * v + g + weight_decay * w``,
    ``w <- w - lr * v``.  Initial weights are ``init`` (K, d) or :func:`init_ensemble` of ``seed``;
    batches come from :func:`batch_schedule` of ``seed``.  Model k therefore ends exactly where
    ``sgd_train`` on ``(x[masks[k]], y[masks[k]])`` from ``init[k]`` with generator
    ``torch_gen(seed, "ensemble", "batches", k)`` ends, up to float rounding.

    Gradients come from :class:`StackedMLP` (hand-written batched backward) when the model is a
    sequence of layers it knows, else from :class:`VmapGradient` (any architecture).  Batch-norm
    layers, if any, use batch statistics and keep no running averages
    (:class:`~fllab.attacks.inversion.common.VictimModel`).
    """
    masks = torch.as_tensor(masks, dtype=torch.bool)
    if masks.dim() != 2 or masks.shape[1] != y.shape[0]:
        raise ValueError(f"masks must be (K, {y.shape[0]}), got {tuple(masks.shape)}")
    model = VictimModel(build, x.device, x.dtype)
    k = masks.shape[0]
    flat = init_ensemble(build, k, seed) if init is None else init
    flat = flat.to(device=x.device, dtype=x.dtype)
    if flat.shape != (k, model.num_params):
        raise ValueError(f"init must be ({k}, {model.num_params}), got {tuple(flat.shape)}")
    plan = batch_schedule(masks, batch_size, epochs, seed)
    steps = progress.bar(int(plan.index.shape[0]), f"{k} reference models")  # minutes of silence otherwise
    try:
        params, _ = run_sgd(model, x, y, flat, plan, lr=lr, momentum=momentum, weight_decay=weight_decay, on_step=steps)
    finally:
        steps.close()
    return Ensemble(model, params, masks)


def run_sgd(
    model: VictimModel, x: Tensor, y: Tensor, flat: Tensor, plan: BatchSchedule, *, lr: float, momentum: float = 0.0,
    weight_decay: float = 0.0, track_loss: bool = False, engine: Callable[..., Any] | None = None,
    scale: Tensor | None = None, on_step: Callable[[], Any] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """SGD of K models from weights ``flat`` (K, d) on the pool ``(x, y)`` along ``plan``; returns
    the final (K, d) weights and, with ``track_loss``, each model's mean mini-batch loss over its
    steps (what :func:`fllab.training.local.sgd_train` reports).  The optimizer is
    :class:`torch.optim.SGD` (see :func:`train_ensemble`).

    ``engine`` and ``scale`` replace the gradient: ``engine(model, flat, x, y)`` builds the
    gradient engine (default :class:`StackedMLP` where it applies, else :class:`VmapGradient`)
    and ``scale`` (T, K, B) the weight of every batch slot (default each model's batch mean);
    DP-SGD (:mod:`fllab.training.dp_stacked`) passes its clipping engine and ``1 / (q n)``.
    ``on_step()`` is called after every step (progress)."""
    index, weight = plan.index.to(x.device), plan.weight.to(device=x.device, dtype=x.dtype)
    # A frozen model still runs (on record 0, weight 1, so its loss stays finite) but takes no step.
    weight[~plan.active] = 1.0
    widths = [index.shape[-1]] * index.shape[0]
    if scale is None:
        scale = weight / weight.sum(dim=-1, keepdim=True)  # each model's batch mean
    else:  # variable batches (Poisson sampling): each step runs only as wide as its widest batch
        used = (scale != 0).any(dim=1)  # (T, B)
        widths = (used * torch.arange(1, used.shape[1] + 1, device=used.device)).amax(dim=1).clamp(min=1).tolist()
    scale = scale.to(device=x.device, dtype=x.dtype).unsqueeze(-1)  # (T, K, B, 1)
    everyone = plan.active.all(dim=1).tolist()
    active = plan.active.to(device=x.device, dtype=x.dtype)
    step_size = lr * active  # (T, K)
    k = flat.shape[0]

    grad_fn = engine(model, flat, x, y) if engine is not None else StackedMLP.of(model, flat, x, y) or VmapGradient(model, flat, y)
    grad_fn.track_loss = track_loss
    params = grad_fn.params
    per_model = [(k,) + (1,) * (p.dim() - 1) for p in params]
    velocity = [torch.zeros_like(p) for p in params] if momentum else []
    total = torch.zeros(k, dtype=x.dtype, device=x.device) if track_loss else None
    for t in range(index.shape[0]):
        idx = index[t, :, : widths[t]]
        grads = grad_fn(gather(x, idx), idx, scale[t, :, : widths[t]])
        with torch.no_grad():
            if track_loss:
                total += grad_fn.last_loss * active[t]
            if weight_decay:
                torch._foreach_add_(grads, params, alpha=weight_decay)
            if momentum:
                torch._foreach_mul_(velocity, momentum)
                torch._foreach_add_(velocity, grads)
                grads = velocity
            if everyone[t]:
                torch._foreach_add_(params, grads, alpha=-lr)
            else:
                rates = [step_size[t].view(shape) for shape in per_model]
                torch._foreach_sub_(params, torch._foreach_mul(grads, rates))
        if on_step is not None:
            on_step()
    losses = total / active.sum(dim=0) if track_loss else None
    return grad_fn.flat(), losses


def gather(rows: Tensor, idx: Tensor) -> Tensor:
    """``rows[idx]`` for a (K, B) index, as one ``index_select`` (a third of advanced indexing's cost)."""
    return rows.index_select(0, idx.reshape(-1)).view(*idx.shape, *rows.shape[1:])


class VmapGradient:
    """Per-model gradients of the mean cross-entropy for any architecture:
    ``torch.func.functional_call`` on the module lifted over the K models with ``vmap``, one
    backward pass.  ``params`` are one leaf (K, *shape) per parameter, so gradients come back per
    parameter without the zero-filled (K, d) buffers that slicing one flat leaf would cost."""

    def __init__(self, model: VictimModel, flat: Tensor, y: Tensor):
        self.y = y
        self.params = [t.clone().requires_grad_(True) for t in stacked_views(flat, model.shapes)]
        names = [name for name, _ in model.shapes]

        def forward(ps: list[Tensor], xb: Tensor) -> Tensor:
            return functional_call(model.module, (dict(zip(names, ps)), model.buffers), (xb,))

        self.logits = vmap(forward)

    track_loss = False  # set last_loss (K,): each model's mean batch loss
    last_loss: Tensor

    def __call__(self, xb: Tensor, idx: Tensor, scale: Tensor) -> list[Tensor]:
        log_p = torch.log_softmax(self.logits(self.params, xb), dim=-1)
        nll = -log_p.gather(-1, gather(self.y, idx).unsqueeze(-1))
        weighted = nll * scale
        if self.track_loss:
            self.last_loss = weighted.detach().sum(dim=(1, 2))
        # models are independent: d/dw_k of the sum is model k's gradient
        return list(torch.autograd.grad(weighted.sum(), self.params))

    def flat(self) -> Tensor:
        return torch.cat([p.detach().flatten(1) for p in self.params], dim=1)


class _Layer(Protocol):
    """One layer run on K models at once: ``forward`` on (K, B, ...) inputs with the layer's
    stacked parameters ``p``; ``backward`` writes the parameter gradients into ``g`` (views of
    the (K, d) gradient buffer) and returns the input gradient when ``need_input``."""

    num_params: int

    def forward(self, p: list[Tensor], x: Tensor) -> Tensor: ...

    def backward(self, p: list[Tensor], x: Tensor, out: Tensor, grad: Tensor, g: list[Tensor], need_input: bool) -> Tensor | None: ...


class _Linear:
    """``nn.Linear`` (with bias) over K models: ``x (K, B, in) -> x W_k^T + b_k``, weights
    (K, out, in), bias (K, out)."""

    num_params = 2

    def forward(self, p: list[Tensor], x: Tensor) -> Tensor:
        return torch.baddbmm(p[1].unsqueeze(1), x, p[0].transpose(1, 2))

    def backward(self, p: list[Tensor], x: Tensor, out: Tensor, grad: Tensor, g: list[Tensor], need_input: bool) -> Tensor | None:
        torch.bmm(grad.transpose(1, 2), x, out=g[0])
        torch.sum(grad, dim=1, out=g[1])
        return torch.bmm(grad, p[0]) if need_input else None


class _Flatten:
    """``nn.Flatten()`` with its defaults (every dimension after the batch) over K models."""

    num_params = 0

    def forward(self, p: list[Tensor], x: Tensor) -> Tensor:
        return x.flatten(2)

    def backward(self, p: list[Tensor], x: Tensor, out: Tensor, grad: Tensor, g: list[Tensor], need_input: bool) -> Tensor | None:
        return grad.reshape(x.shape) if need_input else None


class _Activation:
    """An element-wise activation, its derivative written in terms of its output."""

    num_params = 0

    def __init__(self, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor, Tensor], Tensor]):
        self.fn, self.derivative = fn, derivative

    def forward(self, p: list[Tensor], x: Tensor) -> Tensor:
        return self.fn(x)

    def backward(self, p: list[Tensor], x: Tensor, out: Tensor, grad: Tensor, g: list[Tensor], need_input: bool) -> Tensor | None:
        return self.derivative(out, grad) if need_input else None


def _leaky_relu(module: nn.LeakyReLU) -> _Activation | None:
    slope = module.negative_slope
    if slope <= 0:
        return None  # the derivative is read off the output's sign, which needs a positive slope
    return _Activation(lambda x: torch.nn.functional.leaky_relu(x, slope), lambda out, g: torch.where(out > 0, g, g * slope))


#: layer type -> its K-model kernel, or None for a configuration it does not cover (the layers of
#: :class:`fllab.models.mlp.MLP`).  ``threshold_backward`` is autograd's own ReLU derivative, one
#: kernel (``where`` costs ~25x more on these small blocks).
STACKED_LAYERS: dict[type[nn.Module], Callable[[Any], _Layer | None]] = {
    nn.Linear: lambda m: _Linear() if m.bias is not None else None,
    nn.Flatten: lambda m: _Flatten() if (m.start_dim, m.end_dim) == (1, -1) else None,
    nn.ReLU: lambda m: _Activation(torch.relu, lambda out, g: torch.ops.aten.threshold_backward(g, out, 0)),
    nn.Sigmoid: lambda m: _Activation(torch.sigmoid, lambda out, g: g * out * (1 - out)),
    nn.Tanh: lambda m: _Activation(torch.tanh, lambda out, g: g * (1 - out * out)),
    nn.LeakyReLU: _leaky_relu,
}


class StackedMLP:
    """Per-model gradients of the mean cross-entropy for an ``nn.Sequential`` of the layers in
    :data:`STACKED_LAYERS`, without autograd or vmap: the forward pass runs every layer on the
    K models at once (``baddbmm`` on stacked weights), the backward pass is written out
    (``softmax - onehot`` scaled by each record's batch weight, then ``bmm`` per layer) and lands
    in one preallocated (K, d) buffer, so the optimizer step is a few fused operations on (K, d).

    This is the shadow / reference-model case of the membership attacks (MLPs on small records),
    where a step's time is per-operation overhead: one autograd + vmap pass costs several times
    the arithmetic (``benchmarks/bench_shadow_ensemble.py``)."""

    def __init__(self, layers: list[_Layer], flat: Tensor, shapes: list[tuple[str, torch.Size]], x: Tensor, y: Tensor):
        self.layers = layers
        self.weights = flat.clone()
        self.grad = torch.zeros_like(self.weights)
        views, grads = iter(stacked_views(self.weights, shapes)), iter(stacked_views(self.grad, shapes))
        self.layer_params = [[next(views) for _ in range(layer.num_params)] for layer in layers]
        self.layer_grads = [[next(grads) for _ in range(layer.num_params)] for layer in layers]
        self.first = next(i for i, layer in enumerate(layers) if layer.num_params)  # no input gradient below it
        num_classes = self.forward(x[:1].expand(flat.shape[0], 1, *x.shape[1:]))[-1].shape[-1]
        self.onehot = torch.nn.functional.one_hot(y, num_classes).to(flat.dtype)
        self.params = [self.weights]

    @classmethod
    def of(cls, model: VictimModel, flat: Tensor, x: Tensor, y: Tensor) -> "StackedMLP | None":
        """The stacked kernel of ``model``, or None when a layer has none (or the model keeps buffers)."""
        layers = cls.layers_of(model)
        return None if layers is None else cls(layers, flat, model.shapes, x, y)

    @staticmethod
    def layers_of(model: VictimModel) -> "list[_Layer] | None":
        """The stacked layers of ``model``, or None when one has no stacked kernel (or the model
        keeps buffers)."""
        module = model.module
        if not isinstance(module, nn.Sequential) or model.buffers:
            return None
        layers = [STACKED_LAYERS[type(child)](child) if type(child) in STACKED_LAYERS else None for child in module]
        if any(layer is None for layer in layers):
            return None
        counts = [sum(1 for _ in child.parameters(recurse=False)) for child in module]
        if counts != [layer.num_params for layer in layers] or not any(counts):
            return None
        return layers

    def forward(self, xb: Tensor) -> list[Tensor]:
        """Every layer's input and, last, the logits, for a batch (K, B, *record shape)."""
        acts = [xb]
        for layer, p in zip(self.layers, self.layer_params):
            acts.append(layer.forward(p, acts[-1]))
        return acts

    track_loss = False  # set last_loss (K,): each model's mean batch loss
    last_loss: Tensor

    def __call__(self, xb: Tensor, idx: Tensor, scale: Tensor) -> list[Tensor]:
        acts = self.forward(xb)
        # d(mean CE)/d logits = (softmax - onehot) * weight / batch weight; the softmax is spelt out
        # because torch.softmax over a last dimension of ~10 classes is several times slower on CPUs
        z = acts[-1] - acts[-1].amax(dim=-1, keepdim=True)
        onehot = gather(self.onehot, idx)
        if self.track_loss:  # CE = log(sum exp z) - z_y, before z is exponentiated in place
            z_y = (z * onehot).sum(dim=-1, keepdim=True)
        p = z.exp_()
        total = p.sum(dim=-1, keepdim=True)
        if self.track_loss:
            self.last_loss = ((total.log() - z_y) * scale).sum(dim=(1, 2))
        grad = p.div_(total).sub_(onehot).mul_(scale)
        for i in range(len(self.layers) - 1, self.first - 1, -1):
            grad = self.layers[i].backward(self.layer_params[i], acts[i], acts[i + 1], grad, self.layer_grads[i], i > self.first)
        return [self.grad]

    def flat(self) -> Tensor:
        return self.weights


def stacked_views(flat: Tensor, shapes: list[tuple[str, torch.Size]]) -> list[Tensor]:
    """(K, d) flat weights split into one (K, *shape) view per parameter."""
    sizes = [int(torch.Size(shape).numel()) for _, shape in shapes]
    return [part.view(flat.shape[0], *shape) for part, (_, shape) in zip(flat.split(sizes, dim=1), shapes)]


@torch.no_grad()
def ensemble_logits(ensemble: Ensemble, x: Tensor) -> Tensor:
    """(K, N, C) logits of every model on every record, in chunks of records."""
    run = vmap(ensemble.model.logits, in_dims=(0, None))
    width = max(1, ensemble.size * max(1, math.prod(x.shape[1:])))
    chunk = max(1, _EVAL_BUDGET // width)
    params = ensemble.params
    return torch.cat([run(params, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], dim=1)


@torch.no_grad()
def model_logits(model: VictimModel, params: Tensor, x: Tensor) -> Tensor:
    """(N, C) logits of one model with flat weights ``params``, in chunks of records."""
    chunk = max(1, _EVAL_BUDGET // max(1, math.prod(x.shape[1:])))
    return torch.cat([model.logits(params, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
