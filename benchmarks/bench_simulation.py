"""Simulation throughput: client updates per second of fllab's engine against a plain,
hand-written PyTorch FedAvg loop measured in the same run on the same data.

Setting (issue 2): ConvNet (32/64 channels) on Fashion-MNIST, 100 clients per round (600 images
each, IID), one local epoch, SGD lr 0.05, batch 32.

    python benchmarks/bench_simulation.py --rounds 2 --threads 2 [--write]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine

SCENARIO = {
    "name": "bench_simulation",
    "seed": 0,
    "task": {"dataset": {"name": "fashion_mnist"}, "model": {"name": "convnet", "width": 32}},
    "federation": {"num_clients": 100, "rounds": 1, "partition": {"name": "iid"}},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "evaluation": {"every": 1000},
}


def fllab_round_time(rounds: int) -> tuple[float, float]:
    """Seconds per round of the engine (data loading and set-up excluded; the final evaluation
    included, as in the plain loop), final accuracy."""
    data = {**SCENARIO, "federation": {**SCENARIO["federation"], "rounds": rounds}}
    engine = Engine(resolve(validate_schema(data)))
    engine.prepare()
    t0 = time.perf_counter()
    result = engine.run()
    return (time.perf_counter() - t0) / rounds, result.metrics["utility.accuracy"]


def plain_round_time(rounds: int) -> tuple[float, float]:
    """The same federation written as a bare PyTorch loop (no fllab code on the hot path)."""
    engine = Engine(resolve(validate_schema(SCENARIO)))
    engine.prepare()  # reuse only the loaded data, the partition and the initial weights
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
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), 32):
                idx = perm[i : i + 32]
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
        acc = sum(
            (model(engine.federation.test.x[i : i + 1024]).argmax(1) == engine.federation.test.y[i : i + 1024]).sum().item()
            for i in range(0, len(engine.federation.test), 1024)
        ) / len(engine.federation.test)
    return (time.perf_counter() - t0) / rounds, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="record the result in benchmarks/results/simulation.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours, plain = [], []
    for _ in range(args.repeats):  # interleave so machine noise hits both alike
        s, acc_ours = fllab_round_time(args.rounds)
        ours.append(s)
        s, acc_plain = plain_round_time(args.rounds)
        plain.append(s)
    o, p = statistics.median(ours), statistics.median(plain)
    lines = [
        f"| implementation | s / round | client updates / s | accuracy after {args.rounds} round(s) |",
        "|---|---|---|---|",
        f"| plain PyTorch FedAvg loop | {p:.2f} | {100 / p:.2f} | {acc_plain:.4f} |",
        f"| fllab engine (serial executor) | {o:.2f} | {100 / o:.2f} | {acc_ours:.4f} |",
        "",
        f"fllab / plain throughput ratio: **{p / o:.3f}** (1.0 = no overhead; median of {args.repeats} interleaved repeats)",
    ]
    print("\n".join(lines))
    if args.write:
        cmd = f"python benchmarks/bench_simulation.py --rounds {args.rounds} --repeats {args.repeats} --threads {args.threads} --write"
        text = (
            "# Simulation throughput\n\n"
            "ConvNet 32/64 on Fashion-MNIST, 100 clients x 600 images per round (IID), one local epoch, "
            "SGD lr 0.05, batch 32.\n\n"
            f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {args.threads} threads (shared 2-core machine: times are noisy, the ratio is what counts)\n\n"
            + "\n".join(lines) + "\n"
        )
        Path(__file__).with_name("results").mkdir(exist_ok=True)
        (Path(__file__).with_name("results") / "simulation.md").write_text(text)


if __name__ == "__main__":
    main()
