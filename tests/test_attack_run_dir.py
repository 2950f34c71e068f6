"""``fllab attack RUN_DIR``: an outsider membership attack on a finished run's final model
(fllab.attacks.offline), rebuilt from the run's config and seed; refusals are one line."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fllab
from fllab.attacks.offline import MODEL_FILE, attack_path, attack_run_dir
from fllab.errors import ConfigError

# Two clients of 90 digits, 10 rounds of 10 local epochs: an MLP that memorises its records.
SCENARIO = {
    "name": "mia_offline", "seed": 0, "threads": 1,
    "task": {"dataset": {"name": "digits", "test_fraction": 0.9}, "model": {"name": "mlp", "hidden": [256]}},
    "federation": {"num_clients": 2, "rounds": 10, "partition": "iid"},
    "algorithm": {"name": "fedavg", "local_epochs": 10, "batch_size": 16, "lr": 0.1},
    "evaluation": {"every": 10},
    "attacks": [{"name": "loss", "members": 100}],
}
RMIA = {"members": 100, "num_models": 4, "epochs": 20, "lr": 0.1, "batch_size": 16}


def scores(path: Path) -> list[tuple[float, ...]]:
    """The rows of a scores.csv (index, is_member, score) as numbers."""
    return [tuple(float(v) for v in line.split(",")) for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir, _ = fllab.run(SCENARIO, tmp_path_factory.mktemp("offline") / "run")
    return run_dir


def test_offline_loss_attack_reproduces_the_runs_own_and_beats_chance(finished, tmp_path):
    out = tmp_path / "loss"
    result = attack_run_dir(finished, "loss", {"members": 100}, out)
    in_run = json.loads((finished / "attacks.json").read_text())["loss"]["metrics"]
    assert result["metrics"] == pytest.approx(in_run, abs=1e-12)  # same model, candidates and seed
    assert result["metrics"]["membership.auc"] >= 0.6
    assert json.loads((out / "attack.json").read_text())["metrics"] == pytest.approx(in_run, abs=1e-12)
    np.testing.assert_allclose(scores(out / "scores.csv"), scores(finished / "artefacts" / "loss" / "scores.csv"), rtol=1e-5)


def test_a_reference_model_attack_added_after_the_run_beats_chance_on_the_same_records(finished, tmp_path):
    result = attack_run_dir(finished, "rmia", RMIA, tmp_path / "rmia")
    assert result["metrics"]["membership.auc"] >= 0.58
    truth = [line.split(",")[1] for line in (tmp_path / "rmia" / "scores.csv").read_text().splitlines()[1:]]
    run_truth = [line.split(",")[1] for line in (finished / "artefacts" / "loss" / "scores.csv").read_text().splitlines()[1:]]
    assert truth == run_truth


def test_dispatcher_takes_a_directory_as_a_run_and_set_pairs_as_yaml(finished, tmp_path):
    result = attack_path(finished, "loss", ["members=100"], None, tmp_path / "out")
    assert result["params"]["members"] == 100 and result["family"] == "membership"


@pytest.mark.parametrize("name, why", [
    ("inverting_gradients", "needs a client's upload"),
    ("update_cosine", "server-position membership attack"),
    ("sign_flip", "malicious clients taking part"),
    ("canary_audit", "canaries planted before training"),
])
def test_attacks_that_need_more_than_the_final_model_are_refused(finished, tmp_path, name, why):
    with pytest.raises(ConfigError, match=why) as err:
        attack_run_dir(finished, name, {}, tmp_path / "out")
    assert "\n" not in str(err.value) and str(err.value).startswith("--attack:")
    assert not (tmp_path / "out").exists()


def test_bad_run_directories_are_one_line_each(finished, tmp_path):
    def refused(path: Path, match: str, **kw) -> None:
        with pytest.raises(ConfigError, match=match) as err:
            attack_run_dir(path, kw.pop("attack", "loss"), kw.pop("params", {}), tmp_path / "out", **kw)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()

    refused(tmp_path / "missing", "is not a directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a run directory")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: s\n")
    refused(sweep, "is a sweep directory")
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / MODEL_FILE).unlink()
    refused(copy, "has no model.pt")
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, copy / MODEL_FILE)
    refused(copy, "does not match the SHA-256")  # a file the run did not write
    summary = json.loads((copy / "summary.json").read_text())
    summary["model"]["sha256"] = hashlib.sha256((copy / MODEL_FILE).read_bytes()).hexdigest()
    (copy / "summary.json").write_text(json.dumps(summary))
    refused(copy, "does not fit the run's model")
    (copy / MODEL_FILE).write_bytes(b"not a torch file")
    summary["model"]["sha256"] = hashlib.sha256(b"not a torch file").hexdigest()
    (copy / "summary.json").write_text(json.dumps(summary))
    refused(copy, "not a saved state_dict")
    shutil.copy(finished / MODEL_FILE, copy / MODEL_FILE)
    refused(copy, "did you mean", attack="los")
    refused(copy, "members", params={"members": 0})
    (copy / "summary.json").unlink()
    refused(copy, "not a finished run")


def test_out_is_never_half_written_and_an_existing_one_is_kept(finished, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="already exists"):
        attack_run_dir(finished, "loss", {"members": 100}, out)
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="--data is for captures"):
        attack_path(finished, "loss", [], tmp_path / "d.npz", tmp_path / "x")


def test_cli_attacks_a_run_directory_and_refuses_with_exit_2(finished, tmp_path):
    cmd = [sys.executable, "-m", "fllab.cli", "attack", str(finished), "--attack", "loss", "--set", "members=100", "--out"]
    ok = subprocess.run([*cmd, str(tmp_path / "ok"), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["metrics"]["membership.auc"] >= 0.6
    bad = subprocess.run([*cmd[:-5], "--attack", "inverting_gradients", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if not line.startswith("warning:")]  # e.g. a stale plugin entry point
    assert len(errors) == 1 and errors[0].startswith("error: --attack: ") and "needs a client's upload" in errors[0]


def test_the_plugin_guides_example_attack_runs_on_a_finished_run(finished, tmp_path, register_attack):
    """docs/plugins.md's outsider example, executed as written, attacks the run's model.pt."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    example = guide.rsplit("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(example, "docs/plugins.md", "exec"), namespace)  # registers max_confidence
    register_attack("max_confidence", namespace["MaxConfidence"])  # the same class again: removed after the test
    result = attack_run_dir(finished, "max_confidence", {"members": 100}, tmp_path / "mc")
    assert result["metrics"]["membership.auc"] >= 0.55
