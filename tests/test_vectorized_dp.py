"""DP-SGD in the vectorized executor (:mod:`fllab.training.dp_stacked`): the clipping kernels
against a hand computation, and runs against the serial executor (Opacus): the same epsilon, the
same trajectory up to float rounding (the same Poisson batches and noise draws), the same accuracy."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fllab.models.victim import VictimModel
from fllab.models.flat import flatten_params
from fllab.training.dp_stacked import ClippedStackedMLP, ClippedVmap, _Noise
from fllab.training.stacked import StackedMLP

from conftest import TINY
from test_executors import run

C = 0.5


def _hand_clipped_mean(net: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_i weight_i * clip_C(grad of loss_i), one autograd call per record (Opacus's factor)."""
    total = torch.zeros(sum(p.numel() for p in net.parameters()), dtype=torch.float64)
    for xi, yi, wi in zip(x, y, weight):
        net.zero_grad()
        nn.functional.cross_entropy(net(xi.unsqueeze(0)), yi.unsqueeze(0)).backward()
        g = torch.cat([p.grad.flatten() for p in net.parameters()]).double()
        total += wi * g * min(1.0, C / (g.norm().item() + 1e-6))
    return total


@pytest.mark.parametrize("kernel", ["stacked", "vmap"])
def test_clipped_gradient_matches_a_hand_computation_and_respects_the_bound(kernel):
    torch.manual_seed(0)
    k, b = 2, 5
    build = lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model = VictimModel(build, torch.device("cpu"), torch.float32)
    nets = [build() for _ in range(k)]
    flat = torch.stack([flatten_params(n) for n in nets]) * 4  # large weights: most records get clipped
    for n, f in zip(nets, flat):
        torch.nn.utils.vector_to_parameters(f, n.parameters())
    x, y = torch.randn(k * b, 2, 3), torch.randint(0, 3, (k * b,))
    idx = torch.arange(k * b).view(k, b)
    weight = torch.tensor([[1.0, 1, 1, 0, 1], [1, 0, 1, 1, 1]]) / 3.0  # 1 / (q n) with padding slots
    shapes = [s for _, s in model.shapes]
    noise = _Noise([1] * k, shapes, torch.zeros(k), torch.ones(2, k, dtype=torch.bool), torch.float32, torch.device("cpu"))
    if kernel == "stacked":
        engine = ClippedStackedMLP(StackedMLP.layers_of(model), flat, model.shapes, x, y)
    else:
        engine = ClippedVmap(model, flat, y)
    engine.dp(C, noise)
    grads = engine(x[idx], idx, weight.unsqueeze(-1))
    got = torch.cat([g.flatten(1) for g in grads], dim=1)
    for j in range(k):
        want = _hand_clipped_mean(nets[j], x[idx[j]], y[idx[j]], weight[j])
        assert torch.allclose(got[j].double(), want, rtol=1e-4, atol=1e-6)
        assert got[j].norm() <= C * weight[j].sum() + 1e-6  # each record contributes at most C
    single = torch.zeros(k, b)
    single[:, 0] = 1.0
    noise.t = 0
    one = torch.cat([g.flatten(1) for g in engine(x[idx], idx, single.unsqueeze(-1))], dim=1)
    assert (one.norm(dim=1) <= C * (1 + 1e-5)).all() and (one.norm(dim=1) > 0.9 * C).any()  # clipped to C, not below


def _dp(noise: float, batch_size: int, accountant: str = "prv", rounds: int = 2) -> dict:
    data = copy.deepcopy(TINY)
    data["federation"]["rounds"] = rounds
    data["algorithm"].update(batch_size=batch_size, momentum=0.5, weight_decay=1e-4)
    data["defenses"] = [{"name": "dp_sgd", "noise_multiplier": noise, "max_grad_norm": 1.0, "accountant": accountant}]
    return data


def _compare(data: dict, rel: float):
    serial, ours = run(data, {"name": "serial"}), run(data, {"name": "vectorized"})
    assert ours.metrics["privacy.epsilon"] == serial.metrics["privacy.epsilon"]  # same segments, same accountant
    assert (ours.final_params - serial.final_params).abs().max() <= rel * serial.final_params.abs().max()
    return serial, ours


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_tiny_noise_full_batches_follow_the_serial_trajectory():
    serial, ours = _compare(_dp(1e-4, 100000, accountant="rdp"), 1e-5)  # sample rate 1
    for a, b in zip(ours.rounds, serial.rounds):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_normal_noise_gives_the_serial_epsilon_and_accuracy():
    """sigma 1, Poisson batches of expected size 32: the same draws as Opacus, so the trajectory
    matches up to rounding (which clipping and noise do not amplify over a few rounds)."""
    serial, ours = _compare(_dp(1.0, 32, rounds=3), 1e-4)
    assert abs(ours.metrics["utility.accuracy"] - serial.metrics["utility.accuracy"]) <= 0.02
    assert serial.metrics["privacy.epsilon"] > 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_any_model_through_torch_func_follows_serial():
    data = _dp(1.0, 32, rounds=1)
    data["task"]["model"] = {"name": "lenet"}
    _compare(data, 1e-4)
