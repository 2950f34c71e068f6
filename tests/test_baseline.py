"""No-attack baselines: poisoning.accuracy_drop against the same scenario without attackers, trained
once per run (or reused from a sweep's matching cell), resumable, written atomically."""
from __future__ import annotations

import copy
import csv
import json
import shutil

import pytest

import fllab
from fllab import runner
from fllab.runner import baseline_key, run_sweep
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema

from conftest import TINY

DROP, BASE = "poisoning.accuracy_drop", "utility.baseline_accuracy"


def poisoned_tiny(**evaluation):
    data = copy.deepcopy(TINY)
    data["federation"].update(num_clients=10, rounds=6)
    data["attacks"] = [{"name": "sign_flip", "fraction": 0.3, "scale": 3.0}]
    data["evaluation"] = {"baseline": True, **evaluation}
    return data


def accuracy(data, out):
    return fllab.run(data, out)[1]["metrics"]["utility.accuracy"]


def test_a_poisoning_run_scores_its_drop_against_its_own_no_attack_twin(tmp_path):
    data = poisoned_tiny()
    run_dir, summary = fllab.run(data, tmp_path / "run")
    metrics = summary["metrics"]
    clean = copy.deepcopy(data)
    clean.update(attacks=[], evaluation={})
    assert metrics[BASE] == accuracy(clean, tmp_path / "clean")  # the twin: same seed, no attackers
    assert metrics[DROP] == pytest.approx(metrics[BASE] - metrics["utility.accuracy"])
    assert metrics[DROP] > 0.2  # sign flipping wrecks plain averaging
    assert summary["baseline"] == "baseline"
    twin = json.loads((run_dir / "baseline" / "summary.json").read_text())
    assert twin["name"] == "tiny.baseline" and twin["metrics"]["utility.accuracy"] == metrics[BASE]
    # the run's report links the twin's results (a twin is trained without a report of its own)
    assert '<a href="baseline/summary.json">baseline</a>' in (run_dir / "report.html").read_text()
    assert "[baseline](baseline/summary.json)" in (run_dir / "report.md").read_text()


def test_no_baseline_without_malicious_clients_or_when_not_asked(tmp_path):
    data = poisoned_tiny()
    data["attacks"] = []
    assert DROP not in fllab.run(data, tmp_path / "clean")[1]["metrics"]
    data = poisoned_tiny(baseline=False)
    run_dir, summary = fllab.run(data, tmp_path / "off")
    assert DROP not in summary["metrics"] and not (run_dir / "baseline").exists()


def test_a_killed_run_keeps_its_finished_twin_and_retrains_a_stale_one(tmp_path, monkeypatch):
    data = poisoned_tiny()
    first, _ = fllab.run(data, tmp_path / "first")
    partial = tmp_path / "again.partial"  # what a run killed after its twin finished leaves behind
    shutil.copytree(first / "baseline", partial / "baseline")
    (partial / "baseline" / "marker").write_text("kept")
    (partial / "rounds.jsonl").write_text('{"round": 0, "half-written')
    trained = []
    real = runner.execute
    monkeypatch.setattr(runner, "execute", lambda setup, out, **kw: trained.append(out.name) or real(setup, out, **kw))
    _, summary = fllab.run(data, tmp_path / "again")
    assert trained == ["again"]  # the twin was not retrained
    assert (tmp_path / "again" / "baseline" / "marker").read_text() == "kept"
    # a twin of another config (here: another seed) is not reused
    shutil.copytree(first / "baseline", tmp_path / "other.partial" / "baseline")
    data["seed"] = 1
    trained.clear()
    fllab.run(data, tmp_path / "other")
    assert trained == ["other", "baseline"]


def results(sweep_dir):
    with open(sweep_dir / "results.csv") as fh:
        return {(r["param:attack"], r["param:fraction"]): r for r in csv.DictReader(fh)}


def test_a_sweep_reuses_its_no_attack_cells_and_trains_identical_cells_once(tmp_path, monkeypatch):
    data = poisoned_tiny()
    data["federation"]["rounds"] = 3
    data["attacks"] = []
    data["sweep"] = {
        "cases": {
            "attack": {"sign_flip": {"attacks": [{"name": "sign_flip", "scale": 3.0}]}, "ipm": {"attacks": [{"name": "ipm"}]}},
            # the attacked cells come first: their twin cell is run ahead of its turn
            "fraction": {"0.3": {"attacks.0.fraction": 0.3}, "0": {"attacks": []}},
        }
    }
    trained = []
    real = runner.execute
    monkeypatch.setattr(runner, "execute", lambda setup, out, **kw: trained.append(out.name) or real(setup, out, **kw))
    out, ran, total = run_sweep(data, tmp_path / "sw")
    assert (ran, total) == (4, 4)
    assert len(trained) == 3  # (sign_flip, 0) and (ipm, 0) are the same run: the second is a copy
    table = results(out)
    clean = table[("sign_flip", "0")]
    assert table[("ipm", "0")]["utility.accuracy"] == clean["utility.accuracy"]
    for attack in ("sign_flip", "ipm"):
        row = table[(attack, "0.3")]
        assert float(row[BASE]) == float(clean["utility.accuracy"])
        assert float(row[DROP]) == pytest.approx(float(row[BASE]) - float(row["utility.accuracy"]))
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert summary["baseline"] == f"../{clean['cell']}"
    assert table[("sign_flip", "0")][DROP] == "" and not (out / "baselines").exists()


def test_a_sweep_without_a_matching_cell_trains_each_twin_once(tmp_path):
    data = poisoned_tiny()
    data["federation"]["rounds"] = 2
    data["sweep"] = {"cases": {"attack": {"sign_flip": {}, "ipm": {"attacks": [{"name": "ipm", "fraction": 0.3}]}},
                               "fraction": {"0.3": {}}}}
    out, _, _ = run_sweep(data, tmp_path / "sw")
    twins = list((out / "baselines").iterdir())
    key = baseline_key(resolve(validate_schema({k: v for k, v in data.items() if k != "sweep"})).resolved)
    assert [t.name for t in twins] == [key]
    table = results(out)
    base = json.loads((twins[0] / "summary.json").read_text())["metrics"]["utility.accuracy"]
    assert float(table[("sign_flip", "0.3")][BASE]) == float(table[("ipm", "0.3")][BASE]) == base


def test_baseline_key_ignores_attacks_names_and_the_switch_but_not_training():
    setup = resolve(validate_schema(poisoned_tiny()))
    clean = copy.deepcopy(setup.resolved)
    clean.update(attacks=[], name="other", description="x")
    clean["evaluation"]["baseline"] = False
    assert baseline_key(clean) == baseline_key(setup.resolved)
    clean["seed"] = 5
    assert baseline_key(clean) != baseline_key(setup.resolved)
