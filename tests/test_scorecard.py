"""Scorecards: schema and bad input, the confound rules, n/a with reasons, CIs over seeds, resume,
the report and the CLI.  Testbeds are tiny real ones (sklearn digits) that train in about a second."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fllab.cli import main
from fllab.errors import ConfigError
from fllab.runner import baseline_setup, execute, poisoned
from fllab.scorecard import parse, run_scorecard, terminal_table
from fllab.scorecard.expand import expand
from fllab.report.aggregate import summarize
from fllab.report.browser import check_page, find_chromium
from fllab.scorecard.table import TITLES

DIGITS = {"dataset": {"name": "digits"}, "model": {"name": "mlp", "hidden": [16]}}
CARD = {
    "name": "tiny_card",
    "threads": 1,
    "scorecard": {
        "seeds": [0, 1],
        "defenses": [
            {"label": "none"},
            {"label": "dp_fedavg", "defenses": [{"name": "dp_fedavg", "noise_multiplier": 1.0}]},
            # Krum refuses n <= 2f + 2 = 4: n/a on the 4-client testbeds, runs on poisoning's 6 clients
            {"label": "krum", "aggregator": {"name": "krum", "f": 1}},
        ],
        "inversion": {
            "testbed": {"task": DIGITS, "federation": {"num_clients": 4, "rounds": 1},
                        "algorithm": {"name": "fedsgd", "batch_size": 1, "lr": 0.1}},
            "attack": {"name": "inverting_gradients", "targets": 2, "iterations": 20, "lpips": False},
        },
        "membership": {
            "testbed": {"task": DIGITS, "federation": {"num_clients": 4, "rounds": 2},
                        "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.1}},
            "attack": {"name": "loss", "members": 40},
        },
        "poisoning": {
            "testbed": {"task": DIGITS, "federation": {"num_clients": 6, "rounds": 2},
                        "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.1}},
            "attack": {"name": "sign_flip", "fraction": 0.2, "scale": 4.0},
        },
    },
}


def card() -> dict:
    return copy.deepcopy(CARD)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("card") / "card"
    path, rows, ran, total = run_scorecard(card(), out)
    assert (path, ran, total) == (out, total, 18)  # 3 families x 3 settings x 2 seeds, each once
    return out, rows


def test_student_t_interval_matches_the_hand_computation():
    s = summarize([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653 (tables); s = 1, n = 3
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert summarize([5.0]) == {"mean": 5.0, "std": 0.0, "ci95": None, "n": 1}
    assert summarize([None, float("nan")])["n"] == 0


def test_confound_rules_hold_by_construction():
    cells = expand(parse(card()))
    for _, values, _, setup in cells:
        if isinstance(setup, str):
            continue
        families = {a.family for a in setup.attacks}
        assert families == {values["family"]}  # one attack per run: passive runs host no malicious client
        assert poisoned(setup) == (values["family"] == "poisoning")


def test_passive_runs_train_exactly_like_their_no_attack_twin(tmp_path, finished):
    out, _ = finished
    index = json.loads((out / "cells.json").read_text())
    for family in ("inversion", "membership"):
        entry = next(c for c in index if c["values"] == {"family": family, "defense": "none"} and c["seed"] == 1)
        run_dir = out / "cells" / entry["cell"]
        cells = {cid: s for cid, _, _, s in expand(parse(card()))}
        twin_dir = tmp_path / family
        twin = execute(baseline_setup(cells[entry["cell"]]), twin_dir, report=False)
        rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
        twin_rounds = [json.loads(line) for line in (twin_dir / "rounds.jsonl").read_text().splitlines()]
        drop = ("seconds",)
        assert [{k: v for k, v in r.items() if k not in drop} for r in rounds] == \
               [{k: v for k, v in r.items() if k not in drop} for r in twin_rounds]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["metrics"]["utility.accuracy"] == twin["metrics"]["utility.accuracy"]
        assert any(k.startswith(f"{family}.") for k in summary["metrics"])  # the attack did run


def test_scores_carry_every_family_mean_and_ci(finished):
    out, rows = finished
    by = {r.label: r for r in rows}
    none = by["none"]
    for metric in ("utility.accuracy", "inversion.psnr", "inversion.psnr_random_guess", "membership.auc",
                   "membership.tpr_at_0.001_fpr", "privacy.epsilon_lower_bound", "poisoning.accuracy_drop",
                   "poisoning.accuracy_drop_vs_undefended", "seconds"):
        assert none.stats[metric]["n"] == 2, metric
        assert none.stats[metric]["ci95"] is not None, metric
    assert none.stats["utility.accuracy_drop"]["mean"] == 0.0
    assert by["dp_fedavg"].stats["privacy.epsilon"]["mean"] > 0
    # the robust aggregator resists the sign flip that the plain mean suffers
    assert by["krum"].mean("poisoning.accuracy_drop_vs_undefended") < none.mean("poisoning.accuracy_drop_vs_undefended")
    saved = json.loads((out / "scorecard.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["none", "dp_fedavg", "krum"]
    header = (out / "scorecard.csv").read_text().splitlines()[0].split(",")
    assert {"utility.accuracy.mean", "utility.accuracy.ci95", "utility.accuracy.n"} <= set(header)


def test_refused_family_is_shown_na_with_its_reason(finished):
    out, rows = finished
    krum = next(r for r in rows if r.label == "krum")
    assert set(krum.na) == {"inversion", "membership"}
    assert all("krum" in why.lower() or "2f" in why for why in krum.na.values()), krum.na
    assert "poisoning.accuracy_drop" in krum.stats  # the family it applies to still ran
    text = terminal_table(rows, "none", ["inversion", "membership", "poisoning"])
    assert text.count("n/a") >= 4 and krum.na["inversion"] in text
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "| **krum** | " in md and "n/a" in md and krum.na["membership"] in md
    assert 'class="sc na"' in html


def test_report_has_table_fronts_threats_reconstructions_and_config(finished):
    out, _ = finished
    md = (out / "report.md").read_text()
    for section in ("## Table", "## Threat models", "## Pareto fronts", "## Reconstructions", "## Config", "Best trades"):
        assert section in md, section
    assert "best: " in md and "worst: " in md  # reconstructions of the most and least private settings
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "hsl(" in html
    for rel in (line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")):
        assert (out / rel).is_file(), rel


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (scripts/install-dev.sh installs it)")
def test_report_renders_in_chromium(finished):
    """The report as a reader sees it (headless Chromium, like the run and sweep reports in
    test_browser.py): no console error, every figure decoded, the table with a column per family,
    each section, and the n/a cell with its reason."""
    out, rows = finished
    columns = ("utility", "inversion", "membership", "poisoning", "privacy", "seconds")
    table = ["defensesetting", *("".join(TITLES[c]) for c in columns)]  # each header: a title and its <small> subtitle
    page = check_page(out / "report.html")
    assert page.problems(tables=[table]) == []
    for section in ("Table", "Threat models", "Pareto fronts", "Reconstructions", "Config"):
        assert section in page.headings, section
    alts = [i["alt"] for i in page.images]
    assert {"membership AUC vs accuracy", "inversion PSNR (dB) vs accuracy"} <= set(alts), alts
    assert any(a.startswith("best: ") for a in alts) and any(a.startswith("worst: ") for a in alts), alts
    krum = next(r for r in rows if r.label == "krum")
    assert "n/a" in page.text and "krum" in page.text and krum.na


def test_resume_recomputes_nothing_finished(finished):
    out, _ = finished
    index = json.loads((out / "cells.json").read_text())
    stamps = {c["cell"]: (out / "cells" / c["cell"] / "summary.json").stat().st_mtime_ns for c in index}
    victim = next(c["cell"] for c in index if c["values"]["family"] == "membership")
    import shutil

    shutil.rmtree(out / "cells" / victim)
    _, _, ran, total = run_scorecard(card(), out)
    assert (ran, total) == (1, 18)
    for cid, stamp in stamps.items():
        if cid != victim:
            assert (out / "cells" / cid / "summary.json").stat().st_mtime_ns == stamp


def test_another_scorecard_in_the_same_directory_is_refused(finished):
    out, _ = finished
    other = card()
    other["scorecard"]["seeds"] = [3]
    with pytest.raises(ConfigError, match="different scorecard"):
        run_scorecard(other, out)


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no scorecard"):
        run_scorecard(card(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["scorecard"].update(sedes=[0]), "scorecard.sedes: unknown key; did you mean 'seeds'?"),
        (lambda d: d["scorecard"]["defenses"].append({"label": "none"}), "defense labels must be unique"),
        (lambda d: d["scorecard"]["membership"].update(attack={"name": "sign_flip"}), "'sign_flip' is a poisoning attack"),
        (lambda d: d["scorecard"]["defenses"][2]["aggregator"].update(ff=1), "scorecard.defenses.2.aggregator"),
        (lambda d: d["scorecard"]["poisoning"]["testbed"]["federation"].update(rounds=0), "rounds"),
        (lambda d: d["scorecard"]["defenses"].insert(0, {"label": "krum_first", "aggregator": {"name": "krum", "f": 1}}),
         "the reference setting must run on every testbed"),
    ],
)
def test_bad_scorecards_exit_2_with_one_line_and_write_nothing(tmp_path, mutate, expected):
    data = card()
    mutate(data)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["scorecard", str(path), "--out", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not out.exists()


def test_cli_run_on_a_scorecard_prints_the_table_and_report_path(tmp_path):
    data = card()
    data["scorecard"].update(seeds=[0], defenses=[{"label": "none"}])
    del data["scorecard"]["inversion"], data["scorecard"]["poisoning"]
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "MIA AUC" in res.stdout and str(out / "report.html") in res.stdout
    res = CliRunner().invoke(main, ["report", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and "report.html" in res.stdout


@pytest.mark.parametrize("name, settings, refused", [("quickstart.yaml", 4, 1), ("tradeoffs/defenses_vs_all.yaml", 11, 1)])
def test_shipped_scorecards_resolve(name, settings, refused):
    from fllab.scenario.loader import load_raw

    root = Path(__file__).resolve().parents[1] / "scenarios"
    sc = parse(load_raw(root / name))
    cells = expand(sc)
    assert len(sc.scorecard.defenses) == settings >= (10 if "tradeoffs" in name else 4)
    assert sc.scorecard.families == ["inversion", "membership", "poisoning"]
    na = {(values["family"], values["defense"]) for _, values, _, s in cells if isinstance(s, str)}
    assert len(na) == refused and all(family == "inversion" and "dp_sgd" in label for family, label in na)


def test_help_lists_the_scorecard_command():
    res = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert res.exit_code == 0 and "scorecard" in res.output


def test_refusal_found_only_when_the_data_loads_is_na_too(tmp_path):
    data = card()
    data["scorecard"].update(seeds=[0], defenses=[{"label": "none"}, {"label": "crowd", "set": {"federation.num_clients": 5000}}])
    del data["scorecard"]["inversion"], data["scorecard"]["poisoning"]
    cells = expand(parse(data))
    assert not any(isinstance(s, str) for *_, s in cells)  # the schema and components accept it ...
    _, rows, _, _ = run_scorecard(data, tmp_path / "out")
    crowd = next(r for r in rows if r.label == "crowd")
    assert "num_clients" in crowd.na["membership"]  # ... the partition refuses it: n/a, not a crash


def test_an_unset_aggregator_f_is_each_cells_malicious_count():
    """A bare robust aggregator tolerates the poisoning testbed's malicious clients (20% of 6: 1)
    there, and nobody on the passive testbeds, which have none; the twin keeps the same f."""
    data = card()
    data["scorecard"]["defenses"] = [{"label": "none"}, {"label": "tm", "aggregator": "trimmed_mean"}]
    setups = {values["family"]: s for _, values, _, s in expand(parse(data)) if values["defense"] == "tm"}
    assert setups["poisoning"].resolved["aggregator"] == {"name": "trimmed_mean", "f": 1}
    assert baseline_setup(setups["poisoning"]).resolved["aggregator"]["f"] == 1
    assert setups["membership"].resolved["aggregator"]["f"] == 0 and setups["inversion"].resolved["aggregator"]["f"] == 0
