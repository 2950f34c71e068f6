"""Flower's deployment mode on localhost: the test starts a SuperLink and two SuperNodes (free
ports, a private FLWR_HOME), submits tests/flower_apps/ig_app with ``flwr run`` for 3 rounds of
FedSGD at batch 1 (fllab's DP-FedAvg on the server, fllab's clipping mod on the clients), and
attacks the captured traffic with Inverting Gradients.  Every process it started -- and their
descendants (SuperExec, ServerApp, ClientApp processes) -- is stopped by PID, on failure too.

About 100 s on the shared 2-core machine (process start-up and Flower's polling), hence ``slow``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "flower_apps" / "ig_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Processes the test starts; :meth:`stop_all` ends them and every descendant, by PID."""

    def __init__(self, logs: Path, env: dict):
        self.logs, self.env, self.started = logs, env, []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        log.close()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        family = []
        for proc in self.started:
            try:
                family += [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for pid in reversed(family):  # children first, then the processes we started
            try:
                psutil.Process(pid).terminate()
            except psutil.NoSuchProcess:
                pass
        for pid in family:
            try:
                psutil.Process(pid).wait(timeout=15)
            except psutil.TimeoutExpired:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        for proc in self.started:
            proc.wait(timeout=5)

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_superlink_two_supernodes_capture_and_inverting_gradients(tmp_path):
    if shutil.which("flower-superlink") is None or shutil.which("flower-supernode") is None:
        pytest.skip("flwr's SuperLink/SuperNode executables are not on PATH")
    from fllab.interop.flower import attack_capture, read_capture
    from fllab.registry import DATASETS, load_plugins

    home = tmp_path / "flwr_home"
    home.mkdir()
    link = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    bindir = Path(sys.executable).parent
    procs = Processes(tmp_path, env)
    capture = tmp_path / "traffic.npz"
    try:
        procs.start("superlink", [str(bindir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                                  "--port", str(link)])
        wait_for_port(link, 60)
        for i in range(2):
            procs.start(f"supernode{i}", [str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                          "--port", str(free_port()), "--health-server-address", f"127.0.0.1:{free_port()}",
                                          "--node-config", f"partition-id={i} num-partitions=2"])
        run = subprocess.run([str(bindir / "flwr"), "run", str(APP), "test", "--stream", "--run-config",
                              f'capture="{capture}" num-server-rounds=3'],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0 and capture.exists(), run.stdout[-3000:] + run.stderr[-2000:] + procs.tail("superlink")
    finally:
        procs.stop_all()
    assert all(not psutil.pid_exists(p.pid) or psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE for p in procs.started)

    cap = read_capture(capture)
    assert [r.round for r in cap.rounds] == [0, 1, 2] and all(len(r.client_ids) == 2 for r in cap.rounds)
    assert "privacy.epsilon" not in cap.rounds[0].metrics[0]  # the server's DP figures are not the clients'
    first = cap.rounds[0]
    node = first.client_ids[[m["partition-id"] for m in first.metrics].index(0)]
    load_plugins()
    image = DATASETS.build("cifar10_samples").load().train.subset(torch.tensor([0]))
    # what node 0 sent in round 0 is fllab's own upload of that image, clipped by the dp_fedavg mod
    sys.path.insert(0, str(APP))
    from fllab_ig_app.apps import ALGORITHM, task
    from fllab.defenses.dp import clip_segments
    from fllab.registry import ALGORITHMS
    from fllab.seeding import derive_seed
    from fllab.training.client import ClientRunner
    from fllab.types import ClientTask

    _, handle = task(8)
    torch.manual_seed(0)
    weights = torch.cat([p.detach().reshape(-1) for p in handle.build().parameters()])
    own = ClientRunner(handle, ALGORITHMS.build(ALGORITHM))(ClientTask(0, 0, weights, image, derive_seed(0, "client", 0, 0))).update
    assert torch.equal(first.sent, weights)
    assert torch.equal(first.updates[first.client_ids.index(node)], clip_segments(own, [own.numel()], [1.0]))
    out = attack_capture(cap, {"name": "inverting_gradients", "iterations": 60, "lr": 0.1, "lpips": False}, clients=[node],
                         truth={node: image})
    assert out.metrics["inversion.psnr"] > out.metrics["inversion.psnr_random_guess"] + 3.0
    assert out.metrics["inversion.label_accuracy"] == 1.0
