"""`fllab sweep --jobs 2` against `--jobs 1` on a 12-cell subset of the NDSS'21 heat-map.

The subset is {none, sign_flip, alie, min_max} x {mean, median, trimmed_mean} of
``scenarios/poisoning/ndss21_heatmap.yaml`` (as shipped: 200 rounds, ``threads: 2``), written to a
temporary scenario; both sweeps run from empty directories in this process's children, and the
script checks that their ``results.csv`` agree on every metric except timings.

    python benchmarks/bench_parallel_sweep.py [--rounds R] [--write]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("none", "sign_flip", "alie", "min_max")
DEFENSES = ("mean", "median", "trimmed_mean")


def subset(rounds: int | None) -> dict:
    data = yaml.safe_load((ROOT / "scenarios" / "poisoning" / "ndss21_heatmap.yaml").read_text())
    cases = data["sweep"]["cases"]
    cases["attack"] = {k: cases["attack"][k] for k in ATTACKS}
    cases["defense"] = {k: cases["defense"][k] for k in DEFENSES}
    data["name"] = "ndss21_subset12"
    if rounds:
        data["federation"]["rounds"] = rounds
    return data


def rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(fh)]


def gap(a: str, b: str) -> float | None:
    """Absolute difference of two numeric cells; None when either is not a number."""
    try:
        return abs(float(a) - float(b))
    except ValueError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="override the 200 rounds (for a quick check)")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/parallel_sweep.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "subset.yaml"
        scenario.write_text(yaml.safe_dump(subset(args.rounds), sort_keys=False))
        wall, dirs = {}, {}
        for jobs in (1, 2):
            dirs[jobs] = Path(tmp) / f"jobs{jobs}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fllab.cli", "sweep", str(scenario), "--out", str(dirs[jobs]),
                            "--jobs", str(jobs), "-q"], check=True, cwd=ROOT)
            wall[jobs] = time.perf_counter() - start
            print(f"--jobs {jobs}: {wall[jobs]:.1f} s", file=sys.stderr)
        one, two = rows(dirs[1]), rows(dirs[2])
        cells = len(one)
        differ = sorted({k for a, b in zip(one, two) for k in a if a[k] != b.get(k)})
        gaps = [gap(a[k], b[k]) for a, b in zip(one, two) for k in differ]
        # a --jobs 2 worker runs on its share of the cores: float sums may differ in the last bits
        same = len(one) == len(two) and all(g is not None and g <= 1e-6 for g in gaps)
        if differ:
            print(f"columns that differ: {differ}; largest gap {max(gaps, key=lambda g: -1 if g is None else g)}", file=sys.stderr)
    ratio = wall[2] / wall[1]
    lines = [
        "# `fllab sweep --jobs 2` vs `--jobs 1` (12-cell NDSS'21 subset)",
        "",
        f"Measured {datetime.date.today()} on the 2-core CI machine: `python benchmarks/bench_parallel_sweep.py"
        + (f" --rounds {args.rounds}" if args.rounds else "") + " --write`.",
        "",
        "| sweep | wall (s) |",
        "|---|---:|",
        f"| `--jobs 1` | {wall[1]:.1f} |",
        f"| `--jobs 2` | {wall[2]:.1f} |",
        "",
        f"Ratio jobs 2 / jobs 1: **{ratio:.2f}** (target <= 0.6); {cells} rows in results.csv; "
        f"same results.csv apart from timings (numbers within 1e-6): **{same}**.",
    ]
    print("\n".join(lines))
    if args.write:
        (ROOT / "benchmarks" / "results" / "parallel_sweep.md").write_text("\n".join(lines) + "\n")
    if not same:
        sys.exit("results.csv differ between --jobs 1 and --jobs 2")


if __name__ == "__main__":
    main()
