"""Where the process executor's start-up goes, and what each way of starting workers costs.

1. What a worker pays before its first task when it starts from a bare interpreter (``spawn``):
   the interpreter, ``import torch``, fllab's components, and ``torch._dynamo`` (imported lazily
   by the first ``torch.optim`` optimizer), each timed in one fresh interpreter.
2. Per start method (``fork``, ``forkserver``, ``spawn``; ``auto`` picks fork here): the
   executor's ``start()`` (workers up, data shipped), round 0 (first-task warm-up included) and
   the steady rounds after it, each method in a fresh interpreter so that nothing one
   measurement imported or started (a forkserver) helps the next; the serial executor alongside.

Set-up (data, partition, wiring) is excluded, as in ``bench_simulation.py``, whose scenarios
this reuses; one torch thread per client everywhere (the serial executor too).

    python benchmarks/bench_process_startup.py --setting mlp --rounds 4 [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("fork", "forkserver", "spawn")
IMPORTS = """
import time, json
t = [time.perf_counter()]
import torch; t.append(time.perf_counter())
import fllab.components; t.append(time.perf_counter())
import torch._dynamo; t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""


def import_costs() -> dict[str, float]:
    """Seconds of a bare interpreter and of each import a spawned worker needs, in a fresh one."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True, env=_env()).stdout
    torch_s, fllab_s, dynamo_s = json.loads(out.strip().splitlines()[-1])
    return {"interpreter": bare, "import torch": torch_s, "import fllab components": fllab_s, "import torch._dynamo": dynamo_s}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def one(setting: str, rounds: int, executor: dict) -> dict:
    """In this (fresh) interpreter: start-up seconds, each round's seconds and the accuracy."""
    from bench_simulation import scenario

    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema
    from fllab.training.engine import Engine

    data = {**scenario(setting, rounds, executor), "threads": 1}  # this process: serial's clients, everyone's evaluation
    engine = Engine(resolve(validate_schema(data)))
    engine.prepare()
    fed, server, ex = engine.federation, engine.server, engine.setup.executor
    t0 = time.perf_counter()
    ex.start(fed.fit, fed.client_data)
    startup, times = time.perf_counter() - t0, []
    try:
        for rnd in range(rounds):
            t = time.perf_counter()
            server.round(rnd, ex.map)
            times.append(time.perf_counter() - t)
    finally:
        ex.close()
    return {"startup": startup, "rounds": times, "accuracy": server.last_eval["accuracy"], "clients": len(fed.client_data)}


def measure(setting: str, rounds: int, executor: dict) -> dict:
    """:func:`one` in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--one", json.dumps(executor), "--setting", setting, "--rounds", str(rounds)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=("mlp", "convnet"), default="mlp")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run (round 0 is reported apart)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executors", default="serial," + ",".join(METHODS), help="serial and/or process start methods, comma-separated")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/results/process_startup.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.setting, args.rounds, json.loads(args.one))))
        return
    load = os.getloadavg()
    costs = import_costs()
    lines = [
        f"## {args.setting}",
        "",
        f"Command: `python benchmarks/bench_process_startup.py --setting {args.setting} --rounds {args.rounds} --workers {args.workers}"
        f" --executors {args.executors}{' --write' if args.write else ''}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores, "
        f"load average before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine: times are noisy)",
        "",
        "What a worker started from a bare interpreter pays before its first task (one fresh interpreter):",
        "",
        "| piece | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in costs.items()),
        "",
        f"Per start method, {args.workers} workers x 1 thread, each in a fresh interpreter (set-up excluded):",
        "",
        "| executor | start-up s | round 0 s | steady s / round | steady client updates / s | start-up + round-0 warm-up s | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.executors.split(","):
        label = name if name == "serial" else f"process ({name})"
        executor = {"name": "serial"} if name == "serial" else {"name": "process", "workers": args.workers, "threads": 1, "start_method": name}
        r = measure(args.setting, args.rounds, executor)
        steady = statistics.median(r["rounds"][1:]) if len(r["rounds"]) > 1 else r["rounds"][0]
        warm = r["startup"] + max(0.0, r["rounds"][0] - steady)
        lines.append(
            f"| {label} | {r['startup']:.2f} | {r['rounds'][0]:.3f} | {steady:.3f} | {r['clients'] / steady:.1f} | {warm:.2f} | {r['accuracy']:.4f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(ROOT / "benchmarks" / "results" / "process_startup.md", "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
