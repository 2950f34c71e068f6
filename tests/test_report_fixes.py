"""Run reports say what was attacked and defended, give poisoning attacks a section, overlay the
no-attack curve, title sweep cells with their values, and show membership score histograms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from fllab.report import build_report
from fllab.rundir import scores_csv
from fllab.report.threat import threat_summary


def _run(path: Path, config: dict, metrics: dict, *, rounds=None, partition=None, **extra) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    (path / "summary.json").write_text(json.dumps({"name": config["name"], "seed": 0, "status": "ok", "metrics": metrics, **extra}))
    rounds = rounds or [{"round": r, "test_accuracy": 0.5 + 0.1 * r} for r in range(3)]
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    if partition:
        (path / "partition.json").write_text(json.dumps(partition))
    return path


CONFIG = {"name": "poisoned", "algorithm": {"name": "fedavg", "lr": 0.1}, "aggregator": {"name": "krum", "f": 1},
          "defenses": [{"name": "clip_noise", "max_norm": 1.0}],
          "attacks": [{"name": "sign_flip", "fraction": 0.25, "scale": 3.0}]}
PARTITION = {"num_classes": 2, "clients": [{"client": i, "size": 10, "labels": [5, 5], "malicious": i == 3} for i in range(4)]}


def test_threat_summary_names_attacks_families_and_every_kind_of_defense():
    threat = threat_summary(CONFIG, {}, PARTITION)
    assert threat["attacked"] == ["sign_flip (fraction=0.25, scale=3) [poisoning; 1 of 4 clients malicious]"]
    assert threat["defended"] == ["clip_noise (max_norm=1)", "aggregator krum (f=1)"]
    plain = threat_summary({"aggregator": "mean", "algorithm": {"name": "frl"}, "attacks": []}, {}, None)
    assert plain["attacked"] == ["none"] and plain["defended"] == ["algorithm frl"]


def test_poisoning_run_header_section_and_no_attack_overlay(tmp_path):
    twin = _run(tmp_path / "run" / "baseline", {**CONFIG, "attacks": []}, {"utility.accuracy": 0.9},
                rounds=[{"round": r, "test_accuracy": 0.6 + 0.1 * r} for r in range(3)])
    run = _run(tmp_path / "run", CONFIG, {"utility.accuracy": 0.7, "utility.baseline_accuracy": 0.9,
                                          "poisoning.accuracy_drop": 0.2}, partition=PARTITION, baseline="baseline")
    assert twin.is_dir()
    md = build_report(run)[0].read_text()
    assert "**Attacked by:** sign_flip (fraction=0.25, scale=3) [poisoning; 1 of 4 clients malicious]" in md
    assert "**Defended by:** clip_noise (max_norm=1); aggregator krum (f=1)" in md
    assert "## Attack: sign_flip" in md
    section = md.split("## Attack: sign_flip", 1)[1]
    assert "| poisoning.accuracy_drop | 0.2 |" in section and "| malicious clients | 3 |" in section
    assert "The dashed line is the same scenario and seed without attackers." in md


def test_a_sweep_cell_report_is_titled_with_its_values(tmp_path):
    (tmp_path / "cells.json").write_text(json.dumps([{"cell": "c1", "values": {"attack": "alie", "defenses.0.sigma": 0.5}, "seed": 2}]))
    run = _run(tmp_path / "cells" / "c1", {**CONFIG, "name": "grid"}, {"utility.accuracy": 0.7})
    html = build_report(run)[1].read_text()
    assert "<h1>grid · attack=alie, defenses.0.sigma=0.5 · seed 2 " in html


def test_membership_attacks_get_a_score_histogram(tmp_path):
    run = _run(tmp_path / "run", {**CONFIG, "attacks": [{"name": "loss"}]}, {"membership.auc": 0.8})
    rng = np.random.default_rng(0)
    member = np.arange(200) < 100
    score = rng.normal(size=200) + member
    (run / "artefacts" / "loss").mkdir(parents=True)
    (run / "artefacts" / "loss" / "scores.csv").write_bytes(scores_csv(score, member))
    (run / "attacks.json").write_text(json.dumps({"loss": {"family": "membership", "metrics": {"auc": 0.8}, "table": []}}))
    md = build_report(run)[0].read_text()
    assert "(figures/scores-loss.png)" in md and (run / "figures" / "scores-loss.png").is_file()
