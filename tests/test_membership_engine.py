"""Membership inference through the engine: the driver draws member / non-member candidates
from its truth, the attack scores them from its observation only."""
from __future__ import annotations

import json

import pytest

import fllab


@pytest.fixture
def federation(tiny):
    tiny["federation"].update(num_clients=40, rounds=1)  # ~34 digits per client
    tiny["algorithm"] = {"name": "fedsgd", "lr": 0.5}
    tiny["task"]["model"] = {"name": "mlp", "hidden": [128]}
    tiny["attacks"] = [{"name": "update_cosine", "position": "server", "target_clients": [0, 1, 2, 3, 4, 5], "rounds": [0]}]
    return tiny


def test_update_cosine_on_one_clients_update_beats_guessing(federation, tmp_path):
    out, summary = fllab.run(federation, tmp_path / "plain")
    m = summary["metrics"]
    assert m["membership.auc"] >= 0.65
    assert 0.0 <= m["privacy.epsilon_lower_bound"]
    rows = (out / "artefacts" / "update_cosine" / "scores.csv").read_text().splitlines()
    assert rows[0] == "index,is_member,score"
    members = [r.split(",")[1] for r in rows[1:]]
    assert members.count("1") == members.count("0") >= 6 * 30  # each target's records + as many held out
    assert json.loads((out / "attacks.json").read_text())["update_cosine"]["family"] == "membership"


def test_secure_aggregation_of_ten_brings_it_back_to_guessing(federation, tmp_path):
    federation["defenses"] = [{"name": "secure_aggregation", "group_size": 10}]
    _, summary = fllab.run(federation, tmp_path / "secagg")
    assert 0.35 <= summary["metrics"]["membership.auc"] <= 0.62


def test_outsider_loss_attack_runs_from_the_final_model(tiny, tmp_path):
    tiny["federation"]["rounds"] = 3
    tiny["attacks"] = [{"name": "loss", "members": 100}]
    _, summary = fllab.run(tiny, tmp_path / "outsider")
    assert {"membership.auc", "membership.tpr_at_0.001_fpr", "membership.tpr_at_0.01_fpr"} <= set(summary["metrics"])


def test_two_attacks_of_one_family_the_first_declared_owns_the_summary_names(tiny, tmp_path):
    """Both attacks' values are kept in attacks.json; summary.json's plain names are the first's."""
    tiny["federation"]["rounds"] = 3
    tiny["attacks"] = [{"name": "population", "members": 100}, {"name": "loss", "members": 100}]
    run_dir, summary = fllab.run(tiny, tmp_path / "two")
    per_attack = json.loads((run_dir / "attacks.json").read_text())
    assert set(per_attack) == {"population", "loss"}
    assert per_attack["population"]["metrics"]["membership.auc"] != per_attack["loss"]["metrics"]["membership.auc"]
    assert summary["metrics"]["membership.auc"] == per_attack["population"]["metrics"]["membership.auc"]


def _scores(path):
    """(is_member, score) columns of a scores.csv."""
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [int(r[1]) for r in rows], [float(r[2]) for r in rows]


def test_every_membership_attack_of_a_run_scores_the_same_candidate_records(tiny, tmp_path):
    """The population attack's score is a non-decreasing function of the loss attack's score on
    the same record (Ye et al. 2022, attack P): ordering the candidates by one orders them by the
    other only when both attacks scored the same records in the same order."""
    tiny["federation"]["rounds"] = 3
    tiny["attacks"] = [{"name": "population", "members": 100}, {"name": "loss", "members": 100}]
    run_dir, _ = fllab.run(tiny, tmp_path / "two")
    member_p, population = _scores(run_dir / "artefacts" / "population" / "scores.csv")
    member_l, loss = _scores(run_dir / "artefacts" / "loss" / "scores.csv")
    assert member_p == member_l and sum(member_l) == 100
    by_loss = sorted(range(len(loss)), key=lambda i: loss[i])
    assert all(population[a] <= population[b] for a, b in zip(by_loss, by_loss[1:]))
    assert len(set(loss)) > 150  # distinct records: the ordering is informative


def test_a_server_position_target_that_is_never_sampled_is_refused_before_training(tiny, tmp_path):
    from fllab.training.drivers.base import sampled_clients

    tiny["federation"].update(num_clients=10, clients_per_round=2, rounds=2)
    seen = {c for r in range(2) for c in sampled_clients(0, r, 10, 2)}
    absent = min(set(range(10)) - seen)
    tiny["attacks"] = [{"name": "update_cosine", "position": "server", "target_clients": [absent]}]
    with pytest.raises(fllab.ConfigError, match=rf"attacks.0.target_clients: client {absent} is not sampled in any of the 2 rounds") as err:
        fllab.validate(tiny)
    assert "\n" not in str(err.value)
    with pytest.raises(fllab.ConfigError, match="is not sampled"):
        fllab.run(tiny, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.partial").exists()
    first_only = sorted(set(sampled_clients(0, 0, 10, 2)) - set(sampled_clients(0, 1, 10, 2)))
    tiny["attacks"][0].update(target_clients=first_only[:1], rounds=[1])  # sampled in round 0 only
    with pytest.raises(fllab.ConfigError, match=r"is not sampled in rounds \[1\]"):
        fllab.validate(tiny)


def test_the_drivers_sampling_is_the_servers(tiny):
    from fllab.runner import preflight
    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema
    from fllab.training.drivers.base import sampled_clients

    tiny["federation"].update(num_clients=12, clients_per_round=5, rounds=4)
    engine = preflight(resolve(validate_schema(tiny)))
    assert all(engine.server.sample(r) == sampled_clients(0, r, 12, 5) for r in range(6))


LORA = {
    "name": "lora_never", "seed": 0, "threads": 1,
    "task": {
        "dataset": {"name": "class_subset", "base": {"name": "digits"}, "classes": [5, 6, 7, 8, 9]},
        "model": {"name": "mlp", "hidden": [32], "lora": {"rank": 2, "alpha": 2, "targets": ["linear"]},
                  "pretrained": {"dataset": {"name": "digits"}, "classes": [0, 1, 2, 3, 4], "epochs": 3, "lr": 0.1}},
    },
    "federation": {"num_clients": 8, "clients_per_round": 2, "rounds": 2, "partition": {"name": "iid"}},
    "algorithm": {"name": "fedavg_lora", "local_epochs": 1, "batch_size": 16, "lr": 0.1},
}


def test_lora_mia_on_a_client_never_sampled_is_refused_before_training():
    from fllab.training.drivers.base import sampled_clients

    seen = {c for r in range(2) for c in sampled_clients(0, r, 8, 2)}
    absent = min(set(range(8)) - seen)
    data = {**LORA, "attacks": [{"name": "lora_mia", "members": 20, "target_clients": [absent]}]}
    with pytest.raises(fllab.ConfigError, match=rf"attacks.0.target_clients: client {absent} is not sampled"):
        fllab.validate(data)
    data["attacks"][0]["target_clients"] = [min(seen)]
    assert fllab.validate(data)["cells"] == 1


from fllab.attacks.membership.outsider import LossAttack  # noqa: E402


class TwoColumns(LossAttack):
    """A plugin built on the loss attack that answers with two columns per candidate (breaks
    the contract)."""

    def score(self, obs, candidates, seed):
        return super().score(obs, candidates, seed).float().unsqueeze(1).expand(-1, 2)


def test_a_plugin_returning_the_wrong_shape_is_one_line_naming_the_attack_and_the_shape(tiny, tmp_path, register_attack):
    two_columns_plugin = register_attack("_two_columns_mia", TwoColumns)
    tiny["attacks"] = [{"name": two_columns_plugin, "members": 50}]
    with pytest.raises(fllab.ConfigError) as err:
        fllab.run(tiny, tmp_path / "bad")
    assert str(err.value) == (f"attacks.0: attack {two_columns_plugin}: score returned a float32 tensor of shape (100, 2); "
                              "expected a real tensor of shape (100,), one score per candidate, higher = more likely a member")
    assert not (tmp_path / "bad").exists()


def test_a_plugins_contract_error_leaves_no_partial_directory(tiny, tmp_path, register_attack):
    tiny["attacks"] = [{"name": register_attack("_two_columns_mia", TwoColumns), "members": 50}]
    with pytest.raises(fllab.ConfigError):
        fllab.run(tiny, tmp_path / "bad")
    assert not (tmp_path / "bad.partial").exists()



def test_candidates_depend_on_the_seed_and_the_position_only():
    import torch

    from fllab.training.drivers.membership import candidate_split
    from fllab.types import TensorData

    pool = TensorData(torch.arange(300.0).unsqueeze(1), torch.zeros(300, dtype=torch.long))
    test = TensorData(1000 + torch.arange(200.0).unsqueeze(1), torch.zeros(200, dtype=torch.long))
    first, population, truth = candidate_split(0, pool, test, 30, "outsider")
    again, _, _ = candidate_split(0, pool, test, 30, "outsider")
    assert torch.equal(first.x, again.x) and int(truth.sum()) == 30
    assert set(population.x[:, 0].tolist()) == set(range(1100, 1200))  # the population is the second half
    assert not set(first.x[~truth, 0].tolist()) & set(range(1100, 1200))  # disjoint from the non-members
    assert not torch.equal(candidate_split(1, pool, test, 30, "outsider")[0].x, first.x)
    assert not torch.equal(candidate_split(0, pool, test, 30, 0)[0].x, first.x)
