"""A denoising-diffusion image prior trained on the attacker's own auxiliary data, and the
deterministic DDIM map from noise to images that the generative inversion attack
(:mod:`.generative`) searches through.

The attacker's auxiliary data
-----------------------------
A generative-prior attack assumes the server holds public images from the clients' distribution
but not the clients' images (Jeon et al. 2021, GIAS; Li et al. 2022, GGL; Fang et al. 2023,
GIFD).  fllab draws them from the **test split** of a registered dataset (``aux_split: test``,
optionally a deterministic stratified first-k subset, ``aux_limit``).  The engine partitions
only the *train* split across clients, so the prior never sees a client's image: the two sets
are disjoint by construction.  The engine's own evaluation also reads the test split, but that is
the server's data; the attacker here *is* the server.

The prior
---------
A small class-conditional :class:`diffusers.UNet2DModel` trained as a DDPM (Ho, Jain & Abbeel
2020, "Denoising Diffusion Probabilistic Models": regress what was added at a random timestep,
mean squared error; here the velocity of Salimans & Ho 2022, see :func:`train_unet`) on images
scaled to [-1, 1], with an exponential moving average of the weights.  It is built from a config (never loaded from a hub), trained with seeded generators
only, and cached at ``<cache>/priors/<sha256 of config + data + versions>.pt``
(:func:`prior_cache_dir`; written atomically, read back with ``torch.load(weights_only=True)``).

The map
-------
:class:`DDIMSampler` runs DDIM with ``eta = 0`` (Song, Meng & Ermon 2021, "Denoising Diffusion
Implicit Models") over a few "trailing" timesteps, so noise ``z_T`` (and a class label) fixes
the image; every intermediate state ``z_t`` of the chain is an entry point the attack can
optimise, like the intermediate feature layers of a GAN in GIFD.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor

from ...data.subset import stratified_head
from ...errors import ConfigError
from ...io import atomic_write_bytes
from ...metrics.lpips_weights import cache_dir
from ...registry import DATASETS, Params
from ...seeding import derive_seed, torch_gen
from ...types import TensorData

#: bumped when the cache file's layout or the training recipe changes
FORMAT_VERSION = 2


class UNetConfig(Params):
    """Shape of the denoising UNet (a :class:`diffusers.UNet2DModel` without attention in the
    down/up blocks; the middle block keeps one attention layer)."""

    block_out_channels: tuple[PositiveInt, ...] = Field(
        (16, 32, 32), min_length=1, description="channels per resolution level (each level but the last halves the size)"
    )
    layers_per_block: PositiveInt = Field(1, description="ResNet blocks per level")
    norm_num_groups: PositiveInt = Field(8, description="GroupNorm groups (must divide every channel count)")
    class_conditional: bool = Field(True, description="condition on the class label (a learnt embedding)")


class PriorConfig(Params):
    """What the attacker trains its prior on, and how."""

    dataset: dict[str, Any] = Field(
        default_factory=lambda: {"name": "fashion_mnist"},
        description="dataset spec ({name: ..., options}) whose test split is the attacker's auxiliary data",
    )
    aux_split: Literal["test"] = Field(
        "test",
        description="split the prior is trained on; only 'test': clients hold train-split images, so the prior never sees them",
    )
    aux_limit: PositiveInt | None = Field(
        None, description="train on a stratified first-k subset of the split (file order, no randomness); default all"
    )
    unet: UNetConfig = Field(default_factory=UNetConfig)
    train_timesteps: PositiveInt = Field(1000, description="DDPM noise levels")
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = Field("squaredcos_cap_v2", description="DDPM noise schedule")
    steps: PositiveInt = Field(2000, description="optimiser steps")
    batch_size: PositiveInt = Field(32, description="images per step (drawn with replacement)")
    lr: PositiveFloat = Field(2e-3, description="Adam step size, cosine-annealed to zero")
    ema_decay: NonNegativeFloat = Field(0.995, lt=1.0, description="decay of the weight average kept as the prior (0: none)")
    seed: int = Field(0, description="seed of the initial weights, batches, timesteps and noise")


@dataclass(frozen=True)
class DiffusionPrior:
    """A trained (frozen, eval-mode) denoiser with what the sampler needs.

    ``losses`` is the training loss per step; ``seconds`` the training wall time (of the run
    that wrote the cache); ``from_cache`` whether this call loaded it instead of training.
    """

    unet: torch.nn.Module
    config: PriorConfig
    image_shape: tuple[int, int, int]
    num_classes: int
    losses: tuple[float, ...]
    seconds: float
    path: Path
    from_cache: bool

    @property
    def class_conditional(self) -> bool:
        return self.config.unet.class_conditional

    def scheduler_kwargs(self) -> dict[str, Any]:
        """The noise schedule the prior was trained with."""
        return schedule_kwargs(self.config)


def schedule_kwargs(config: PriorConfig) -> dict[str, Any]:
    """Scheduler settings shared by DDPM training and DDIM sampling (velocity prediction, see
    :func:`train_unet`)."""
    return {
        "num_train_timesteps": config.train_timesteps,
        "beta_schedule": config.beta_schedule,
        "prediction_type": "v_prediction",
    }


# ------------------------------------------------------------------------------------- data
def auxiliary_data(config: PriorConfig) -> tuple[TensorData, int, str]:
    """The attacker's images (test split, optionally limited), the class count and dataset name."""
    dataset = DATASETS.build(config.dataset, "attack.prior.dataset")
    bundle = dataset.load()
    data = getattr(bundle, config.aux_split)
    if config.aux_limit is not None:
        if config.aux_limit > len(data):
            raise ConfigError(
                f"{config.aux_limit} is more than the {len(data)} {config.aux_split} images; allowed 1..{len(data)}",
                "attack.prior.aux_limit",
            )
        data = data.subset(stratified_head(data.y.numpy(), config.aux_limit))
    if data.x.dim() != 4:
        raise ConfigError(f"the prior needs image data (N, C, H, W); {bundle.name} has shape {tuple(data.x.shape)}", "attack.prior.dataset")
    return data, bundle.num_classes, bundle.name


def build_unet(config: PriorConfig, image_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
    """A fresh UNet2DModel from ``config`` (seeded weights; the caller's RNG state is untouched)."""
    from diffusers import UNet2DModel

    u = config.unet
    c, h, w = image_shape
    levels = len(u.block_out_channels)
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
        raise ConfigError(
            f"{levels} UNet levels halve a {h}x{w} image {levels - 1} times, which needs sides divisible by {2 ** (levels - 1)}",
            "attack.prior.unet.block_out_channels",
        )
    if any(ch % u.norm_num_groups for ch in u.block_out_channels):
        raise ConfigError(
            f"norm_num_groups {u.norm_num_groups} must divide every channel count {list(u.block_out_channels)}",
            "attack.prior.unet.norm_num_groups",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "prior", "init"))
        return UNet2DModel(
            sample_size=(h, w),
            in_channels=c,
            out_channels=c,
            block_out_channels=tuple(u.block_out_channels),
            layers_per_block=u.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=u.norm_num_groups,
            attention_head_dim=8,
            num_class_embeds=num_classes if u.class_conditional else None,
        )


# ------------------------------------------------------------------------------------ cache
def prior_cache_dir() -> Path:
    """``$FLLAB_CACHE/priors`` (default ``~/.cache/fllab/priors``)."""
    return cache_dir() / "priors"


def cache_key(config: PriorConfig, data: TensorData) -> str:
    """sha256 over the training config, the exact auxiliary images and labels, and the versions
    that shape the weights (fllab's format, torch, diffusers)."""
    import diffusers

    h = hashlib.sha256()
    meta = {"format": FORMAT_VERSION, "config": config.model_dump(mode="json"), "torch": torch.__version__.split("+")[0],
            "diffusers": diffusers.__version__}
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(np.ascontiguousarray(data.x.numpy(), dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(data.y.numpy(), dtype=np.int64).tobytes())
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """The cached record if ``path`` holds a complete one for ``key``, else None (with a warning
    when a file is there but unusable: it is then retrained and replaced)."""
    if not path.exists():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        warnings.warn(f"ignoring unreadable prior cache {path}: {err}", stacklevel=3)
        return None
    if not isinstance(record, dict) or record.get("key") != key or "state_dict" not in record:
        warnings.warn(f"ignoring prior cache {path}: it was written for another configuration", stacklevel=3)
        return None
    return record


# --------------------------------------------------------------------------------- training
def train_unet(unet: torch.nn.Module, data: TensorData, config: PriorConfig) -> tuple[dict[str, Tensor], list[float]]:
    """DDPM training (Ho et al. 2020, Algorithm 1) of ``unet`` on ``data`` (images in [0, 1]);
    returns the state dict to keep (the EMA weights when ``ema_decay > 0``) and the loss per step.

    The network predicts the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` rather than
    the noise (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
    Models", Sec. 4): at the last timesteps ``abar_t`` is ~1e-9, and recovering ``x_0`` from a
    noise prediction divides by ``sqrt(abar_t)``, so a few-step DDIM chain that starts there (and
    its gradient) would blow up; from ``v`` both ``x_0`` and the noise are bounded combinations.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**schedule_kwargs(config))
    gen = torch_gen(config.seed, "prior", "train")
    x_all = data.x.mul(2.0).sub(1.0)
    y_all = data.y
    n = len(data)
    unet.train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    conditional = config.unet.class_conditional
    losses = torch.empty(config.steps)  # preallocated: no small tensor kept per step (CurveRecorder)
    for i in range(config.steps):
        idx = torch.randint(n, (config.batch_size,), generator=gen)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(config.train_timesteps, (config.batch_size,), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, class_labels=y_all[idx] if conditional else None).sample
        loss = F.mse_loss(pred, scheduler.get_velocity(x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        annealing.step()
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.is_floating_point():
                    ema[k].lerp_(v, 1.0 - config.ema_decay)
                else:
                    ema[k].copy_(v)
        losses[i] = loss.detach()
    return ema, losses.tolist()


def load_or_train_prior(config: PriorConfig, *, retrain: bool = False) -> DiffusionPrior:
    """The prior for ``config``: loaded from the cache when a file for exactly this config and data
    exists (and ``retrain`` is False), else trained and cached atomically."""
    data, num_classes, _ = auxiliary_data(config)
    c, h, w = (int(s) for s in data.x.shape[1:])
    image_shape = (c, h, w)
    key = cache_key(config, data)
    path = prior_cache_dir() / f"{key}.pt"
    unet = build_unet(config, image_shape, num_classes)
    record = None if retrain else _read_cache(path, key)
    from_cache = record is not None
    if record is None:
        start = time.perf_counter()
        state, losses = train_unet(unet, data, config)
        seconds = time.perf_counter() - start
        record = {
            "key": key,
            "state_dict": state,
            "losses": torch.tensor(losses),
            "seconds": seconds,
            "image_shape": list(image_shape),
            "num_classes": num_classes,
            "config": config.model_dump_json(),
        }
        buffer = io.BytesIO()
        torch.save(record, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    unet.load_state_dict(record["state_dict"])
    unet.eval().requires_grad_(False)
    return DiffusionPrior(
        unet=unet,
        config=config,
        image_shape=image_shape,
        num_classes=num_classes,
        losses=tuple(float(v) for v in record["losses"].tolist()),
        seconds=float(record["seconds"]),
        path=path,
        from_cache=from_cache,
    )


# ---------------------------------------------------------------------------------- sampling
class DDIMSampler:
    """The deterministic DDIM chain (``eta = 0``) of ``num_steps`` steps from pure noise to an image.

    States are numbered ``0 .. num_steps``: state 0 is the noise ``z_T`` at the last training
    timestep, state ``num_steps`` the image (scaled to [-1, 1]).  :meth:`run` maps state ``start``
    to state ``stop`` and is differentiable in its input.  Timesteps are "trailing" (the first is
    ``T - 1``, so the chain starts from pure noise even with few steps; Lin et al. 2024, "Common
    Diffusion Noise Schedules and Sample Steps are Flawed") and the predicted clean image is not
    clipped (clipping would zero the gradient of the clipped pixels).
    """

    def __init__(self, prior: DiffusionPrior, num_steps: int):
        from diffusers import DDIMScheduler

        self.prior = prior
        self.scheduler = DDIMScheduler(
            **prior.scheduler_kwargs(), clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
        )
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps.tolist()
        self.num_steps = num_steps

    def run(self, z: Tensor, labels: Tensor | None, start: int = 0, stop: int | None = None) -> Tensor:
        """Map states ``z`` (N, C, H, W) at index ``start`` to index ``stop`` (default: the image)."""
        stop = self.num_steps if stop is None else stop
        if not 0 <= start <= stop <= self.num_steps:
            raise ValueError(f"DDIM states run 0..{self.num_steps}; got start {start}, stop {stop}")
        cond = labels if self.prior.class_conditional else None
        for i in range(start, stop):
            t = self.timesteps[i]
            eps = self.prior.unet(z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device), class_labels=cond).sample
            z = self.scheduler.step(eps, t, z, eta=0.0).prev_sample
        return z

    @staticmethod
    def to_images(z: Tensor, data_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """A final state in [-1, 1] as images in ``data_range`` (clamped)."""
        lo, hi = data_range
        return (lo + (hi - lo) * (z + 1.0) / 2.0).clamp(lo, hi)

    def sample(self, n: int, labels: Tensor | None, seed: int) -> Tensor:
        """``n`` images in [0, 1] from noise drawn with ``seed`` alone."""
        c, h, w = self.prior.image_shape
        z = torch.randn((n, c, h, w), generator=torch_gen(seed, "prior", "sample"))
        with torch.no_grad():
            return self.to_images(self.run(z, labels))


def noise_norm(shape: tuple[int, ...]) -> float:
    """Expected norm ``sqrt(d)`` of a standard normal vector with ``d = prod(shape)`` entries:
    where the Gaussian's mass concentrates in high dimension."""
    return math.sqrt(math.prod(shape))
