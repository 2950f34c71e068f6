"""Gradient inversion through the engine: the driver builds the server's observation, the attack
reconstructs, the truth is used only for scoring; secure aggregation pushes the attack back."""
from __future__ import annotations

import json

import pytest
import torch

import fllab
from fllab.data.samples import read_samples
from fllab.metrics.image import psnr

SCENARIO = {
    "name": "ig_engine",
    "seed": 0,
    "threads": 1,
    "task": {"dataset": "cifar10_samples", "model": {"name": "convnet", "width": 16}},
    "federation": {"num_clients": 20, "rounds": 1, "partition": "iid"},
    "algorithm": {"name": "fedsgd", "batch_size": 1, "lr": 0.1},
    "attacks": [{"name": "inverting_gradients", "targets": 2, "iterations": 60, "lpips": False}],
}


def no_information_psnr() -> float:
    """PSNR of the best constant guess (mid-grey) against the 20 images."""
    x, _ = read_samples()
    x = torch.from_numpy(x).float() / 255
    return float(psnr(torch.full_like(x, 0.5), x).mean())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("inv") / "plain"
    return out, fllab.run(SCENARIO, out)[1]["metrics"]


def test_inverting_gradients_beats_the_no_information_baseline(plain):
    out, metrics = plain
    assert metrics["inversion.psnr"] > no_information_psnr() + 1.0
    assert metrics["inversion.label_accuracy"] == 1.0  # iDLG at batch 1
    assert "inversion.lpips" not in metrics  # switched off: absent, not zero
    assert metrics["inversion.psnr_random_guess"] < metrics["inversion.psnr"]
    attacks = json.loads((out / "attacks.json").read_text())
    assert attacks["inverting_gradients"]["family"] == "inversion"
    assert len(attacks["inverting_gradients"]["table"]) == 2
    pngs = list((out / "artefacts" / "inverting_gradients").glob("client*_reconstruction.png"))
    assert len(pngs) == 2
    assert "inverting_gradients" in (out / "report.html").read_text()


def test_secure_aggregation_of_ten_pushes_inversion_back(plain, tmp_path):
    _, metrics = plain
    data = {**SCENARIO, "defenses": [{"name": "secure_aggregation", "group_size": 10}]}
    data["attacks"] = [{**SCENARIO["attacks"][0], "targets": 1}]
    _, summary = fllab.run(data, tmp_path / "secagg")
    assert summary["metrics"]["inversion.psnr"] < metrics["inversion.psnr"] - 1.0
    assert summary["metrics"]["inversion.psnr"] < no_information_psnr() + 1.0


# ------------------------------------------------------------------------------ refusals and limits
def refused(data, match: str) -> str:
    with pytest.raises(fllab.ConfigError, match=match) as err:
        fllab.validate(data)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_more_targets_than_a_round_can_hold_are_refused_naming_the_limit():
    data = {**SCENARIO, "federation": {**SCENARIO["federation"], "clients_per_round": 4}}
    data["attacks"] = [{**SCENARIO["attacks"][0], "targets": 500}]
    line = refused(data, r"attacks.0.targets: 500 targets, but at most 4 honest uploads")
    assert "set targets to at most 4" in line
    data["attacks"] = [{**SCENARIO["attacks"][0], "round": 3}]
    refused(data, r"attacks.0.round: round 3 is never reached: the run has 1 rounds")


def test_a_round_with_fewer_honest_uploads_than_targets_warns_in_one_line(tmp_path):
    data = {**SCENARIO, "defenses": [{"name": "secure_aggregation", "group_size": 10}]}
    data["attacks"] = [{**SCENARIO["attacks"][0], "targets": 3, "iterations": 2}]
    with pytest.warns(RuntimeWarning, match=r"attacks.0.targets = 3, but round 0 has 2 honest uploads; attacking 2"):
        run_dir, _ = fllab.run(data, tmp_path / "few")
    assert len(json.loads((run_dir / "attacks.json").read_text())["inverting_gradients"]["table"]) == 2


def test_targets_of_different_sizes_are_reconstructed_and_scored_each_at_its_size(tmp_path):
    """Six clients of the 20 images hold 3 or 4 each: FedAvg uploads of unequal batches."""
    data = {**SCENARIO, "federation": {"num_clients": 6, "rounds": 1, "partition": "iid"},
            "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 4, "lr": 0.1}}
    data["attacks"] = [{**SCENARIO["attacks"][0], "targets": 6, "iterations": 2}]
    run_dir, summary = fllab.run(data, tmp_path / "sizes")
    rows = json.loads((run_dir / "attacks.json").read_text())["inverting_gradients"]["table"]
    assert sorted({r["images"] for r in rows}) == [3, 4] and sum(r["images"] for r in rows) == 20
    assert "inversion.psnr" in summary["metrics"]


DP_FEDAVG = {**SCENARIO, "algorithm": {"name": "fedavg", "local_steps": 1, "batch_size": 1, "lr": 0.1},
             "defenses": [{"name": "dp_sgd", "noise_multiplier": 0.01, "max_grad_norm": 1.0, "accountant": "rdp"}]}


def test_dp_sgd_fedavg_batch_1_inversion_runs_where_the_batch_is_the_clients_record(tmp_path):
    """One image per client: Poisson sampling at rate 1 puts it in every step, so the batch the
    server's upload holds is known and the attack is scored against it."""
    run_dir, summary = fllab.run(DP_FEDAVG, tmp_path / "dp")
    m = summary["metrics"]
    assert m["privacy.epsilon"] > 0 and m["inversion.label_accuracy"] == 1.0
    assert m["inversion.psnr"] > m["inversion.psnr_random_guess"] + 1.0


def test_dp_sgd_with_poisson_batches_of_a_larger_client_is_refused_at_validate():
    data = {**DP_FEDAVG, "federation": {"num_clients": 5, "rounds": 1, "partition": "iid"}}
    refused(data, r"attacks.0: inverting_gradients under dp_sgd: Poisson sampling at rate batch_size/records \(1/4\)")


# ------------------------------------------------------------------------------ plugin contract
class WrongShape:
    """A plugin inversion attack that answers with flattened images (breaks the contract)."""

    family = "inversion"
    threat_model = "curious server"
    needs = frozenset({"gradient", "delta"})
    from fllab.attacks.base import InversionParams as Params

    def __init__(self, params):
        self.params = params

    def reconstruct(self, obs, num_images, labels, seed):
        from fllab.types import TensorData

        return TensorData(torch.zeros(num_images, 3 * 32 * 32), torch.zeros(num_images, dtype=torch.long))


def test_a_plugin_returning_the_wrong_shape_is_one_line_naming_the_attack_and_the_shape(register_attack, tmp_path):
    wrong_shape_plugin = register_attack("_wrong_shape_inversion", WrongShape)
    data = {**SCENARIO, "attacks": [{"name": wrong_shape_plugin, "lpips": False}]}
    with pytest.raises(fllab.ConfigError) as err:
        fllab.run(data, tmp_path / "bad")
    line = str(err.value)
    assert "\n" not in line
    assert line == (f"attacks.0: attack {wrong_shape_plugin}: reconstruct returned x a float32 tensor of shape (1, 3072) and y a "
                    "int64 tensor of shape (1,); expected a list of 1 TensorData(x, y), x of shape (1, 3, 32, 32) and y of shape (1,)")
