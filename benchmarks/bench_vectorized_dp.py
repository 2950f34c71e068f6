"""DP-SGD step overhead in the vectorized executor: seconds of local training per round (the
executor's ``map``: every client's steps) with ``dp_sgd`` over the same without it, on the
quickstart MLP scenario (MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local
epochs, batch 32; DP: Poisson sampling at q = 32 / n, so the same expected batch size and the same
number of steps, noise multiplier 1, clip 1).  The serial executor (Opacus) is measured alongside
for reference.  Round 0 is a warm-up (building the stacked kernels) and is not timed.  Whole
rounds (with the accountant's epsilon, ``--accountant``) are reported too.

    python benchmarks/bench_vectorized_dp.py --rounds 4 --repeats 3 --threads 1 --accountant rdp [--write]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench_simulation import MLP
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
DP = {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}


def timed(executor: str, dp: bool, rounds: int, accountant: str) -> tuple[float, float, float]:
    """(training seconds per round, whole-round seconds per round, final accuracy), rounds 1.. timed."""
    data = copy.deepcopy(MLP)
    data["federation"]["rounds"] = rounds
    data.pop("threads", None)
    data["executor"] = {"name": executor}
    if dp:
        data["defenses"] = [{**DP, "accountant": accountant}]
    engine = Engine(resolve(validate_schema(data)))
    engine.prepare()
    fed, server, ex = engine.federation, engine.server, engine.setup.executor
    ex.start(fed.fit, fed.client_data)
    spent = [0.0]

    def map_(tasks):
        t = time.perf_counter()
        out = ex.map(tasks)
        spent[0] += time.perf_counter() - t
        return out

    try:
        server.round(0, ex.map)
        t0 = time.perf_counter()
        for rnd in range(1, rounds):
            server.round(rnd, map_)
    finally:
        ex.close()
    return spent[0] / (rounds - 1), (time.perf_counter() - t0) / (rounds - 1), server.last_eval["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run, the first untimed (>= 2)")
    ap.add_argument("--accountant", default="rdp", choices=["rdp", "prv"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--executors", default="vectorized,serial")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/vectorized_dp.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.executors.split(",")
    load0 = os.getloadavg()[0]
    runs: dict[tuple[str, bool], list[tuple[float, float, float]]] = {(n, dp): [] for n in names for dp in (False, True)}
    for _ in range(args.repeats):  # interleaved: the machine is shared
        for key in runs:
            runs[key].append(timed(key[0], key[1], args.rounds, args.accountant))
    load1 = os.getloadavg()[0]
    med = {key: [statistics.median(r[i] for r in rs) for i in range(2)] + [rs[-1][2]] for key, rs in runs.items()}
    lines = [
        "| executor | non-private: train s / round | DP-SGD: train s / round | DP step overhead | whole round: non-private s | DP s | ratio | accuracy non-private / DP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        a, b = med[(n, False)], med[(n, True)]
        lines.append(f"| {n} | {a[0]:.3f} | {b[0]:.3f} | {b[0] / a[0]:.2f}x | {a[1]:.3f} | {b[1]:.3f} | {b[1] / a[1]:.2f}x | {a[2]:.4f} / {b[2]:.4f} |")
    lines += ["", f"Median of {args.repeats} interleaved repeats of rounds 1..{args.rounds - 1} (round 0 untimed); "
              f"accountant {args.accountant}; {args.threads} torch thread(s); "
              f"load average (1 min) at start / end: {load0:.1f} / {load1:.1f}."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        cmd = (f"python benchmarks/bench_vectorized_dp.py --rounds {args.rounds} --repeats {args.repeats} --threads "
               f"{args.threads} --accountant {args.accountant} --executors {args.executors} --write")
        head = [
            "# DP-SGD step overhead in the vectorized executor (quickstart MLP, CPU)", "",
            __doc__.split("\n\n")[0].replace("\n", " "), "",
            f"Recorded {datetime.date.today()} with `{cmd}` on {platform.processor() or platform.machine()} "
            f"({os.cpu_count()} CPUs, shared); torch {torch.__version__}, Python {platform.python_version()}.", "",
        ]
        (ROOT / "benchmarks" / "results" / "vectorized_dp.md").write_text("\n".join(head) + table + "\n")


if __name__ == "__main__":
    main()
