"""Sweeps on Ray (``fllab sweep --executor ray``): a local Ray (2 CPUs) gives the results.csv of
``--jobs 1``, resumes an interrupted cell from its checkpoint, leaves no process behind; bad
input (Ray missing, an address that does not answer, ``--jobs 0``) is one line, exit 2."""
from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fllab.cli import main
from fllab.ray_sweep import _children as children
from fllab.runner import run_sweep

from conftest import TINY
from test_sweep_resume import cell_dirs, check_resumed, interrupt_sweep, rows, sweep_data


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.ray
def test_ray_sweep_matches_jobs_1_and_resumes_an_interrupted_cell(monkeypatch, tmp_path):
    """One local Ray for: the twins of poisoning cells, a cell interrupted after its checkpoint
    (continued, not restarted), the finished cell untouched, results.csv equal to --jobs 1."""
    ray = pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    data = sweep_data()
    data["federation"]["num_clients"] = 5
    data["attacks"] = [{"name": "label_flip", "fraction": 0.2}]
    data["evaluation"] = {"baseline": True}
    reference = run_sweep(data, tmp_path / "serial")[0]
    out = tmp_path / "ray"
    target = interrupt_sweep(monkeypatch, data, out)
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in cell_dirs(out) if (d / "summary.json").is_file()}
    assert len(before) == 1
    alive = children()
    data["sweep"]["executor"] = "ray"  # where cells run is no part of the sweep's identity
    _, ran, total = run_sweep(data, out, jobs=2)
    assert (ran, total) == (1, 2)
    check_resumed(reference, out, target, before)
    assert not ray.is_initialized()
    assert not children() - alive, "Ray left processes (or zombies) behind"


def write(tmp_path, data) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def one_line(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_ray_address_that_does_not_answer_is_one_line(tmp_path):
    pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = copy.deepcopy(TINY)
    data["sweep"] = {"grid": {"algorithm.lr": [0.05]}}
    start = time.time()
    one_line(invoke("sweep", write(tmp_path, data), "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "sw")),
             f"--ray-address: no Ray cluster answers at 127.0.0.1:{port}")
    data.pop("sweep")
    one_line(invoke("run", write(tmp_path, data), "--ray-address", f"ray://127.0.0.1:{port}", "--out", str(tmp_path / "run")),
             f"--ray-address: no Ray cluster answers at ray://127.0.0.1:{port}")
    assert time.time() - start < 30
    assert not (tmp_path / "sw").exists() and not (tmp_path / "run").exists()


def test_ray_not_installed_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    data = copy.deepcopy(TINY)
    data["sweep"] = {"grid": {"algorithm.lr": [0.05]}, "executor": "ray"}
    one_line(invoke("sweep", write(tmp_path, data), "--out", str(tmp_path / "sw")), "Ray is not installed: pip install 'fllab[ray]'")
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("args, needle", [
    (["--jobs", "0"], "--jobs: --jobs must be a whole number of at least 1"),
    (["--executor", "threads"], "--executor: --executor must be processes or ray"),
    (["--executor", "processes", "--ray-address", "auto"], "--ray-address: --ray-address runs the cells on Ray"),
])
def test_bad_sweep_options_are_one_line(tmp_path, args, needle):
    data = copy.deepcopy(TINY)
    data["sweep"] = {"grid": {"algorithm.lr": [0.05]}}
    one_line(invoke("sweep", write(tmp_path, data), *args, "--out", str(tmp_path / "sw")), needle)
    assert not (tmp_path / "sw").exists()


def test_run_ray_address_selects_the_ray_executor():
    from fllab.cli import on_ray_cluster

    assert on_ray_cluster({"executor": "serial"}, "auto")["executor"] == {"name": "ray", "address": "auto"}
    kept = on_ray_cluster({"executor": {"name": "ray", "actors": 2}}, "h:1")["executor"]
    assert kept == {"name": "ray", "actors": 2, "address": "h:1"}


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_stops_the_local_ray_and_leaves_no_process(tmp_path):
    """Ctrl-C (SIGINT to the process group) during a Ray sweep: exit 130, every process the sweep
    started (Ray's included) gone, the interrupted cell's checkpoint kept for the re-run."""
    pytest.importorskip("ray", reason="the ray extra (fllab[ray]) is not installed")
    data = sweep_data()
    data["federation"]["rounds"] = 400
    data["checkpoint"] = {"every": 1}
    data["sweep"]["executor"] = "ray"
    cmd = [sys.executable, "-m", "fllab.cli", "sweep", write(tmp_path, data), "--out", str(tmp_path / "sw")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        seen |= descendants(proc.pid)
        if list((tmp_path / "sw" / "cells").glob("*.partial/checkpoint/state.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    seen |= descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read().strip().splitlines()[-1] == "interrupted"
    deadline = time.time() + 30
    while alive(seen) and time.time() < deadline:
        time.sleep(0.5)
    assert not alive(seen), f"left behind: {alive(seen)}"
    assert list((tmp_path / "sw" / "cells").glob("*.partial/checkpoint/state.json"))
