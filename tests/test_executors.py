"""Executors: the same scenario and seed give the same metrics on every executor (identical for
process, within 1e-5 relative for vectorized), and what an executor cannot run is refused before
anything runs."""
from __future__ import annotations

import copy
import json

import pytest
import yaml

import fllab
from fllab.errors import ConfigError
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine

from conftest import ROOT, TINY

QUICKSTART = yaml.safe_load((ROOT / "scenarios" / "baselines" / "digits_fedavg.yaml").read_text())
QUICKSTART.update(threads=1)
QUICKSTART["federation"]["rounds"] = 3
POISONING = {**copy.deepcopy(TINY), "attacks": [{"name": "label_flip", "fraction": 0.3}], "aggregator": {"name": "median"}}
POISONING["federation"] = {"num_clients": 10, "rounds": 3, "partition": {"name": "iid"}}
MEMBERSHIP = {**copy.deepcopy(TINY), "attacks": [{"name": "loss", "members": 100}]}
MEMBERSHIP["algorithm"] = {"name": "fedavg", "local_epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.5, "weight_decay": 1e-4}
SCENARIOS = {"quickstart": QUICKSTART, "poisoning": POISONING, "membership": MEMBERSHIP}


def run(data: dict, executor: dict):
    data = {**copy.deepcopy(data), "executor": executor}
    return Engine(resolve(validate_schema(data))).run()


@pytest.fixture(scope="module")
def serial():
    """The reference runs, on one torch thread like each worker below (the autouse one-thread
    fixture is per test; a module fixture runs before it)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: run(data, {"name": "serial"}) for name, data in SCENARIOS.items()}
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_vectorized_follows_the_serial_executor(serial, name):
    """Stacked training sums in another order than autograd on one model: equal up to rounding."""
    ours = run(SCENARIOS[name], {"name": "vectorized"})
    ref = serial[name]
    assert ours.metrics.keys() == ref.metrics.keys()
    for key, value in ref.metrics.items():
        assert ours.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key
    for a, b in zip(ours.rounds, ref.rounds):
        assert a["clients"] == b["clients"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert (ours.final_params - ref.final_params).abs().max() <= 1e-5 * ref.final_params.abs().max()


def test_process_executor_gives_identical_metrics(serial):
    """Two worker processes, one torch thread each: bit-identical to serial, every scenario."""
    for name, data in SCENARIOS.items():
        ours = run(data, {"name": "process", "workers": 2, "threads": 1})
        assert ours.metrics == serial[name].metrics, name
        assert [r["train_loss"] for r in ours.rounds] == [r["train_loss"] for r in serial[name].rounds]


@pytest.mark.ray
def test_ray_executor_gives_identical_metrics(serial):
    """A local Ray with two one-thread actors: bit-identical to serial; no Ray left running."""
    ray = pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    ours = run(QUICKSTART, {"name": "ray", "actors": 2})
    assert ours.metrics == serial["quickstart"].metrics
    assert not ray.is_initialized()


def test_ray_executor_without_ray_is_a_config_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # what an environment without the extra sees
    with pytest.raises(ConfigError, match=r"executor: executor ray needs Ray: pip install 'fllab\[ray\]'"):
        Engine(resolve(validate_schema({**copy.deepcopy(TINY), "executor": {"name": "ray"}}))).prepare()


def test_ray_address_that_does_not_answer_is_refused_before_anything_runs(tmp_path):
    pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = {**copy.deepcopy(TINY), "executor": {"name": "ray", "address": f"ray://127.0.0.1:{port}"}}
    with pytest.raises(ConfigError, match=f"executor.address: no Ray cluster answers at ray://127.0.0.1:{port}"):
        fllab.run(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"algorithm": {"name": "fedsgd"}}, "executor: executor vectorized batches fedavg clients only; algorithm fedsgd"),
        ({"defenses": [{"name": "dp_sgd", "clipping": "per_layer"}]}, "executor: executor vectorized runs dp_sgd with clipping flat only"),
    ],
)
def test_vectorized_refuses_what_it_cannot_batch_before_anything_runs(tmp_path, change, message):
    data = {**copy.deepcopy(TINY), **change, "executor": {"name": "vectorized"}}
    with pytest.raises(ConfigError, match=message):
        fllab.run(data, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_process_workers_must_be_positive_and_fit_the_cores():
    with pytest.raises(ConfigError, match="executor.workers"):
        resolve(validate_schema({**copy.deepcopy(TINY), "executor": {"name": "process", "workers": 0}}))
    with pytest.raises(ConfigError, match="exceeds the .* CPU cores"):
        resolve(validate_schema({**copy.deepcopy(TINY), "executor": {"name": "process", "workers": 64, "threads": 64}}))


@pytest.mark.parametrize("algorithm, used", [({"name": "fedavg"}, "vectorized"), ({"name": "fedsgd"}, "serial")])
def test_auto_picks_vectorized_for_mlps_and_env_json_records_it(tmp_path, algorithm, used):
    data = {**copy.deepcopy(TINY), "algorithm": algorithm, "executor": {"name": "auto"}}
    run_dir, _ = fllab.run(data, tmp_path / "run")
    assert json.loads((run_dir / "env.json").read_text())["executor"] == used
