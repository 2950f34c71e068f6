"""aggregate.csv: mean, std and Student-t 95% confidence intervals per sweep setting."""
from __future__ import annotations

import csv
import math
import statistics

import pytest
from scipy import stats

from fllab.report.aggregate import aggregate_csv, ci95_halfwidth, settings, summarize, write_aggregate
from fllab.report.results import load_results
from fllab.runner import run_sweep


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("values", [[0.5, 0.6, 0.7], [1.0, 3.0], [0.91, 0.93, 0.88, 0.95, 0.9]])
def test_ci95_is_the_student_t_interval_of_the_mean(values):
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values))
    assert ci95_halfwidth(values) == pytest.approx((high - low) / 2, rel=1e-12)


def test_ci95_by_hand_and_for_a_single_value():
    # t(0.975, 1) = 12.706; s = sqrt(2) for {1, 3}; half-width = 12.706 * sqrt(2) / sqrt(2)
    assert ci95_halfwidth([1.0, 3.0]) == pytest.approx(12.7062, abs=1e-4)
    assert ci95_halfwidth([0.7]) is None
    assert summarize([0.7]) == {"mean": 0.7, "std": 0.0, "ci95": None, "n": 1}
    assert summarize([]) == {"mean": None, "std": None, "ci95": None, "n": 0}
    assert summarize([1.0, float("inf"), 3.0])["n"] == 2


def _rows():
    rows = []
    for lr, accs in (("0.1", (0.80, 0.84, 0.82)), ("0.2", (0.70, 0.74, None))):
        for seed, acc in enumerate(accs):
            rows.append({"cell": f"lr{lr}-s{seed}", "param:algorithm.lr": lr, "seed": seed, "status": "ok",
                         "utility.accuracy": "" if acc is None else acc, "run.seconds": 1.0 + seed})
    rows.append({"cell": "lr0.3-s0", "param:algorithm.lr": "0.3", "seed": 0, "status": "skipped",
                 "utility.accuracy": "", "run.seconds": ""})
    return rows


def test_aggregate_rows_count_finished_cells_and_flag_missing_values(tmp_path):
    _write(tmp_path / "results.csv", _rows())
    path = write_aggregate(tmp_path)
    table = _read(path)
    assert list(table[0]) == ["param:algorithm.lr", "n", "utility.accuracy.mean", "utility.accuracy.std",
                              "utility.accuracy.ci95", "utility.accuracy.n", "run.seconds.mean", "run.seconds.std",
                              "run.seconds.ci95"]
    by_lr = {r["param:algorithm.lr"]: r for r in table}
    first = by_lr["0.1"]
    assert first["n"] == "3" and first["utility.accuracy.n"] == "3"
    assert float(first["utility.accuracy.mean"]) == pytest.approx(0.82)
    assert float(first["utility.accuracy.std"]) == pytest.approx(0.02)
    assert float(first["utility.accuracy.ci95"]) == pytest.approx(stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3))
    second = by_lr["0.2"]  # one seed did not report accuracy: 2 values, n stays 3
    assert second["n"] == "3" and second["utility.accuracy.n"] == "2"
    assert float(second["utility.accuracy.ci95"]) == pytest.approx(stats.t.ppf(0.975, 1) * statistics.stdev([0.7, 0.74]) / math.sqrt(2))
    skipped = by_lr["0.3"]  # refused cell: a row with n = 0 and no numbers
    assert skipped["n"] == "0" and skipped["utility.accuracy.mean"] == "" and skipped["run.seconds.ci95"] == ""


def test_single_seed_sweeps_write_no_aggregate_and_drop_a_stale_one(tmp_path):
    rows = [r for r in _rows() if r["seed"] == 0]
    _write(tmp_path / "results.csv", rows)
    (tmp_path / "aggregate.csv").write_text("stale\n")
    assert write_aggregate(tmp_path) is None
    assert not (tmp_path / "aggregate.csv").exists()


def test_settings_are_the_rows_of_aggregate_csv(tmp_path):
    _write(tmp_path / "results.csv", _rows())
    results = load_results(tmp_path / "results.csv")
    records = settings(results)
    assert [r["param:algorithm.lr"] for r in records] == ["0.1", "0.2", "0.3"]
    assert len(aggregate_csv(results).splitlines()) == 1 + len(records)


def test_a_sweep_with_seeds_writes_aggregate_csv_and_reports_intervals(tmp_path, tiny):
    tiny["federation"]["rounds"] = 1
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}, "seeds": [0, 1]}
    out, _, _ = run_sweep(tiny, tmp_path / "sw")
    table = _read(out / "aggregate.csv")
    assert [r["param:algorithm.lr"] for r in table] == ["0.05", "0.2"] and {r["n"] for r in table} == {"2"}
    cells = _read(out / "results.csv")
    for row in table:
        accs = [float(c["utility.accuracy"]) for c in cells if c["param:algorithm.lr"] == row["param:algorithm.lr"]]
        assert float(row["utility.accuracy.mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(row["utility.accuracy.ci95"]) == pytest.approx(ci95_halfwidth(accs))
    html = (out / "report.html").read_text()
    assert "95% confidence interval" in html and "n (seeds)" in html and 'href="aggregate.csv"' in html
