"""Deep Leakage from Gradients (Zhu, Liu & Han 2019) and iDLG (Zhao, Mopuri & Bilen 2020).

DLG optimises dummy images and dummy soft labels (softmax of free logits) jointly with L-BFGS so
that the squared distance between their gradient and the observed one vanishes.  iDLG first reads
the labels off the last layer's gradient (:mod:`.labels`) and optimises the images alone.  Known
labels, when passed, are used as they are by both.

K targets are one ``vmap``-ed objective minimised by a batched L-BFGS (:mod:`.lbfgs`) whose rows
are independent, so each target follows the path it would follow alone.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor
from torch.func import grad_and_value, vmap

from ...registry import ATTACKS
from ..base import InversionParams
from ...seeding import torch_gen
from ...types import UpdateObservation
from .common import BatchedInversion, Init, InversionResult, Problem, initial_images, labels_for, squared_distance
from .lbfgs import lbfgs


@ATTACKS.register("dlg")
class DeepLeakage(BatchedInversion):
    """Gradient inversion by L2 gradient matching with L-BFGS, labels learned jointly (Zhu et al. 2019)."""

    summary = "Deep Leakage from Gradients: L2 gradient matching, L-BFGS, dummy data and soft labels"
    references = (
        "Zhu, Liu & Han 2019, Deep Leakage from Gradients (NeurIPS)",
        "Zhao, Mopuri & Bilen 2020, iDLG: Improved Deep Leakage from Gradients (arXiv:2001.02610)",
    )
    threat_model = (
        "honest-but-curious server: one client's update (gradient, or FedAvg delta as an averaged-gradient "
        "proxy), the global weights it sent, the public model and hyper-parameters"
    )
    family = "inversion"
    needs = frozenset({"gradient", "delta"})
    default_labels = "optimize"

    class Params(InversionParams):
        iterations: PositiveInt = Field(300, description="L-BFGS updates")
        lr: PositiveFloat = Field(1.0, description="L-BFGS step size (torch's default, as in DLG)")
        history_size: PositiveInt = Field(100, description="L-BFGS curvature pairs kept")
        label_strategy: Literal["optimize", "analytic"] | None = Field(
            None,
            description="unknown labels: learn soft labels jointly (DLG) or read them off the last layer "
            "(iDLG); default: the attack's own choice",
        )
        init: Init = Field("randn", description="starting images: centred normal or uniform")

    def __init__(self, params: "DeepLeakage.Params"):
        super().__init__(params)
        self.label_mode = params.label_strategy or self.default_labels

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        p = self.params
        k, b, c = problem.num_targets, num_images, problem.num_classes
        learn = self.label_mode == "optimize" and any(y is None for y in labels)
        device, dtype = problem.gradients.device, problem.gradients.dtype
        shape = (b, *problem.input_shape)
        nx = math.prod(shape)
        x0 = torch.stack([initial_images(s, shape, problem.data_range, p.init) for s in seeds]).reshape(k, nx)
        if learn:
            # free label logits per image; targets whose labels are known keep them, as one-hot targets
            logits0 = torch.stack([torch.randn(b, c, generator=torch_gen(s, "inversion", "labels")) for s in seeds])
            z0 = torch.cat([x0, logits0.reshape(k, b * c)], dim=1)
            known = torch.tensor([y is not None for y in labels], device=device)
            y_known = torch.stack([torch.zeros(b, dtype=torch.long) if y is None else y for y in labels]).to(device)
            y_arg = F.one_hot(y_known, c).to(dtype)
        else:
            z0 = x0
            known = torch.ones(k, dtype=torch.bool, device=device)
            y_known = y_arg = labels_for(problem, labels, b)

        def objective(z: Tensor, target: Tensor, y: Tensor, is_known: Tensor, params: Tensor) -> Tensor:
            if learn:
                y = torch.where(is_known, y, z[nx:].view(b, c).softmax(dim=-1))
            g = problem.victim.batch_gradient(params, z[:nx].view(shape), y)
            return squared_distance(g, problem.victim.split(target))

        batched = vmap(grad_and_value(objective), in_dims=(0, 0, 0, 0, problem.params_in_dim))

        def fun(z: Tensor) -> tuple[Tensor, Tensor]:
            g, loss = batched(z, problem.gradients, y_arg, known, problem.params)
            return loss, g

        z, losses = lbfgs(fun, z0.to(device, dtype), p.iterations, lr=p.lr, history_size=p.history_size)
        lo, hi = problem.data_range
        x = z[:, :nx].reshape(k, *shape).clamp(lo, hi)
        y_out = y_known
        if learn:
            y_out = torch.where(known[:, None], y_known, z[:, nx:].reshape(k, b, c).argmax(dim=-1))
        curve = losses.T.cpu().tolist()
        return [InversionResult(x=x[i], y=y_out[i], history={"loss": curve[i]}) for i in range(k)]


@ATTACKS.register("idlg")
class ImprovedDeepLeakage(DeepLeakage):
    """DLG with the labels read off the last layer's gradient (Zhao et al. 2020; more than one
    image: bias-corrected label counting)."""

    summary = "iDLG: DLG with labels recovered analytically from the last layer's gradient"
    default_labels = "analytic"
