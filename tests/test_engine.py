"""Training core: determinism per seed, replay of config.resolved.yaml, FedSGD/FedAvg semantics."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import fllab
from conftest import gradients_at_start
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema


def metrics_of(data, tmp_path, name):
    _, summary = fllab.run(data, tmp_path / name)
    return {k: v for k, v in summary["metrics"].items() if k != "run.seconds"}


def test_same_seed_same_metrics_other_seed_differs(tmp_path, tiny):
    tiny["federation"]["clients_per_round"] = 3
    tiny["federation"]["partition"] = {"name": "dirichlet", "alpha": 0.5}
    a = metrics_of(tiny, tmp_path, "a")
    b = metrics_of(tiny, tmp_path, "b")
    assert a == b
    tiny["seed"] = 1
    c = metrics_of(tiny, tmp_path, "c")
    assert c != a


def test_resolved_config_replays_to_the_same_metrics(tmp_path, tiny):
    first = metrics_of(tiny, tmp_path, "first")
    resolved = yaml.safe_load((tmp_path / "first" / "config.resolved.yaml").read_text())
    assert metrics_of(resolved, tmp_path, "replay") == first


def test_rounds_jsonl_records_every_round_and_evaluation_cadence(tmp_path, tiny):
    tiny["federation"]["rounds"] = 5
    tiny["evaluation"] = {"every": 2}
    fllab.run(tiny, tmp_path / "r")
    records = [json.loads(line) for line in (tmp_path / "r" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    assert ["test_accuracy" in r for r in records] == [False, True, False, True, True]


def test_fedsgd_server_step_is_minus_lr_times_mean_gradient(tiny):
    tiny["algorithm"] = {"name": "fedsgd", "lr": 0.5}
    tiny["federation"]["rounds"] = 1
    engine, start, grads = gradients_at_start(tiny)
    sizes = [len(data) for data in engine.federation.client_data]
    w = torch.tensor(sizes, dtype=torch.float32)
    expected = start - 0.5 * (w / w.sum()) @ torch.stack(grads)
    engine.run()
    torch.testing.assert_close(engine.server.global_params, expected, rtol=1e-4, atol=1e-6)


def test_fedavg_learns_on_real_digits(tmp_path, tiny):
    tiny["federation"]["rounds"] = 15
    tiny["algorithm"]["local_epochs"] = 2
    metrics = metrics_of(tiny, tmp_path, "learn")
    assert metrics["utility.accuracy"] > 0.85  # chance is 0.10


def test_label_flip_poisoning_hurts_plain_averaging(tmp_path, tiny):
    tiny["federation"].update(num_clients=10, rounds=6)
    clean = metrics_of(tiny, tmp_path, "clean")["utility.accuracy"]
    tiny["attacks"] = [{"name": "sign_flip", "fraction": 0.3, "scale": 3.0}]
    attacked = metrics_of(tiny, tmp_path, "attacked")["utility.accuracy"]
    assert attacked < clean - 0.2


def test_capability_mismatch_is_refused_before_training(tiny):
    from fllab.registry import ATTACKS
    from fllab.registry import Params as BaseParams

    @ATTACKS.register("_needs_ranking_probe")
    class NeedsRanking:
        family = "poisoning"
        needs = frozenset({"ranking"})

        class Params(BaseParams):
            fraction: float = 0.2

        def __init__(self, params):
            self.params = params

        def craft_uploads(self, obs):
            return obs.own_updates

    try:
        tiny["attacks"] = [{"name": "_needs_ranking_probe"}]
        with pytest.raises(fllab.CapabilityError, match="needs a ranking update; algorithm fedavg sends a delta"):
            resolve(validate_schema(tiny))
    finally:
        ATTACKS._items.pop("_needs_ranking_probe")


def test_secure_aggregation_view_leaves_the_mean_unchanged(tmp_path, tiny):
    """Group means weighted by group size average to the plain weighted mean."""
    tiny["federation"].update(num_clients=6, rounds=2)
    plain = metrics_of(tiny, tmp_path, "plain")
    tiny["defenses"] = [{"name": "secure_aggregation", "group_size": 3}]
    grouped = metrics_of(tiny, tmp_path, "grouped")
    assert grouped["utility.accuracy"] == pytest.approx(plain["utility.accuracy"], abs=1e-6)
    assert grouped["utility.loss"] == pytest.approx(plain["utility.loss"], rel=1e-4)


def test_secure_aggregation_group_larger_than_sample_is_refused(tiny):
    tiny["defenses"] = [{"name": "secure_aggregation", "group_size": 9}]
    with pytest.raises(fllab.ConfigError, match="defenses.0.group_size: group_size 9 exceeds the 4 clients"):
        resolve(validate_schema(tiny))


def test_dp_fedavg_with_a_secure_aggregation_view_is_refused_before_anything_is_written(tmp_path, tiny):
    tiny["defenses"] = [{"name": "dp_fedavg", "noise_multiplier": 1.0}, {"name": "secure_aggregation", "group_size": 2}]
    message = "defenses.0: dp_fedavg calibrates its noise to each client's own update at unit weight; secure_aggregation shows"
    with pytest.raises(fllab.ConfigError, match=message):
        resolve(validate_schema(tiny))
    with pytest.raises(fllab.ConfigError, match="drop one of the two"):
        fllab.run(tiny, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("algorithm, sends", [("frl", "a ranking"), ("hyperfl", "a hypernetwork")])
def test_dp_sgd_is_refused_for_algorithms_with_their_own_local_training(tiny, algorithm, sends):
    """FRL trains supermask scores, HyperFL a hypernetwork, each with its own local schedule that
    DP-SGD's per-sample clipping cannot wrap: refused by the capability check, before training."""
    tiny["algorithm"] = {"name": algorithm}
    tiny["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 1.0}]
    with pytest.raises(fllab.CapabilityError, match=f"^defenses.0: dp_sgd works on delta updates; algorithm {algorithm} sends {sends}$"):
        resolve(validate_schema(tiny))
