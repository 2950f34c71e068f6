"""Sweeps: grid x seeds expansion, results.csv with one row per cell, resume after a kill."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import yaml

from fllab.runner import run_sweep
from fllab.scenario.loader import expand_sweep


def rows(sweep_dir):
    with open(sweep_dir / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_expansion_is_the_grid_times_the_seeds(tiny):
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.1, 0.2], "federation.partition.name": ["iid", "shards"]}, "seeds": [0, 1, 2]}
    cells = expand_sweep(tiny)
    assert len(cells) == 12 and len({c[0] for c in cells}) == 12
    assert {(c[1]["algorithm.lr"], c[2]) for c in cells} == {(lr, s) for lr in (0.1, 0.2) for s in (0, 1, 2)}
    assert all("sweep" not in c[3] for c in cells)


def test_sweep_writes_results_and_skips_finished_cells(tmp_path, tiny):
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}, "seeds": [0, 1]}
    out, ran, total = run_sweep(tiny, tmp_path / "sw")
    assert (ran, total) == (4, 4)
    table = rows(out)
    assert len(table) == 4 and {r["param:algorithm.lr"] for r in table} == {"0.05", "0.2"}
    assert all(r["status"] == "ok" and 0 <= float(r["utility.accuracy"]) <= 1 for r in table)
    assert (out / "report.html").is_file()
    _, ran_again, _ = run_sweep(tiny, tmp_path / "sw")
    assert ran_again == 0 and len(rows(out)) == 4


def test_killed_sweep_resumes_with_every_cell_exactly_once(tmp_path, tiny):
    tiny["federation"]["rounds"] = 3
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.1, 0.2]}, "seeds": [0, 1]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "fllab.cli", "sweep", str(path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "results.csv").exists() and len(rows(out)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read().decode()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(rows(out))
    assert 2 <= done_before < 6
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    table = rows(out)
    assert len(table) == 6
    assert sorted(r["cell"] for r in table) == sorted(c[0] for c in expand_sweep(tiny))
    assert not list((out / "cells").glob("*.partial"))


def test_changed_sweep_in_same_directory_is_refused(tmp_path, tiny):
    import pytest

    from fllab.errors import ConfigError

    tiny["federation"]["rounds"] = 1
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.1]}}
    run_sweep(tiny, tmp_path / "sw")
    tiny["sweep"]["grid"]["algorithm.lr"] = [0.3]
    with pytest.raises(ConfigError, match="holds a different sweep"):
        run_sweep(tiny, tmp_path / "sw")


def test_named_case_axes_cross_and_invalid_cells_are_skipped(tmp_path, tiny):
    tiny["federation"]["rounds"] = 1
    tiny["sweep"] = {
        "cases": {
            "attack": {"none": {"attacks": []}, "sign_flip": {"attacks": [{"name": "sign_flip", "fraction": 0.25}]}},
            "defense": {"mean": {"aggregator": "mean"}, "krum": {"aggregator": {"name": "krum", "f": 1}}},
        },
        "skip_invalid": True,
    }
    cells = expand_sweep(tiny)
    assert sorted(tuple(sorted(c[1].items())) for c in cells) == sorted(
        (("attack", a), ("defense", d)) for a in ("none", "sign_flip") for d in ("mean", "krum")
    )
    out, ran, total = run_sweep(tiny, tmp_path / "cases")
    table = {(r["param:attack"], r["param:defense"]): r for r in rows(out)}
    assert len(table) == 4
    # krum with f=1 needs n > 2f + 2 = 4 clients: refused, recorded as skipped, never trained
    assert table[("none", "krum")]["status"] == "skipped" and table[("none", "krum")]["utility.accuracy"] == ""
    assert "krum needs n > 2f + 2 (f=1, n=4)" in table[("none", "krum")]["reason"]
    assert table[("sign_flip", "mean")]["reason"] == ""
    assert table[("sign_flip", "mean")]["status"] == "ok"


def test_shipped_poisoning_sweeps_resolve_and_refuse_what_frl_cannot_host():
    """ndss21_heatmap.yaml: the FRL column hosts label flipping and the rank attacks; gradient
    attacks against it, and rank attacks against gradient aggregators, are skipped with the reason."""
    from pathlib import Path

    from fllab.runner import resolve_cells
    from fllab.scenario.loader import load_raw

    folder = Path(__file__).resolve().parents[1] / "scenarios" / "poisoning"
    cells = {tuple(v.values()): s for _, v, _, s in resolve_cells(load_raw(folder / "ndss21_heatmap.yaml"))}
    attacks, defenses = {a for a, _ in cells}, {d for _, d in cells}
    assert len(cells) == len(attacks) * len(defenses) == 12 * 15
    assert [a for a in sorted(attacks) if not isinstance(cells[(a, "frl")], str)] == ["label_flip", "none", "rank_adaptive", "rank_reversal"]
    assert cells[("min_max", "frl")] == "attacks.0: min_max needs a delta or gradient update; algorithm frl sends a ranking"
    assert cells[("rank_reversal", "krum")] == "attacks.0: rank_reversal needs a ranking update; algorithm fedsgd sends a gradient"
    refused = {k for k, s in cells.items() if isinstance(s, str)}
    assert refused == {(a, "frl") for a in attacks - {"label_flip", "none", "rank_adaptive", "rank_reversal"}} | {
        (a, d) for a in ("rank_reversal", "rank_adaptive") for d in defenses - {"frl"}
    }
    assert all(cells[k].scenario.evaluation.baseline for k in cells.keys() - refused)
    for name, total in (("malicious_fraction", 50), ("backdoor_clipping", 6)):
        resolved = resolve_cells(load_raw(folder / f"{name}.yaml"))
        assert len(resolved) == total and not any(isinstance(s, str) for *_, s in resolved)


def test_parallel_sweep_writes_the_same_results_and_resumes(tmp_path, tiny):
    """--jobs 2: the no-attack twins train in the first wave, the poisoning cells in the second;
    results.csv equals the serial sweep's (but for wall times), and a re-run runs nothing."""
    tiny["federation"]["num_clients"] = 5
    tiny["attacks"] = [{"name": "label_flip", "fraction": 0.2}]
    tiny["evaluation"] = {"baseline": True}
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}, "seeds": [0]}
    serial_dir, ran, _ = run_sweep(tiny, tmp_path / "serial")
    parallel_dir, ran_parallel, total = run_sweep(tiny, tmp_path / "parallel", jobs=2)
    assert ran == ran_parallel == total == 2
    strip = lambda table: [{k: v for k, v in r.items() if k != "run.seconds"} for r in table]  # noqa: E731
    assert strip(rows(parallel_dir)) == strip(rows(serial_dir))
    assert all(r["poisoning.accuracy_drop"] for r in rows(parallel_dir))
    assert run_sweep(tiny, tmp_path / "parallel", jobs=2)[1] == 0


def test_jobs_zero_is_a_usage_error(tmp_path, tiny):
    from click.testing import CliRunner

    from fllab.cli import main

    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny))
    res = CliRunner().invoke(main, ["sweep", str(path), "--jobs", "0", "--out", str(tmp_path / "sw")])
    assert res.exit_code == 2 and "--jobs" in res.output and not (tmp_path / "sw").exists()


def test_sweep_progress_names_the_cells_and_the_end_line_the_report(tmp_path, tiny):
    from click.testing import CliRunner

    from fllab.cli import main

    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny))
    res = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    assert "[0/2 cells done] running cell algorithm.lr=0.05 seed=0" in res.stderr
    assert "[1/2 cells done] running cell algorithm.lr=0.2 seed=0" in res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.endswith(f"report {tmp_path / 'sw' / 'report.html'}") and (tmp_path / "sw" / "report.html").is_file()
    quiet = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "sw2"), "--quiet"])
    assert quiet.exit_code == 0 and "cells done" not in quiet.stderr
