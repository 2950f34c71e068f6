"""Federated LoRA: the pretrained-base cache, the four bundles' protocols and diagnostics, DP-SGD on
the adapters, the membership positions and bad input (digits: classes 0-4 public, 5-9 private)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from opacus.accountants import PRVAccountant

from fllab.cli import main
from fllab.lora import pretrain as pre
from fllab.lora.algorithms import FedRand, FedRandParams, refactorise
from fllab.lora.layers import LoRALayout, inject_lora
from fllab.lora.model import build_model
from fllab.models.flat import flatten_params
from fllab.registry import ALGORITHMS
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine
from fllab.training.local import steps_for
from fllab.types import ClientTask, TensorData

PRETRAINED = {"dataset": {"name": "digits"}, "classes": [0, 1, 2, 3, 4], "epochs": 3, "lr": 0.1}
LORA_TINY = {
    "name": "lora_tiny",
    "seed": 0,
    "threads": 1,
    "task": {
        "dataset": {"name": "class_subset", "base": {"name": "digits"}, "classes": [5, 6, 7, 8, 9]},
        "model": {"name": "mlp", "hidden": [32], "pretrained": PRETRAINED, "lora": {"rank": 2, "alpha": 2, "targets": ["linear"]}},
    },
    "federation": {"num_clients": 4, "rounds": 3, "partition": {"name": "dirichlet", "alpha": 0.3}},
    "algorithm": {"name": "fedavg_lora", "local_epochs": 1, "batch_size": 16, "lr": 0.1},
}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test module run pretrains into its own cache folder (one pretraining, then cached)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def scenario(**changes) -> dict:
    sc = copy.deepcopy(LORA_TINY)
    for path, value in changes.items():
        node = sc
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return sc


def run(sc: dict):
    engine = Engine(resolve(validate_schema(sc)))
    return engine, engine.run()


# ------------------------------------------------------------------------------ pretrained base
def test_pretrained_base_is_cached_checksummed_and_keyed_by_config():
    model, _ = build_model(LORA_TINY["task"]["model"])
    pre._MEMO.clear()
    net = model.build((1, 8, 8), 5)
    files = sorted(pre.cache_dir().glob("*.pt"))
    assert len(files) == 1
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["public_test_accuracy"] > 0.8  # a real base, not random weights
    base_weight = net.get_submodule("1").base.weight.detach().clone()
    pre._MEMO.clear()
    again = model.build((1, 8, 8), 5)  # from the verified file
    torch.testing.assert_close(again.get_submodule("1").base.weight, base_weight)
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)  # corrupt: the digest check refuses it
    key = files[0].stem
    assert pre.load_cached(key) is None
    pre._MEMO.clear()
    rebuilt = model.build((1, 8, 8), 5)  # retrained (deterministic) and rewritten
    torch.testing.assert_close(rebuilt.get_submodule("1").base.weight, base_weight)
    assert pre.load_cached(key) is not None
    other, _ = build_model({**LORA_TINY["task"]["model"], "pretrained": {**PRETRAINED, "epochs": 1}})
    other.build((1, 8, 8), 5)
    assert len(list(pre.cache_dir().glob("*.pt"))) == 2


def test_pretrained_base_beats_random_init_on_the_private_classes():
    """Fine-tuning the pretrained base beats the same LoRA budget on a random base."""
    _, tuned = run(scenario(federation__rounds=4))
    scratch = scenario(federation__rounds=4)
    del scratch["task"]["model"]["pretrained"]
    _, random_base = run(scratch)
    assert tuned.metrics["utility.accuracy"] > random_base.metrics["utility.accuracy"] + 0.1


# ------------------------------------------------------------------------------ bundles
@pytest.mark.parametrize("name", ["ffa_lora", "fedsvd_lora"])
def test_shared_A_bundles_aggregate_exactly(name):
    engine, result = run(scenario(algorithm={**LORA_TINY["algorithm"], "name": name}))
    errors = [r["lora.aggregation_error"] for r in result.rounds]
    assert max(errors) <= 1e-6 and result.metrics["lora.aggregation_error"] <= 1e-6
    layout = engine.setup.algorithm.layout
    upload = 4 * int(layout.mask("B").sum())
    assert all(r["run.upload_bytes"] == upload for r in result.rounds)


def test_robust_aggregator_on_ffa_lora_keeps_A_shared():
    sc = scenario(algorithm={**LORA_TINY["algorithm"], "name": "ffa_lora"}, aggregator={"name": "median"})
    _, result = run(sc)
    assert result.metrics["lora.aggregation_error"] <= 1e-6


def test_fedavg_lora_aggregation_error_is_positive_on_non_iid_data():
    engine, result = run(scenario())
    assert min(r["lora.aggregation_error"] for r in result.rounds) > 1e-4
    assert result.metrics["run.upload_bytes"] == 4 * engine.setup.algorithm.layout.size


def test_ffa_keeps_A_frozen_and_fedsvd_makes_it_orthonormal():
    engine, _ = run(scenario(algorithm={**LORA_TINY["algorithm"], "name": "ffa_lora"}))
    layout = engine.setup.algorithm.layout
    with torch.random.fork_rng(devices=[]):
        from fllab.seeding import derive_seed
        torch.manual_seed(derive_seed(0, "init"))
        initial = flatten_params(engine.federation.model_handle.build())
    a = layout.mask("A")
    assert torch.equal(engine.server.global_params[a], initial[a])
    engine, _ = run(scenario(algorithm={**LORA_TINY["algorithm"], "name": "fedsvd_lora"}))
    for s in layout.slots:
        A = engine.server.global_params.double()[s.a_start : s.a_start + s.a_size].view(s.rank, s.fan_in)
        torch.testing.assert_close(A @ A.T, torch.eye(s.rank, dtype=torch.float64), atol=1e-5, rtol=0)


def test_svd_step_keeps_the_product_and_orthonormalises_A():
    net = inject_lora(torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.ReLU(), torch.nn.Linear(9, 7)), ["linear"], 3, 3.0)
    layout = LoRALayout(net)
    flat = torch.randn(layout.size, generator=torch.Generator().manual_seed(0))
    out = refactorise(layout, flat)
    for s in layout.slots:
        before = layout.B(flat, s).double() @ layout.A(flat, s).double()
        after = layout.B(out, s).double() @ layout.A(out, s).double()
        assert float((after - before).norm() / before.norm()) <= 1e-5
        A = layout.A(out, s).double()
        torch.testing.assert_close(A @ A.T, torch.eye(s.rank, dtype=torch.float64), atol=1e-5, rtol=0)


def _fedrand(rho: float = 0.5) -> tuple[FedRand, torch.nn.Module]:
    build = lambda: inject_lora(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3),  # noqa: E731
                                                    torch.nn.Tanh(), torch.nn.Linear(3, 2)), ["linear"], 2, 2.0)
    bundle = ALGORITHMS.build({"name": "fedrand", "rho": rho, "lr": 0.1, "batch_size": 4})
    bundle.wrap_model(build)
    return bundle, build()


def test_fedrand_normalised_average_by_hand():
    bundle, _ = _fedrand()
    d = bundle.layout.size
    gen = torch.Generator().manual_seed(0)
    clients = [0, 3, 5, 8]
    masks = torch.stack([bundle.sent_mask(c, 0, "cpu") for c in clients])
    updates = torch.randn(len(clients), d, generator=gen) * masks  # zeros where a client sent nothing
    weights = torch.tensor([10.0, 20.0, 30.0, 40.0])
    agg = bundle.aggregate(updates, weights, client_ids=clients)
    for j in range(d):
        senders = [k for k in range(len(clients)) if masks[k, j]]
        if senders:
            want = sum(weights[k] * updates[k, j] for k in senders) / sum(weights[k] for k in senders)
        else:
            want = torch.tensor(0.0)
        torch.testing.assert_close(agg[j], want)
    one = bundle.aggregate(updates[:1], weights[:1], client_ids=clients[:1])  # a half no client sent stays put
    assert torch.equal(one[~masks[0]], torch.zeros(int((~masks[0]).sum())))


def test_fedrand_client_starts_from_its_private_half_and_sends_only_the_taken_one():
    bundle, model = _fedrand()
    gen = torch.Generator().manual_seed(1)
    data = TensorData(torch.randn(12, 6, generator=gen), torch.randint(0, 2, (12,), generator=gen))
    g0 = flatten_params(model)
    first = bundle.client_update(model, ClientTask(2, 0, g0, data, seed=1), torch.Generator().manual_seed(1))
    sent0 = bundle.sent_mask(2, 0, "cpu")
    assert torch.equal(first.update[~sent0], torch.zeros(int((~sent0).sum())))
    assert first.metrics["run.upload_bytes"] == 4 * int(sent0.sum())
    g1 = g0 + 0.01  # the server's next factors
    plan = bundle.client_plan(ClientTask(2, 1, g1, data, seed=2, state=first.state), bundle.layout)
    sent1 = bundle.sent_mask(2, 1, "cpu")
    assert torch.equal(plan.start[sent1], g1[sent1])
    assert torch.equal(plan.start[~sent1], first.state.local[~sent1])  # the private half, cached on the client


def test_fedrand_rho_must_be_inside_0_1():
    from fllab.errors import ConfigError

    for rho in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"algorithm.rho: must be in \(0, 1\)"):
            ALGORITHMS.build({"name": "fedrand", "rho": rho}, "algorithm")
    assert FedRandParams(rho=0.3).rho == 0.3


def test_fedrand_upload_is_about_half_and_accuracy_close_to_fedavg_lora():
    _, ours = run(scenario(algorithm={**LORA_TINY["algorithm"], "name": "fedrand"}, federation__rounds=4))
    engine, base = run(scenario(federation__rounds=4))
    full = 4 * engine.setup.algorithm.layout.size
    assert 0.2 * full < ours.metrics["run.upload_bytes"] < 0.8 * full
    assert ours.metrics["utility.accuracy"] > base.metrics["utility.accuracy"] - 0.1


# ------------------------------------------------------------------------------ DP-SGD
def test_dp_sgd_on_the_adapters_accounts_like_opacus_per_client():
    sc = scenario(algorithm={**LORA_TINY["algorithm"], "name": "ffa_lora"}, federation__rounds=3)
    sc["federation"]["clients_per_round"] = 2
    sc["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 1.1, "max_grad_norm": 1.0}]
    engine, result = run(sc)
    assert all(0.0 <= r["dp.clipped_fraction"] <= 1.0 for r in result.rounds)
    assert 0.0 <= result.metrics["dp.clipped_fraction"] <= 1.0
    taken: dict[int, int] = {}
    for r in result.rounds:
        for c in r["clients"]:
            taken[c] = taken.get(c, 0) + 1
    eps = []
    for cid, rounds in taken.items():
        n = len(engine.federation.client_data[cid])
        acc = PRVAccountant()
        q = min(16, n) / n
        acc.history = [(1.1, q, steps_for(n, 16, 1.0, None) * rounds)]
        eps.append(acc.get_epsilon(delta=1e-5))
    assert result.metrics["privacy.epsilon"] == pytest.approx(max(eps), rel=1e-9)
    layout = engine.setup.algorithm.layout  # DP trained B only: A is the initial one
    with torch.random.fork_rng(devices=[]):
        from fllab.seeding import derive_seed
        torch.manual_seed(derive_seed(0, "init"))
        initial = flatten_params(engine.federation.model_handle.build())
    assert torch.equal(engine.server.global_params[layout.mask("A")], initial[layout.mask("A")])


# ------------------------------------------------------------------------------ membership positions
MIA = {"name": "lora_mia", "members": 20, "target_clients": [0, 1],
       "attack": {"name": "lira", "num_models": 4, "epochs": 2, "lr": 0.05, "momentum": 0.0}}


def test_membership_positions_assembled_is_exact_under_fedavg_lora_and_stale_under_fedrand():
    sc = scenario(attacks=[MIA])
    engine, result = run(sc)
    driver = engine.federation.drivers[0]
    for cid in driver.oracle:  # exact up to float rounding of global + (local - global)
        torch.testing.assert_close(driver.assembled[cid], driver.oracle[cid], rtol=0, atol=1e-6)
    for pos in ("aggregate", "assembled", "oracle"):
        assert 0.0 <= result.metrics[f"membership.{pos}.auc"] <= 1.0
        assert f"membership.{pos}.tpr_at_0.01_fpr" in result.metrics
    sc = scenario(attacks=[MIA], algorithm={**LORA_TINY["algorithm"], "name": "fedrand"})
    engine, _ = run(sc)
    driver = engine.federation.drivers[0]
    assert any(float((driver.assembled[c] - driver.oracle[c]).abs().max()) > 1e-3 for c in driver.oracle)


def test_lira_on_the_true_client_model_beats_chance_and_the_aggregate():
    """One round, 8 clients of ~85 records, 40 local epochs: the oracle position (a client's own
    adapters) leaks more than the aggregate of eight, and LiRA beats chance on it."""
    attack = {"name": "lira", "num_models": 16, "epochs": 40, "lr": 0.1, "momentum": 0.0, "batch_size": 16}
    sc = scenario(attacks=[{**MIA, "members": 40, "target_clients": [0, 1], "attack": attack}], federation__rounds=1)
    sc["federation"].update(num_clients=8, partition={"name": "iid"})
    sc["task"]["model"].update(hidden=[64], lora={"rank": 16, "alpha": 16, "targets": ["1"]})
    sc["algorithm"] = {"name": "fedavg_lora", "local_epochs": 40, "batch_size": 16, "lr": 0.1}
    _, result = run(sc)
    m = result.metrics
    assert m["membership.oracle.auc"] > 0.6
    assert m["membership.oracle.auc"] > m["membership.aggregate.auc"] + 0.03
    assert m["membership.assembled.auc"] == m["membership.oracle.auc"]  # FedAvg-LoRA: the server assembles it exactly


# ------------------------------------------------------------------------------ bad input
def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _targets_nothing(sc):
    sc["task"]["model"]["lora"]["targets"] = ["fc9"]


def _rank_too_large(sc):
    sc["task"]["model"]["lora"]["rank"] = 6  # the head has 5 outputs


def _frozen_base_dp(sc):
    del sc["task"]["model"]["lora"]
    sc["task"]["model"]["pretrained"]["freeze"] = True
    sc["algorithm"] = {"name": "fedavg"}
    sc["defenses"] = [{"name": "dp_sgd"}]


def _rho(sc):
    sc["algorithm"] = {"name": "fedrand", "rho": 1.0}


def _public_classes_held(sc):
    sc["task"]["dataset"]["classes"] = [4, 5, 6, 7, 8]


def _robust_with_fedrand(sc):
    sc["algorithm"] = {"name": "fedrand"}
    sc["aggregator"] = {"name": "median"}


def _not_lora(sc):
    del sc["task"]["model"]["lora"]


@pytest.mark.parametrize("mutate,expected", [
    (_targets_nothing, "task.model.lora.targets: ['fc9'] match no Linear or Conv2d layer"),
    (_rank_too_large, "task.model.lora.rank: rank 6 exceeds layer 3's width 5"),
    (_frozen_base_dp, "task.model.pretrained.freeze: a frozen base without task.model.lora leaves no trainable parameter"),
    (_rho, "algorithm.rho: must be in (0, 1)"),
    (_public_classes_held, "task.dataset: the clients would hold the pretraining classes [4]"),
    (_robust_with_fedrand, "aggregator: algorithm fedrand aggregates its own way"),
    (_not_lora, "task.model: algorithm fedavg_lora needs LoRA adapters"),
], ids=["targets", "rank", "frozen_dp", "rho", "public_split", "robust_fedrand", "no_lora"])
def test_bad_input_one_line_exit_2(tmp_path, write_yaml, mutate, expected):
    sc = copy.deepcopy(LORA_TINY)
    mutate(sc)
    out = tmp_path / "out"
    res = invoke("run", str(write_yaml(sc)), "--out", str(out), "-q")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.parametrize("algorithm", [
    {"name": "fedsvd_lora", "local_epochs": 1, "batch_size": 16, "lr": 0.1, "svd_period": 2},
    {"name": "fedrand", "local_epochs": 1, "batch_size": 16, "lr": 0.1, "rho": 0.5},
], ids=["fedsvd_lora", "fedrand"])
def test_lora_bundles_resume_to_the_same_metrics(monkeypatch, tmp_path, algorithm):
    """The server's round counter (FedSVD's SVD period, FedRand's draws) is checkpointed and
    FedRand's private halves are client states: an interrupted run resumes to the same metrics."""
    from tests.test_resume import check_resume_matches

    sc = scenario(algorithm=algorithm, federation__rounds=5, federation__clients_per_round=3)
    sc["checkpoint"] = {"every": 2}
    check_resume_matches(monkeypatch, tmp_path, sc, stop=3)
