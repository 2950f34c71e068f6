"""Gradient inversion against HyperFL (Guo et al., AAAI 2025): what a hypernetwork upload reveals,
Inverting Gradients through the public model, and the adaptive attack that reads the client's
private embedding off the hypernetwork's first layer, on real Fashion-MNIST images.

The leaky protocol throughout: each client holds two real Fashion-MNIST images and trains with the
recipe of scenarios/inversion/hyperfl_fmnist.yaml (lr 0.02, momentum 0.5, weight decay 5e-4, batch
50; HyperFL: one epoch on the head, then the hypernetwork and embedding) for one local epoch, which
is one step on the two images; the FedAvg twin takes the same step on the same images and CNN.
Labels are known to every attack.  Measured (200 Adam steps of 0.1, 4 clients, mean PSNR): Inverting
Gradients 21.4 dB on the FedAvg uploads, 6.2 dB on the HyperFL uploads; the adaptive attack 10.8 dB
on the HyperFL uploads (7.6 dB without the embedding recovery); no-information baseline 11.7 dB
(benchmarks/results/hyperfl_inversion.md).
HyperFL's head epoch fits 5 of the 8 images to a loss of exactly 0 (float32), and those leave no
trace in the hypernetwork update: the adaptive attack recovers the other 3 (e.g. 14.5 dB where
the baseline is 13.0) and none of the 5.
"""
from __future__ import annotations

import copy
import gc
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import fllab
from fllab.algorithms.hyperfl import first_state
from fllab.algorithms.hyperfl_net import FedPACCNN, HyperFLNet
from fllab.attacks.inversion import HyperFLInversion, InvertingGradients, observed_gradient, recover_embedding
from fllab.attacks.inversion.common import (
    adam_solve, averaged_gradient, build_problem, cosine_distance, momentum_count, stack_history,
)
from fllab.attacks.inversion.inverting_gradients import ig_objective
from fllab.errors import CapabilityError, ConfigError
from fllab.metrics.image import psnr, score_reconstructions
from fllab.models.flat import flatten_params
from fllab.registry import ALGORITHMS, ATTACKS
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.seeding import torch_gen
from fllab.types import ClientTask, ModelHandle, PublicHyperParams, TensorData, UpdateObservation

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "inversion"
SHAPE, CLASSES = (1, 28, 28), 10
RECIPE = {"local_epochs": 1, "batch_size": 50, "lr": 0.02, "momentum": 0.5, "weight_decay": 0.0005}
HYPERFL = {"name": "hyperfl", **RECIPE, "head_epochs": 1, "head_lr": 0.1, "clip_norm": 50.0, "embed_dim": 64, "hidden_dim": 16}
FEDAVG = {"name": "fedavg", **RECIPE}


def fmnist_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real Fashion-MNIST sample images in [0, 1] (1 x 28 x 28) and their labels."""
    files = sorted(SAMPLES.glob("fashionMNIST_*.png"))
    if len(files) != 20:
        pytest.skip(f"Fashion-MNIST samples not found under {SAMPLES}")
    images = [torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0)[None] for f in files]
    labels = [int(re.findall(r"_(\d+)\.png$", f.name)[0]) for f in files]
    return torch.stack(images), torch.tensor(labels)


def target_cnn() -> torch.nn.Module:
    return FedPACCNN(FedPACCNN.Params()).build(SHAPE, CLASSES)


def upload(algo: dict, x: torch.Tensor, y: torch.Tensor, client: int) -> tuple[UpdateObservation, object]:
    """What the server sees of one client holding (x, y) in round 0 of ``algo`` on the reference
    CNN (seeded init), and the client's state afterwards (HyperFL: its private embedding and head)."""
    algorithm = ALGORITHMS.build(algo)
    build = algorithm.wrap_model(target_cnn) if hasattr(algorithm, "wrap_model") else target_cnn
    handle = ModelHandle(build, SHAPE, CLASSES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
    global_params = flatten_params(model)
    task = ClientTask(client_id=client, round=0, global_params=global_params, data=TensorData(x, y), seed=client)
    result = algorithm.client_update(copy.deepcopy(model), task, torch_gen(0, "test", client))
    obs = UpdateObservation(
        round=0, client_id=client, model=handle, global_params=global_params, update=result.update,
        kind=algorithm.sends, hyper=algorithm.public_hyper(len(y)),
    )
    return obs, result.state


SETS = [torch.arange(2 * k, 2 * k + 2) for k in range(4)]  # client k holds sample images 2k, 2k+1


@pytest.fixture(scope="module")
def clients():
    """Four clients with two real Fashion-MNIST images each: their HyperFL uploads (and private
    states after the round) and FedAvg uploads."""
    xs, ys = fmnist_samples()
    hyper = [upload(HYPERFL, xs[s], ys[s], k) for k, s in enumerate(SETS)]
    fedavg = [upload(FEDAVG, xs[s], ys[s], k)[0] for k, s in enumerate(SETS)]
    return xs, ys, hyper, fedavg


def attack_psnr(params: dict, observations, xs, ys) -> np.ndarray:
    """Mean PSNR per client (reconstructions matched to the client's images) of one attack, run for
    200 Adam steps of the larger step size 0.1 that suits such short runs."""
    attack = ATTACKS.build({"iterations": 200, "lr": 0.1, **params, "lpips": False})
    recs = attack.reconstruct_many(observations, 2, [ys[s] for s in SETS], list(range(len(SETS))))
    return np.array([score_reconstructions(r.x, xs[s], lpips=False)["psnr"] for r, s in zip(recs, SETS)])


def no_information(xs: torch.Tensor) -> np.ndarray:
    """Per client, the mean PSNR of the better of a black image and the mean of all 20 sample
    images: what an attacker gets without looking at the upload."""
    best = torch.maximum(psnr(torch.zeros_like(xs), xs), psnr(xs.mean(0).expand_as(xs), xs))
    return np.array([float(best[s].mean()) for s in SETS])


# ------------------------------------------------------------------------- what the upload holds
def test_momentum_count_and_averaged_gradient_invert_sgd_on_a_constant_gradient():
    """s steps of torch's SGD (momentum m, weight decay at one step) on a loss with constant
    gradient c: the averaged-gradient proxy gives c back exactly."""
    c = torch.tensor([0.3, -1.0, 2.0])
    for steps, momentum, wd in ((1, 0.0, 0.0), (7, 0.0, 0.0), (7, 0.5, 0.0), (5, 0.9, 0.0), (1, 0.5, 0.01)):
        w = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
        start = w.detach().clone()
        opt = torch.optim.SGD([w], lr=0.1, momentum=momentum, weight_decay=wd)
        for _ in range(steps):
            opt.zero_grad()
            (w * c).sum().backward()
            opt.step()
        hyper = PublicHyperParams("x", 0.1, 1, steps, None, 1, momentum, wd)
        torch.testing.assert_close(averaged_gradient(w.detach() - start, start, hyper), c)
    assert momentum_count(4, 0.0) == 4.0 and momentum_count(2, 0.5) == pytest.approx(1 + 1.5)


def test_a_one_step_hypernetwork_upload_reveals_the_private_embedding_exactly(clients):
    """With one local step the first hypernetwork layer's gradient is u v^T with bias gradient u:
    the embedding the client started from comes back to float precision, though the client never
    sends it (client 1, whose upload holds no gradient at all, is left out; see below)."""
    _, _, hyper, _ = clients
    obs = [hyper[k][0] for k in (0, 2, 3)]
    net = obs[0].model.build()
    truth = torch.stack([first_state(net, k).embedding for k in (0, 2, 3)])
    recovered = recover_embedding(build_problem("t", frozenset({"hypernetwork"}), obs))
    torch.testing.assert_close(recovered, truth, rtol=1e-3, atol=1e-3)
    assert (truth.norm(dim=1) > 5).all()  # a guess from the prior N(0, I) is ~ sqrt(2 * 64) away


def test_five_local_steps_still_give_the_embedding_nearly():
    """Five steps of the scenario's recipe move the embedding; the recovered one stays far closer
    to the client's starting embedding than the embedding moves."""
    xs, ys = fmnist_samples()
    hyper = [upload({**HYPERFL, "local_epochs": 5}, xs[s], ys[s], k) for k, s in ((0, SETS[0]), (3, SETS[3]))]
    net = hyper[0][0].model.build()
    start = torch.stack([first_state(net, k).embedding for k in (0, 3)])
    end = torch.stack([state.embedding for _, state in hyper])
    recovered = recover_embedding(build_problem("t", frozenset({"hypernetwork"}), [o for o, _ in hyper]))
    moved, error = (end - start).norm(dim=1), (recovered - start).norm(dim=1)
    assert (error < 0.5 * moved).all() and (error < 0.2 * start.norm(dim=1)).all(), (error, moved)


def test_images_the_head_epoch_fits_leave_no_trace(clients):
    """HyperFL trains the head first: on two images its step drives some images' loss to exactly
    0 in float32 (here both of client 1's), and with them the hypernetwork gradient.  Client 1's
    upload is then the weight decay alone: its averaged gradient vanishes next to the others'."""
    _, _, hyper, _ = clients
    norms = [float(observed_gradient(o).norm()) for o, _ in hyper]
    assert norms[1] < 1e-3 * min(norms[k] for k in (0, 2, 3)), norms


# ------------------------------------------------------------------------------- capabilities
def test_registered_with_threat_model_and_params():
    cls = ATTACKS.get_class("hyperfl_inversion")
    assert cls is HyperFLInversion and cls.family == "inversion" and cls.needs == frozenset({"hypernetwork"})
    assert cls.summary and cls.references and "embedding" in cls.threat_model
    p = HyperFLInversion.Params()
    assert (p.labels, p.embedding, p.learn_state, p.signed, p.lr) == ("known", "recovered", True, True, 0.05)
    with pytest.raises(ConfigError, match="labels"):
        ATTACKS.build({"name": "hyperfl_inversion", "labels": "recovered"})
    assert "hypernetwork" in InvertingGradients.needs


def test_capability_checks_before_training(tiny):
    tiny["attacks"] = [{"name": "hyperfl_inversion"}]
    with pytest.raises(CapabilityError, match="needs a hypernetwork update"):
        resolve(validate_schema(tiny))  # a FedAvg scenario
    tiny["algorithm"] = {"name": "hyperfl", "embed_dim": 8, "hidden_dim": 8, "local_epochs": 1}
    tiny["attacks"] = [{"name": "hyperfl_inversion"}, {"name": "inverting_gradients", "labels": "known"}]
    resolve(validate_schema(tiny))


def test_labels_cannot_be_recovered_from_a_hypernetwork_upload(clients):
    _, _, hyper, _ = clients
    with pytest.raises(ConfigError, match="labels: known"):
        InvertingGradients(InvertingGradients.Params(iterations=1)).reconstruct(hyper[0][0], 2, None, 0)


def test_refuses_a_model_that_is_not_hyperfl(clients):
    _, _, _, fedavg = clients
    obs = fedavg[0]
    fake = UpdateObservation(obs.round, obs.client_id, obs.model, obs.global_params, obs.update, "hypernetwork", obs.hyper)
    with pytest.raises(CapabilityError, match="HyperFL"):
        HyperFLInversion(HyperFLInversion.Params(iterations=1)).reconstruct(fake, 2, torch.tensor([0, 1]), 0)


def test_a_fresh_hyperfl_model_does_not_depend_on_the_global_rng():
    """The public model's stand-in client state (what Inverting Gradients inverts through) is a
    fixed draw, not whatever the global RNG held."""
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(HyperFLNet(target_cnn(), 64, 16))
    assert torch.equal(nets[0].embedding, nets[1].embedding)
    assert all(torch.equal(nets[0].target.get_parameter(n), nets[1].target.get_parameter(n)) for n in nets[0].head_names)


def test_batched_equals_looped(clients):
    xs, ys, hyper, _ = clients
    attack = HyperFLInversion(HyperFLInversion.Params(iterations=4, restarts=2))
    obs = [hyper[k][0] for k in (0, 3)]
    labels = [ys[SETS[k]] for k in (0, 3)]
    batched = attack.reconstruct_many(obs, 2, labels, [3, 4])
    for k in range(2):
        single = attack.reconstruct(obs[k], 2, labels[k], 3 + k)
        torch.testing.assert_close(batched[k].x, single.x, rtol=0, atol=1e-5)
        assert batched[k].history["loss"] == pytest.approx(single.history["loss"], rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------- cost of one search step
def test_inverting_through_the_public_model_matches_the_full_gradient_cosine(clients):
    """Inverting Gradients' objective through the public HyperFL model is the cosine distance over
    the whole hypernetwork gradient (value and image gradient), computed without forming it."""
    xs, ys, hyper, _ = clients
    problem = build_problem("t", frozenset({"hypernetwork"}), [hyper[k][0] for k in (0, 3)])
    objective = ig_objective(problem, 0.0)
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    for k in range(2):
        for y in (ys[SETS[k * 3]], torch.tensor([3, 7])):
            def full(x_):
                g = problem.victim.batch_gradient(problem.params, x_, y)
                return cosine_distance(g, problem.victim.split(problem.gradients[k]))
            g_full, v_full = torch.func.grad_and_value(full)(x)
            g_new, (v_new, _) = torch.func.grad_and_value(objective, has_aux=True)(x, problem.gradients[k], y, problem.params)
            torch.testing.assert_close(v_new, v_full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g_new, g_full, rtol=1e-4, atol=1e-4 * float(g_full.abs().max()))


class _LargestAllocation(TorchDispatchMode):
    """Largest number of elements of a tensor an op allocates (outputs sharing an input's storage,
    i.e. views, are not allocations)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


def test_a_search_step_through_the_public_model_never_forms_the_hypernetwork_gradient(clients):
    """Regression: Inverting Gradients through HyperFL's public model differentiated the whole
    hypernetwork gradient at every step; its output-layer part dL/dW2 = delta a^T is (extractor
    size x hidden size), 1.85M numbers here (and 14.8M at the reference's hidden 128), and the
    search formed several such tensors per target and step: ~10x the per-step time of the FedAvg
    path, tens of thousands of fresh pages a step and a heap that grew ~10 MB a step through the
    engine.  A step must allocate nothing larger than a few extractor-sized vectors."""
    xs, ys, hyper, _ = clients
    problem = build_problem("t", frozenset({"hypernetwork"}), [hyper[k][0] for k in (0, 3)])
    net = problem.victim.module
    extractor = sum(net.hypernetwork.sizes)
    w2 = net.hypernetwork.out.weight.numel()
    assert w2 == extractor * 16
    step = torch.func.vmap(
        torch.func.grad_and_value(ig_objective(problem, 0.01), has_aux=True), in_dims=(0, 0, 0, None)
    )
    x = torch.rand(2, 2, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.stack([ys[SETS[0]], ys[SETS[3]]])
    with _LargestAllocation() as mode:
        step(x, problem.gradients, y, problem.params)
    assert mode.largest <= 2 * extractor, (mode.largest, extractor, w2)  # K = 2 rows


def test_the_search_keeps_no_tensor_per_iteration():
    """Regression: the optimiser kept a fresh clone of every figure of every iteration; those
    long-lived small blocks fragment the heap between the step's large temporaries, which then
    grows by about their size every iteration (~4 MB a step for 150 images, without bound).  The
    number of live tensors must not depend on how many iterations have run."""
    counts: list[int] = []

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on deprecated module attributes warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    def step(v: torch.Tensor):
        counts.append(live_tensors())
        loss = (v - 1).pow(2).sum(dim=1)
        return (2 * (v - 1),), (loss, {"match": loss, "tv": v.abs().mean(dim=1)})

    v = torch.zeros(3, 5)
    curves = adam_solve(step, [(v, 0.1, True, (-math.inf, math.inf))], 40, True)
    assert counts[39] == counts[10], counts
    history = stack_history(curves, torch.tensor([0, 2]))
    assert len(history) == 2 and all(len(h[n]) == 40 for h in history for n in ("loss", "match", "tv"))
    assert history[0]["loss"][0] == pytest.approx(5.0) and history[0]["loss"][-1] < 5.0


# ------------------------------------------------------------------------------- the attacks
@pytest.fixture(scope="module")
def adaptive(clients):
    """PSNR per client of the adaptive attack (200 Adam steps) and of the same attack without the
    embedding recovery, and the no-information baseline."""
    xs, ys, hyper, _ = clients
    uploads = [o for o, _ in hyper]
    full = attack_psnr({"name": "hyperfl_inversion"}, uploads, xs, ys)
    prior = attack_psnr({"name": "hyperfl_inversion", "embedding": "prior"}, uploads, xs, ys)
    return full, prior, no_information(xs)


def test_the_adaptive_attack_gets_the_images_the_upload_holds(adaptive):
    """The recovered embedding is worth > 2 dB; clients 0 and 3 each have an image the head epoch
    left unfitted, and the adaptive attack brings it back above the no-information baseline."""
    full, prior, baseline = adaptive
    print(f"PSNR per client: adaptive {full}, without embedding recovery {prior}, no information {baseline}")
    assert full.mean() > prior.mean() + 2
    assert full[0] > baseline[0] + 2 and full[3] > baseline[3] + 1


@pytest.mark.slow
def test_the_adaptive_attack_beats_structure_blind_inversion_but_not_fedavg_leakage(clients, adaptive):
    """On the same four clients' uploads (200 Adam steps of 0.1 each): Inverting Gradients through the
    public HyperFL model finds nothing (below the no-information baseline) and the adaptive attack
    gains > 3 dB over it; Inverting Gradients on the FedAvg uploads of the same images stays > 6 dB
    above the adaptive attack and the baseline."""
    xs, ys, hyper, fedavg = clients
    full, _, baseline = adaptive
    ig = {"name": "inverting_gradients", "labels": "known"}
    blind = attack_psnr(ig, [o for o, _ in hyper], xs, ys)
    leak = attack_psnr(ig, fedavg, xs, ys)
    print(f"PSNR per client: IG on HyperFL {blind}, adaptive {full}, IG on FedAvg {leak}, no information {baseline}")
    assert blind.mean() < baseline.mean() - 3
    assert full.mean() > blind.mean() + 3
    assert leak.mean() > full.mean() + 6 and leak.mean() > baseline.mean() + 6


@pytest.mark.slow
def test_hyperfl_and_fedavg_scenarios_under_the_same_attack(tmp_path):
    """The shipped twin scenarios in their one-image-pair variant (40 training images over 20 IID
    clients, one local epoch = one step, round 0 only), every client attacked so that both
    attacks see the same uploads: Inverting Gradients leaks the FedAvg clients' images, not the
    HyperFL clients'; the adaptive attack does better than it on HyperFL, far below FedAvg."""
    def attacked(i: int) -> list[str]:
        return [f"attacks.{i}.targets=20", f"attacks.{i}.iterations=200", f"attacks.{i}.lr=0.1", f"attacks.{i}.lpips=false"]

    leaky = ["task.dataset.train_limit=40", "federation.partition=iid", "algorithm.local_epochs=1", "federation.rounds=1"]
    psnr_of = {}
    for name, extra in (("fedavg_fmnist_noniid", attacked(0)), ("hyperfl_fmnist", attacked(0) + attacked(1))):
        scenario = fllab.load_scenario(SCENARIOS / f"{name}.yaml", overrides=leaky + extra)
        fllab.run(scenario, tmp_path / name)
        for attack, out in json.loads((tmp_path / name / "attacks.json").read_text()).items():
            psnr_of[f"{name}/{attack}"] = out["metrics"]["inversion.psnr"]
            psnr_of["random guess"] = out["metrics"]["inversion.psnr_random_guess"]  # the same 40 images
    print(psnr_of)
    leak = psnr_of["fedavg_fmnist_noniid/inverting_gradients"]
    blind = psnr_of["hyperfl_fmnist/inverting_gradients"]
    adaptive = psnr_of["hyperfl_fmnist/hyperfl_inversion"]
    assert leak > adaptive + 6 and adaptive > blind + 3
