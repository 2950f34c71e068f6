"""DP-SGD step overhead in the vectorized executor: seconds of local training per round (the
executor's ``map``: every client's steps) with ``dp_sgd`` over the same without it, on the
quickstart MLP scenario (MLP 64-128-10 on sklearn digits, 10 Dirichlet(0.5) clients, two local
epochs, batch 32; DP: Poisson sampling at q = 32 / n, so the same expected batch size and the same
number of steps, noise multiplier 1, clip 1).  The serial executor (Opacus) is measured alongside
for reference.  Round 0 is a warm-up (building the stacked kernels) and is not timed.  Whole
rounds (with the accountant's epsilon, ``--accountant``) are reported too.

Two more tables: the accounting of one round (every client's epsilon after round r, as
``DPSGD.account`` asks for it) by a fresh Opacus accountant per client -- what fllab did before
the per-``(sigma, q)`` cache -- against :mod:`fllab.privacy.accounting` (equal to the bit,
checked here), and, with ``--cell-rounds R``, whole cells: ``fllab.run`` of the scenario with R
rounds, non-private and DP-SGD (RDP and PRV), serial and vectorized, wall seconds.

    python benchmarks/bench_vectorized_dp.py --rounds 4 --repeats 3 --threads 1 --accountant rdp --cell-rounds 30 [--write]
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

import tempfile
import warnings

import torch
from opacus.accountants import PRVAccountant, RDPAccountant

import fllab
from bench_simulation import MLP
from fllab.defenses.dp import _calibrate as calibrate, history_spent
from fllab.privacy.accounting import SPENT, step_rdp
from fllab.training.local import steps_for
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training import dp_stacked
from fllab.training.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
DP = {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}


def _block_next(self: dp_stacked._Noise) -> torch.Tensor:
    """Variant draw (measured here, not shipped): one ``torch.randn`` per client per round, (steps,
    d) normals times its std -- the same N(0, std^2) per coordinate from the same seeded
    generator, but not Opacus's stream, so not the serial executor's trajectory."""
    if self.t == 0:
        steps, (k, d) = len(self.active), self.buffer.shape
        self.block = torch.zeros(steps, k, d, dtype=self.buffer.dtype)
        for j, gen in enumerate(self.gens):
            taken = sum(row[j] for row in self.active)
            if taken and self.stds[j] > 0:
                self.block[:taken, j] = torch.randn(taken, d, generator=gen, dtype=self.buffer.dtype).mul_(self.stds[j])
    self.t += 1
    return self.block[self.t - 1]


def _no_next(self: dp_stacked._Noise) -> torch.Tensor:
    """Variant (a floor, not private): no noise drawn at all."""
    self.t += 1
    return self.buffer


#: How the vectorized executor's DP noise is drawn: the shipped Opacus-identical draw and two variants.
NOISE = {"opacus": dp_stacked._Noise.next, "block": _block_next, "none": _no_next}


def timed(executor: str, dp: bool, rounds: int, accountant: str, noise: str = "opacus") -> tuple[float, float, float]:
    """(training seconds per round, whole-round seconds per round, final accuracy), rounds 1.. timed."""
    dp_stacked._Noise.next = NOISE[noise]
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
        dp_stacked._Noise.next = NOISE["opacus"]
    return spent[0] / (rounds - 1), (time.perf_counter() - t0) / (rounds - 1), server.last_eval["accuracy"]


def noise_variants(rounds: int, repeats: int, accountant: str) -> list[str]:
    """Training seconds per round of the vectorized executor: non-private, and DP-SGD with each
    noise draw of :data:`NOISE` (interleaved repeats)."""
    keys = [("non-private", False, "opacus")] + [(f"DP-SGD, noise {n}", True, n) for n in NOISE]
    runs: dict[str, list[float]] = {key: [] for key, _, _ in keys}
    for _ in range(repeats):
        for key, dp, noise in keys:
            runs[key].append(timed("vectorized", dp, rounds, accountant, noise)[0])
    base = statistics.median(runs["non-private"])
    rows = ["| variant | train s / round | over non-private |", "|---|---|---|"]
    return rows + [f"| {key} | {statistics.median(v):.3f} | {statistics.median(v) / base:.2f}x |" for key, v in runs.items()]


def client_segments() -> list[tuple[float, int]]:
    """Each client's ``(q, steps per round)`` in the MLP scenario under DP-SGD (q = B / n)."""
    engine = Engine(resolve(validate_schema(copy.deepcopy(MLP))))
    engine.prepare()
    p = MLP["algorithm"]
    sizes = [len(d) for d in engine.federation.client_data]
    return [(min(p["batch_size"], n) / n, steps_for(n, p["batch_size"], p["local_epochs"], None)) for n in sizes]


def accounting_times(rounds: list[int]) -> list[str]:
    """Seconds to account one round (every client's epsilon) at the given rounds: a fresh Opacus
    accountant per client vs fllab's cached kernels (cold at round 1, then warm: every earlier
    round is accounted first, as in a run)."""
    segments = client_segments()
    rows = ["| accountant | round | Opacus, fresh accountant per client: s | fllab (cached RDP steps): s | speed-up | equal to the bit |",
            "|---|---|---|---|---|---|"]
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        step_rdp.cache_clear()  # round 1 pays for each client's RDP series, as in a fresh process
        for r in range(1, max(rounds) + 1):
            histories = [((DP["noise_multiplier"], q, s * r),) for q, s in segments]
            t0 = time.perf_counter()
            mine = [SPENT[name](h, 1e-5).epsilon for h in histories]
            t1 = time.perf_counter()
            if r not in rounds:
                continue
            ref = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for h in histories:
                    acc = cls()
                    acc.history = list(h)
                    ref.append(acc.get_epsilon(delta=1e-5))
            t2 = time.perf_counter()
            rows.append(f"| {name} | {r} | {t2 - t1:.3f} | {t1 - t0:.4f} | {(t2 - t1) / (t1 - t0):.0f}x | {mine == ref} |")
    return rows


def cell_times(rounds: int) -> list[str]:
    """Wall seconds of ``fllab.run`` on the MLP scenario (``rounds`` rounds), per executor and
    privacy; the accounting caches are emptied before each cell (a fresh process's cost)."""
    variants = [("non-private", None), ("DP-SGD rdp", "rdp"), ("DP-SGD prv", "prv")]
    rows = ["| executor | " + " | ".join(f"{v}: s" for v, _ in variants) + " | DP rdp / non-private | DP prv / non-private |",
            "|---|---|---|---|---|---|"]
    for executor in ("serial", "vectorized"):
        secs = []
        for _, accountant in variants:
            data = copy.deepcopy(MLP)
            data["federation"]["rounds"] = rounds
            data.update(threads=1, executor={"name": executor}, evaluation={"every": 1})
            if accountant:
                data["defenses"] = [{**DP, "accountant": accountant}]
            for cache in (history_spent, step_rdp, calibrate):  # each cell as in a fresh process
                cache.cache_clear()
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fllab.run(data, Path(tmp) / "run")
                secs.append(time.perf_counter() - t0)
        rows.append(f"| {executor} | " + " | ".join(f"{x:.1f}" for x in secs) + f" | {secs[1] / secs[0]:.2f}x | {secs[2] / secs[0]:.2f}x |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run, the first untimed (>= 2)")
    ap.add_argument("--accountant", default="rdp", choices=["rdp", "prv"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--executors", default="vectorized,serial")
    ap.add_argument("--noise-variants", action="store_true", help="also time the vectorized DP step with other noise draws")
    ap.add_argument("--cell-rounds", type=int, default=0, help="also time whole fllab.run cells of this many rounds")
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
    if args.noise_variants:
        lines += ["", "Vectorized DP-SGD step by how the noise is drawn (same protocol, train s / round, median):", "",
                  *noise_variants(args.rounds, args.repeats, args.accountant)]
    lines += ["", "Accounting of one round (10 clients, sigma 1, delta 1e-5):", "", *accounting_times([1, 10, 30])]
    if args.cell_rounds:
        lines += ["", f"Whole cells (`fllab.run`, {args.cell_rounds} rounds, evaluation every round, 1 thread):", "",
                  *cell_times(args.cell_rounds)]
    table = "\n".join(lines)
    print(table)
    if args.write:
        cmd = (f"python benchmarks/bench_vectorized_dp.py --rounds {args.rounds} --repeats {args.repeats} --threads "
               f"{args.threads} --accountant {args.accountant} --executors {args.executors} --cell-rounds {args.cell_rounds}"
               f"{' --noise-variants' if args.noise_variants else ''} --write")
        head = [
            "# DP-SGD step overhead in the vectorized executor (quickstart MLP, CPU)", "",
            __doc__.split("\n\n")[0].replace("\n", " "), "",
            f"Recorded {datetime.date.today()} with `{cmd}` on {platform.processor() or platform.machine()} "
            f"({os.cpu_count()} CPUs, shared); torch {torch.__version__}, Python {platform.python_version()}.", "",
        ]
        (ROOT / "benchmarks" / "results" / "vectorized_dp.md").write_text("\n".join(head) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
