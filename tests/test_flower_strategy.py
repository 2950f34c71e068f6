"""FllabStrategy: fllab's aggregation inside Flower's FedAvg equals fllab's own kernels, for every
registered aggregator; Krum is refused before round 1 with the scenario's message; DP-FedAvg's
epsilon inside Flower is fllab's accountant's."""
from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from flower_helpers import FakeGrid, record, reply, task_identity  # noqa: E402
from fllab.errors import ConfigError  # noqa: E402
from fllab.interop.flower import FllabStrategy  # noqa: E402
from fllab.privacy import PrivacyLedger  # noqa: E402
from fllab.registry import AGGREGATORS, load_plugins  # noqa: E402
from flwr.app import ConfigRecord  # noqa: E402

load_plugins()
D = 26  # 5*4 + 4 + 2
NODES = [1000 + 7 * i for i in range(12)]


def spec(name: str) -> dict:
    fields = AGGREGATORS[name].Params.model_fields
    s = {"name": name}
    if "f" in fields:
        s["f"] = 2
    if name == "monna":
        s["trusted_client"] = NODES[0]
    return s


def run_round(strategy: FllabStrategy, rnd: int, sent: torch.Tensor, updates: torch.Tensor, weights: list[int]):
    with task_identity():
        list(strategy.configure_train(rnd, record(sent), ConfigRecord(), FakeGrid(NODES)))
    replies = [reply(n, u, w) for n, u, w in zip(NODES, updates, weights)]
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    from fllab.interop.flower import record_to_flat

    return record_to_flat(arrays), metrics


SPECS = [spec(n) for n in sorted(AGGREGATORS)] + [{"name": "nnm", "f": 2, "then": {"name": "krum", "f": 2}}]


@pytest.mark.parametrize("agg", SPECS, ids=lambda s: s["name"] + ("+" + s["then"]["name"] if "then" in s else ""))
def test_strategy_aggregate_equals_fllab_kernel(agg):
    """Three rounds (stateful rules included): with zero weights sent and delta uploads the new
    global weights are exactly the aggregate; the reference is a fresh instance called as the
    engine calls it."""
    gen = torch.Generator().manual_seed(0)
    strategy = FllabStrategy(agg, upload="delta", min_train_nodes=12, min_available_nodes=12)
    reference = AGGREGATORS.build(agg)
    for rnd in range(1, 4):
        updates = torch.randn(12, D, generator=gen)
        updates[:2] += 5.0  # two outliers for the robust rules to act on
        weights = [int(w) for w in torch.randint(10, 60, (12,), generator=gen)]
        got, _ = run_round(strategy, rnd, torch.zeros(D), updates, weights)
        want = reference(updates, torch.tensor([float(w) for w in weights]), client_ids=NODES)
        assert torch.equal(got, want.float()), agg
        assert strategy.rounds[-1].flagged == (None if getattr(reference, "last_flagged", None) is None else list(reference.last_flagged))


def test_weights_upload_and_server_lr():
    """Stock Flower clients send weights: the update is reply - sent, the step sent + lr * agg."""
    gen = torch.Generator().manual_seed(1)
    sent = torch.randn(D, generator=gen)
    updates = torch.randn(12, D, generator=gen)
    strategy = FllabStrategy({"name": "trimmed_mean", "f": 2}, upload="weights", server_lr=0.5, min_train_nodes=12)
    got, _ = run_round(strategy, 1, sent, sent + updates, [10] * 12)
    want = sent + 0.5 * AGGREGATORS.build({"name": "trimmed_mean", "f": 2})((sent + updates) - sent)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_krum_refused_before_round_one_with_the_scenario_message():
    strategy = FllabStrategy({"name": "krum", "f": 2}, min_train_nodes=6, min_available_nodes=6)
    with task_identity(), pytest.raises(ConfigError) as err:
        strategy.configure_train(1, record(torch.zeros(D)), ConfigRecord(), FakeGrid(NODES[:6]))
    assert str(err.value) == "aggregator: krum needs n > 2f + 2 (f=2, n=6): lower f to at most 1 (clients sampled per round = 6)"
    assert strategy.rounds == []


@pytest.mark.parametrize("bad, field", [
    ({"aggregator": {"name": "krum", "f": -1}}, "aggregator.f"),
    ({"defenses": ["topk"]}, "defenses.0"),
    ({"aggregator": "krum", "defenses": ["dp_fedavg"]}, "aggregator"),
    ({"defenses": ["dp_fedavg", {"name": "secure_aggregation", "group_size": 3}]}, "defenses.0"),
    ({"upload": "ranking"}, "upload"),
])
def test_bad_settings_are_one_line_config_errors(bad, field):
    with pytest.raises(ConfigError) as err:
        FllabStrategy(**bad)
    assert str(err.value).startswith(field + ":") and "\n" not in str(err.value)


def test_dp_fedavg_inside_flower_reports_fllab_epsilon():
    """DP-FedAvg with z=1.1 over 3 rounds sampling 6 of 12 nodes: the epsilon in the round's
    metrics is what fllab's PrivacyLedger gives for q = 0.5, z = 1.1, three steps; the aggregate
    is the clipped mean plus the seeded noise of fllab's noisy mean."""
    from fllab.defenses.dp import clip_segments
    from fllab.seeding import torch_gen

    z, clip = 1.1, 0.5
    strategy = FllabStrategy("mean", [{"name": "dp_fedavg", "noise_multiplier": z, "clip": clip, "seed": 3}],
                             upload="delta", fraction_train=0.5, min_train_nodes=2, min_available_nodes=12)
    gen = torch.Generator().manual_seed(2)
    ledger = PrivacyLedger("prv")
    for rnd in range(1, 4):
        with task_identity():
            msgs = list(strategy.configure_train(rnd, record(torch.zeros(D)), ConfigRecord(), FakeGrid(NODES)))
        sampled = [m.metadata.dst_node_id for m in msgs]
        assert len(sampled) == 6
        updates = torch.randn(6, D, generator=gen)
        arrays, metrics = strategy.aggregate_train(rnd, [reply(n, u, 30) for n, u in zip(sampled, updates)])
        ledger.step(z, 6 / 12)
        assert metrics["privacy.epsilon"] == pytest.approx(ledger.epsilon(1e-5), rel=1e-12)
        assert metrics["privacy.delta"] == 1e-5
        clipped = torch.stack([clip_segments(u, [D], [clip]) for u in updates])
        noise = torch.randn(D, generator=torch_gen(3, "dp_fedavg", rnd - 1))
        from fllab.interop.flower import record_to_flat

        torch.testing.assert_close(record_to_flat(arrays), clipped.mean(0) + z * clip / 6 * noise, rtol=0, atol=1e-6)
    assert 0 < metrics["privacy.epsilon"] < 10


def test_dp_fedavg_target_epsilon_calibrated_for_the_planned_rounds():
    """target_epsilon is calibrated to num_rounds at the sampled rate; after them the accounted
    epsilon meets it (as in a scenario)."""
    strategy = FllabStrategy("mean", [{"name": "dp_fedavg", "target_epsilon": 4.0, "clip": 1.0}], upload="delta",
                             num_rounds=2, min_train_nodes=12, min_available_nodes=12)
    for rnd in (1, 2):
        _, metrics = run_round(strategy, rnd, torch.zeros(D), torch.randn(12, D), [10] * 12)
    assert metrics["privacy.epsilon"] == pytest.approx(4.0, rel=0.02)


def test_secure_aggregation_view_groups_means():
    """With the secure-aggregation view the aggregator sees the group means the defense forms
    (grouping drawn from the strategy's seed, round 0, as the engine draws it)."""
    from fllab.registry import DEFENSES
    from fllab.seeding import numpy_gen

    gen = torch.Generator().manual_seed(4)
    updates = torch.randn(12, D, generator=gen)
    weights = torch.randint(5, 50, (12,), generator=gen)
    strategy = FllabStrategy("median", [{"name": "secure_aggregation", "group_size": 4}], upload="delta", seed=9, min_train_nodes=12)
    got, _ = run_round(strategy, 1, torch.zeros(D), updates, [int(w) for w in weights])
    view = DEFENSES.build({"name": "secure_aggregation", "group_size": 4})
    uploads = view.server_view(updates, weights.float(), numpy_gen(9, "defense", "secure_aggregation", 0))
    assert len(uploads) == 3
    want = torch.stack([u.update for u in uploads]).median(0).values
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", [None, 3.0])
def test_dp_fedavg_epsilon_equals_a_fllab_scenario_with_the_same_settings(tiny, tmp_path, target):
    """A fllab scenario (12 clients, 6 sampled per round, 3 rounds, dp_fedavg with z = 1.1 or a
    target epsilon of 3) and the Flower strategy with the same settings (12 nodes, fraction 0.5)
    report the same privacy.epsilon."""
    import fllab

    noise = {"noise_multiplier": 1.1} if target is None else {"target_epsilon": target}
    tiny["federation"] = {"num_clients": 12, "clients_per_round": 6, "rounds": 3, "partition": {"name": "iid"}}
    tiny["defenses"] = [{"name": "dp_fedavg", "clip": 1.0, **noise}]
    _, summary = fllab.run(tiny, tmp_path / "run")
    strategy = FllabStrategy("mean", [{"name": "dp_fedavg", "clip": 1.0, **noise}], upload="delta", num_rounds=3,
                             fraction_train=0.5, min_train_nodes=2, min_available_nodes=12)
    for rnd in (1, 2, 3):
        with task_identity():
            msgs = list(strategy.configure_train(rnd, record(torch.zeros(D)), ConfigRecord(), FakeGrid(NODES)))
        _, metrics = strategy.aggregate_train(rnd, [reply(m.metadata.dst_node_id, torch.randn(D), 10) for m in msgs])
    assert metrics["privacy.epsilon"] == pytest.approx(summary["metrics"]["privacy.epsilon"], rel=1e-9)
    assert metrics["privacy.delta"] == summary["metrics"]["privacy.delta"]
