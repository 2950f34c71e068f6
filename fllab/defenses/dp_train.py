"""DP-SGD local training through Opacus: the kernel behind the ``dp_sgd`` defense.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang 2016, "Deep Learning with Differential
Privacy", CCS (Algorithm 1).  Every step

1. samples a batch by **Poisson sampling**: each of the client's ``n`` records joins independently
   with probability ``q`` (so batches vary in size and may be empty), drawn from the client's
   seeded CPU generator;
2. computes **per-sample gradients** with Opacus's :class:`~opacus.grad_sample.GradSampleModule`
   (``grad_sample_mode="hooks"``), or only their norms with
   :class:`~opacus.grad_sample.GradSampleModuleFastGradientClipping` (``"ghost"``: ghost
   clipping, Li, Tramer, Liang & Hashimoto 2022, "Large Language Models Can Be Strong
   Differentially Private Learners", ICLR; Bu et al. 2023, "Differentially Private Optimization on
   Large Model at Small Cost", ICML), which packages a second backward pass weighted by the clip
   factors into ``loss.backward()``;
3. clips each per-sample gradient to L2 norm ``C`` -- over all parameters at once (``flat``), or
   each parameter tensor to ``C / sqrt(L)`` for ``L`` parameter tensors (``per_layer``, McMahan
   et al. 2018, so that the whole per-sample gradient still has norm at most ``C``);
4. adds N(0, (sigma C)^2) to the sum of clipped gradients and divides by the *expected* batch
   size ``q n`` (Opacus's :class:`~opacus.optimizers.DPOptimizer` /
   :class:`~opacus.optimizers.DPPerLayerOptimizer` /
   :class:`~opacus.optimizers.DPOptimizerFastGradientClipping`, ``loss_reduction="mean"``);
   an empty batch still releases the noise, as the mechanism requires.

The noise comes from a generator seeded from the client's generator (``secure_mode`` off), so
a client's round is a pure function of its task seed.  Opacus's hooks are removed after the call:
the worker's model is reused by the next client.

One step is one application of the sampled Gaussian mechanism with sampling rate ``q`` and
noise multiplier ``sigma``: ``steps`` steps are accounted as ``(sigma, q, steps)``.
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping, DPPerLayerOptimizer
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn

from ..errors import ConfigError
from ..types import TensorData

Clipping = Literal["flat", "per_layer"]
GradSampleMode = Literal["hooks", "ghost"]

# torch warns on every per-sample backward hook when the inputs do not require gradients (they
# never do here: the inputs are data); the hooks still fire on the module outputs, as Opacus needs.
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def check_dp_model(model: nn.Module, defense: str = "dp_sgd") -> None:
    """Refuse a model Opacus cannot train with per-sample gradients (Opacus's ModuleValidator).

    Batch norm mixes the examples of a batch, so a per-sample gradient does not exist; the error
    names ``task.model.norm`` and the fix (GroupNorm, Wu & He 2018).  Any other incompatibility
    names ``task.model``.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            f"{defense} needs per-sample gradients, which batch norm does not have; "
            "use norm: group (GroupNorm) or norm: none",
            "task.model.norm",
        )
    raise ConfigError(f"{defense} cannot train this model with Opacus: {'; '.join(str(e) for e in errors)}", "task.model")


def poisson_batch(n: int, sample_rate: float, gen: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of ``n`` records independently with probability ``sample_rate``."""
    return (torch.rand(n, generator=gen) < sample_rate).nonzero().flatten()


def layer_bounds(model: nn.Module, max_grad_norm: float) -> list[float]:
    """Per-parameter clip norms ``C / sqrt(L)`` whose L2 norm is ``C`` (equal per-layer split)."""
    count = sum(1 for p in model.parameters() if p.requires_grad)
    return [max_grad_norm / math.sqrt(count)] * count


def clipped_samples(gsm: nn.Module, dp_opt: DPOptimizer, max_grad_norm: float, clipping: Clipping) -> int:
    """How many per-sample gradients of the current batch the clipping will shrink: whole norm
    above ``C`` (flat), or any tensor above its bound ``C / sqrt(L)`` (per-layer); with ghost
    clipping the norms Opacus computed in the first backward pass."""
    ghost = getattr(gsm, "per_sample_gradient_norms", None)
    if ghost is not None:
        return int((ghost > max_grad_norm).sum())
    norms = torch.stack([p.grad_sample.reshape(len(p.grad_sample), -1).norm(2, dim=1) for p in dp_opt.params], dim=1)
    if clipping == "per_layer":
        return int((norms > max_grad_norm / math.sqrt(norms.shape[1])).any(dim=1).sum())
    return int((norms.norm(2, dim=1) > max_grad_norm).sum())


def dp_sgd_train(
    model: nn.Module,
    data: TensorData,
    *,
    steps: int,
    sample_rate: float,
    lr: float,
    momentum: float,
    weight_decay: float,
    gen: torch.Generator,
    noise_multiplier: float,
    max_grad_norm: float,
    clipping: Clipping = "flat",
    grad_sample_mode: GradSampleMode = "hooks",
    clip_count: list[int] | None = None,
) -> float:
    """Run ``steps`` DP-SGD steps on ``model`` in place (see the module docstring); return the
    mean training loss over the non-empty batches (NaN when every batch was empty).

    ``gen`` is a CPU generator: it draws the Poisson batches and seeds the noise generator.
    ``clip_count``, when given as ``[clipped, samples]``, is incremented by the number of
    per-sample gradients the clipping shrank and the number of samples
    (:func:`clipped_samples`).
    """
    if grad_sample_mode == "ghost" and clipping != "flat":
        raise ValueError("ghost clipping supports flat clipping only (Opacus)")
    check_dp_model(model)
    model.train()
    n = len(data)
    device = next(model.parameters()).device
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    common = dict(noise_multiplier=noise_multiplier, expected_batch_size=sample_rate * n, loss_reduction="mean",
                  generator=noise_gen, secure_mode=False)
    criterion = None
    if grad_sample_mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True
        )
        dp_opt: DPOptimizer = DPOptimizerFastGradientClipping(optimizer, max_grad_norm=max_grad_norm, **common)
        criterion = DPLossFastGradientClipping(gsm, dp_opt, nn.CrossEntropyLoss(), "mean")
    else:
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        if clipping == "per_layer":
            dp_opt = DPPerLayerOptimizer(optimizer, max_grad_norm=layer_bounds(model, max_grad_norm), **common)
        else:
            dp_opt = DPOptimizer(optimizer, max_grad_norm=max_grad_norm, **common)
    total = torch.zeros((), device=data.x.device)
    nonempty = 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING)
            for _ in range(steps):
                idx = poisson_batch(n, sample_rate, gen).to(data.x.device)
                dp_opt.zero_grad(set_to_none=True)
                out = gsm(data.x[idx])
                y = data.y[idx]
                loss = criterion(out, y) if criterion is not None else F.cross_entropy(out, y)
                loss.backward()
                if clip_count is not None and idx.numel():
                    clip_count[0] += clipped_samples(gsm, dp_opt, max_grad_norm, clipping)
                    clip_count[1] += int(idx.numel())
                dp_opt.step()
                if idx.numel():
                    total += loss.detach()
                    nonempty += 1
    finally:
        gsm._close()  # remove Opacus's hooks and per-sample attributes from the reused model
        for p in model.parameters():
            if hasattr(p, "summed_grad"):  # DPOptimizer's clipped-sum buffer
                del p.summed_grad
    return float(total) / nonempty if nonempty else math.nan
