"""Flower's own simulation as a throughput baseline for ``bench_simulation.py``: a plain Flower
app written the way Flower's quickstart-pytorch writes one -- a ClientApp that loads its
partition (once per process, from a file) and runs local SGD on a torch model received as an
``ArrayRecord``, Flower's ``FedAvg`` strategy, ``flwr.simulation.run_simulation`` -- on the data
and the local SGD of the benchmark's plain PyTorch loop.  No fllab code runs in it except the
model factory.

The module is importable by Ray's workers (the benchmark's directory is on the ``PYTHONPATH``
Flower gives them), so each worker process keeps the partitions it loaded in :data:`_DATA`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

_DATA: dict[str, Any] = {}  # npz path -> (x, y, offsets), per worker process


def partition(path: str, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    if path not in _DATA:
        with np.load(path) as f:
            _DATA.clear()
            _DATA[path] = (torch.from_numpy(f["x"]), torch.from_numpy(f["y"]), f["offsets"])
    x, y, off = _DATA[path]
    return x[off[pid] : off[pid + 1]], y[off[pid] : off[pid + 1]]


def save_partitions(path: str, clients: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    sizes = [len(y) for _, y in clients]
    np.savez(path, x=torch.cat([x for x, _ in clients]).numpy(), y=torch.cat([y for _, y in clients]).numpy(),
             offsets=np.concatenate([[0], np.cumsum(sizes)]))


def local_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, epochs: int, batch_size: int,
              gen: torch.Generator) -> None:
    """The plain loop's local training: ``epochs`` shuffled passes of SGD, cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def run(build: Callable[[], torch.nn.Module], data_path: str, num_clients: int, rounds: int, *, lr: float, epochs: int,
        batch_size: int, num_cpus: int, initial: dict[str, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Run the plain Flower app; return the wall-clock time of each round's end (``ends``, from
    the call), and the final test accuracy."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x, y = partition(data_path, pid)
        model = build()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        local_sgd(model, x, y, lr=lr, epochs=epochs, batch_size=batch_size, gen=torch.Generator().manual_seed(pid))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})}),
                       reply_to=msg)

    out: dict[str, Any] = {"ends": []}
    t0 = time.perf_counter()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            out["ends"].append(time.perf_counter() - t0)
        if server_round == rounds:  # the engine evaluates after its last round: the same work here
            model = build()
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            with torch.no_grad():
                out["accuracy"] = (model(test[0]).argmax(1) == test[1]).float().mean().item()
        return None

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=num_clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds, evaluate_fn=evaluate)

    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=num_clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "logging_level": "error", "log_to_driver": False}})
    finally:
        flwr_log.setLevel(level)
    return out
