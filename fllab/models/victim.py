"""A model as a pure function of a flat weight vector: what the server-side attacks (inversion,
membership) and the stacked trainers run the public architecture as."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, replace_all_batch_norm_modules_

from .flat import param_shapes, unflatten


@runtime_checkable
class ClosedFormCosine(Protocol):
    """A network that computes Inverting Gradients' gradient cosine in closed form, without
    forming the gradient (HyperFL's :class:`~fllab.algorithms.hyperfl_net.HyperFLNet`)."""

    def gradient_cosine_distance(
        self, params: Mapping[str, Tensor], target: Mapping[str, Tensor], target_norm: Tensor, x: Tensor, y: Tensor
    ) -> Tensor: ...


def cosine_distance(gs: Sequence[Tensor], ts: Sequence[Tensor]) -> Tensor:
    """``1 - <g, t> / (|g| |t|)`` over all parameters at once (Geiping et al. 2020, eq. 4), for
    gradients given per parameter tensor."""
    dot = torch.stack([(g * t).sum() for g, t in zip(gs, ts)]).sum()
    g_norm = torch.stack([g.pow(2).sum() for g in gs]).sum().sqrt()
    t_norm = torch.stack([t.pow(2).sum() for t in ts]).sum().sqrt()
    return 1.0 - dot / (g_norm * t_norm).clamp_min(torch.finfo(dot.dtype).tiny)


class VictimModel:
    """The client's model as a pure function of a flat weight vector.

    Built once from the public handle (inside :func:`torch.random.fork_rng`, so the caller's RNG
    stream is untouched; the initial weights are replaced anyway).  It runs in training mode like
    the client; batch-norm layers use batch statistics and leave their running buffers alone
    (:func:`torch.func.replace_all_batch_norm_modules_`), which keeps the function pure under
    ``vmap``.
    """

    def __init__(self, build: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype):
        with torch.random.fork_rng(devices=[]):
            module = build()
        module = module.to(device=device, dtype=dtype).train()
        replace_all_batch_norm_modules_(module)
        self.module = module
        self.shapes = param_shapes(module)
        self.num_params = sum(int(math.prod(s)) for _, s in self.shapes)
        self.buffers = {name: b for name, b in module.named_buffers()}

    def logits(self, flat_params: Tensor, x: Tensor) -> Tensor:
        """The model's outputs on ``x`` at flat weights ``flat_params``."""
        return functional_call(self.module, (unflatten(flat_params, self.shapes), self.buffers), (x,))

    def split(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat vector, in ``named_parameters`` order."""
        return list(unflatten(flat, self.shapes).values())

    def batch_gradient(self, flat_params: Tensor, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-parameter gradients of the mean cross-entropy over the batch ``x`` with labels
        ``y`` (class indices (B,) or probabilities (B, C)), as the client computed it.

        The gradient is taken with respect to per-parameter views, never the flat vector: a
        flat gradient would zero-fill and scatter a (d,) buffer per target and step.
        """
        return self.gradient(self.named(flat_params), x, y)

    def named(self, flat: Tensor) -> dict[str, Tensor]:
        """Per-parameter views of a flat vector, by name."""
        return unflatten(flat, self.shapes)

    def gradient(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, state: Mapping[str, Tensor] | None = None
    ) -> list[Tensor]:
        """:meth:`batch_gradient` at weights given per parameter (name -> tensor), e.g. weights
        that are themselves a differentiable function of something (an unrolled SGD step, a point
        on a line between two weight vectors), with the module's other tensors replaced by
        ``state`` where given (differentiable in them too)."""
        fixed = self.buffers if state is None else {**self.buffers, **state}

        def loss(p: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(functional_call(self.module, (p, fixed), (x,)), y)

        grads = torch.func.grad(loss)(params)
        return [grads[name] for name, _ in self.shapes]

    def cosine_distance(self, flat_params: Tensor, x: Tensor, y: Tensor, target: Tensor) -> Tensor:
        """Inverting Gradients' ``1 - cos`` between the batch gradient at ``flat_params`` and an
        observed flat gradient ``target``; a network with a closed form (:class:`ClosedFormCosine`)
        computes it without forming the gradient."""
        if isinstance(self.module, ClosedFormCosine):
            norm = torch.linalg.vector_norm(target)
            return self.module.gradient_cosine_distance(self.named(flat_params), self.named(target), norm, x, y)
        return cosine_distance(self.batch_gradient(flat_params, x, y), self.split(target))
