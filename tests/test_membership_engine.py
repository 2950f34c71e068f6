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
