"""Mean and 95% confidence interval per setting of a finished (or partly finished) sweep: the
tables of docs/results.md's federated-LoRA section.

    python benchmarks/lora_summary.py SWEEP_DIR [--metrics utility.accuracy,privacy.epsilon ...]
    python benchmarks/lora_summary.py SWEEP_DIR --paired setting ffa_lora/eps1 fedavg_lora/eps1 utility.accuracy

Rows of ``results.csv`` with status ``ok`` are grouped by every ``param:`` column; the interval is
Student's t: ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (sd with ddof 1; none for n = 1).
``--paired PARAM A B METRIC`` prints the per-seed differences A - B of METRIC between the rows whose
``param:PARAM`` is A and B (same seeds), their mean and 95% interval.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from scipy import stats

DEFAULT = ("utility.accuracy", "privacy.epsilon", "dp.clipped_fraction", "lora.aggregation_error", "run.upload_bytes")


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def summarise(sweep: Path, metrics: list[str]) -> str:
    rows = [r for r in csv.DictReader(open(sweep / "results.csv")) if r.get("status", "ok") == "ok"]
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("param:")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    present = [m for m in metrics if rows and m in rows[0]]
    head = [k.removeprefix("param:") for k in keys] + ["n"] + present
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, members in groups.items():
        cells = list(setting) + [str(len(members))]
        for m in present:
            vals = [float(r[m]) for r in members if r.get(m) not in (None, "")]
            if not vals:
                cells.append("")
                continue
            mean, ci = mean_ci(vals)
            cells.append(f"{mean:.4g}" + ("" if ci is None else f" ± {ci:.2g}"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def paired(sweep: Path, param: str, a: str, b: str, metric: str) -> str:
    rows = [r for r in csv.DictReader(open(sweep / "results.csv")) if r.get("status", "ok") == "ok"]
    va = {r["seed"]: float(r[metric]) for r in rows if r[f"param:{param}"] == a}
    vb = {r["seed"]: float(r[metric]) for r in rows if r[f"param:{param}"] == b}
    diff = [va[s] - vb[s] for s in sorted(va) if s in vb]
    mean, ci = mean_ci(diff)
    return (f"{a} - {b}, {metric}: {mean:+.4f}" + ("" if ci is None else f" ± {ci:.4f}")
            + f" (n={len(diff)}; per seed {', '.join(f'{d:+.3f}' for d in diff)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--metrics", default=",".join(DEFAULT))
    ap.add_argument("--paired", nargs=4, metavar=("PARAM", "A", "B", "METRIC"))
    args = ap.parse_args()
    if args.paired:
        for sweep in args.sweeps:
            print(paired(sweep, *args.paired))
        return
    for sweep in args.sweeps:
        print(f"### {sweep.name}\n\n{summarise(sweep, args.metrics.split(','))}\n")


if __name__ == "__main__":
    main()
