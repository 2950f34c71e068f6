"""Mean, spread and 95% confidence intervals over a sweep's seeds (``aggregate.csv``).

A sweep with several seeds repeats every parameter setting once per seed.  Each setting's metric
is summarised by its mean, its sample standard deviation and the half-width of the two-sided 95%
Student-t confidence interval for the mean, ``t_{0.975, n-1} * s / sqrt(n)`` (the interval
for a mean of ``n`` normal draws with unknown variance; it widens sharply for few seeds, which is
the point: 3 seeds give ``t = 4.30``).  ``aggregate.csv`` has one row per setting: its
``param:`` columns, ``n`` (the cells that finished), then ``<metric>.mean``, ``<metric>.std`` and
``<metric>.ci95`` per metric.  Where some cell of a setting did not report a metric, that metric
also gets ``<metric>.n``.  With one value the std is 0 and the interval is left empty (unknown).
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from scipy import stats

from ..io import atomic_write_text
from .results import AGGREGATE, RESULTS, SweepResults, load_results

#: statistics written per metric, in column order
STATS = ("mean", "std", "ci95")
#: status of a cell that trained (a refused cell has ``skipped`` and no metrics)
_FINISHED = {"ok", ""}


def ci95_halfwidth(values: Sequence[float]) -> float | None:
    """Half-width of the two-sided 95% Student-t confidence interval of the mean; None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def summarize(values: Sequence[Any]) -> dict[str, float | None]:
    """``mean``, ``std`` (sample, 0 for one value), ``ci95`` and ``n`` of the values that are finite
    numbers (None, text and booleans are skipped): the one summary behind ``aggregate.csv`` and
    the scorecard."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "ci95": ci95_halfwidth(finite),
        "n": len(finite),
    }


def settings(results: SweepResults) -> list[dict[str, Any]]:
    """One record per parameter setting, in first-seen order: the ``param:`` values, ``n`` (cells of
    the setting that finished), and per metric ``"<metric>.<stat>"`` for :data:`STATS` plus
    ``"<metric>.n"`` (how many of those cells reported it)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in results.rows:
        groups.setdefault(tuple(row[p] for p in results.params), []).append(row)
    out = []
    for key, members in groups.items():
        finished = [m for m in members if str(m.get("status", "")).lower() in _FINISHED]
        record: dict[str, Any] = dict(zip(results.params, key))
        record["n"] = len(finished)
        for metric in results.metrics:
            summary = summarize([m[metric] for m in finished if m[metric] is not None])
            record.update({f"{metric}.{stat}": summary[stat] for stat in (*STATS, "n")})
        out.append(record)
    return out


def several_seeds(results: SweepResults) -> bool:
    """Whether some parameter setting ran under more than one seed."""
    seen: dict[tuple[str, ...], set[Any]] = {}
    for row in results.rows:
        seen.setdefault(tuple(row[p] for p in results.params), set()).add(row.get("seed"))
    return any(len(seeds) > 1 for seeds in seen.values())


def aggregate_csv(results: SweepResults) -> str:
    """The text of ``aggregate.csv`` for ``results`` (see the module docstring)."""
    records = settings(results)
    partial = [m for m in results.metrics if any(r[f"{m}.n"] != r["n"] for r in records)]
    columns = [*results.params, "n"]
    for metric in results.metrics:
        columns += [f"{metric}.{stat}" for stat in STATS] + ([f"{metric}.n"] if metric in partial else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow(["" if record.get(c) is None else (repr(record[c]) if isinstance(record[c], float) else record[c])
                         for c in columns])
    return buf.getvalue()


def write_aggregate(sweep_dir: str | Path) -> Path | None:
    """Write ``sweep_dir/aggregate.csv`` from its ``results.csv`` when some setting ran under several
    seeds; return its path, or None (and remove a stale one) when every setting ran once."""
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir / RESULTS)
    target = sweep_dir / AGGREGATE
    if not several_seeds(results):
        target.unlink(missing_ok=True)
        return None
    atomic_write_text(target, aggregate_csv(results))
    return target
