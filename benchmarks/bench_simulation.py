"""Simulation throughput: client updates per second of fllab's server round driven by every
executor, against a plain, hand-written PyTorch FedAvg loop measured in the same run on the same
data.

Settings: ``convnet`` -- ConvNet (32/64 channels) on Fashion-MNIST, 100 clients per round (600
images each, IID), one local epoch, SGD lr 0.05, batch 32 (issue 2); ``mlp`` -- the quickstart
(MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local epochs, lr 0.1, batch 32).
Set-up (data, partition, wiring) is excluded; an executor's start-up (e.g. spawning the process
workers and shipping them the data) is reported on its own.

    python benchmarks/bench_simulation.py --setting mlp --rounds 5 --threads 2 [--write]
    python benchmarks/bench_simulation.py --setting convnet --rounds 1 --executors serial,process,vectorized
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
CONVNET = {
    "name": "bench_simulation",
    "seed": 0,
    "task": {"dataset": {"name": "fashion_mnist"}, "model": {"name": "convnet", "width": 32}},
    "federation": {"num_clients": 100, "rounds": 1, "partition": {"name": "iid"}},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "evaluation": {"every": 1000},
}
MLP = {**yaml.safe_load((ROOT / "scenarios" / "baselines" / "digits_fedavg.yaml").read_text()), "evaluation": {"every": 1000}}
SETTINGS = {"convnet": CONVNET, "mlp": MLP}


def scenario(setting: str, rounds: int, executor: dict | None = None) -> dict:
    data = copy.deepcopy(SETTINGS[setting])
    data["federation"]["rounds"] = rounds
    data.pop("threads", None)
    if executor:
        data["executor"] = executor
    return data


def fllab_round_time(setting: str, rounds: int, executor: dict) -> tuple[float, float, float]:
    """(start-up seconds, seconds per round, final accuracy) of the server round driven by
    ``executor`` (the loop of :class:`fllab.training.engine.Engine`, timed piece by piece)."""
    engine = Engine(resolve(validate_schema(scenario(setting, rounds, executor))))
    engine.prepare()
    fed, server, ex = engine.federation, engine.server, engine.setup.executor
    t0 = time.perf_counter()
    ex.start(fed.fit, fed.client_data)
    t1 = time.perf_counter()
    try:
        for rnd in range(rounds):
            server.round(rnd, ex.map)
    finally:
        ex.close()
    return t1 - t0, (time.perf_counter() - t1) / rounds, server.last_eval["accuracy"]


def plain_round_time(setting: str, rounds: int) -> tuple[float, float]:
    """The same federation written as a bare PyTorch loop (no fllab code on the hot path)."""
    engine = Engine(resolve(validate_schema(scenario(setting, rounds))))
    engine.prepare()  # reuse only the loaded data, the partition and the initial weights
    algo = engine.setup.algorithm.params
    clients = [(d.x, d.y) for d in engine.federation.client_data]
    model = engine.federation.model_handle.build()
    global_state = [p.detach().clone() for p in engine.federation.server_model.parameters()]
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(rounds):
        total = [torch.zeros_like(p) for p in global_state]
        n_all = 0
        for x, y in clients:
            with torch.no_grad():
                for p, g in zip(model.parameters(), global_state):
                    p.copy_(g)
            opt = torch.optim.SGD(model.parameters(), lr=algo.lr)
            for _ in range(int(algo.local_epochs)):
                perm = torch.randperm(len(y), generator=gen)
                for i in range(0, len(y), algo.batch_size):
                    idx = perm[i : i + algo.batch_size]
                    opt.zero_grad()
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
            with torch.no_grad():
                for t, p, g in zip(total, model.parameters(), global_state):
                    t.add_(p - g, alpha=len(y))
            n_all += len(y)
        global_state = [g + t / n_all for g, t in zip(global_state, total)]
    with torch.no_grad():  # the engine evaluates after its last round: time the same work here
        for p, g in zip(model.parameters(), global_state):
            p.copy_(g)
        model.eval()
        test = engine.federation.test
        acc = sum(
            (model(test.x[i : i + 1024]).argmax(1) == test.y[i : i + 1024]).sum().item() for i in range(0, len(test), 1024)
        ) / len(test)
    return (time.perf_counter() - t0) / rounds, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="convnet")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--executors", default="serial,process,vectorized", help="comma-separated executor names")
    ap.add_argument("--write", action="store_true", help="record the result in benchmarks/results/simulation_<setting>.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.executors.split(",")
    specs = {n: ({"name": n, "workers": args.threads, "threads": 1} if n == "process" else {"name": n}) for n in names}
    plain: list[float] = []
    ours: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    clients = SETTINGS[args.setting]["federation"]["num_clients"]
    for _ in range(args.repeats):  # interleave so machine noise hits all alike
        s, acc_plain = plain_round_time(args.setting, args.rounds)
        plain.append(s)
        for n in names:
            ours[n].append(fllab_round_time(args.setting, args.rounds, specs[n]))
    p = statistics.median(plain)
    lines = [
        f"| implementation | start-up s | s / round | client updates / s | vs plain loop | accuracy after {args.rounds} round(s) |",
        "|---|---|---|---|---|---|",
        f"| plain PyTorch FedAvg loop | - | {p:.3f} | {clients / p:.1f} | 1.00x | {acc_plain:.4f} |",
    ]
    for n in names:
        start = statistics.median(r[0] for r in ours[n])
        o = statistics.median(r[1] for r in ours[n])
        lines.append(f"| fllab, executor {n} | {start:.2f} | {o:.3f} | {clients / o:.1f} | {p / o:.2f}x | {ours[n][-1][2]:.4f} |")
    lines += ["", f"Median of {args.repeats} interleaved repeats; process executor: {args.threads} workers x 1 thread."]
    print("\n".join(lines))
    if args.write:
        cmd = (f"python benchmarks/bench_simulation.py --setting {args.setting} --rounds {args.rounds} --repeats {args.repeats} "
               f"--threads {args.threads} --executors {args.executors} --write")
        title = {"convnet": "ConvNet 32/64 on Fashion-MNIST, 100 clients x 600 images per round (IID), one local epoch, "
                            "SGD lr 0.05, batch 32.",
                 "mlp": "The quickstart: MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local epochs, "
                        "SGD lr 0.1, batch 32."}[args.setting]
        text = (
            f"# Simulation throughput ({args.setting})\n\n{title}\n\n"
            f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {args.threads} threads (shared 2-core machine: times are noisy, the ratios are what count)\n\n"
            + "\n".join(lines) + "\n"
        )
        Path(__file__).with_name("results").mkdir(exist_ok=True)
        (Path(__file__).with_name("results") / f"simulation_{args.setting}.md").write_text(text)


if __name__ == "__main__":
    main()
