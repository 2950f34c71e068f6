"""Reports as a reader sees them: opened in headless Chromium, no console error, every figure
decoded, the key table present, and nothing wider than a 1280 px window."""
from __future__ import annotations

import copy
import json

import pytest

import fllab
from fllab.report.browser import check_page, find_chromium
from fllab.runner import run_sweep

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (scripts/install-dev.sh installs it)")

SUMMARY_TABLE = ["metric", "value", "better", "meaning"]


def assert_renders(html, *tables):
    page = check_page(html)
    assert page.problems(tables=list(tables)) == []
    assert page.images, "the report shows no figure"
    return page


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory, request):
    from tests.conftest import TINY

    data = copy.deepcopy(TINY)
    data.update(name="tiny_sign_flip", attacks=[{"name": "sign_flip", "fraction": 0.25, "scale": 3.0}],
                evaluation={"baseline": True})
    out = tmp_path_factory.mktemp("browser") / "run"
    fllab.run(data, out)
    return out


def test_run_report_renders_in_chromium(poisoned_run):
    page = assert_renders(poisoned_run / "report.html", SUMMARY_TABLE)
    assert any(h.startswith("Attack: sign_flip") for h in page.headings)


def test_sweep_report_renders_in_chromium(tmp_path, tiny):
    tiny["federation"]["rounds"] = 1
    tiny["evaluation"] = {"baseline": True}
    tiny["sweep"] = {"cases": {"attack": {"none": {"attacks": []},
                                          "sign_flip": {"attacks": [{"name": "sign_flip", "fraction": 0.25, "scale": 3.0}]}},
                               "defense": {"mean": {"aggregator": "mean"}, "median": {"aggregator": "median"}}},
                     "seeds": [0, 1]}
    out, _, _ = run_sweep(tiny, tmp_path / "sw")
    page = assert_renders(out / "report.html", ["attack", "defense", "n (seeds)", "utility.accuracy"],
                          ["cell", "attack", "defense", "seed", "utility.accuracy"])
    assert "95% confidence interval" in page.text
    cells = json.loads((out / "cells.json").read_text())
    attacked = next(c["cell"] for c in cells if c["values"]["attack"] == "sign_flip")
    cell = assert_renders(out / "cells" / attacked / "report.html", SUMMARY_TABLE)
    assert cell.title.startswith("tiny · attack=sign_flip, defense=") and "seed" in cell.title
    assert any(h.startswith("Attack: sign_flip") for h in cell.headings)
    assert "attacked by sign_flip" in cell.text.replace("\n", " ").replace("\t", " ")


def test_the_checker_catches_what_a_reader_would(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<title>t</title><table><tr><th>a</th></tr></table><img alt="gone" src="missing.png">'
                   '<script>console.error("boom")</script><div style="width:1500px">wide</div>')
    problems = check_page(bad).problems(tables=[["metric"]])
    assert any("boom" in p for p in problems)
    assert any("image did not load: gone" in p for p in problems)
    assert any("no table with header ['metric']" in p for p in problems)
    assert any("px wide in a 1280 px window" in p for p in problems)


def test_inversion_sweep_shows_a_reconstruction_grid_per_setting_and_fits_1280px(tmp_path):
    scenario = {
        "name": "inv_tiny", "seed": 0, "threads": 1,
        "task": {"dataset": "cifar10_samples", "model": {"name": "convnet", "width": 8}},
        "federation": {"num_clients": 20, "rounds": 1, "partition": "iid"},
        "algorithm": {"name": "fedsgd", "batch_size": 1, "lr": 0.1},
        "attacks": [{"name": "inverting_gradients", "targets": 2, "iterations": 10, "lpips": False}],
        "sweep": {"cases": {"defense": {"none": {"defenses": []}, "topk": {"defenses": [{"name": "topk", "fraction": 0.01}]}}}},
    }
    out = fllab.sweep(scenario, tmp_path / "inv")
    page = assert_renders(out / "report.html", ["cell", "defense", "seed", "utility.accuracy"])
    grids = [i["alt"] for i in page.images if i["alt"].endswith("(inverting_gradients)")]
    assert grids == ["defense=none (inverting_gradients)", "defense=topk (inverting_gradients)"]
    assert "Reconstructions" in page.headings
    psnr = next(i for i in page.images if i["alt"] == "inversion.psnr vs utility.accuracy")
    assert psnr["width"] > 0
