"""Simulation throughput: client updates per second of fllab's server round driven by every
executor, against a plain, hand-written PyTorch FedAvg loop and against Flower's own simulation (a
plain Flower app, :mod:`flower_baseline`), all measured in the same run on the same data.

Settings: ``convnet`` -- ConvNet (32/64 channels) on Fashion-MNIST, 100 clients per round (600
images each, IID), one local epoch, SGD lr 0.05, batch 32 (issue 2); ``mlp`` -- the quickstart
(MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local epochs, lr 0.1, batch 32).
Set-up (data, partition, wiring) is excluded.  Every row is timed the same way: the time at which
each round ended, from the call; the steady rate is that of rounds 2..R and the start-up is what
round 1 took beyond it (spawning workers or Ray, shipping the data, first imports).  The
``flower`` executor and Flower's own app start a local Ray each.

    python benchmarks/bench_simulation.py --setting mlp --rounds 5 --threads 2 [--write]
    python benchmarks/bench_simulation.py --setting convnet --rounds 3 --executors serial,process,vectorized,flower
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

import flower_baseline
from flower_baseline import local_sgd

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


def steady(ends: list[float]) -> tuple[float, float]:
    """(start-up s, steady s / round) from the times at which rounds ended, counted from the
    call: the steady rate is that of rounds 2..R (the first round pays warm-up: spawned workers
    importing torch, first messages), and start-up is what the first round took beyond it."""
    per = (ends[-1] - ends[0]) / (len(ends) - 1)
    return max(0.0, ends[0] - per), per


def fllab_round_time(setting: str, rounds: int, executor: dict) -> tuple[float, float, float]:
    """(start-up s, steady s / round, final accuracy) of the server round driven by ``executor``
    (the loop of :class:`fllab.training.engine.Engine`, or the executor's own: Flower's)."""
    engine = Engine(resolve(validate_schema(scenario(setting, rounds, executor))))
    engine.prepare()
    ends: list[float] = []
    t0 = time.perf_counter()
    engine.on_round = lambda record: ends.append(time.perf_counter() - t0)
    engine.run()
    return (*steady(ends), engine.server.last_eval["accuracy"])


def wired(setting: str, rounds: int) -> Engine:
    """A wired federation of ``setting``: its data, partition and initial weights (not timed)."""
    engine = Engine(resolve(validate_schema(scenario(setting, rounds))))
    engine.prepare()
    return engine


def plain_round_time(setting: str, rounds: int) -> tuple[float, float, float]:
    """The same federation written as a bare PyTorch loop (no fllab code on the hot path)."""
    engine = wired(setting, rounds)
    algo = engine.setup.algorithm.params
    clients = [(d.x, d.y) for d in engine.federation.client_data]
    model = engine.federation.model_handle.build()
    global_state = [p.detach().clone() for p in engine.federation.server_model.parameters()]
    gen = torch.Generator().manual_seed(0)
    ends: list[float] = []
    t0 = time.perf_counter()
    for _ in range(rounds):
        total = [torch.zeros_like(p) for p in global_state]
        n_all = 0
        for x, y in clients:
            with torch.no_grad():
                for p, g in zip(model.parameters(), global_state):
                    p.copy_(g)
            local_sgd(model, x, y, lr=algo.lr, epochs=int(algo.local_epochs), batch_size=algo.batch_size, gen=gen)
            with torch.no_grad():
                for t, p, g in zip(total, model.parameters(), global_state):
                    t.add_(p - g, alpha=len(y))
            n_all += len(y)
        global_state = [g + t / n_all for g, t in zip(global_state, total)]
        ends.append(time.perf_counter() - t0)
    with torch.no_grad():  # the engine evaluates after its last round: time the same work here
        for p, g in zip(model.parameters(), global_state):
            p.copy_(g)
        model.eval()
        test = engine.federation.test
        acc = sum(
            (model(test.x[i : i + 1024]).argmax(1) == test.y[i : i + 1024]).sum().item() for i in range(0, len(test), 1024)
        ) / len(test)
    ends[-1] = time.perf_counter() - t0
    return (*steady(ends), acc)


def flower_round_time(setting: str, rounds: int, cpus: int) -> tuple[float, float, float]:
    """Flower's own simulation (:mod:`flower_baseline`): a plain Flower app, FedAvg, ``cpus``
    one-CPU ClientApps, the plain loop's local SGD on the same data and initial weights."""
    import tempfile

    engine = wired(setting, rounds)
    fed, algo = engine.federation, engine.setup.algorithm.params
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "partitions.npz")
        flower_baseline.save_partitions(path, [(d.x, d.y) for d in fed.client_data])
        out = flower_baseline.run(
            fed.model_handle.build, path, len(fed.client_data), rounds, lr=algo.lr, epochs=int(algo.local_epochs),
            batch_size=algo.batch_size, num_cpus=cpus, initial=fed.server_model.state_dict(), test=(fed.test.x, fed.test.y),
        )
    return (*steady(out["ends"]), out["accuracy"])


def executor_spec(name: str, threads: int) -> dict:
    """Each parallel executor on ``threads`` one-thread workers (as many as the plain loop's threads)."""
    return {"process": {"name": "process", "workers": threads, "threads": 1}, "flower": {"name": "flower", "threads": 1},
            "ray": {"name": "ray", "actors": threads}}.get(name, {"name": name})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="convnet")
    ap.add_argument("--rounds", type=int, default=3, help="at least 2 (the steady rate is that of rounds 2..R)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--executors", default="serial,process,vectorized,flower", help="comma-separated executor names")
    ap.add_argument("--no-flower-baseline", dest="flower_baseline", action="store_false", help="skip Flower's own simulation")
    ap.add_argument("--write", action="store_true", help="record the result in benchmarks/results/simulation_<setting>.md")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2")
    torch.set_num_threads(args.threads)
    names = args.executors.split(",")
    rows: dict[str, list[tuple[float, float, float]]] = {"plain": [], **({"flower_app": []} if args.flower_baseline else {}), **{n: [] for n in names}}
    clients = SETTINGS[args.setting]["federation"]["num_clients"]
    for _ in range(args.repeats):  # interleave so machine noise hits all alike
        rows["plain"].append(plain_round_time(args.setting, args.rounds))
        if args.flower_baseline:
            rows["flower_app"].append(flower_round_time(args.setting, args.rounds, args.threads))
        for n in names:
            rows[n].append(fllab_round_time(args.setting, args.rounds, executor_spec(n, args.threads)))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), v[-1][2]) for k, v in rows.items()}
    plain, flower = med["plain"][1], med.get("flower_app", (0, 0, 0))[1]
    label = {"plain": "plain PyTorch FedAvg loop (1 process)", "flower_app": f"Flower's own simulation (plain Flower app, FedAvg, {args.threads} x 1-CPU ClientApps)",
             **{n: f"fllab, executor {n}" for n in names}}
    lines = [
        f"| implementation | start-up s | steady s / round | client updates / s | vs plain loop | vs Flower's simulation | accuracy after {args.rounds} rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, (start, per, acc) in med.items():
        vs_flower = f"{flower / per:.2f}x" if flower else "-"
        lines.append(f"| {label[key]} | {start:.2f} | {per:.3f} | {clients / per:.1f} | {plain / per:.2f}x | {vs_flower} | {acc:.4f} |")
    lines += ["", f"Median of {args.repeats} interleaved repeat(s); steady rate = rounds 2..{args.rounds}, start-up = what round 1 "
              f"took beyond it. process: {args.threads} workers x 1 thread; flower and Flower's app: {args.threads} one-CPU ClientApps "
              "x 1 thread; plain loop and serial: one process."]
    print("\n".join(lines))
    if args.write:
        import subprocess

        cmd = (f"nice -n 10 python benchmarks/bench_simulation.py --setting {args.setting} --rounds {args.rounds} --repeats {args.repeats} "
               f"--threads {args.threads} --executors {args.executors}{'' if args.flower_baseline else ' --no-flower-baseline'} --write")
        title = {"convnet": "ConvNet 32/64 on Fashion-MNIST, 100 clients x 600 images per round (IID), one local epoch, "
                            "SGD lr 0.05, batch 32.",
                 "mlp": "The quickstart: MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local epochs, "
                        "SGD lr 0.1, batch 32."}[args.setting]
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        text = (
            f"# Simulation throughput ({args.setting})\n\n{title}\n\n"
            f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {args.threads} threads.  \nMachine load when it finished: `{load}` (a 2-core machine "
            "shared with other engineers' jobs: times are noisy and start-ups inflated; rerun on a quiet machine)\n\n"
            + "\n".join(lines) + "\n"
        )
        Path(__file__).with_name("results").mkdir(exist_ok=True)
        (Path(__file__).with_name("results") / f"simulation_{args.setting}.md").write_text(text)


if __name__ == "__main__":
    main()
