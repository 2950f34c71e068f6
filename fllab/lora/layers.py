"""LoRA adapters for ``nn.Linear`` and ``nn.Conv2d`` (Hu et al. 2022, "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR), laid out as :mod:`peft` lays them out so that the two agree
number for number (``tests/test_lora.py`` checks forward and gradients against peft).

An adapted layer computes ``base(x) + (alpha / r) * B(A(x))`` with the base frozen:

* Linear: ``A`` is ``nn.Linear(in, r, bias=False)``, ``B`` is ``nn.Linear(r, out, bias=False)``;
* Conv2d: ``A`` is a ``Conv2d(in, r)`` with the base's kernel, stride, padding and dilation, ``B``
  a 1x1 ``Conv2d(r, out)``, both without bias; as matrices ``B`` is ``(out, r)`` and ``A`` is
  ``(r, in * kh * kw)``, and ``B A`` is the change of the base kernel.

Initialisation as peft's default (``init_lora_weights=True``): ``A`` Kaiming-uniform with
``a = sqrt(5)`` (torch's Linear/Conv default), ``B`` zero, so an adapted model starts equal to its
base.  Both factors are plain submodules made of ``nn.Linear`` / ``nn.Conv2d``: Opacus computes
their per-sample gradients with its own grad samplers.

The federated bundles (:mod:`fllab.lora.algorithms`) move the factors as one flat vector (the
model's trainable parameters, :func:`fllab.models.flat.flatten_params`); :class:`LoRALayout`
says where each layer's ``A`` and ``B`` sit in it and views them as batched matrices.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError

#: ``targets`` words that select every layer of a kind.
KIND_WORDS = {"linear": nn.Linear, "conv": nn.Conv2d}


class LoRALayer(nn.Module):
    """A frozen base layer plus a trainable low-rank update ``(alpha / r) B A``."""

    def __init__(self, base: nn.Module, lora_A: nn.Module, lora_B: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_A = lora_A
        self.lora_B = lora_B
        self.rank = rank
        self.scaling = alpha / rank
        for p in self.base.parameters():
            p.requires_grad_(False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling

    @property
    def out_features(self) -> int:
        return int(self.lora_B.weight.shape[0])


def width_of(layer: nn.Module) -> int:
    """The largest rank a LoRA update of ``layer`` can have: min(out, in * kernel area)."""
    w = layer.weight
    return int(min(w.shape[0], w[0].numel()))


def adapt(layer: nn.Module, rank: int, alpha: float) -> LoRALayer:
    """Wrap one Linear or Conv2d layer (its weights are kept and frozen)."""
    if isinstance(layer, nn.Linear):
        a = nn.Linear(layer.in_features, rank, bias=False)
        b = nn.Linear(rank, layer.out_features, bias=False)
    elif isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("LoRA on a grouped convolution is not supported")
        a = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
        b = nn.Conv2d(rank, layer.out_channels, (1, 1), (1, 1), bias=False)
    else:
        raise TypeError(f"LoRA adapts Linear and Conv2d layers, not {type(layer).__name__}")
    w = layer.weight
    return LoRALayer(layer, a.to(w.device, w.dtype), b.to(w.device, w.dtype), rank, alpha)


def candidates(model: nn.Module) -> dict[str, nn.Module]:
    """The model's Linear and Conv2d layers by qualified name (the layers LoRA can adapt)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def select(model: nn.Module, targets: list[str], path: str = "task.model.lora.targets") -> list[str]:
    """Names of the layers ``targets`` picks: ``linear`` / ``conv`` pick every layer of that kind,
    any other entry is an ``fnmatch`` pattern on the qualified module name (``"4"``, ``"*.fc*"``).
    Matching no layer is a ConfigError listing the layers there are."""
    layers = candidates(model)
    picked = []
    for name, layer in layers.items():
        for t in targets:
            kind = KIND_WORDS.get(t)
            if (kind is not None and isinstance(layer, kind)) or (kind is None and fnmatch.fnmatchcase(name, t)):
                picked.append(name)
                break
    if not picked:
        listing = ", ".join(f"{n} ({type(m).__name__})" for n, m in layers.items()) or "none"
        raise ConfigError(f"{targets} match no Linear or Conv2d layer; layers: {listing}; or use linear / conv", path)
    return picked


def inject_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, path: str = "task.model.lora") -> nn.Module:
    """Freeze every parameter of ``model`` and replace the targeted layers by :class:`LoRALayer`
    (in place; the model is returned).  A rank above a targeted layer's width is a ConfigError."""
    names = select(model, targets, f"{path}.targets")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if rank > width_of(layer):
            raise ConfigError(
                f"rank {rank} exceeds layer {name}'s width {width_of(layer)} ({type(layer).__name__} "
                f"{tuple(layer.weight.shape)}); allowed 1..{width_of(layer)}",
                f"{path}.rank",
            )
        setattr(parent, child, adapt(layer, rank, alpha))
    return model


@dataclass(frozen=True)
class LayerSlot:
    """Where one adapted layer's factors sit in the flat vector of trainable parameters."""

    name: str
    a_start: int
    b_start: int
    rank: int
    fan_in: int  # columns of A as a matrix (in * kernel area)
    fan_out: int  # rows of B

    @property
    def a_size(self) -> int:
        return self.rank * self.fan_in

    @property
    def b_size(self) -> int:
        return self.fan_out * self.rank


class LoRALayout:
    """The adapted layers of a model and their place in its flat trainable-parameter vector.

    Requires that the trainable parameters are exactly the LoRA factors (what
    :func:`inject_lora` leaves), so the flat vector is ``[A_1, B_1, A_2, B_2, ...]``."""

    def __init__(self, model: nn.Module):
        offsets, offset = {}, 0
        for name, p in model.named_parameters():
            if p.requires_grad:
                offsets[name] = offset
                offset += p.numel()
        slots = []
        for name, m in model.named_modules():
            if isinstance(m, LoRALayer):
                a, b = m.lora_A.weight, m.lora_B.weight
                slots.append(LayerSlot(name, offsets[f"{name}.lora_A.weight"], offsets[f"{name}.lora_B.weight"],
                                       m.rank, a[0].numel(), b.shape[0]))
        covered = sum(s.a_size + s.b_size for s in slots)
        if not slots or covered != offset:
            raise ValueError("the model's trainable parameters are not exactly LoRA factors (set task.model.lora)")
        self.slots: tuple[LayerSlot, ...] = tuple(slots)
        self.size = offset

    def A(self, flat: Tensor, slot: LayerSlot) -> Tensor:
        """``A`` of ``slot`` as ``(..., r, fan_in)`` matrices from ``(..., d)`` flat vectors (a view)."""
        return flat[..., slot.a_start : slot.a_start + slot.a_size].unflatten(-1, (slot.rank, slot.fan_in))

    def B(self, flat: Tensor, slot: LayerSlot) -> Tensor:
        """``B`` of ``slot`` as ``(..., fan_out, r)`` matrices (a view)."""
        return flat[..., slot.b_start : slot.b_start + slot.b_size].unflatten(-1, (slot.fan_out, slot.rank))

    def mask(self, part: str, device: torch.device | str = "cpu") -> Tensor:
        """Boolean ``(d,)`` mask of every layer's ``A`` (``part="A"``) or ``B`` entries."""
        m = torch.zeros(self.size, dtype=torch.bool, device=device)
        for s in self.slots:
            start, size = (s.a_start, s.a_size) if part == "A" else (s.b_start, s.b_size)
            m[start : start + size] = True
        return m


def aggregation_error(layout: LoRALayout, local: Tensor, weights: Tensor) -> float:
    """``sqrt(sum_l ||mean_k(B_k A_k) - mean_k(B_k) mean_k(A_k)||_F^2)`` over the adapted layers,
    means weighted by ``weights`` (the aggregation's), from the clients' local factors
    ``local`` ``(n, d)``, in float64: what averaging the two factors separately gets wrong."""
    x = local.to(torch.float64)
    w = (weights.to(torch.float64) / weights.sum()).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in layout.slots:
        a, b = layout.A(x, s), layout.B(x, s)
        exact = torch.einsum("k,kor,kri->oi", w, b, a)
        separate = torch.einsum("k,kor->or", w, b) @ torch.einsum("k,kri->ri", w, a)
        total += ((exact - separate) ** 2).sum()
    return float(total.sqrt())
