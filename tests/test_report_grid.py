"""Sweep grids read like robustness papers: drop against the undefended clean model, worst case
over attacks per defense, colour scales that do not stretch seed noise; PSNR in dB beside the
random guess."""
from __future__ import annotations

import csv
import statistics

import pytest
import yaml

from fllab.report import build_sweep_report
from fllab.report import grid
from fllab.report.plots import reference_value


def _sweep(tmp_path, accuracy):
    """attack x defense, 2 seeds; ``accuracy[(attack, defense)]`` per seed; cells carry configs."""
    rows = []
    for (attack, defense), per_seed in accuracy.items():
        for seed, acc in enumerate(per_seed):
            cell = f"{attack}-{defense}-{seed}"
            rows.append({"cell": cell, "param:attack": attack, "param:defense": defense, "seed": seed, "status": "ok",
                         "utility.accuracy": acc, "poisoning.accuracy_drop": 0.0 if attack == "none" else 0.1})
            config = {"name": "grid", "aggregator": {"name": "mean" if defense == "none" else defense},
                      "defenses": [], "attacks": [] if attack == "none" else [{"name": attack, "fraction": 0.2}]}
            (tmp_path / "cells" / cell).mkdir(parents=True)
            (tmp_path / "cells" / cell / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


ACCURACY = {
    ("none", "none"): [0.90, 0.92], ("none", "krum"): [0.70, 0.72],
    ("sign_flip", "none"): [0.30, 0.32], ("sign_flip", "krum"): [0.69, 0.71],
    ("alie", "none"): [0.85, 0.87], ("alie", "krum"): [0.50, 0.52],
}


def test_drop_against_the_undefended_clean_model_and_worst_case(tmp_path):
    _sweep(tmp_path, ACCURACY)
    from fllab.report.results import load_results
    from fllab.report.sweep import aggregate

    results = load_results(tmp_path / "results.csv")
    settings = aggregate(results)
    roles = grid.setting_roles(tmp_path, results.rows, results.params)
    assert roles[("none", "none")] == (False, False) and roles[("alie", "krum")] == (True, True)
    assert grid.add_drop_vs_undefended(settings, results.params, roles, [])
    drop = {(s["param:attack"], s["param:defense"]): s[grid.DROP_VS_UNDEFENDED] for s in settings}
    # krum without attackers already costs 0.20 against the clean, undefended 0.91
    assert drop[("none", "krum")] == pytest.approx(0.20)
    assert drop[("sign_flip", "krum")] == pytest.approx(0.21)
    worst_krum = grid.worst([drop[("sign_flip", "krum")], drop[("alie", "krum")]], grid.DROP_VS_UNDEFENDED)
    assert worst_krum == pytest.approx(0.40)  # alie's drop: krum's worst attack
    assert grid.worst([0.7, 0.51], "utility.accuracy") == 0.51
    md, _ = build_sweep_report(tmp_path)
    text = md.read_text()
    assert "heatmap-poisoning-accuracy_drop_vs_undefended.png" in text
    assert "worst value over the attacks" in text and "mistaken for a robust one" in text


def test_colour_span_is_four_standard_errors_or_a_tenth_of_a_bounded_scale():
    settings = [{"utility.accuracy:std": 0.10, "utility.accuracy:n": 4}, {"utility.accuracy:std": 0.02, "utility.accuracy:n": 4},
                {"utility.accuracy:std": 0.06, "utility.accuracy:n": 4}]
    assert grid.min_colour_span(settings, "utility.accuracy") == pytest.approx(4 * 0.06 / 2)  # median std / sqrt(4)
    assert grid.min_colour_span([], "utility.accuracy") == pytest.approx(0.1)
    assert grid.min_colour_span([], "inversion.psnr") == 2.0 and grid.min_colour_span([], "run.seconds") == 0.0
    assert grid.bounds("membership.auc") == (0.0, 1.0) and grid.bounds("inversion.psnr") is None


def test_psnr_is_read_in_db_against_the_random_guess(tmp_path):
    rows = [{"cell": f"c{i}", "param:defenses.0.sigma": s, "seed": 0, "status": "ok", "utility.accuracy": a,
             "inversion.psnr": p, "inversion.psnr_random_guess": g}
            for i, (s, a, p, g) in enumerate([(0, 0.9, 24.0, 10.0), (0.1, 0.8, 15.0, 10.2), (1, 0.6, 11.0, 9.8)])]
    with (tmp_path / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    label, value = reference_value(rows, "inversion.psnr")
    assert value == pytest.approx(statistics.fmean([10.0, 10.2, 9.8])) and label == "random guess (10 dB)"
    md, _ = build_sweep_report(tmp_path)
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    # the random guess is a reference line, not a trade-off of its own
    assert figures == ["tradeoff-utility-accuracy-inversion-psnr.png"]


def test_without_cell_configs_the_no_attack_label_is_left_out_of_the_worst_case():
    params = ["param:attack", "param:defense"]
    assert not grid.is_attacked({"param:attack": "none", "param:defense": "krum"}, params, {}, "param:attack")
    assert grid.is_attacked({"param:attack": "alie", "param:defense": "krum"}, params, {}, "param:attack")
    assert grid.is_attacked({"param:attack": "none", "param:defense": "krum"}, params,
                            {("none", "krum"): (True, True)}, "param:attack")  # the config wins over the label
    assert grid.axis_role("param:attacks.0.name") == "attack" and grid.axis_role("param:aggregator.name") == "defense"
    assert grid.axis_role("param:algorithm.name") == "defense" and grid.axis_role("param:algorithm.lr") is None
