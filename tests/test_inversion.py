"""Gradient inversion: label recovery kernels, the batched L-BFGS, DLG / iDLG / Inverting
Gradients on real CIFAR-10 sample images, and batched == looped reconstructions."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fllab.attacks.inversion import (
    DeepLeakage,
    ImprovedDeepLeakage,
    InvertingGradients,
    label_counts,
    observed_gradient,
    recover_labels,
)
from fllab.attacks.inversion.labels import counts_to_labels, round_counts
from fllab.attacks.inversion.lbfgs import lbfgs
from fllab.errors import CapabilityError, ConfigError
from fllab.metrics.image import psnr
from fllab.models.flat import flatten_params, param_shapes
from fllab.registry import ATTACKS, MODELS
from fllab.types import ModelHandle, PublicHyperParams, UpdateKind, UpdateObservation

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
NUM_CLASSES = 10


def cifar_samples(side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real CIFAR-10 sample images in [0, 1] (bicubic-resized to ``side``) and labels."""
    files = sorted(SAMPLES.glob("cifar10_*.png"))
    if len(files) != 20:
        pytest.skip(f"CIFAR-10 samples not found under {SAMPLES}")
    images = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if side != 32:
            im = im.resize((side, side), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    labels = [int(re.findall(r"_(\d+)\.png$", f.name)[0]) for f in files]
    return torch.stack(images), torch.tensor(labels)


def victim(name: str, side: int, seed: int = 0, **params) -> tuple[ModelHandle, torch.nn.Module]:
    """A registered model at random init (seeded) and the public handle that rebuilds it."""
    cls = MODELS[name]
    builder = cls(cls.Params(**params))
    shape = (3, side, side)
    handle = ModelHandle(build=lambda: builder.build(shape, NUM_CLASSES), input_shape=shape, num_classes=NUM_CLASSES)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = handle.build()
    return handle, model


def upload(handle, model, x, y, kind: UpdateKind = UpdateKind.GRADIENT, lr: float = 0.1, client: int = 0):
    """What the server sees of a client holding (x, y): the FedSGD gradient of the mean loss, or the
    FedAvg delta of one SGD step."""
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
    update = grad if kind is UpdateKind.GRADIENT else -lr * grad
    hyper = PublicHyperParams(
        algorithm="fedsgd" if kind is UpdateKind.GRADIENT else "fedavg", lr=lr, batch_size=len(y), local_steps=1,
        local_epochs=None, num_examples=len(y),
    )
    return UpdateObservation(
        round=0, client_id=client, model=handle, global_params=flatten_params(model), update=update, kind=kind,
        hyper=hyper,
    )


def multiset_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of the batch's labels recovered, ignoring order."""
    both = torch.minimum(torch.bincount(pred, minlength=NUM_CLASSES), torch.bincount(truth, minlength=NUM_CLASSES))
    return float(both.sum()) / len(truth)


# ------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("name", ["dlg", "idlg", "inverting_gradients"])
def test_registered_with_declared_capabilities(name):
    cls = ATTACKS.get_class(name)
    assert cls.family == "inversion"
    extra = {"hypernetwork"} if name == "inverting_gradients" else set()  # HyperFL uploads too
    assert cls.needs == frozenset({"gradient", "delta", *extra})
    assert cls.summary and cls.references and cls.threat_model
    assert hasattr(ATTACKS.build(name), "reconstruct_many")
    with pytest.raises(ConfigError, match="unknown key"):
        ATTACKS.build({"name": name, "iteration": 10})


# ------------------------------------------------------------------------------------ labels
def test_label_kernels_exact_on_a_tiny_last_layer():
    """Counts from an analytically computed last-layer gradient, with a model that already
    favours a present class (its bias gradient is positive)."""
    g = torch.Generator().manual_seed(0)
    c, f, b = 5, 7, 6
    weight = 0.1 * torch.randn(c, f, generator=g)
    bias = torch.tensor([1.5, 0.0, 0.0, 0.0, 0.0])  # class 0 gets ~0.53 of the probability
    labels = torch.tensor([0, 0, 1, 3, 3, 3])
    h = torch.rand(b, f, generator=g)
    p = (h @ weight.T + bias).softmax(-1)
    err = (p - F.one_hot(labels, c)) / b
    w_grad, b_grad = (err.T @ h)[None], err.sum(0)[None]
    assert b_grad[0, 0] > 0  # present, but the plain sign test would miss it
    counts = label_counts(w_grad, b_grad, weight, bias, b)
    assert counts.tolist() == [[2, 1, 0, 3, 0]]
    assert counts_to_labels(counts).tolist() == [[0, 0, 1, 3, 3, 3]]
    assert round_counts(torch.tensor([[1.4, 0.6, 1.0]]), torch.tensor([[1, 0, 0]]), 3).tolist() == [[1, 1, 1]]
    assert round_counts(torch.tensor([[0.2, 0.3, 2.5]]), torch.tensor([[1, 1, 0]]), 3).tolist() == [[1, 1, 1]]


@pytest.mark.parametrize("kind", [UpdateKind.GRADIENT, UpdateKind.DELTA])
def test_idlg_recovers_every_label_of_the_20_samples(kind):
    xs, ys = cifar_samples()
    handle, model = victim("convnet", 32, width=32)
    obs = [upload(handle, model, xs[i : i + 1], ys[i : i + 1], kind) for i in range(len(ys))]
    grads = torch.stack([observed_gradient(o) for o in obs])
    labels = recover_labels(grads, obs[0].global_params, param_shapes(model), NUM_CLASSES, 1)
    assert labels.shape == (20, 1)
    assert torch.equal(labels[:, 0], ys)


@pytest.mark.parametrize("name, params", [("convnet", {"width": 32}), ("resnet18", {"width": 0.25})])
def test_batch_label_recovery_on_batch8_sets(name, params):
    """Batch-8 sets of the real samples.  On the random-init ResNet-18 every set holds a present
    class whose bias gradient is positive, which sign-based counting misses."""
    xs, ys = cifar_samples()
    handle, model = victim(name, 32, **params)
    g = torch.Generator().manual_seed(0)
    sets = [torch.randperm(20, generator=g)[:8] for _ in range(10)]
    obs = [upload(handle, model, xs[s], ys[s]) for s in sets]
    grads = torch.stack([o.update for o in obs])
    rec = recover_labels(grads, obs[0].global_params, param_shapes(model), NUM_CLASSES, 8)
    acc = [multiset_accuracy(r, ys[s]) for r, s in zip(rec, sets)]
    top = torch.bincount(ys).argmax()
    baseline = [multiset_accuracy(torch.full((8,), int(top)), ys[s]) for s in sets]
    print(f"{name}: batch-8 label accuracy {np.mean(acc):.3f} (no-information baseline {np.mean(baseline):.3f})")
    assert np.mean(acc) == 1.0
    assert np.mean(baseline) < 0.5


def test_batch_labels_need_a_last_layer_bias():
    shapes = [("0.weight", torch.Size([16, 4])), ("1.weight", torch.Size([NUM_CLASSES, 16]))]
    grads = torch.zeros(1, 16 * 4 + NUM_CLASSES * 16)
    assert recover_labels(grads, grads[0], shapes, NUM_CLASSES, 1).shape == (1, 1)
    with pytest.raises(ConfigError, match="bias"):
        recover_labels(grads, grads[0], shapes, NUM_CLASSES, 4)
    with pytest.raises(ConfigError, match="linear layer"):
        recover_labels(grads, grads[0], shapes[:1], NUM_CLASSES, 1)


# ------------------------------------------------------------------------------------ L-BFGS
@pytest.mark.parametrize("lr, iterations, history", [(1.0, 15, 5), (0.5, 30, 4), (0.3, 7, 100)])
def test_batched_lbfgs_follows_torch_lbfgs_per_row(lr, iterations, history):
    g = torch.Generator().manual_seed(0)
    n, d = 3, 12
    a = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    a = a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)
    bvec = torch.randn(n, d, generator=g, dtype=torch.float64)

    def f(z, i):
        return 0.5 * z @ a[i] @ z - bvec[i] @ z + 0.1 * z.pow(4).sum()

    def fun(z):
        z = z.detach().requires_grad_()
        loss = torch.stack([f(z[i], i) for i in range(n)])
        return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]

    z0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z, losses = lbfgs(fun, z0, iterations, lr=lr, history_size=history)
    assert len(losses) == iterations
    for i in range(n):
        p = z0[i].clone().requires_grad_()
        opt = torch.optim.LBFGS([p], lr=lr, max_iter=iterations, history_size=history)

        def closure():
            opt.zero_grad()
            loss = f(p, i)
            loss.backward()
            return loss

        opt.step(closure)
        torch.testing.assert_close(z[i], p.detach(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------ attacks
@pytest.fixture(scope="module")
def small_task():
    """Four real CIFAR-10 images at 16x16 and FedSGD uploads from a random-init ReLU ConvNet
    (FedAvg CNN, width 32)."""
    xs, ys = cifar_samples(16)
    handle, model = victim("convnet", 16, width=32, hidden=64)
    obs = [upload(handle, model, xs[i : i + 1], ys[i : i + 1], client=i) for i in range(4)]
    return xs[:4], ys[:4], handle, model, obs


def test_inverting_gradients_beats_no_information_baselines(small_task):
    xs, ys, _, _, obs = small_task
    attack = InvertingGradients(InvertingGradients.Params(iterations=200))
    results = attack.reconstruct_many(obs, 1, None, seeds=[0, 1, 2, 3])
    rec = torch.cat([r.x for r in results])
    assert rec.shape == xs.shape and rec.min() >= 0 and rec.max() <= 1
    assert torch.equal(torch.cat([r.y for r in results]), ys)  # labels recovered by iDLG
    scores = psnr(rec, xs)
    full_pool, _ = cifar_samples(16)
    baseline = torch.maximum(psnr(torch.full_like(xs, 0.5), xs), psnr(full_pool.mean(0).expand_as(xs), xs))
    print(f"IG PSNR {scores.tolist()} vs no-information {baseline.tolist()}")
    assert (scores > baseline + 8).all()
    assert scores.mean() > baseline.mean() + 12
    for r in results:
        assert set(r.history) == {"loss", "match", "tv", "restart_match"}
        assert len(r.history["loss"]) == 200 and r.history["match"][-1] < r.history["match"][0]


def test_inverting_gradients_batched_equals_looped(small_task):
    """Restarts, known and recovered labels, and per-target weights, batched vs one by one."""
    xs, ys, handle, model, obs = small_task
    moved = flatten_params(model) + 0.01
    obs = obs[:2] + [replace(obs[2], global_params=moved)]
    labels = [None, ys[1:2], None]
    attack = InvertingGradients(InvertingGradients.Params(iterations=6, restarts=2))
    batched = attack.reconstruct_many(obs, 1, labels, seeds=[5, 6, 7])
    for o, y, s, b in zip(obs, labels, [5, 6, 7], batched):
        one = attack.reconstruct(o, 1, y, s)
        # a gradient entry within rounding of 0 may take the other sign in the batched kernel; a
        # flip in the last step-size phase (lr / 1000) moves a pixel by at most ~2 lr / 1000
        torch.testing.assert_close(b.x, one.x, rtol=0, atol=2e-3 * attack.params.lr)
        assert torch.equal(b.y, one.y)
        np.testing.assert_allclose(b.history["loss"], one.history["loss"], rtol=1e-4, atol=1e-6)


def test_deep_leakage_batched_equals_looped(small_task):
    _, ys, _, _, obs = small_task
    attack = DeepLeakage(DeepLeakage.Params(iterations=5))
    labels = [None, ys[1:2]]
    batched = attack.reconstruct_many(obs[:2], 1, labels, seeds=[3, 4])
    for o, y, s, b in zip(obs, labels, [3, 4], batched):
        one = attack.reconstruct(o, 1, y, s)
        torch.testing.assert_close(b.x, one.x, rtol=0, atol=1e-5)
        np.testing.assert_allclose(b.history["loss"], one.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("cls", [DeepLeakage, ImprovedDeepLeakage])
def test_dlg_and_idlg_beat_the_baseline_on_a_sigmoid_lenet(cls):
    """DLG's own setting: the sigmoid LeNet at random init, one image per upload.  iDLG inverts
    every image; DLG, learning the label too, is known to fail on some (Zhao et al. 2020)."""
    xs, ys = cifar_samples(16)
    xs, ys = xs[:4], ys[:4]
    handle, model = victim("lenet", 16)
    obs = [upload(handle, model, xs[i : i + 1], ys[i : i + 1]) for i in range(4)]
    results = cls(cls.Params(iterations=300)).reconstruct_many(obs, 1, None, seeds=[0, 1, 2, 3])
    scores = psnr(torch.cat([r.x for r in results]), xs)
    baseline = psnr(torch.full_like(xs, 0.5), xs)
    print(f"{cls.registry_name} PSNR {scores.tolist()} vs mid-gray {baseline.tolist()}")
    wins = scores > baseline + 20
    if cls is ImprovedDeepLeakage:
        assert wins.all()
        assert torch.equal(torch.cat([r.y for r in results]), ys)
    else:
        assert wins.sum() >= 2


def test_delta_uploads_give_the_averaged_gradient(small_task):
    xs, ys, handle, model, obs = small_task
    delta = upload(handle, model, xs[:1], ys[:1], UpdateKind.DELTA, lr=0.05)
    torch.testing.assert_close(observed_gradient(delta), obs[0].update)


def test_refuses_what_it_cannot_invert(small_task):
    xs, ys, handle, model, obs = small_task
    attack = InvertingGradients(InvertingGradients.Params(iterations=1))
    ranking = replace(obs[0], kind=UpdateKind.RANKING)
    with pytest.raises(CapabilityError, match="needs a delta or gradient or hypernetwork update"):
        attack.reconstruct(ranking, 1, None, 0)
    other_handle, other = victim("convnet", 16, width=8, hidden=64)
    with pytest.raises(ValueError, match="share the architecture"):
        attack.reconstruct_many([obs[0], upload(other_handle, other, xs[:1], ys[:1])], 1, None, [0, 1])
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        attack.reconstruct(obs[0], 1, ys[:2], 0)
    with pytest.raises(ValueError, match="seeds"):
        attack.reconstruct_many(obs[:2], 1, None, [0])


def test_leaves_the_global_rng_alone(small_task):
    *_, obs = small_task
    state = torch.random.get_rng_state()
    InvertingGradients(InvertingGradients.Params(iterations=2)).reconstruct(obs[0], 1, None, 0)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.slow
def test_inverting_gradients_quality_at_32x32():
    """The benchmark's quality setting on CPU for four images (benchmarks/results/inversion.md
    has all 20 on a GPU): random-init ReLU ConvNet width 64, 2,000 iterations, >= 30 dB."""
    xs, ys = cifar_samples(32)
    handle, model = victim("convnet", 32, width=64)
    obs = [upload(handle, model, xs[i : i + 1], ys[i : i + 1]) for i in range(4)]
    results = InvertingGradients(InvertingGradients.Params()).reconstruct_many(obs, 1, None, seeds=[0, 1, 2, 3])
    assert psnr(torch.cat([r.x for r in results]), xs[:4]).mean() >= 30
