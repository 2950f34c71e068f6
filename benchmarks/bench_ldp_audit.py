"""Wall time of the full LDP-Auditor grid, vectorised, against a direct per-trial loop.

Grid (issue 13): the 11 built-in frequency oracles (GRR, SS, SUE, OUE, BLH, OLH, THE, SHE, AGRR,
GM, AGM) x 5 epsilons (0.5, 1, 2, 4, 6) x 2 domain sizes (25, 200), 10^6 reports per input, the
paper's attack (the one LDP-Auditor runs), alpha = 0.01, delta = 1e-5 for the approximate ones:
110 audits, 2.2 x 10^8 reports.  Each audit is timed by :func:`fllab.privacy.ldp.audit_mechanism`.

Baseline: the same audit as a direct loop over trials, the structure of LDP-Auditor's code
(``for _ in range(trials): count += attack(client(v)) == v1``), calling fllab's own randomizer and
test on one report at a time (so both sides run the same mechanism code; only the batching
differs).  The loop is timed on ``--loop-trials`` trials per input for every cell and scaled
to 10^6.  (LDP-Auditor itself compiles its clients with numba and spreads trials over all cores
with Ray; its paper reports no run time, so no published figure is compared.)

With ``--audit-dir DIR`` the vectorised times are read from a finished
``fllab audit-ldp scenarios/ldp/audit_frequency_oracles.yaml --out DIR`` (its ``audit.csv``
records every audit's seconds; the paper-attack rows are this grid) instead of being re-run, and
the report adds that run's total over both attacks.

    python benchmarks/bench_ldp_audit.py [--trials 1000000] [--loop-trials 200] [--audit-dir DIR] [--write]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fllab.privacy.ldp import ORACLES, audit_mechanism, distinguishing_test, make_oracle

RESULTS = Path(__file__).resolve().parent / "results" / "ldp_audit.md"
MECHANISMS = ("grr", "ss", "sue", "oue", "blh", "olh", "the", "she", "agrr", "gm", "agm")
EPSILONS = (0.5, 1.0, 2.0, 4.0, 6.0)
DOMAINS = (25, 200)
DELTA = 1e-5


def loop_seconds(mech, trials: int) -> float:
    """Seconds of a per-trial loop over both inputs (LDP-Auditor's structure)."""
    test = distinguishing_test(mech, "paper")
    v1, v2 = 0, mech.k - 1
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for v in (v1, v2):
        one = np.array([v])
        count = 0
        for _ in range(trials):
            count += int(test.statistic(mech, mech.randomize(one, rng), v1, v2, rng)[0])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10**6)
    ap.add_argument("--loop-trials", type=int, default=200)
    ap.add_argument("--audit-dir", type=Path, help="take the vectorised times from this fllab audit-ldp run")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/ldp_audit.md")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    grid = [(name, k, eps) for name in MECHANISMS for k in DOMAINS for eps in EPSILONS]
    mechanisms = {cell: make_oracle(cell[0], cell[2], cell[1], DELTA if ORACLES[cell[0]].approximate else 0.0) for cell in grid}
    # the loop first: with --audit-dir it may run while that audit is still being written
    loops = {cell: loop_seconds(mechanisms[cell], args.loop_trials) for cell in grid}
    recorded = {}
    if args.audit_dir:
        from fllab.privacy.ldp.grid import read_rows

        while not (args.audit_dir / "audit.csv").exists():  # the audit may still be running
            print(f"waiting for {args.audit_dir}/audit.csv", file=sys.stderr, flush=True)
            time.sleep(30)
        audit_rows = read_rows(args.audit_dir)
        recorded = {(r["mechanism"], r["k"], r["epsilon"]): r for r in audit_rows if r["attack"] == "paper"}
        args.trials = audit_rows[0]["trials"]
    rows = []
    for cell in grid:
        name, k, eps = cell
        if recorded:
            rec = recorded.get(cell)
            if rec is None:
                sys.exit(f"error: {args.audit_dir} has no paper-attack audit of {name} k={k} eps={eps:g}")
            emp, vec = rec["epsilon_lower_bound"], rec["seconds"]
        else:
            res = audit_mechanism(mechanisms[cell], "paper", args.trials)
            emp, vec = res.epsilon_lower_bound, res.seconds
        loop = loops[cell] * args.trials / args.loop_trials
        rows.append((name, k, eps, emp, vec, loop))
        print(f"{name:5s} k={k:3d} eps={eps:<4g} eps_emp={emp:.3f} "
              f"vectorised {vec:6.2f} s  loop (scaled) {loop:8.1f} s", file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    total_vec = sum(r[4] for r in rows)
    total_loop = sum(r[5] for r in rows)
    per_mech = {}
    for name, k, eps, _, vec, loop in rows:
        a = per_mech.setdefault((name, k), [0.0, 0.0])
        a[0] += vec
        a[1] += loop
    lines = [
        "# LDP-Auditor grid: vectorised audit vs a direct per-trial loop",
        "",
        f"11 frequency oracles x epsilons {', '.join(f'{e:g}' for e in EPSILONS)} x domain sizes {', '.join(map(str, DOMAINS))}, "
        f"{args.trials:,} reports per input, the paper's attack, alpha 0.01, delta {DELTA:g} for AGRR/GM/AGM "
        f"({len(rows)} audits, {2 * args.trials * len(rows):,} reports). The loop column runs the same randomizer and test one "
        f"report at a time (LDP-Auditor's loop structure), timed on {args.loop_trials:,} trials per input per cell and scaled to "
        f"{args.trials:,} (the loop was timed first, while the vectorised audit ran in another process when `--audit-dir` is used). LDP-Auditor's paper publishes no run time to compare against.",
        "",
        f"Recorded {datetime.date.today()} with `python {' '.join(sys.argv)}` on {platform.machine()} "
        f"({os.cpu_count()} CPUs), numpy {np.__version__}, Python {platform.python_version()}. "
        f"Load average (1 min) at start and end: {load0:.1f}, {load1:.1f} (a shared machine).",
        "",
        *([f"Vectorised times: the paper-attack audits of `fllab audit-ldp` run {args.audit_dir.name} "
           f"(both attacks, 220 audits: {sum(r['seconds'] for r in audit_rows):.0f} s summed over audits).", ""] if recorded else []),
        f"**Full grid: {total_vec:.0f} s vectorised ({total_vec / 60:.1f} min) against {total_loop:.0f} s "
        f"({total_loop / 3600:.1f} h) for the loop: {total_loop / total_vec:.0f}x.**",
        "",
        "| mechanism | k | vectorised s (5 epsilons) | loop s, scaled (5 epsilons) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, k), (vec, loop) in per_mech.items():
        lines.append(f"| {name} | {k} | {vec:.1f} | {loop:.0f} | {loop / vec:.0f}x |")
    lines += ["", "| mechanism | k | epsilon | eps_emp (paper attack) | vectorised s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {k} | {e:g} | {emp:.3f} | {vec:.2f} |" for n, k, e, emp, vec, _ in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
