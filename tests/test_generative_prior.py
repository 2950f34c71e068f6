"""The generative-prior inversion attack (``gifd``) and its diffusion prior: the cache (atomic,
``weights_only``), the auxiliary split, the deterministic DDIM map, the l1-ball projection, and a
tiny end-to-end reconstruction.  The slow test reruns the recorded benchmark's claim."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fllab.attacks.inversion import DDIMSampler, GenerativeInversion, PriorConfig, load_or_train_prior
from fllab.attacks.inversion.generative import project_l1_ball, project_sphere
from fllab.attacks.inversion.prior import auxiliary_data, prior_cache_dir
from fllab.data.subset import stratified_head
from fllab.errors import ConfigError
from fllab.models.flat import flatten_params
from fllab.registry import ATTACKS, DATASETS, MODELS
from fllab.types import ModelHandle, PublicHyperParams, UpdateKind, UpdateObservation

ROOT = Path(__file__).resolve().parents[1]

# a prior that trains in about a second: sklearn's 8x8 digits (offline), 64 test images, 3 steps
TINY_PRIOR = {
    "dataset": {"name": "digits"},
    "aux_limit": 64,
    "steps": 3,
    "batch_size": 8,
    "unet": {"block_out_channels": [8, 16]},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private $FLLAB_CACHE for the module."""
    path = tmp_path_factory.mktemp("fllab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLLAB_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_prior(cache):
    return load_or_train_prior(PriorConfig(**TINY_PRIOR))


def digits_victim(seed: int = 0):
    """A random-init small ConvNet on 8x8 digits and a function giving a client's FedSGD upload."""
    cls = MODELS["convnet"]
    builder = cls(cls.Params(width=8, hidden=32))
    shape = (1, 8, 8)
    handle = ModelHandle(build=lambda: builder.build(shape, 10), input_shape=shape, num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = handle.build()

    def upload(x: torch.Tensor, y: torch.Tensor, client: int = 0) -> UpdateObservation:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
        hyper = PublicHyperParams(algorithm="fedsgd", lr=0.1, batch_size=len(y), local_steps=1, local_epochs=None,
                                  num_examples=len(y))
        return UpdateObservation(round=0, client_id=client, model=handle, global_params=flatten_params(model),
                                 update=grad, kind=UpdateKind.GRADIENT, hyper=hyper)

    return handle, upload


def tiny_attack(**overrides) -> GenerativeInversion:
    params = {"prior": TINY_PRIOR, "ddim_steps": 3, "candidates": 2, "latent_iterations": 8, "feature_stages": 1,
              "feature_iterations": 4, "lpips": False, **overrides}
    return ATTACKS.build({"name": "gifd", **params})


# ------------------------------------------------------------------------------------ registry
def test_registered_with_declared_capabilities():
    cls = ATTACKS.get_class("gifd")
    assert cls.family == "inversion"
    assert cls.needs == frozenset({"gradient", "delta"})
    assert cls.summary and cls.threat_model and any("GIFD" in r for r in cls.references)
    attack = ATTACKS.build("gifd")
    assert attack.params.prior.aux_split == "test" and attack.params.prior.dataset == {"name": "fashion_mnist"}
    with pytest.raises(ConfigError, match="unknown key"):
        ATTACKS.build({"name": "gifd", "prior": {"step": 10}})
    with pytest.raises(ConfigError, match="aux_split"):
        ATTACKS.build({"name": "gifd", "prior": {"aux_split": "train"}})
    with pytest.raises(ConfigError, match="feature_stages"):
        ATTACKS.build({"name": "gifd", "ddim_steps": 3, "feature_stages": 3})


# ------------------------------------------------------------------------------- projections
def test_l1_ball_projection_exact_and_feasible():
    v = torch.tensor([[3.0, 1.0, -2.0], [0.5, -0.5, 0.0]])
    out = project_l1_ball(v, 3.0)
    assert torch.allclose(out[0], torch.tensor([2.0, 0.0, -1.0]))  # theta = 1
    assert torch.equal(out[1], v[1])  # already inside
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 40, generator=g) * 3
    p = project_l1_ball(w, 5.0)
    assert torch.all(p.abs().sum(1) <= 5.0 + 1e-4)
    assert torch.allclose(p.abs().sum(1), torch.full((50,), 5.0), atol=1e-4)  # all were outside: on the surface
    # the projection is the closest feasible point: no random feasible point is closer
    q = project_l1_ball(torch.randn(200, 40, generator=g) * 3, 5.0)
    assert torch.all((w[:1] - p[:1]).norm(dim=1) <= (w[:1] - q).norm(dim=1) + 1e-5)
    s = project_sphere(torch.randn(4, 1, 3, 3, generator=g), 3.0)
    assert torch.allclose(s.flatten(1).norm(dim=1), torch.full((4,), 3.0))


# ------------------------------------------------------------------------------------- prior
def test_prior_is_trained_once_cached_atomically_and_loaded_weights_only(cache, tiny_prior):
    cfg = PriorConfig(**TINY_PRIOR)
    assert not tiny_prior.from_cache and len(tiny_prior.losses) == 3 and tiny_prior.seconds > 0
    assert tiny_prior.path.parent == prior_cache_dir() == cache / "priors"
    assert [p.name for p in tiny_prior.path.parent.iterdir()] == [tiny_prior.path.name]  # no temp file left
    record = torch.load(tiny_prior.path, map_location="cpu", weights_only=True)
    assert set(record) >= {"key", "state_dict", "losses", "seconds", "config"}
    again = load_or_train_prior(cfg)
    assert again.from_cache and again.path == tiny_prior.path and again.losses == tiny_prior.losses
    for a, b in zip(tiny_prior.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    other = load_or_train_prior(PriorConfig(**{**TINY_PRIOR, "seed": 1}))
    assert not other.from_cache and other.path != tiny_prior.path
    retrained = load_or_train_prior(cfg, retrain=True)
    # seeded: the same run (to float rounding: the module fixture trained before the tests' thread setting)
    assert not retrained.from_cache and retrained.losses == pytest.approx(tiny_prior.losses, rel=1e-5)


def test_unreadable_cache_file_is_retrained(cache, tiny_prior):
    cfg = PriorConfig(**{**TINY_PRIOR, "seed": 2})
    first = load_or_train_prior(cfg)
    first.path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        second = load_or_train_prior(cfg)
    assert not second.from_cache and second.losses == pytest.approx(first.losses, rel=1e-5)
    assert load_or_train_prior(cfg).from_cache


def test_auxiliary_data_is_the_test_split():
    data, num_classes, name = auxiliary_data(PriorConfig(**TINY_PRIOR))
    bundle = DATASETS.build({"name": "digits"}).load()
    idx = stratified_head(bundle.test.y.numpy(), 64)
    assert name == "digits" and num_classes == 10 and len(data) == 64
    assert torch.equal(data.x, bundle.test.x[idx]) and torch.equal(data.y, bundle.test.y[idx])
    with pytest.raises(ConfigError, match="aux_limit"):
        auxiliary_data(PriorConfig(**{**TINY_PRIOR, "aux_limit": 100_000}))


# ---------------------------------------------------------------------------------- sampling
def test_ddim_map_is_deterministic_and_composes(tiny_prior):
    sampler = DDIMSampler(tiny_prior, 4)
    assert sampler.timesteps[0] == 999 and len(sampler.timesteps) == 4
    labels = torch.tensor([0, 3, 7])
    a, b = sampler.sample(3, labels, seed=5), sampler.sample(3, labels, seed=5)
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, sampler.sample(3, labels, seed=6))
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = sampler.run(z, labels)
        split = sampler.run(sampler.run(z, labels, 0, 2), labels, 2)
    assert torch.allclose(whole, split, atol=1e-6)
    with pytest.raises(ValueError, match="states run"):
        sampler.run(z, labels, 3, 2)


# ------------------------------------------------------------------------------------ attack
def test_attack_end_to_end_matching_loss_decreases(tiny_prior):
    bundle = DATASETS.build({"name": "digits"}).load()
    _, upload = digits_victim()
    x, y = bundle.train.x, bundle.train.y
    obs = [upload(x[2 * k : 2 * k + 2], y[2 * k : 2 * k + 2], client=k) for k in range(2)]
    attack = tiny_attack()
    results = attack.reconstruct_many(obs, 2, None, [0, 1])
    for k, r in enumerate(results):
        assert r.x.shape == (2, 1, 8, 8) and r.x.min() >= 0 and r.x.max() <= 1
        assert sorted(r.y.tolist()) == sorted(y[2 * k : 2 * k + 2].tolist())  # recovered
        match = r.history["match"]
        assert len(match) == 8 + 4 and len(r.history["stage_match"]) == 2
        assert min(r.history["stage_match"]) < match[0]  # the kept result matches better than the start
    # one target alone follows the same path as inside the batch
    alone = attack.reconstruct(obs[1], 2, None, 1)
    assert torch.allclose(alone.x, results[1].x, atol=1e-4)
    assert np.allclose(alone.history["match"], results[1].history["match"], atol=1e-5)
    known = attack.reconstruct(obs[0], 2, torch.tensor([9, 9]), 0)
    assert known.y.tolist() == [9, 9]


def test_prior_must_fit_the_model(tiny_prior):
    cls = MODELS["mlp"]
    builder = cls(cls.Params(hidden=[8]))
    handle = ModelHandle(build=lambda: builder.build((1, 16, 16), 10), input_shape=(1, 16, 16), num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = handle.build()
    d = flatten_params(model).numel()
    hyper = PublicHyperParams(algorithm="fedsgd", lr=0.1, batch_size=1, local_steps=1, local_epochs=None, num_examples=1)
    obs = UpdateObservation(round=0, client_id=0, model=handle, global_params=flatten_params(model),
                            update=torch.ones(d), kind=UpdateKind.GRADIENT, hyper=hyper)
    with pytest.raises(ConfigError, match="prior generates"):
        tiny_attack().reconstruct(obs, 1, torch.tensor([0]), 0)


# ------------------------------------------------------------------------------ the claim (slow)
@pytest.mark.slow
def test_benchmark_claim_prior_beats_inverting_gradients(tmp_path):
    """The recorded benchmark (benchmarks/results/generative_prior.md): on 2 Fashion-MNIST train
    batches of 32, the prior's reconstructions beat Inverting Gradients at the same iteration
    count (recorded: +0.88 dB PSNR, SSIM 0.583 vs 0.510).  Trains the prior first when it is not
    cached (about 11 minutes on a loaded 2-core machine)."""
    out = tmp_path / "gp.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_generative_prior.py"), "--targets", "2",
                    "--batch", "32", "--ig-long", "0", "--json", str(out)], check=True, cwd=ROOT)
    figures = json.loads(out.read_text())
    assert figures["margin_psnr_db"] >= 0.5
    assert figures["gifd"]["ssim"] >= figures["inverting_gradients"]["ssim"] + 0.03
