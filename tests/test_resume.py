"""Checkpoints and ``--resume``: an interrupted run, resumed, ends with the summary metrics and
round records of the uninterrupted run (FedAvg, DP-SGD, poisoning under a detector, membership
and inversion); changed configs and corrupt checkpoints are refused in one line."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import fllab
import fllab.runner
from fllab.cli import main
from fllab.errors import ConfigError
from fllab.hooks import check_hooks
from fllab.rundir import CHECKPOINT, CHECKPOINT_STATE, partial_of
from fllab.state import StateError, decode, encode

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, stop: int, *, twin: bool = False) -> None:
    """Raise from the runner's on_round callback once round ``stop``'s record is written (of the
    no-attack twin with ``twin``)."""
    original = fllab.runner.append_jsonl

    def append(path, record):
        original(path, record)
        if (Path(path).parent.name == "baseline.partial") == twin and record["round"] == stop:
            raise Interrupted(f"stopped after round {stop}")

    monkeypatch.setattr(fllab.runner, "append_jsonl", append)


def metrics(summary: dict) -> dict:
    return {k: v for k, v in summary["metrics"].items() if k != "run.seconds"}


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def check_resume_matches(monkeypatch, tmp_path: Path, data: dict, stop: int, *, twin: bool = False) -> dict:
    """Run ``data`` whole; run it again interrupted after round ``stop`` (of its twin with
    ``twin``), resume it; compare."""
    _, whole = fllab.run(data, tmp_path / "whole")
    interrupt_after(monkeypatch, stop, twin=twin)
    with pytest.raises(Interrupted):
        fllab.run(data, tmp_path / "cut")
    partial = partial_of(tmp_path / "cut")
    state = json.loads(((partial / "baseline.partial" if twin else partial) / CHECKPOINT / CHECKPOINT_STATE).read_text())
    every = data["checkpoint"]["every"]
    assert state["round"] == (stop // every) * every  # the last checkpoint before the interruption
    monkeypatch.undo()
    _, resumed = fllab.run(data, tmp_path / "cut", resume=True)
    assert metrics(resumed) == metrics(whole)
    assert records(tmp_path / "cut") == records(tmp_path / "whole")
    if twin:
        assert records(tmp_path / "cut" / "baseline") == records(tmp_path / "whole" / "baseline")
    assert not (tmp_path / "cut" / CHECKPOINT).exists()  # a finished run carries no checkpoint
    return metrics(whole)


def scenario(**changes) -> dict:
    data = copy.deepcopy(TINY)
    data["federation"]["rounds"] = 5
    data["checkpoint"] = {"every": 2}
    for key, value in changes.items():
        data[key] = value
    return data


def test_fedavg_quickstart_resumes_to_the_same_metrics(monkeypatch, tmp_path):
    data = yaml.safe_load((ROOT / "scenarios" / "baselines" / "digits_fedavg.yaml").read_text())
    data["federation"]["rounds"], data["threads"], data["checkpoint"] = 6, 1, {"every": 2}
    got = check_resume_matches(monkeypatch, tmp_path, data, stop=2)
    assert got["utility.accuracy"] > 0.5


@pytest.mark.parametrize("defense", [{"name": "dp_sgd", "noise_multiplier": 1.0}, {"name": "dp_fedavg", "noise_multiplier": 1.0, "clip": 1.0}],
                         ids=["dp_sgd", "dp_fedavg"])
def test_dp_resumes_to_the_same_epsilon(monkeypatch, tmp_path, defense):
    data = scenario(defenses=[defense], federation={"num_clients": 4, "clients_per_round": 2, "rounds": 5})
    got = check_resume_matches(monkeypatch, tmp_path, data, stop=3)
    assert 0 < got["privacy.epsilon"] < float("inf")


@pytest.mark.parametrize("twin", [False, True], ids=["run", "its_twin"])
def test_poisoning_with_a_detector_resumes(monkeypatch, tmp_path, twin):
    """Interrupted in the run itself, or while its no-attack twin trains."""
    data = scenario(
        federation={"num_clients": 20, "rounds": 6},
        algorithm={"name": "fedsgd", "lr": 0.5, "batch_size": 32},
        aggregator={"name": "mudhog", "warmup": 2},
        attacks=[{"name": "sign_flip", "fraction": 0.3}],
        evaluation={"baseline": True},
    )
    got = check_resume_matches(monkeypatch, tmp_path, data, stop=4, twin=twin)
    assert got["poisoning.detection_precision"] > 0.5 and "poisoning.accuracy_drop" in got


def test_membership_and_inversion_resume(monkeypatch, tmp_path):
    data = scenario(
        federation={"num_clients": 6, "rounds": 5},
        algorithm={"name": "fedsgd", "lr": 0.5, "batch_size": 4},
        attacks=[
            {"name": "update_cosine", "position": "server", "target_clients": [0, 1], "rounds": [0, 1, 2, 3, 4], "members": 4},
            {"name": "dlg", "round": 1, "targets": 1, "iterations": 5, "lpips": False},
        ],
    )
    got = check_resume_matches(monkeypatch, tmp_path, data, stop=3)  # both attacks observed before the checkpoint
    assert "membership.auc" in got and "inversion.psnr" in got


def test_stateful_aggregators_resume(monkeypatch, tmp_path):
    """Bucketing's draw counter and centered clipping's center (the previous aggregate) carry over."""
    data = scenario(aggregator={"name": "bucketing", "s": 2, "then": {"name": "centered_clipping", "tau": 0.01}},
                    attacks=[{"name": "sign_flip", "fraction": 0.25}])
    check_resume_matches(monkeypatch, tmp_path, data, stop=3)


@pytest.mark.parametrize("algorithm", [
    {"name": "frl", "local_epochs": 1, "batch_size": 16, "lr": 0.2},
    {"name": "hyperfl", "embed_dim": 8, "hidden_dim": 8, "local_epochs": 1},  # private embedding + head per client
], ids=["frl", "hyperfl"])
def test_algorithm_bundles_resume(monkeypatch, tmp_path, algorithm):
    data = scenario(algorithm=algorithm, federation={"num_clients": 4, "clients_per_round": 3, "rounds": 5})
    check_resume_matches(monkeypatch, tmp_path, data, stop=3)


def test_diff2_resumes_mid_period(monkeypatch, tmp_path):
    """DIFF2's server keeps the running estimate v_r between restarts (state_dict), its clients
    keep x_{r-2} (client state): a resume inside a period must continue both."""
    algorithm = {"name": "diff2", "period": 3, "clip": 1.0, "clip_diff": 0.3, "lr": 0.5, "noise_multiplier": 1.0}
    data = scenario(algorithm=algorithm, federation={"num_clients": 3, "rounds": 6})
    got = check_resume_matches(monkeypatch, tmp_path, data, stop=3)
    assert got["privacy.epsilon"] > 0


# ------------------------------------------------------------------------------ refusals (exit 2)
@pytest.fixture
def interrupted(monkeypatch, tmp_path, write_yaml):
    """An interrupted run of a scenario file, with a checkpoint after round 2."""
    data = scenario()
    path = write_yaml(data)
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        fllab.run(path, tmp_path / "run")
    monkeypatch.undo()
    return path, tmp_path / "run"


def one_line_refusal(args, needle: str) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output


def test_resume_with_a_changed_config_is_refused(interrupted):
    path, out = interrupted
    one_line_refusal(["run", str(path), "--out", str(out), "--resume", "--set", "algorithm.lr=0.2"], "differs at algorithm.lr")
    # changing only the checkpoint interval is allowed
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--resume", "--set", "checkpoint.every=1", "-q"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("damage", ["tensors", "json", "pickle"])
def test_corrupt_checkpoint_is_refused(interrupted, damage):
    path, out = interrupted
    folder = partial_of(out) / CHECKPOINT
    state = json.loads((folder / CHECKPOINT_STATE).read_text())
    if damage == "tensors":
        blob = bytearray((folder / state["tensors"]).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (folder / state["tensors"]).write_bytes(bytes(blob))
    elif damage == "json":
        (folder / CHECKPOINT_STATE).write_text("{not json")
    else:  # a pickled object in place of the tensors, with a matching digest: weights_only refuses it
        import hashlib
        import io

        buf = io.BytesIO()
        torch.save({"evil": Interrupted("x")}, buf)
        (folder / state["tensors"]).write_bytes(buf.getvalue())
        state["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (folder / CHECKPOINT_STATE).write_text(json.dumps(state))
    one_line_refusal(["run", str(path), "--out", str(out), "--resume"], "corrupt checkpoint")


def test_nothing_to_resume_is_refused(tmp_path, write_yaml):
    path = write_yaml(scenario())
    one_line_refusal(["run", str(path), "--out", str(tmp_path / "none"), "--resume"], "nothing to resume")
    fllab.run(path, tmp_path / "done")
    one_line_refusal(["run", str(path), "--out", str(tmp_path / "done"), "--resume"], "finished run")


# ------------------------------------------------------------------------------ a real SIGKILL
@pytest.mark.slow  # ~45 s on the shared 2-core machine: two CLI start-ups and 300 rounds
def test_sigkilled_cli_run_resumes_to_the_same_metrics(tmp_path, write_yaml):
    data = scenario()
    data["federation"]["rounds"] = 150
    data["checkpoint"] = {"every": 3}
    path = write_yaml(data)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fllab.cli", "run", str(path), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = partial_of(out) / CHECKPOINT / CHECKPOINT_STATE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["round"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.exists()
    res = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    resumed = json.loads(res.stdout)
    _, whole = fllab.run(path, tmp_path / "whole")
    assert metrics(resumed) == metrics(whole)
    assert records(out) == records(tmp_path / "whole")


# ------------------------------------------------------------------------------ the protocol
def test_state_codec_round_trips_safe_data():
    from fllab.defenses.dp import DPSGDState

    state = {
        "w": torch.arange(6.0).reshape(2, 3), 3: (1.5, float("nan"), float("-inf")), "set": {1, 2}, ("a", 1): [None, True, "s"],
        "bytes": b"\x00png", "np": __import__("numpy").arange(3), "client": DPSGDState(((1.0, 0.5, 3),), inner=torch.ones(2)),
    }
    tensors: list = []
    blob = json.loads(json.dumps(encode(state, tensors)))  # JSON all the way
    back = decode(blob, tensors)
    assert torch.equal(back["w"], state["w"]) and back["set"] == {1, 2} and back[("a", 1)] == [None, True, "s"]
    assert back[3][0] == 1.5 and back[3][1] != back[3][1] and back[3][2] == float("-inf")
    assert back["bytes"] == b"\x00png" and list(back["np"]) == [0, 1, 2]
    assert back["client"].history == ((1.0, 0.5, 3),) and torch.equal(back["client"].inner, torch.ones(2))
    with pytest.raises(StateError, match="cannot checkpoint a object"):
        encode({"x": object()}, [])
    with pytest.raises(StateError, match="only fllab dataclasses"):
        decode({"__dataclass__": "os:system", "fields": {}}, [])


def test_state_hooks_come_in_pairs():
    class Half:
        def __call__(self, updates, weights, client_ids=None): ...

        def check(self, n): ...

        def state_dict(self):
            return {}

    with pytest.raises(ValueError, match="both state_dict and load_state_dict"):
        check_hooks("aggregator", "half", Half)
    assert "state_dict" in check_hooks("aggregator", "mudhog", fllab.registry.AGGREGATORS.get("mudhog"))


def test_checkpoint_every_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.every"):
        fllab.run({**scenario(), "checkpoint": {"every": 0}}, tmp_path / "x")
