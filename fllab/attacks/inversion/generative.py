"""Generative gradient inversion through a diffusion prior, after GIFD (Fang, Chen, Wang, Wang &
Xu 2023, "GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization", ICCV).

Prior-free attacks (:mod:`.inverting_gradients`) search the whole pixel space; once a batch holds
several images the gradient no longer pins each of them down and the reconstructions turn to
noise.  A generative-prior attack searches only the images a generator trained on public data can
produce (Jeon et al. 2021, GIAS; Li et al. 2022, GGL).  GIFD optimises the generator's latent
code first, then moves on to its intermediate features layer by layer, each time only within an
l1 ball around the previous solution, so that it can leave the generator's range a little without
losing its image statistics; of all the layers' results it keeps the one whose gradient matches
best.

Here the generator is the deterministic DDIM chain of a DDPM trained on the attacker's auxiliary
split (:mod:`.prior`, which also explains why that split is disjoint from every client's data):

1. **candidates** - draw ``candidates`` noise batches ``z_T`` per target, keep the one whose
   image batch matches best (GGL's and GIFD's selection of a starting latent);
2. **latent stage** - Adam on ``z_T``, projected after every step onto the sphere of radius
   ``sqrt(d)`` per image, where a standard normal's mass lies (keeps ``z_T`` a plausible noise);
3. **feature stages** ``s = 1 .. feature_stages`` - the DDIM state ``z_{t_s}`` reached from the
   previous stage's solution becomes the anchor; Adam on an offset ``delta``, projected onto the
   l1 ball ``|delta|_1 <= radius * d`` per image (Duchi et al. 2008, "Efficient Projections onto
   the l1-Ball for Learning in High Dimensions"), and the remaining DDIM steps produce the image;
4. the image batch of the stage with the lowest gradient-matching loss is returned.

The loss is Inverting Gradients' (Geiping et al. 2020): ``1 - cos(grad_w L(x, y), g) +
tv_weight * TV(x)``, with labels recovered from the last layer (:mod:`.labels`) or known.  A
class-conditional prior generates each image from its label.

K targets are one computation: the generator runs on all K x B images as one UNet batch (its
GroupNorm and Adam act per image, so targets do not interact), and the gradient of the loss with
respect to the images is a ``torch.func.vmap`` over targets, pulled back through the generator by
ordinary autograd.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor
from torch.func import grad_and_value, vmap

from ...errors import ConfigError
from ...registry import ATTACKS
from ...seeding import torch_gen
from ...types import UpdateObservation
from ..base import InversionParams
from .common import BatchedInversion, CurveRecorder, InversionResult, Problem, labels_for, stack_history
from .inverting_gradients import ig_objective
from .prior import DDIMSampler, DiffusionPrior, PriorConfig, load_or_train_prior, noise_norm


def project_l1_ball(v: Tensor, radius: float) -> Tensor:
    """Euclidean projection of every row of ``v`` (N, D) onto ``{w : |w|_1 <= radius}``
    (Duchi, Shalev-Shwartz, Singer & Chandra 2008, Fig. 1), vectorised over rows.

    Rows already inside the ball are returned unchanged; the others are soft-thresholded at the
    ``theta`` that puts them on its surface.
    """
    a = v.abs()
    mu = a.sort(dim=1, descending=True).values
    cumsum = mu.cumsum(dim=1)
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    support = mu - (cumsum - radius) / j > 0
    rho = (support * j).argmax(dim=1, keepdim=True)  # last index where the condition holds
    theta = (cumsum.gather(1, rho) - radius) / (rho + 1).to(v.dtype)
    projected = v.sign() * (a - theta).clamp_min(0)
    inside = a.sum(dim=1, keepdim=True) <= radius
    return torch.where(inside, v, projected)


def project_sphere(z: Tensor, norm: float) -> Tensor:
    """Rescale every row of ``z`` (N, ...) to Euclidean norm ``norm``."""
    flat = z.reshape(z.shape[0], -1)
    return (flat * (norm / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny))).view_as(z)


@ATTACKS.register("gifd")
class GenerativeInversion(BatchedInversion):
    """GIFD-style gradient inversion through a DDIM image prior trained on the attacker's public split."""

    summary = (
        "GIFD-style generative inversion: optimise a DDIM prior's noise, then its intermediate states in "
        "l1 balls, to match the gradient (prior trained on the attacker's test-split data)"
    )
    references = (
        "Fang, Chen, Wang, Wang & Xu 2023, GIFD: A Generative Gradient Inversion Method with Feature Domain "
        "Optimization (ICCV)",
        "Jeon, Kim, Lee, Lee & Ok 2021, Gradient Inversion with Generative Image Prior (NeurIPS)",
        "Li, Han, Kim, Cheng & Liu 2022, Auditing Privacy Defenses in Federated Learning via Generative "
        "Gradient Leakage (CVPR)",
        "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models (NeurIPS)",
        "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR)",
        "Geiping, Bauermeister, Droege & Moeller 2020, Inverting Gradients - How easy is it to break privacy "
        "in federated learning? (NeurIPS)",
        "Duchi, Shalev-Shwartz, Singer & Chandra 2008, Efficient Projections onto the l1-Ball for Learning in "
        "High Dimensions (ICML)",
    )
    threat_model = (
        "honest-but-curious server holding public images from the clients' distribution (a dataset's test "
        "split, which no client holds): one client's update (gradient, or FedAvg delta as an averaged-gradient "
        "proxy), the global weights it sent, the public model and hyper-parameters"
    )
    family = "inversion"
    needs = frozenset({"gradient", "delta"})

    class Params(InversionParams):
        prior: PriorConfig = Field(default_factory=PriorConfig, description="the diffusion prior and its auxiliary data")
        ddim_steps: PositiveInt = Field(5, description="deterministic DDIM steps from noise to image")
        candidates: PositiveInt = Field(4, description="random noise batches scored per target; the best one starts")
        latent_iterations: PositiveInt = Field(150, description="Adam steps on the noise z_T")
        latent_lr: PositiveFloat = Field(0.05, description="Adam step size on z_T (cosine-annealed)")
        feature_stages: NonNegativeInt = Field(
            4, description="intermediate DDIM states optimised after z_T, one after another (at most ddim_steps - 1)"
        )
        feature_iterations: PositiveInt = Field(50, description="Adam steps per intermediate state")
        feature_lr: PositiveFloat = Field(0.01, description="Adam step size on an intermediate state's offset (cosine-annealed)")
        radius: NonNegativeFloat = Field(
            0.1, description="l1-ball radius around each stage's anchor, per state entry (the ball is radius * C*H*W per image)"
        )
        tv_weight: NonNegativeFloat = Field(1e-4, description="weight of the total-variation term")

        @model_validator(mode="after")
        def _stages_fit(self) -> "GenerativeInversion.Params":
            if self.feature_stages >= self.ddim_steps:
                raise ValueError(
                    f"feature_stages ({self.feature_stages}) must be below ddim_steps ({self.ddim_steps}): "
                    "every optimised state needs a DDIM step after it"
                )
            return self

    def __init__(self, params: "GenerativeInversion.Params"):
        super().__init__(params)
        self._prior: DiffusionPrior | None = None

    def prior(self) -> DiffusionPrior:
        """The trained prior (loaded from the cache, or trained on first use)."""
        if self._prior is None:
            self._prior = load_or_train_prior(self.params.prior)
        return self._prior

    def _check_prior(self, prior: DiffusionPrior, problem: Problem) -> None:
        if tuple(prior.image_shape) != tuple(problem.input_shape):
            raise ConfigError(
                f"the prior generates {tuple(prior.image_shape)} images, the model takes {tuple(problem.input_shape)}; "
                "train the prior on a dataset of the task's image shape",
                "attack.prior.dataset",
            )
        if prior.class_conditional and prior.num_classes != problem.num_classes:
            raise ConfigError(
                f"the class-conditional prior knows {prior.num_classes} classes, the model predicts {problem.num_classes}",
                "attack.prior.dataset",
            )

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        """Target k gives the result ``reconstruct(observations[k], ..., seeds[k])`` gives (up to
        float rounding)."""
        p = self.params
        k, b = problem.num_targets, num_images
        prior = self.prior()
        self._check_prior(prior, problem)
        y = labels_for(problem, labels, b)
        device, dtype = problem.gradients.device, problem.gradients.dtype
        prior.unet.to(device)
        sampler = DDIMSampler(prior, p.ddim_steps)
        shape = tuple(prior.image_shape)
        y_flat = y.reshape(k * b)
        targets, params = problem.gradients, problem.params
        objective = ig_objective(problem, p.tv_weight)
        in_dims = (0, 0, 0, problem.params_in_dim)
        loss_grad = vmap(grad_and_value(objective, has_aux=True), in_dims=in_dims)
        score = vmap(objective, in_dims=in_dims)

        def generate(state: Tensor, start: int) -> Tensor:
            """Images (K, B, C, H, W) from DDIM states (K*B, C, H, W) at index ``start``."""
            out = sampler.to_images(sampler.run(state, y_flat, start), problem.data_range)
            return out.to(dtype).view(k, b, *shape)

        # 1. candidates: the best-matching of several noise batches per target
        z_all = torch.stack(
            [torch.randn((p.candidates, b, *shape), generator=torch_gen(s, "inversion", "gifd", "latent")) for s in seeds]
        ).to(device)  # (K, M, B, C, H, W)
        with torch.no_grad():
            cand = torch.stack([score(generate(z_all[:, m].reshape(k * b, *shape), 0), targets, y, params)[1][0]
                                for m in range(p.candidates)], dim=1)  # (K, M) matching losses
        z = z_all[torch.arange(k, device=device), cand.argmin(dim=1)].reshape(k * b, *shape)

        recorder = CurveRecorder(p.latent_iterations + p.feature_stages * p.feature_iterations)
        best_x = torch.empty((k, b, *shape), device=device, dtype=dtype)
        best_match = torch.full((k,), float("inf"), device=device, dtype=dtype)
        best_stage = torch.zeros(k, dtype=torch.long, device=device)
        stage_match: list[Tensor] = []

        def optimise(variable: Tensor, forward, project, lr: float, iterations: int) -> None:
            optimizer = torch.optim.Adam([variable], lr=lr)
            annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
            for _ in range(iterations):
                images = forward(variable)
                grad_x, (loss, (_, figures)) = loss_grad(images.detach(), targets, y, params)
                optimizer.zero_grad(set_to_none=True)
                images.backward(grad_x)
                optimizer.step()
                annealing.step()
                with torch.no_grad():
                    variable.copy_(project(variable))
                recorder.record({"loss": loss, **figures})

        def keep_best(images: Tensor, stage: int) -> None:
            with torch.no_grad():
                match = score(images, targets, y, params)[1][0]
                better = match < best_match
                best_x[better] = images[better]
                best_match[better] = match[better]
                best_stage[better] = stage
                stage_match.append(match)

        # 2. latent stage: z_T on the Gaussian shell
        radius_z = noise_norm(shape)
        z = project_sphere(z, radius_z).requires_grad_(True)
        optimise(z, lambda v: generate(v, 0), lambda v: project_sphere(v, radius_z), p.latent_lr, p.latent_iterations)
        state = z.detach()
        with torch.no_grad():
            keep_best(generate(state, 0), 0)

        # 3. feature stages: intermediate DDIM states, each within an l1 ball around its anchor
        ball = p.radius * math.prod(shape)
        for s in range(1, p.feature_stages + 1):
            with torch.no_grad():
                anchor = sampler.run(state, y_flat, s - 1, s)
            delta = torch.zeros_like(anchor, requires_grad=True)
            optimise(
                delta,
                lambda v, a=anchor, s=s: generate(a + v, s),
                lambda v: project_l1_ball(v.reshape(k * b, -1), ball).view_as(v),
                p.feature_lr,
                p.feature_iterations,
            )
            state = anchor + delta.detach()
            with torch.no_grad():
                keep_best(generate(state, s), s)

        histories = stack_history(recorder.curves, torch.arange(k, device=device))
        per_stage = torch.stack(stage_match, dim=1).cpu().tolist()  # (K, stages)
        chosen = best_stage.cpu().tolist()
        return [
            InversionResult(
                x=best_x[i].detach(), y=y[i], history={**histories[i], "stage_match": per_stage[i], "stage": [float(chosen[i])]}
            )
            for i in range(k)
        ]
