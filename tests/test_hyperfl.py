"""HyperFL (Guo et al., AAAI 2025): the generated network, what is uploaded, the private client
state, the personalised evaluation, and that it learns on a Fashion-MNIST subset."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import fllab
from fllab.algorithms.hyperfl import (
    HyperFL,
    HyperFLState,
    first_state,
    generate_extractor,
    label_proportional_split,
    unsampled_state,
)
from fllab.algorithms.hyperfl_net import FedPACCNN, HyperFLNet, split_target
from fllab.errors import CapabilityError, ConfigError
from fllab.models.flat import flatten_params, load_flat_
from fllab.registry import ALGORITHMS, ATTACKS, MODELS
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine
from fllab.types import ClientTask, TensorData, UpdateKind

SMALL = {"embed_dim": 8, "hidden_dim": 8}
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "inversion"


def small_cnn() -> nn.Module:
    return FedPACCNN(FedPACCNN.Params(width=4, hidden=16)).build((1, 28, 28), 10)


def tiny_hyperfl(tiny: dict, **algo) -> dict:
    tiny["algorithm"] = {"name": "hyperfl", **SMALL, "local_epochs": 1, **algo}
    return tiny


def run_engine(data: dict) -> Engine:
    engine = Engine(resolve(validate_schema(data)))
    engine.run()
    return engine


# ------------------------------------------------------------------------------ the network
def test_reference_cnn_and_hypernetwork_sizes():
    """Reference CNN_FMNIST: 117,066 parameters; its hypernetwork (embed 64, hidden 128) generates
    conv1, conv2 and fc1 (115,776 values) and has 64*128+128 + 128*115,776+115,776 parameters."""
    target = MODELS.build({"name": "fedpac_cnn"}).build((1, 28, 28), 10)
    assert sum(p.numel() for p in target.parameters()) == 117_066
    head, generated = split_target(target)
    assert head == ("9.weight", "9.bias")
    assert [tuple(s) for _, s in generated] == [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (128, 800), (128,)]
    net = HyperFLNet(target, 64, 128)
    assert flatten_params(net).numel() == 64 * 128 + 128 + 128 * 115_776 + 115_776
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "hypernetwork.mlp.0.weight", "hypernetwork.mlp.0.bias", "hypernetwork.out.weight", "hypernetwork.out.bias",
    ]


def test_reference_cnn_needs_images_of_at_least_12_pixels():
    assert MODELS.build({"name": "fedpac_cnn"}).build((3, 32, 32), 10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert MODELS.build({"name": "fedpac_cnn"}).build((1, 12, 12), 4)(torch.rand(2, 1, 12, 12)).shape == (2, 4)
    with pytest.raises(ConfigError, match="at least 12x12"):
        MODELS.build({"name": "fedpac_cnn"}).build((1, 8, 8), 10)


def test_generated_extractor_runs_the_target_and_the_function_matches_the_module():
    torch.manual_seed(0)
    net = HyperFLNet(small_cnn(), **SMALL)
    state = net.initial_state(torch.Generator().manual_seed(1))
    weights = net.hypernetwork(state.embedding)
    assert {n: tuple(w.shape) for n, w in weights.items()} == {
        n: tuple(p.shape) for n, p in net.target.named_parameters() if n not in net.head_names
    }
    flat = flatten_params(net)
    emb = state.embedding.clone().requires_grad_(True)
    again = generate_extractor(net, flat, emb)
    for name in weights:
        assert torch.equal(again[name], weights[name])
    sum(w.sum() for w in again.values()).backward()  # differentiable in the embedding (adaptive attacks)
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(net.load_client_(state)(x), net.personalised(x, state))
    assert net.personalised(x, state).shape == (3, 10)


def test_targets_the_hypernetwork_cannot_serve_are_config_errors():
    with pytest.raises(ConfigError, match="batch norm"):
        split_target(MODELS.build({"name": "convnet", "width": 4, "norm": "batch"}).build((1, 8, 8), 10))
    with pytest.raises(ConfigError, match="at least one layer"):
        split_target(MODELS.build({"name": "mlp", "hidden": []}).build((1, 8, 8), 10))
    with pytest.raises(ConfigError, match="linear classifier"):
        split_target(nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1)))


def test_registered_with_reference_defaults():
    assert ALGORITHMS["hyperfl"] is HyperFL and HyperFL.sends is UpdateKind.HYPERNETWORK
    p = HyperFL.Params()
    assert (p.local_epochs, p.head_epochs, p.batch_size, p.lr, p.head_lr) == (5, 1, 50, 0.02, 0.1)
    assert (p.momentum, p.weight_decay, p.clip_norm, p.embed_dim, p.hidden_dim) == (0.5, 5e-4, 50.0, 64, 128)
    hyper = HyperFL(p).public_hyper(600)
    assert (hyper.algorithm, hyper.local_steps, hyper.batch_size) == ("hyperfl", 60, 50)


# ------------------------------------------------------------------------------ one client
def client_task(net: HyperFLNet, state=None, round_: int = 0) -> ClientTask:
    gen = torch.Generator().manual_seed(5)
    data = TensorData(torch.rand(40, 1, 28, 28, generator=gen), torch.randint(0, 10, (40,), generator=gen))
    return ClientTask(3, round_, flatten_params(net), data, seed=11, state=state)


def test_upload_is_exactly_the_hypernetwork_delta_and_state_stays_private():
    torch.manual_seed(0)
    algo = HyperFL(HyperFL.Params(**SMALL, local_epochs=1, batch_size=10))
    net = HyperFLNet(small_cnn(), **SMALL)
    task = client_task(net)
    res = algo.client_update(net, task, torch.Generator().manual_seed(0))
    hyper_after = torch.cat([p.detach().reshape(-1) for p in net.hypernetwork.parameters()])
    assert res.update.numel() == sum(p.numel() for p in net.hypernetwork.parameters())
    assert torch.equal(res.update, hyper_after - task.global_params)
    assert res.update.abs().sum() > 0
    start = first_state(net, task.seed)
    assert isinstance(res.state, HyperFLState)
    assert not torch.equal(res.state.embedding, start.embedding)  # the embedding trained ...
    assert all(not torch.equal(res.state.head[k], start.head[k]) for k in start.head)  # ... and the head
    assert set(res.extras) == {"used_index"}  # nothing of the state rides along with the upload
    assert torch.equal(res.extras["used_index"], torch.arange(40))


def test_client_update_starts_from_the_state_it_is_given_and_is_deterministic():
    torch.manual_seed(0)
    algo = HyperFL(HyperFL.Params(**SMALL, local_epochs=1, batch_size=10))
    net = HyperFLNet(small_cnn(), **SMALL)
    fresh = copy.deepcopy(net)
    first = algo.client_update(net, client_task(fresh), torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        model = copy.deepcopy(fresh)
        runs.append(algo.client_update(model, client_task(fresh, first.state, 1), torch.Generator().manual_seed(0)))
    assert torch.equal(runs[0].update, runs[1].update)
    assert torch.equal(runs[0].state.embedding, runs[1].state.embedding)
    assert not torch.equal(runs[0].update, first.update)  # a different starting state, a different upload


def test_training_wrappers_are_refused():
    algo = HyperFL(HyperFL.Params(**SMALL))
    net = HyperFLNet(small_cnn(), **SMALL)
    with pytest.raises(ConfigError, match="DP-SGD"):
        algo.client_update(net, client_task(net), torch.Generator(), trainer=lambda *a, **k: 0.0)


# ------------------------------------------------------------------------------ test split
def test_label_proportional_split_exact_case():
    counts = torch.tensor([[5, 0, 1], [0, 5, 1], [5, 5, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 0, 1])
    parts = label_proportional_split(counts, labels)
    assert [p.tolist() for p in parts] == [[0, 1, 5, 6], [3, 4, 7], [2, 8, 9]]


def test_label_proportional_split_is_a_proportional_partition():
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 30, (7, 5), generator=gen)
    counts[:, 4] = 0  # nobody trained on class 4: its test examples are left out
    labels = torch.randint(0, 5, (500,), generator=gen)
    parts = label_proportional_split(counts, labels)
    joined = torch.cat(parts)
    assert len(set(joined.tolist())) == len(joined)  # disjoint
    assert sorted(joined.tolist()) == torch.nonzero(labels != 4).flatten().tolist()
    got = torch.stack([torch.bincount(labels[p], minlength=5) for p in parts])
    expected = labels.bincount(minlength=5) * counts / counts.sum(0).clamp_min(1)
    assert (got - expected).abs().max() < 1.0


# ------------------------------------------------------------------------------ engine
def test_engine_keeps_state_between_rounds_and_uploads_only_the_hypernetwork(tiny):
    data = tiny_hyperfl(tiny)
    engine = Engine(resolve(validate_schema(data)))
    engine.prepare()
    net = engine.federation.server_model
    assert engine.server.global_params.numel() == sum(p.numel() for p in net.hypernetwork.parameters())
    seen: list[tuple[int, int, object, object, int]] = []
    original = engine.setup.algorithm.client_update

    def recording(model, task, gen, trainer=None):
        res = original(model, task, gen, trainer)
        seen.append((task.round, task.client_id, task.state, res.state, res.update.numel()))
        return res

    engine.setup.algorithm.client_update = recording
    engine.run()
    assert {n for *_, n in seen} == {engine.server.global_params.numel()}
    ends = {cid: out for rnd, cid, _, out, _ in seen if rnd == 0}
    for rnd, cid, given, _, _ in seen:
        if rnd == 0:
            assert given is None
        else:
            assert given is ends[cid]  # round 1 starts from what round 0 left
    assert set(engine.server.client_states) == set(range(4))


def test_unsampled_clients_are_evaluated_from_their_initial_state_and_runs_repeat(tmp_path, tiny):
    data = tiny_hyperfl(tiny)
    data["federation"].update(rounds=1, clients_per_round=2)
    engine = run_engine(copy.deepcopy(data))
    assert len(engine.server.client_states) == 2
    net = engine.federation.model_handle.build()
    a, b = unsampled_state(net, 0), unsampled_state(net, 0)
    assert torch.equal(a.embedding, b.embedding)
    _, s1 = fllab.run(copy.deepcopy(data), tmp_path / "a")
    _, s2 = fllab.run(copy.deepcopy(data), tmp_path / "b")
    m1 = {k: v for k, v in s1["metrics"].items() if k != "run.seconds"}
    assert m1 == {k: v for k, v in s2["metrics"].items() if k != "run.seconds"}
    assert 0.0 <= m1["utility.accuracy"] <= 1.0


def test_evaluation_is_each_clients_own_model_on_its_share(tiny):
    engine = run_engine(tiny_hyperfl(tiny))
    ctx_model = engine.federation.model_handle.build()
    load_flat_(ctx_model, engine.server.global_params)
    counts = torch.stack([torch.bincount(d.y, minlength=10) for d in engine.federation.client_data])
    correct = total = 0
    for cid, idx in enumerate(label_proportional_split(counts, engine.federation.test.y)):
        with torch.no_grad():
            pred = ctx_model.personalised(engine.federation.test.x[idx], engine.server.client_states[cid]).argmax(1)
        correct += int((pred == engine.federation.test.y[idx]).sum())
        total += len(idx)
    assert engine.server.evaluate()["accuracy"] == pytest.approx(correct / total)


def test_inversion_attacks_that_need_gradients_refuse_hyperfl(tiny):
    needing = [n for n in ATTACKS if ATTACKS[n].family == "inversion" and "hypernetwork" not in ATTACKS[n].needs]
    if not needing:
        pytest.skip("no gradient-inversion attack registered")
    data = tiny_hyperfl(tiny)
    data["attacks"] = [{"name": needing[0]}]
    with pytest.raises(CapabilityError, match="sends a hypernetwork"):
        resolve(validate_schema(data))


FMNIST = {
    "name": "hyperfl_fmnist_test",
    "seed": 0,
    "threads": 1,
    "task": {
        "dataset": {"name": "fashion_mnist", "train_limit": 3000, "test_limit": 1000},
        "model": {"name": "fedpac_cnn", "width": 8, "hidden": 64},
    },
    "federation": {"num_clients": 20, "rounds": 5, "partition": {"name": "shards", "classes_per_client": 3}},
    "algorithm": {"name": "hyperfl", "hidden_dim": 16, "local_epochs": 1},
    "evaluation": {"every": 5},
}


def test_learns_fashion_mnist_well_above_chance_and_the_label_prior():
    """20 non-IID clients (3 label shards each), 3,000 training images, 5 rounds with a narrow CNN
    and hypernetwork.  With label-skewed test shares, always answering a client's most common
    training label already scores ~43%; the personalised models must beat that by far."""
    engine = run_engine(copy.deepcopy(FMNIST))
    accuracy = engine.server.evaluate()["accuracy"]
    counts = torch.stack([torch.bincount(d.y, minlength=10) for d in engine.federation.client_data])
    shares = label_proportional_split(counts, engine.federation.test.y)
    majority = sum(int((engine.federation.test.y[s] == counts[c].argmax()).sum()) for c, s in enumerate(shares)) / sum(
        len(s) for s in shares
    )
    assert accuracy > max(0.6, majority + 0.15), (accuracy, majority)


@pytest.mark.slow
def test_reference_hyperfl_beats_fedavg_on_non_iid_fashion_mnist(tmp_path):
    """The shipped twin scenarios: HyperFL with the reference settings vs FedAvg on the same
    CNN, data, partition and rounds (personalised vs global test accuracy)."""
    accs = {}
    for name in ("hyperfl_fmnist", "fedavg_fmnist_noniid"):
        _, summary = fllab.run(SCENARIOS / f"{name}.yaml", tmp_path / name)
        accs[name] = summary["metrics"]["utility.accuracy"]
    assert accs["hyperfl_fmnist"] > accs["fedavg_fmnist_noniid"]
