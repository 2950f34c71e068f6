"""Executors: the same scenario and seed give the same metrics on every executor (identical for
process, within 1e-5 relative for vectorized), and what an executor cannot run is refused before
anything runs."""
from __future__ import annotations

import copy
import json
import socket
import sys
import time

import pytest
import torch
import yaml
from click.testing import CliRunner

import fllab
from fllab.cli import main
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


@pytest.mark.parametrize("start_method", ["auto", "forkserver"])
def test_process_executor_gives_identical_metrics(serial, start_method):
    """Two worker processes, one torch thread each, forked (auto) or from the preloaded
    forkserver: bit-identical to serial, every scenario."""
    for name, data in SCENARIOS.items():
        ours = run(data, {"name": "process", "workers": 2, "threads": 1, "start_method": start_method})
        assert ours.metrics == serial[name].metrics, name
        assert [r["train_loss"] for r in ours.rounds] == [r["train_loss"] for r in serial[name].rounds]


FORK_AFTER_OPENMP = """
import copy, sys, torch
sys.path.insert(0, "tests")
from conftest import TINY
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine
torch.set_num_threads(2)
a = torch.randn(600, 600)
(a @ a).exp().sum()  # an OpenMP team runs in this process before the workers fork
data = {**copy.deepcopy(TINY), "threads": 2, "executor": {"name": "process", "workers": 2, "threads": 1}}
print(Engine(resolve(validate_schema(data))).run().metrics["utility.accuracy"])
"""


def test_process_workers_fork_safely_after_the_parent_ran_openmp():
    """A forked child entering OpenMP on several threads after its parent ran a team deadlocks
    (libgomp); auto forks only one-thread workers, which set their thread count first."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", FORK_AFTER_OPENMP], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 0.0 < float(res.stdout.strip().splitlines()[-1]) <= 1.0


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


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_that_does_not_answer_is_refused_before_anything_runs(tmp_path):
    pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    port = free_port()
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


def cli_run(tmp_path, write_yaml, *overrides: str, change: dict | None = None):
    """``fllab run`` on the tiny scenario (with ``change``) and ``--set`` overrides: (result,
    seconds, out dir)."""
    out = tmp_path / "out"
    args = ["run", str(write_yaml({**copy.deepcopy(TINY), **(change or {})})), "--out", str(out), "-q"]
    for override in overrides:
        args += ["--set", override]
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res, time.perf_counter() - t0, out


def assert_one_line_exit_2(res, out, expected: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize(
    "change, overrides, expected",
    [
        ({"algorithm": {"name": "fedsgd"}}, ["executor.name=vectorized"], "executor: executor vectorized batches fedavg clients only; algorithm fedsgd needs serial or process"),
        ({}, ["executor.name=process", "executor.workers=0"], "executor.workers: Input should be greater than 0"),
        ({}, ["executor.name=process", "executor.start_method=thread"], "executor.start_method: Input should be 'auto', 'fork', 'forkserver' or 'spawn'"),
        ({}, ["executor.name=process", "executor.workers=1", "executor.threads=2", "executor.start_method=fork"], "executor: start_method fork needs threads 1"),
    ],
    ids=["cannot-run", "workers-0", "start-method", "fork-threads"],
)
def test_bad_executor_input_through_the_cli_is_one_line_and_exit_2(tmp_path, write_yaml, change, overrides, expected):
    res, _, out = cli_run(tmp_path, write_yaml, *overrides, change=change)
    assert_one_line_exit_2(res, out, expected)


def test_ray_not_installed_through_the_cli_is_one_line_and_exit_2(tmp_path, write_yaml, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    res, _, out = cli_run(tmp_path, write_yaml, "executor.name=ray")
    assert_one_line_exit_2(res, out, "executor: executor ray needs Ray: pip install 'fllab[ray]'")


def test_ray_address_that_does_not_answer_through_the_cli_is_one_line_and_exit_2_within_30_s(tmp_path, write_yaml):
    pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    port = free_port()
    res, seconds, out = cli_run(tmp_path, write_yaml, "executor.name=ray", f"executor.address=ray://127.0.0.1:{port}")
    assert_one_line_exit_2(res, out, f"executor.address: no Ray cluster answers at ray://127.0.0.1:{port}")
    assert seconds < 30


# ------------------------------------------------------------------------------ device: cuda
CUDA_EXECUTORS = {
    "serial": {"name": "serial"},
    "process": {"name": "process", "workers": 2, "threads": 1},
    "ray": {"name": "ray", "actors": 2, "num_gpus": 0.5},
    "vectorized": {"name": "vectorized"},
    "auto": {"name": "auto"},
}


@pytest.fixture(scope="module")
def serial_cuda():
    return run({**QUICKSTART, "device": "cuda"}, {"name": "serial"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CUDA_EXECUTORS))
def test_every_executor_runs_on_cuda(serial_cuda, tmp_path, name):
    """``device: cuda`` on every executor: serial/process/ray identical to serial on the GPU,
    vectorized (and auto, which picks it on a GPU) within 1e-5 relative; env.json names it."""
    if name == "ray":
        pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    data = {**copy.deepcopy(QUICKSTART), "device": "cuda", "executor": CUDA_EXECUTORS[name]}
    run_dir, summary = fllab.run(data, tmp_path / "run")
    assert json.loads((run_dir / "env.json").read_text())["executor"] == ("vectorized" if name == "auto" else name)
    ref = serial_cuda.metrics
    for key, value in ref.items():
        if key.startswith("run."):
            continue
        if name in ("serial", "process", "ray"):
            assert summary["metrics"][key] == value, key
        else:
            assert summary["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_vectorized_for_any_model_on_cuda(tmp_path):
    data = {**copy.deepcopy(TINY), "device": "cuda", "executor": {"name": "auto"}}
    data["task"] = {"dataset": {"name": "digits"}, "model": {"name": "convnet", "width": 8}}
    run_dir, _ = fllab.run(data, tmp_path / "run")
    assert json.loads((run_dir / "env.json").read_text())["executor"] == "vectorized"
