"""The Python API has the CLI's verbs: run (refusing a sweep), sweep, report, and a pandas loader."""
from __future__ import annotations

import json

import pytest

import fllab
from fllab.errors import ConfigError, FllabError
from fllab.scenario.loader import load_scenario

pd = pytest.importorskip("pandas")


def test_run_refuses_a_sweep_block_instead_of_ignoring_it(tiny, tmp_path, write_yaml):
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.1, 0.2]}}
    for given in (tiny, write_yaml(tiny), load_scenario(write_yaml(tiny))):
        with pytest.raises(ConfigError, match="sweep block: run it with fllab.sweep"):
            fllab.run(given, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    del tiny["sweep"]
    with pytest.raises(ConfigError, match="no sweep block"):
        fllab.sweep(tiny, tmp_path / "never")


def test_sweep_then_load_results_as_dataframes(tiny, tmp_path):
    tiny["federation"]["rounds"] = 1
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}, "seeds": [0, 1]}
    sweep_dir = fllab.sweep(tiny, tmp_path / "sw", overrides=["federation.num_clients=3"])
    cells = fllab.load_results(sweep_dir)
    assert len(cells) == 4 and set(cells["algorithm.lr"]) == {0.05, 0.2} and set(cells["seed"]) == {0, 1}
    assert cells["utility.accuracy"].dtype.kind == "f" and cells["utility.accuracy"].between(0, 1).all()
    settings = fllab.load_results(sweep_dir, aggregate=True)
    assert list(settings["n"]) == [2, 2]
    means = cells.groupby("algorithm.lr", sort=False)["utility.accuracy"].mean()
    assert settings["utility.accuracy.mean"].tolist() == pytest.approx(means.tolist())
    config = json.loads((sweep_dir / "cells.json").read_text())
    assert len(config) == 4
    cell_dir = sweep_dir / "cells" / config[0]["cell"]
    one = fllab.load_results(cell_dir)
    assert len(one) == 1 and one.loc[0, "utility.accuracy"] == pytest.approx(cells.loc[0, "utility.accuracy"])
    assert len(fllab.load_results(sweep_dir / "cells")) == 4  # a folder of run directories
    md, html = fllab.build_report(sweep_dir)
    assert html.is_file() and md.is_file()


def test_load_results_on_nothing_is_a_one_line_error(tmp_path):
    with pytest.raises(FllabError, match="no results here"):
        fllab.load_results(tmp_path)
    (tmp_path / "results.csv").write_text("cell,seed,status,utility.accuracy\nc0,0,ok,0.5\n")
    with pytest.raises(FllabError, match="no aggregate.csv"):
        fllab.load_results(tmp_path, aggregate=True)


@pytest.mark.slow
def test_the_notebook_style_example_runs(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "python_api.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "accuracy lost to sign_flip" in out and "report.html" in out


def test_validate_and_describe_like_the_cli(tiny):
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.1, 0.2]}, "seeds": [0, 1]}
    checked = fllab.validate(tiny, data=False)
    assert checked["cells"] == 4 and checked["skipped"] == [] and checked["resolved"]["algorithm"]["name"] == "fedavg"
    tiny["aggregator"] = {"name": "krum", "f": 3}
    del tiny["sweep"]
    with pytest.raises(ConfigError, match="krum"):
        fllab.validate(tiny, data=False)
    info = fllab.describe("krum")
    assert info["kind"] == "aggregator" and "f" in info["params"]
