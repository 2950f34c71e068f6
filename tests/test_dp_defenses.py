"""Accounted DP defenses: dp_sgd (record-level, Opacus), dp_fedavg (user-level), rqm.

Every epsilon is checked against an accountant fed by hand with the same (noise, sample rate,
steps): the figures in summary.json must come from real accounting of what ran.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

import fllab
import fllab.defenses.dp  # noqa: F401  (registers dp_sgd, dp_fedavg)
import fllab.defenses.rqm  # noqa: F401  (registers rqm)
from fllab.cli import main
from fllab.defenses.dp import DPFedAvg, DPSGD, DPSGDState, clip_segments, param_sizes
from fllab.defenses.dp_train import check_dp_model, dp_sgd_train
from fllab.defenses.rqm import RQM
from fllab.errors import CapabilityError, ConfigError
from fllab.privacy import PrivacyLedger, rqm_epsilon, rqm_levels
from fllab.registry import AGGREGATORS, DEFENSES
from fllab.training.local import sgd_train
from fllab.types import ClientResult, ClientTask, ModelHandle, TensorData

DELTA = 1e-5


# ----------------------------------------------------------------------------------- helpers
def run(data, tmp_path, name):
    out, summary = fllab.run(data, tmp_path / name)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return out, summary["metrics"], rounds


def client_sizes(out) -> list[int]:
    return [c["size"] for c in json.loads((out / "partition.json").read_text())["clients"]]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def toy_data(n: int = 40, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def fresh(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mlp()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(model, data=None, **kw):
    args = dict(steps=1, sample_rate=1.0, lr=1.0, momentum=0.0, weight_decay=0.0, gen=torch.Generator().manual_seed(3),
                noise_multiplier=0.0, max_grad_norm=1e6)
    args.update(kw)
    return dp_sgd_train(model, data if data is not None else toy_data(), **args)


def handle(norm: str = "none") -> ModelHandle:
    def build():
        layers = [nn.Conv2d(1, 4, 3, padding=1)]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(4))
        return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))

    return ModelHandle(build, (1, 8, 8), 10)


# ------------------------------------------------------------------------ DP-SGD training kernel
def test_without_noise_or_clipping_one_full_batch_step_is_plain_sgd():
    data = toy_data()
    a, b = fresh(), fresh()
    train(a, data)  # q = 1: the Poisson batch is the whole dataset, mean over expected size n
    sgd_train(b, data, steps=1, batch_size=len(data), lr=1.0, momentum=0.0, weight_decay=0.0, gen=torch.Generator())
    torch.testing.assert_close(flat(a), flat(b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_noiseless_step_is_the_mean_of_per_sample_clipped_gradients(clipping):
    data, c = toy_data(), 0.05
    model = fresh()
    before = flat(model)
    sizes = [p.numel() for p in model.parameters()]
    clipped = []
    for i in range(len(data)):  # per-example gradients by hand, clipped as Abadi et al. / McMahan et al.
        loss = F.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
        if clipping == "flat":
            clipped.append(g * min(1.0, c / float(g.norm())))
        else:
            b = c / math.sqrt(len(sizes))
            clipped.append(torch.cat([s * min(1.0, b / float(s.norm())) for s in torch.split(g, sizes)]))
    train(model, data, max_grad_norm=c, clipping=clipping)  # lr 1, q 1: step = -mean of clipped gradients
    # Opacus divides by (norm + 1e-6): a relative difference of about 1e-6 / norm
    torch.testing.assert_close(flat(model) - before, -torch.stack(clipped).mean(0), atol=1e-6, rtol=1e-4)
    assert float((flat(model) - before).norm()) <= c


def test_hooks_and_ghost_clipping_take_the_same_noisy_steps():
    data = toy_data(60)
    runs = {}
    for mode in ("hooks", "ghost"):
        model = fresh()
        kw = dict(steps=4, sample_rate=0.3, lr=0.5, noise_multiplier=1.0, max_grad_norm=0.5, grad_sample_mode=mode)
        runs[mode] = (train(model, data, **kw), flat(model))
    assert runs["hooks"][0] == pytest.approx(runs["ghost"][0], rel=1e-5)
    torch.testing.assert_close(runs["hooks"][1], runs["ghost"][1], atol=1e-5, rtol=0)


def test_same_generator_same_steps_and_an_empty_batch_still_releases_noise():
    data = toy_data()
    kw = dict(steps=3, sample_rate=0.2, noise_multiplier=1.0, max_grad_norm=1.0)
    a, b = fresh(), fresh()
    train(a, data, **kw)
    train(b, data, **kw)
    assert torch.equal(flat(a), flat(b))
    model = fresh()
    before = flat(model)
    loss = train(model, data, steps=1, sample_rate=1e-12, noise_multiplier=1.0, max_grad_norm=1.0)
    assert math.isnan(loss)  # no example was sampled ...
    assert not torch.equal(flat(model), before)  # ... yet the step is the noise alone


def test_opacus_hooks_are_removed_from_the_reused_model():
    model = fresh()
    train(model, steps=2, sample_rate=0.5, noise_multiplier=1.0)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
    for p in model.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample"):
            assert not hasattr(p, attr), attr


def test_batch_norm_is_refused_naming_the_model_norm():
    check_dp_model(handle().build())
    with pytest.raises(ConfigError, match="batch norm") as err:
        check_dp_model(handle("batch").build())
    assert err.value.path == "task.model.norm" and err.value.exit_code == 2


# ------------------------------------------------------------------------- dp_sgd parameters
@pytest.mark.parametrize(
    "raw, message",
    [
        ({"noise_multiplier": 1.0, "target_epsilon": 2.0}, "not both"),
        ({"grad_sample_mode": "ghost", "clipping": "per_layer"}, "ghost supports clipping flat only"),
        ({"accountant": "gdp"}, "defenses.0.accountant"),
        ({"max_grad_norm": 0}, "defenses.0.max_grad_norm"),
    ],
)
def test_dp_sgd_impossible_settings_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        DEFENSES.parse_params("dp_sgd", raw, "defenses.0")


def test_dp_sgd_replaces_plain_local_sgd_only():
    defense = DPSGD(DPSGD.Params())
    defense.wrap_trainer(sgd_train)
    with pytest.raises(ConfigError, match="replaces local SGD"):
        defense.wrap_trainer(lambda *a, **k: 0.0)


def test_dp_sgd_keeps_the_wrapped_state_and_extends_each_clients_history():
    defense = DPSGD(DPSGD.Params(noise_multiplier=1.0, accountant="rdp"))
    trainer = defense.wrap_trainer(sgd_train)
    data, seen = toy_data(), []
    report = trainer(fresh(), data, steps=1, batch_size=10, lr=0.1, momentum=0.0, weight_decay=0.0, gen=torch.Generator())
    assert (report.steps, report.privacy) == (1, ((1.0, 0.25, 1),))  # the trainer reports what it spent

    def fit(task: ClientTask) -> ClientResult:  # an algorithm with its own client state
        seen.append(task.state)
        spent = trainer(fresh(), data, steps=2, batch_size=10, lr=0.1, momentum=0.0, weight_decay=0.0,
                        gen=torch.Generator().manual_seed(task.seed))
        return ClientResult(task.client_id, torch.zeros(3), len(data), state=f"own state {task.round}", training=spent)

    wrapped = defense.wrap_fit(fit)
    first = wrapped(ClientTask(5, 0, torch.zeros(3), data, seed=1))
    second = wrapped(ClientTask(5, 1, torch.zeros(3), data, seed=2, state=first.state))
    assert seen == [None, "own state 0"]
    assert first.extras["dp_sgd.history"] == ((1.0, 0.25, 2),)
    assert second.extras["dp_sgd.history"] == ((1.0, 0.25, 4),)  # one accountant across rounds
    assert second.state == DPSGDState(((1.0, 0.25, 4),), "own state 1")
    eps = defense.account(0, [5], [second], 10)
    ledger = PrivacyLedger("rdp")
    ledger.step(1.0, 0.25, 4)
    assert eps == {"privacy.epsilon": ledger.epsilon(DELTA), "privacy.delta": DELTA}
    untrained = defense.wrap_fit(lambda task: ClientResult(task.client_id, torch.zeros(3), len(data)))
    with pytest.raises(RuntimeError, match="did not train through the client trainer"):
        untrained(ClientTask(5, 0, torch.zeros(3), data, seed=1))


def test_dp_sgd_target_calibrates_per_sampling_rate_and_refuses_an_unreachable_budget():
    defense = DPSGD(DPSGD.Params(target_epsilon=3.0, accountant="rdp"))
    with pytest.raises(RuntimeError, match="plan"):
        defense.noise_multiplier_for(0.1, 10)
    defense.plan(rounds=5, num_clients=4, clients_per_round=4, model=handle())
    for q in (0.1, 0.5):
        ledger = PrivacyLedger("rdp")
        ledger.step(defense.noise_multiplier_for(q, 10), q, 10 * 5)  # planned: every one of the 5 rounds
        assert 0.98 * 3.0 <= ledger.epsilon(DELTA) <= 3.0
    tight = DPSGD(DPSGD.Params(target_epsilon=1e-6, accountant="rdp"))
    tight.plan(rounds=5, num_clients=4, clients_per_round=4, model=handle())
    with pytest.raises(ConfigError, match="dp_sgd.target_epsilon: The privacy budget is too low"):
        tight.noise_multiplier_for(1.0, 10)  # without subsampling Opacus gives up at once (at q = 0.5: ~30 s)


def test_dp_sgd_plan_refuses_batch_norm_before_training():
    with pytest.raises(ConfigError) as err:
        DPSGD(DPSGD.Params()).plan(rounds=3, num_clients=4, clients_per_round=4, model=handle("batch"))
    assert err.value.path == "task.model.norm"


# ---------------------------------------------------------------------- dp_sgd end to end
@pytest.mark.parametrize("accountant, sigma", [("rdp", 1.1), ("prv", 0.9)])
def test_dp_sgd_epsilon_equals_a_ledger_of_every_clients_steps(tmp_path, tiny, accountant, sigma):
    tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": sigma, "accountant": accountant}]
    out, metrics, rounds = run(tiny, tmp_path, "dp")
    batch, n_rounds = tiny["algorithm"]["batch_size"], tiny["federation"]["rounds"]
    per_round = []
    for r in range(1, n_rounds + 1):
        eps = []
        for n in client_sizes(out):  # every client, every round: q = B/n, ceil(n/B) steps per epoch
            ledger = PrivacyLedger(accountant)
            ledger.step(sigma, min(batch, n) / n, math.ceil(n / batch) * r)
            eps.append(ledger.epsilon(DELTA))
        per_round.append(max(eps))
    assert [rec["privacy.epsilon"] for rec in rounds] == pytest.approx(per_round, rel=1e-12)
    assert metrics["privacy.epsilon"] == pytest.approx(per_round[-1], rel=1e-12)
    assert metrics["privacy.delta"] == DELTA


def test_dp_sgd_with_client_sampling_accounts_each_clients_own_rounds(tmp_path, tiny):
    tiny["federation"].update(num_clients=4, clients_per_round=2, rounds=3)
    tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 1.0, "accountant": "rdp"}]
    out, metrics, rounds = run(tiny, tmp_path, "dp")
    sizes, batch = client_sizes(out), tiny["algorithm"]["batch_size"]
    taken = {c: sum(c in rec["clients"] for rec in rounds) for c in range(4)}
    expected = 0.0
    for cid, k in taken.items():
        if k:
            ledger = PrivacyLedger("rdp")
            ledger.step(1.0, min(batch, sizes[cid]) / sizes[cid], math.ceil(sizes[cid] / batch) * k)
            expected = max(expected, ledger.epsilon(DELTA))
    assert metrics["privacy.epsilon"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("accountant, target", [("rdp", 3.0), ("prv", 2.0)])
def test_dp_sgd_target_epsilon_lands_within_two_percent(tmp_path, tiny, accountant, target):
    tiny["defenses"] = [{"name": "dp_sgd", "target_epsilon": target, "accountant": accountant}]
    _, metrics, _ = run(tiny, tmp_path, "dp")  # every client takes part in every round: as planned
    assert 0.98 * target <= metrics["privacy.epsilon"] <= target


def test_dp_sgd_same_seed_same_run_other_seed_differs(tmp_path, tiny):
    tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 1.0, "accountant": "rdp"}]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    _, a, ra = run(tiny, tmp_path, "a")
    _, b, rb = run(tiny, tmp_path, "b")
    assert strip(ra) == strip(rb) and a["utility.accuracy"] == b["utility.accuracy"]
    tiny["seed"] = 1
    _, c, rc = run(tiny, tmp_path, "c")
    assert [r["train_loss"] for r in rc] != [r["train_loss"] for r in ra]


def test_dp_sgd_strong_noise_lowers_accuracy(tmp_path, tiny):
    tiny["federation"]["rounds"] = 4
    tiny["algorithm"]["lr"] = 0.5
    acc = {}
    for sigma in (0.3, 30.0):
        tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": sigma, "max_grad_norm": 2.0, "accountant": "rdp"}]
        _, metrics, _ = run(tiny, tmp_path, f"s{sigma}")
        acc[sigma] = metrics["utility.accuracy"]
    assert acc[0.3] > 0.7 and acc[30.0] < 0.3, acc


def test_dp_sgd_refuses_a_batch_norm_model_with_exit_2(tmp_path, tiny, write_yaml):
    tiny["task"]["model"] = {"name": "convnet", "width": 4, "hidden": 16, "norm": "batch"}
    tiny["defenses"] = [{"name": "dp_sgd"}]
    with pytest.raises(ConfigError) as err:
        fllab.run(tiny, tmp_path / "api")
    assert err.value.path == "task.model.norm" and err.value.exit_code == 2
    res = CliRunner().invoke(main, ["run", str(write_yaml(tiny)), "--out", str(tmp_path / "cli"), "-q"])
    assert res.exit_code == 2 and "task.model.norm" in res.stderr and "Traceback" not in res.output


def test_dp_sgd_runs_with_a_group_norm_convnet(tmp_path, tiny):
    tiny["task"]["model"] = {"name": "convnet", "width": 4, "hidden": 16, "norm": "group", "num_groups": 2}
    tiny["federation"]["rounds"] = 1
    tiny["defenses"] = [{"name": "dp_sgd", "grad_sample_mode": "ghost", "accountant": "rdp"}]
    _, metrics, _ = run(tiny, tmp_path, "gn")
    assert metrics["privacy.epsilon"] > 0


def test_dp_sgd_needs_local_training(tmp_path, tiny):
    tiny["algorithm"] = {"name": "fedsgd"}
    tiny["defenses"] = [{"name": "dp_sgd"}]
    with pytest.raises(CapabilityError, match="dp_sgd works on delta"):
        fllab.run(tiny, tmp_path / "x")


# ----------------------------------------------------------------------------------- dp_fedavg
def test_dp_fedavg_clipping_flat_and_per_layer():
    u = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    d = DPFedAvg(DPFedAvg.Params(clip=2.0))
    assert float(d.transform(u, torch.Generator()).norm()) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(d.transform(0.01 * u, torch.Generator()), 0.01 * u)  # inside the ball: unchanged
    sizes = [600, 300, 100]
    # per-layer: each segment to C/sqrt(L) by a loop, against the vectorised kernel
    bound = 2.0 / math.sqrt(3)
    ref = torch.cat([s * min(1.0, bound / float(s.norm())) for s in torch.split(u, sizes)])
    torch.testing.assert_close(clip_segments(u, sizes, [bound] * 3), ref)
    layered = DPFedAvg(DPFedAvg.Params(clip=2.0, clipping="per_layer"))
    model = ModelHandle(mlp, (1, 8, 8), 10)
    layered.plan(rounds=1, num_clients=2, clients_per_round=2, model=model)
    sizes = param_sizes(model)
    assert sizes == [1024, 16, 160, 10]
    v = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(1))
    out = layered.transform(v, torch.Generator())
    for part in torch.split(out, sizes):
        assert float(part.norm()) <= 1.0 * (1 + 1e-6)  # 2 / sqrt(4)
    assert float(out.norm()) <= 2.0 * (1 + 1e-6)


def test_dp_fedavg_server_adds_noise_of_std_zC_over_n_to_the_unweighted_mean():
    z, c, n, d = 2.0, 0.5, 4, 200_000
    defense = DPFedAvg(DPFedAvg.Params(noise_multiplier=z, clip=c, seed=7))
    agg = defense.wrap_aggregator(AGGREGATORS.build("mean"))
    ids = list(range(n))
    zeros = agg(torch.zeros(n, d), torch.ones(n), client_ids=ids)
    assert float(zeros.std()) == pytest.approx(z * c / n, rel=0.01)
    assert abs(float(zeros.mean())) < 5 * z * c / n / math.sqrt(d)
    # a fresh wrapper replays the same noise stream; the weights are ignored (unit weights)
    replay = defense.wrap_aggregator(AGGREGATORS.build("mean"))
    updates = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    out = replay(updates, torch.tensor([1.0, 10.0, 100.0, 1000.0]), client_ids=ids)
    torch.testing.assert_close(out - zeros, updates.mean(0), atol=1e-5, rtol=0)
    assert not torch.equal(replay(torch.zeros(n, d), client_ids=ids), zeros)  # the next round draws new noise
    with pytest.raises(ConfigError, match="group means"):  # a secure-aggregation view passes no client ids
        replay(torch.zeros(2, d), torch.ones(2), client_ids=None)


def test_dp_fedavg_refuses_a_secure_aggregation_view(tmp_path, tiny):
    tiny["defenses"] = [{"name": "dp_fedavg"}, {"name": "secure_aggregation", "group_size": 2}]
    with pytest.raises(ConfigError, match="group means"):
        fllab.run(tiny, tmp_path / "x")


def test_dp_fedavg_refuses_a_non_mean_aggregator(tmp_path, tiny):
    defense = DPFedAvg(DPFedAvg.Params())
    with pytest.raises(ConfigError, match="mean aggregator; got median") as err:
        defense.wrap_aggregator(AGGREGATORS.build("median"))
    assert err.value.path == "aggregator"
    tiny["aggregator"] = "median"
    tiny["defenses"] = [{"name": "dp_fedavg"}]
    with pytest.raises(ConfigError, match="aggregator: dp_fedavg"):
        fllab.run(tiny, tmp_path / "x")


@pytest.mark.parametrize("accountant, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_dp_fedavg_epsilon_equals_opacus_for_q_z_rounds(tmp_path, tiny, accountant, cls):
    z = 1.3
    tiny["federation"].update(num_clients=4, clients_per_round=2, rounds=3)
    tiny["defenses"] = [{"name": "dp_fedavg", "noise_multiplier": z, "clip": 1.0, "accountant": accountant}]
    _, metrics, rounds = run(tiny, tmp_path, "fa")
    acc, expected = cls(), []
    for _ in range(3):
        acc.step(noise_multiplier=z, sample_rate=2 / 4)
        expected.append(acc.get_epsilon(delta=DELTA))
    assert [r["privacy.epsilon"] for r in rounds] == pytest.approx(expected, rel=1e-12)
    assert metrics["privacy.epsilon"] == pytest.approx(expected[-1], rel=1e-12)


def test_dp_fedavg_plan_calibrates_z_to_the_target():
    defense = DPFedAvg(DPFedAvg.Params(target_epsilon=2.0, accountant="rdp"))
    with pytest.raises(RuntimeError, match="plan"):
        defense.noise_multiplier
    defense.plan(rounds=50, num_clients=100, clients_per_round=10, model=ModelHandle(mlp, (1, 8, 8), 10))
    ledger = PrivacyLedger("rdp")
    ledger.step(defense.noise_multiplier, 0.1, 50)
    assert 0.98 * 2.0 <= ledger.epsilon(DELTA) <= 2.0
    with pytest.raises(ValueError, match="privacy budget is too low"):
        DPFedAvg(DPFedAvg.Params(target_epsilon=1e-6)).plan(
            rounds=50, num_clients=4, clients_per_round=4, model=ModelHandle(mlp, (1, 8, 8), 10)
        )


def test_dp_fedavg_target_epsilon_end_to_end(tmp_path, tiny):
    tiny["federation"].update(clients_per_round=2, rounds=4)
    tiny["defenses"] = [{"name": "dp_fedavg", "target_epsilon": 5.0, "accountant": "rdp", "clipping": "per_layer"}]
    _, metrics, _ = run(tiny, tmp_path, "fa")
    assert 0.98 * 5.0 <= metrics["privacy.epsilon"] <= 5.0


def test_dp_fedavg_strong_noise_lowers_accuracy_and_runs_reproduce(tmp_path, tiny):
    tiny["federation"]["rounds"] = 5
    tiny["algorithm"]["lr"] = 0.5
    acc = {}
    for z in (0.05, 50.0):
        tiny["defenses"] = [{"name": "dp_fedavg", "noise_multiplier": z, "clip": 2.0, "accountant": "rdp"}]
        _, metrics, _ = run(tiny, tmp_path, f"z{z}")
        acc[z] = metrics["utility.accuracy"]
    assert acc[0.05] > 0.8 and acc[50.0] < 0.3, acc
    _, again, _ = run(tiny, tmp_path, "again")
    assert again["utility.accuracy"] == acc[50.0]


# ------------------------------------------------------------------------------------- rqm
def test_rqm_transform_sends_levels_reproducibly():
    p = RQM.Params(c=0.1, delta=0.05, m=8, q=0.5)
    defense = RQM(p)
    u = 0.2 * torch.randn(5000, generator=torch.Generator().manual_seed(0))
    a = defense.transform(u, torch.Generator().manual_seed(1))
    b = defense.transform(u, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    levels = torch.as_tensor(rqm_levels(p.c, p.delta, p.m), dtype=a.dtype)
    assert bool(torch.isclose(a[:, None], levels[None, :], atol=1e-6).any(1).all())
    assert float((a - u.clamp(-p.c, p.c)).mean()) == pytest.approx(0.0, abs=0.01)  # unbiased for the clipped input


def test_rqm_refuses_q_one_which_keeps_no_privacy():
    with pytest.raises(ConfigError, match="defenses.0.q"):
        DEFENSES.parse_params("rqm", {"q": 1.0}, "defenses.0")


def test_rqm_epsilon_composes_over_coordinates_and_each_clients_rounds(tmp_path, tiny):
    tiny["federation"].update(clients_per_round=2, rounds=3)
    tiny["defenses"] = [{"name": "rqm", "c": 0.05, "delta": 0.05, "m": 8, "q": 0.3}]
    _, metrics, rounds = run(tiny, tmp_path, "rqm")
    dims = 64 * 32 + 32 + 32 * 10 + 10
    seen: dict[int, int] = {}
    for rec in rounds:
        for cid in rec["clients"]:
            seen[cid] = seen.get(cid, 0) + 1
        assert rec["privacy.epsilon"] == pytest.approx(rqm_epsilon(0.05, 0.05, 8, 0.3, dims, max(seen.values()), DELTA), rel=1e-12)
    assert metrics["privacy.epsilon"] == rounds[-1]["privacy.epsilon"]


def test_accounting_restarts_with_each_run():
    defense = RQM(RQM.Params())
    res = [ClientResult(0, torch.zeros(10), 1)]
    first = defense.account(0, [0], res, 4)["privacy.epsilon"]
    defense.account(1, [0], res, 4)
    assert defense.account(0, [0], res, 4)["privacy.epsilon"] == first
    fa = DPFedAvg(DPFedAvg.Params(accountant="rdp"))
    first = fa.account(0, [0, 1], res, 4)["privacy.epsilon"]
    fa.account(1, [0, 1], res, 4)
    assert fa.account(0, [0, 1], res, 4)["privacy.epsilon"] == first


# ------------------------------------------- vectorized DP-SGD noise: Opacus's draws, fewer calls
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merged_noise_draws_are_opacus_per_tensor_draws_bit_for_bit(dtype):
    from fllab.training.dp_stacked import _Noise, draw_groups

    shapes = [torch.Size(s) for s in [(16, 8), (16,), (10, 16), (10,), (3,), (32, 3)]]
    assert draw_groups([s.numel() for s in shapes], dtype, torch.device("cpu")) == [(0, 304), (304, 314), (314, 317), (317, 413)]
    assert len(draw_groups([16, 32], torch.float16, torch.device("cpu"))) == 2
    k, steps, std = 2, 3, torch.tensor([0.7, 1.3], dtype=torch.float64)
    noise = _Noise([5, 9], shapes, std, torch.ones(steps, k, dtype=torch.bool), dtype, torch.device("cpu"))
    gens = [torch.Generator().manual_seed(s) for s in (5, 9)]
    for _ in range(steps):
        got = noise.next()
        for j in range(k):  # Opacus's DPOptimizer: one torch.normal per parameter tensor, in order
            want = torch.cat([torch.normal(0.0, float(std[j]), size=s, generator=gens[j], dtype=dtype).flatten() for s in shapes])
            assert torch.equal(got[j], want)


def test_a_run_says_the_rdp_order_note_once_and_never_opacus_warning(tmp_path, tiny):
    import warnings

    tiny["federation"]["rounds"] = 3
    tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 20.0, "accountant": "rdp"}]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, metrics, rounds = run(tiny, tmp_path, "dp")
    assert not [w for w in seen if "Optimal order" in str(w.message)]
    notes = [str(w.message) for w in seen if "RDP accountant's best order" in str(w.message)]
    assert len(notes) == 1 and notes[0].startswith("dp_sgd: ") and "largest alpha (63)" in notes[0]
    assert len(rounds) == 3 and metrics["privacy.epsilon"] > 0
