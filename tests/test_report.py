"""Report layer: Pareto fronts, metric directions, run and sweep reports rebuilt from files alone."""
from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fllab.errors import ConfigError, FllabError
from fllab.report import HIGHER_IS_BETTER, build_report, build_sweep_report, higher_is_better, pareto_front
from fllab.report.directions import direction_phrase, known_direction
from fllab.report.plots import heatmap_figure, tradeoff_figure
from fllab.report.tables import fmt, short_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects tables (as rows of cell texts), image sources and link targets of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src") or "")
        elif tag == "a":
            self.links.append(attrs.get("href") or "")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def find_table(page: _Page, header: list[str]) -> list[list[str]]:
    for table in page.tables:
        if table and table[0][: len(header)] == header:
            return table
    raise AssertionError(f"no table with header {header}: {[t[0] for t in page.tables if t]}")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _tiny_png() -> bytes:
    return heatmap_figure([[1.0]], ["r"], ["c"], "tiny")


# --------------------------------------------------------------------------- pure functions


def test_pareto_front_respects_each_metric_direction():
    # (accuracy, psnr): C is dominated by B (less accurate, higher PSNR), D by A.
    points = [(0.9, 30.0), (0.8, 20.0), (0.7, 25.0), (0.85, 31.0)]
    assert pareto_front(points, [True, False]) == [0, 1]
    # If higher PSNR were better, A and D would trade off instead.
    assert pareto_front(points, [True, True]) == [0, 3]


def test_pareto_front_keeps_ties_and_skips_missing():
    points = [(1.0, 1.0), (1.0, 1.0), (0.5, None), (0.2, 0.2), (float("nan"), 5.0)]
    assert pareto_front(points, [True, True]) == [0, 1]
    assert pareto_front([], [True, True]) == []
    with pytest.raises(ValueError):
        pareto_front([(1.0, 2.0)], [True])


def test_directions_cover_contract_metrics_and_flag_unknown_ones():
    assert higher_is_better("utility.accuracy") and higher_is_better("inversion.lpips")
    for lower in ("inversion.psnr", "inversion.ssim", "membership.auc", "membership.tpr_at_0.001_fpr",
                  "privacy.epsilon", "poisoning.backdoor_success_rate", "run.seconds"):
        assert known_direction(lower) is False, lower
    assert known_direction("custom.score") is None
    assert higher_is_better("custom.score") is True
    assert "assumed" in direction_phrase("custom.score")
    assert HIGHER_IS_BETTER["utility.accuracy"] is True


def test_fmt_and_short_names():
    assert fmt(0.8125) == "0.8125" and fmt(3) == "3" and fmt(None) == "—"
    assert fmt("inf") == "∞" and fmt(float("-inf")) == "−∞" and fmt(123456.7) == "123,457"
    assert short_names(["param:defenses.0.sigma", "param:aggregator.name", "param:attacks.0.sigma"]) == {
        "param:defenses.0.sigma": "defenses.0.sigma",
        "param:aggregator.name": "aggregator.name",
        "param:attacks.0.sigma": "attacks.0.sigma",
    }
    assert short_names(["param:defenses.0.sigma", "param:federation.rounds"]) == {
        "param:defenses.0.sigma": "sigma", "param:federation.rounds": "rounds"}


def test_plots_return_png_and_check_shapes():
    assert tradeoff_figure([], "utility.accuracy", "inversion.psnr").startswith(PNG_MAGIC)
    rows = [{"utility.accuracy": 0.9, "inversion.psnr": 20.0, "p": "a"}, {"utility.accuracy": 0.5, "inversion.psnr": 25.0}]
    assert tradeoff_figure(rows, "utility.accuracy", "inversion.psnr", ["p"]).startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        heatmap_figure([[1.0, 2.0]], ["only-row"], ["one-col"], "mismatch")


# --------------------------------------------------------------------------- run report


def make_run(run_dir: Path) -> Path:
    """A run directory with every file of the contract, including optional ones."""
    _write_json(run_dir / "summary.json", {
        "name": "fedavg-dlg", "seed": 7, "status": "completed",
        "metrics": {"utility.accuracy": 0.8125, "inversion.psnr": 17.25, "membership.auc": 0.5625,
                    "privacy.epsilon": "inf", "run.seconds": 12.5},
    })
    (run_dir / "config.resolved.yaml").write_text(
        "name: fedavg-dlg\nseed: 7\nnote: '<script>alert(1)</script> see https://example.org'\n", encoding="utf-8")
    _write_json(run_dir / "env.json", {"device": "cpu", "versions": {"torch": "2.3.1"}, "seeds": {"root": 7}})
    lines = []
    for r in range(1, 6):
        record = {"round": r, "train_loss": 1.0 / r, "seconds": 0.25, "clients": [0, 1], "privacy.epsilon": 0.5 * r}
        if r % 2:
            record.update(test_accuracy=0.15 * r, test_loss=1.1 / r)
        lines.append(json.dumps(record))
    (run_dir / "rounds.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(run_dir / "partition.json", {
        "num_classes": 3, "class_names": ["cat", "dog", "eel"],
        "clients": [{"client": 0, "size": 30, "labels": [20, 10, 0], "malicious": False},
                    {"client": 1, "size": 25, "labels": [0, 5, 20], "malicious": True}],
    })
    _write_json(run_dir / "attacks.json", {"dlg": {
        "family": "inversion", "metrics": {"psnr": 17.25, "ssim": 0.4375},
        "table": [{"client": 0, "psnr": 16.5}, {"client": 1, "psnr": 18.0}],
    }})
    png = _tiny_png()
    (run_dir / "artefacts" / "dlg").mkdir(parents=True)
    (run_dir / "artefacts" / "dlg" / "reconstruction.png").write_bytes(png)
    (run_dir / "artefacts" / "dlg" / "loss_trace.png").write_bytes(png)
    (run_dir / "artefacts" / "roc.png").write_bytes(png)
    (run_dir / "artefacts" / "mia_scores.csv").write_text("index,score,member\n0,0.3,1\n", encoding="utf-8")
    _write_json(run_dir / "artefacts" / "figures.json", [
        {"title": "Membership ROC", "path": "roc.png", "caption": "log-log ROC of the attack"},
        {"title": "never written", "path": "absent.png", "caption": ""},
        {"title": "not an image", "path": "mia_scores.csv", "caption": ""},
    ])
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = make_run(tmp_path_factory.mktemp("run"))
    md_path, html_path = build_report(run_dir)
    return run_dir, md_path, html_path


def test_run_report_paths_and_figures(full_run):
    run_dir, md_path, html_path = full_run
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    for name in ("curves.png", "partition.png"):
        assert (run_dir / "figures" / name).read_bytes().startswith(PNG_MAGIC)


def test_run_html_is_self_contained(full_run):
    _, _, html_path = full_run
    html = html_path.read_text(encoding="utf-8")
    page = parse(html)
    # curves, partition, the attack's two images, the manifest's ROC figure
    assert len(page.images) == 5
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # config text is escaped, not executed


def test_run_html_shows_metrics_partition_attack_config_env(full_run):
    _, _, html_path = full_run
    html = html_path.read_text(encoding="utf-8")
    page = parse(html)
    summary = {row[0]: row[1:] for row in find_table(page, ["metric", "value", "better", "meaning"])[1:]}
    assert summary["utility.accuracy"][:2] == ["0.8125", "↑"]
    assert summary["inversion.psnr"][:2] == ["17.25", "↓"]
    assert summary["privacy.epsilon"][0] == "∞"
    assert list(summary)[0] == "utility.accuracy" and list(summary)[-1] == "run.seconds"
    partition = find_table(page, ["client", "size", "malicious", "cat", "dog", "eel"])
    assert partition[1:] == [["0", "30", "no", "20", "10", "0"], ["1", "25", "yes", "0", "5", "20"]]
    assert "Malicious clients have red labels." in html
    attack = find_table(page, ["client", "psnr"])
    assert attack[1:] == [["0", "16.5"], ["1", "18"]]
    assert "Attack: dlg" in html and "0.4375" in html
    assert "Membership ROC" in html and "log-log ROC of the attack" in html
    assert "never written" not in html and "not an image" not in html
    assert html.index("dlg: reconstructions") < html.index("dlg: loss trace") < html.index("Membership ROC")
    env = {row[0]: row[1] for row in find_table(page, ["key", "value"])[1:]}
    assert env["versions.torch"] == "2.3.1"
    assert "seed: 7" in html
    assert "artefacts/mia_scores.csv" in page.links


def test_run_markdown_links_existing_files(full_run):
    run_dir, md_path, _ = full_run
    md = md_path.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(images) == {"figures/curves.png", "figures/partition.png", "artefacts/dlg/reconstruction.png",
                           "artefacts/dlg/loss_trace.png", "artefacts/roc.png"}
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)#]+)\)", md)
    assert links and all((run_dir / link).is_file() for link in images + links)
    assert "| utility.accuracy | 0.8125 | ↑ |" in md
    assert "| 0 | 30 | no | 20 | 10 | 0 |" in md
    assert "```yaml\nname: fedavg-dlg" in md


def test_run_report_is_reproducible(full_run):
    run_dir, md_path, html_path = full_run
    before = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    build_report(run_dir)
    assert (md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")) == before


def test_missing_optional_files_omit_their_sections(tmp_path):
    _write_json(tmp_path / "summary.json", {"name": "bare", "seed": 1, "status": "failed", "metrics": {}})
    md_path, html_path = build_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    assert "bare" in html and "No metrics recorded." in html and 'class="badge bad"' in html
    for section in ("Data partition", "Training", "Attack:", "Configuration", "Environment", "<img"):
        assert section not in html, section
    assert not (tmp_path / "figures").exists()
    assert "![" not in md_path.read_text(encoding="utf-8")


def test_rounds_without_summary_still_report(tmp_path):
    run_dir = tmp_path / "interrupted-run"
    run_dir.mkdir()
    (run_dir / "rounds.jsonl").write_text('{"round": 1, "train_loss": 0.5}\n{"round": 2, "trai', encoding="utf-8")
    _, html_path = build_report(run_dir)
    html = html_path.read_text(encoding="utf-8")
    assert "interrupted-run" in html and "unknown" in html and html.count("data:image/png;base64,") == 1


def test_unreadable_or_absent_run_directory_is_an_error(tmp_path):
    with pytest.raises(FllabError, match="not a run directory"):
        build_report(tmp_path)
    (tmp_path / "summary.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(FllabError, match="summary.json"):
        build_report(tmp_path)


# --------------------------------------------------------------------------- sweep report


def write_results(sweep_dir: Path, rows: list[dict]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def starred(table: list[list[str]]) -> set[str]:
    return {row[0] for row in table[1:] if row[-1].startswith("★")}


def test_sweep_report_marks_exactly_the_pareto_cells(tmp_path):
    # c2 is dominated by c1, c3 by c0: the front is {c0, c1}.
    cells = [("c0", "0", 0.9, 30.0), ("c1", "0.1", 0.8, 20.0), ("c2", "0.5", 0.7, 25.0), ("c3", "1", 0.85, 31.0)]
    write_results(tmp_path, [
        {"cell": c, "param:defenses.0.sigma": s, "seed": 0, "utility.accuracy": a, "inversion.psnr": p,
         "privacy.delta": 1e-5, "status": "ok"}
        for c, s, a, p in cells
    ])
    (tmp_path / "cells" / "c0").mkdir(parents=True)
    (tmp_path / "cells" / "c0" / "report.html").write_text("<html></html>", encoding="utf-8")
    _write_json(tmp_path / "cells" / "c1" / "summary.json", {"name": "c1"})
    (tmp_path / "sweep.yaml").write_text("name: dp-grid\nsweep:\n  defenses.0.sigma: [0, 0.1, 0.5, 1]\n", encoding="utf-8")
    md_path, html_path = build_sweep_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    page = parse(html)
    table = find_table(page, ["cell", "sigma", "seed", "utility.accuracy", "inversion.psnr"])
    assert starred(table) == {"c0", "c1"}
    assert table[0][-2:] == ["status", "Pareto-optimal for"]
    # privacy.delta does not vary, so only one trade-off figure is drawn
    assert html.count("data:image/png;base64,") == 1
    assert (tmp_path / "figures" / "tradeoff-utility-accuracy-inversion-psnr.png").is_file()
    assert "The 2 of 4 red points form the Pareto front" in html
    assert {"cells/c0/report.html", "cells/c1/report.html"} <= set(page.links)  # c1 gets its report built
    assert not any(link.startswith("cells/c2") for link in page.links)
    assert "Sweep: dp-grid" in html and "defenses.0.sigma: [0, 0.1, 0.5, 1]" in html
    md = md_path.read_text(encoding="utf-8")
    assert "(figures/tradeoff-utility-accuracy-inversion-psnr.png)" in md
    assert "| [c0](cells/c0/report.html) | 0 | 0 | 0.9 | 30 | 1e-05 | ok | ★ inversion.psnr |" in md


def test_sweep_aggregates_over_seeds_and_draws_grids(tmp_path):
    rows = []
    for defense, base in (("none", 0.9), ("dp", 0.6)):
        for attack, psnr in (("dlg", 25.0), ("ig", 20.0)):
            for seed, delta in enumerate((-0.1, 0.0, 0.1)):
                rows.append({"cell": f"{defense}-{attack}-{seed}", "param:defenses.0.name": defense,
                             "param:attacks.0.name": attack, "seed": seed,
                             "utility.accuracy": round(base + delta, 4),
                             "inversion.psnr": psnr - (10 if defense == "dp" else 0)})
    write_results(tmp_path, rows)
    _, html_path = build_sweep_report(tmp_path)
    page = parse(html_path.read_text(encoding="utf-8"))
    settings = find_table(page, ["defenses.0.name", "attacks.0.name", "n (seeds)", "utility.accuracy", "inversion.psnr"])
    by_setting = {(r[0], r[1]): r[2:] for r in settings[1:]}
    # 95% Student-t half-width of 0.5, 0.6, 0.7: t(0.975, 2) * 0.1 / sqrt(3) = 4.303 * 0.0577 = 0.248
    assert by_setting[("none", "dlg")][:3] == ["3", "0.9 ± 0.25", "25 ± 0"]
    assert by_setting[("dp", "ig")][:3] == ["3", "0.6 ± 0.25", "10 ± 0"]
    # settings (none, ig) and (dp, ig) trade accuracy for privacy; the dlg settings are dominated
    assert {(r[0], r[1]) for r in settings[1:] if r[-1].startswith("★")} == {("none", "ig"), ("dp", "ig")}
    assert len(find_table(page, ["cell"])) == 13
    # one trade-off plus an attack x defense heat-map per plotted metric
    assert len(page.images) == 3
    assert (tmp_path / "figures" / "heatmap-inversion-psnr.png").is_file()


def test_sweep_with_three_axes_draws_one_grid_per_outer_value(tmp_path):
    """malicious_fraction.yaml varies attack, fraction and defense: a fraction x defense heat-map
    per attack, each with its own cells."""
    rows = []
    for attack in ("alie", "min_max"):
        for fraction in ("0.1", "0.2"):
            for defense in ("mean", "median"):
                acc = 0.8 - float(fraction) * (2 if attack == "min_max" else 1) * (0.5 if defense == "median" else 1)
                rows.append({"cell": f"{attack}-{fraction}-{defense}", "param:attack": attack, "param:fraction": fraction,
                             "param:defense": defense, "utility.accuracy": round(acc, 4), "poisoning.accuracy_drop": round(0.8 - acc, 4)})
    write_results(tmp_path, rows)
    _, html_path = build_sweep_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    for attack in ("alie", "min_max"):
        assert (tmp_path / "figures" / f"heatmap-utility-accuracy-attack-{attack}.png").is_file()
        assert f"utility.accuracy by fraction and defense (attack={attack})" in html
    assert not (tmp_path / "figures" / "heatmap-utility-accuracy.png").exists()


def test_sweep_requested_pair_and_unknown_metric(tmp_path):
    write_results(tmp_path, [
        {"cell": "a", "param:x": "1", "custom.score": 1.0, "run.seconds": 3.0},
        {"cell": "b", "param:x": "2", "custom.score": 2.0, "run.seconds": 1.0},
    ])
    _, html_path = build_sweep_report(tmp_path)
    assert "No trade-off figure" in html_path.read_text(encoding="utf-8")
    _, html_path = build_sweep_report(tmp_path, x="run.seconds", y="custom.score")
    html = html_path.read_text(encoding="utf-8")
    assert "custom.score (direction unknown, assumed higher is better)" in html
    assert "The 1 of 2 red points" in html  # b: faster and higher score dominates a
    with pytest.raises(ConfigError, match="utility.nope"):
        build_sweep_report(tmp_path, x="utility.nope")


def test_sweep_without_results_is_an_error(tmp_path):
    with pytest.raises(FllabError, match="results.csv"):
        build_sweep_report(tmp_path)



# --------------------------------------------------------------------------- privacy: accounted vs audited


def _scores_file(path: Path, member_scores, other_scores) -> None:
    from fllab.rundir import scores_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scores_csv(list(member_scores) + list(other_scores), [1] * len(member_scores) + [0] * len(other_scores)))


def test_run_report_puts_audited_bounds_beside_the_accounted_epsilon(tmp_path):
    _write_json(tmp_path / "summary.json", {"name": "audited", "seed": 0, "status": "ok", "metrics": {
        "utility.accuracy": 0.9, "privacy.epsilon": 4.0, "privacy.delta": 1e-5, "membership.auc": 0.6,
        "privacy.epsilon_lower_bound": 0.5, "privacy.epsilon_lower_bound_one_run": 0.75}})
    _write_json(tmp_path / "attacks.json", {
        "lira": {"family": "membership", "metrics": {"membership.auc": 0.6, "privacy.epsilon_lower_bound": 0.5}},
        "canary_audit": {"family": "audit", "metrics": {"privacy.epsilon_lower_bound_one_run": 0.75}},
    })
    _scores_file(tmp_path / "artefacts" / "lira" / "scores.csv", [0.9, 0.8, 0.3], [0.1, 0.2, 0.85])
    _, html_path = build_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    page = parse(html)
    rows = find_table(page, ["epsilon", "value", "from"])[1:]
    assert rows == [
        ["accounted (upper bound)", "4", "DP accountant at δ = 1e-05"],
        ["audited lower bound: membership attack (Jagielski et al. 2020)", "0.5", "lira"],
        ["audited lower bound: one-run canaries (Steinke et al. 2023)", "0.75", "canary_audit"],
    ]
    assert "between the best audited lower bound 0.75 and the accounted 4" in html
    assert html.index("Privacy: accounted vs audited") < html.index("Attack: lira")
    # the attack that saved per-record scores gets its log-log ROC
    assert (tmp_path / "figures" / "roc-lira.png").read_bytes().startswith(PNG_MAGIC)
    assert "lira: ROC curve" in html and not (tmp_path / "figures" / "roc-canary_audit.png").exists()


@pytest.mark.parametrize("accounted, bound, phrase", [
    (None, 1.5, "the guarantee is ε = ∞; the audits show the run leaks at least ε ≥ 1.5"),
    (1.0, 1.5, "An audited lower bound (1.5) exceeds the accounted epsilon (1)"),
    (None, 0.0, "the audits found no leakage they could prove (lower bound 0), which is no evidence of privacy"),
])
def test_run_report_verdict_without_accounting_or_with_a_broken_one(tmp_path, accounted, bound, phrase):
    metrics = {"privacy.epsilon_lower_bound_one_run": bound}
    if accounted is not None:
        metrics.update({"privacy.epsilon": accounted, "privacy.delta": 1e-5})
    _write_json(tmp_path / "summary.json", {"name": "v", "seed": 0, "status": "ok", "metrics": metrics})
    _, html_path = build_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    assert phrase in html
    rows = find_table(parse(html), ["epsilon", "value", "from"])
    assert rows[1][1] == ("∞" if accounted is None else "1") and rows[2][2] == "summary"


def test_run_report_without_privacy_figures_has_no_privacy_section(tmp_path):
    _write_json(tmp_path / "summary.json", {"name": "plain", "seed": 0, "status": "ok", "metrics": {"utility.accuracy": 0.9}})
    _, html_path = build_report(tmp_path)
    assert "Privacy: accounted vs audited" not in html_path.read_text(encoding="utf-8")


def _membership_sweep(sweep_dir: Path, seeds=(0,)) -> None:
    """A DP sweep as `fllab sweep` writes it: results.csv, and per cell its config and LiRA scores."""
    cases = [("none", [], None, 0.95, 0.20, 2.1, 1.2), ("dp_sgd_eps8", ["dp_sgd"], 7.9, 0.90, 0.05, 0.4, 0.2),
             ("dp_sgd_eps1", ["dp_sgd"], 0.99, 0.70, 0.0, 0.0, 0.0), ("dp_fedavg_eps8", ["dp_fedavg"], 8.0, 0.85, 0.02, 0.1, 0.0)]
    rows = []
    for label, defenses, eps, acc, tpr, jag, one in cases:
        for seed in seeds:
            cell = f"seed{seed}-{label}"
            rows.append({"cell": cell, "param:defense": label, "seed": seed, "status": "ok", "utility.accuracy": acc + seed / 100,
                         "privacy.epsilon": "" if eps is None else eps, "privacy.delta": "" if eps is None else 1e-5,
                         "membership.auc": 0.5 + tpr, "membership.tpr_at_0.001_fpr": tpr,
                         "privacy.epsilon_lower_bound": jag, "privacy.epsilon_lower_bound_one_run": one})
            folder = sweep_dir / "cells" / cell
            folder.mkdir(parents=True)
            (folder / "config.resolved.yaml").write_text(
                "name: dp\ndefenses:\n" + "".join(f"- name: {d}\n  delta: 1.0e-05\n" for d in defenses) if defenses
                else "name: dp\ndefenses: []\n", encoding="utf-8")
            strong = int(100 * tpr)
            _scores_file(folder / "artefacts" / "lira" / "scores.csv",
                         [100.0] * strong + [i + 0.5 for i in range(50 - strong)], [float(i) for i in range(50)])
    write_results(sweep_dir, rows)


def test_membership_sweep_overlays_roc_curves_and_draws_the_privacy_utility_curve(tmp_path):
    _membership_sweep(tmp_path)
    md_path, html_path = build_sweep_report(tmp_path)
    html = html_path.read_text(encoding="utf-8")
    for name in ("privacy-utility.png", "roc-lira.png"):
        assert (tmp_path / "figures" / name).read_bytes().startswith(PNG_MAGIC), name
    assert "Privacy-utility curve" in html and "lira: ROC curves across cells" in html
    table = find_table(parse(html), ["setting", "defenses", "utility.accuracy", "privacy.epsilon",
                                     "privacy.epsilon_lower_bound", "privacy.epsilon_lower_bound_one_run"])
    assert table[1:] == [["none", "none", "0.95", "∞", "2.1", "1.2"], ["dp_sgd_eps8", "dp_sgd", "0.9", "7.9", "0.4", "0.2"],
                         ["dp_sgd_eps1", "dp_sgd", "0.7", "0.99", "0", "0"], ["dp_fedavg_eps8", "dp_fedavg", "0.85", "8", "0.1", "0"]]
    md = md_path.read_text(encoding="utf-8")
    assert "(figures/privacy-utility.png)" in md and "(figures/roc-lira.png)" in md


def test_privacy_utility_curve_draws_one_line_per_defense_and_marks_the_bounds(tmp_path, monkeypatch):
    from fllab.report import plots

    calls = {}

    def spy(points, series_key, label_key, x_metrics, y="utility.accuracy"):
        calls.update(points=points, series_key=series_key, x=list(x_metrics))
        return real(points, series_key, label_key, x_metrics, y)

    real = plots.privacy_utility_figure
    monkeypatch.setattr(plots, "privacy_utility_figure", spy)
    _membership_sweep(tmp_path, seeds=(0, 1))
    _, html_path = build_sweep_report(tmp_path)
    assert calls["x"] == ["membership.tpr_at_0.001_fpr", "privacy.epsilon"]
    # settings averaged over the two seeds, each tagged with its cell's defenses
    by_setting = {p["param:defense"]: p for p in calls["points"]}
    assert {k: p[calls["series_key"]] for k, p in by_setting.items()} == {
        "none": "none", "dp_sgd_eps8": "dp_sgd", "dp_sgd_eps1": "dp_sgd", "dp_fedavg_eps8": "dp_fedavg"}
    assert by_setting["dp_sgd_eps8"]["utility.accuracy"] == pytest.approx(0.905)
    assert "Privacy-utility curve" in html_path.read_text(encoding="utf-8")


def test_roc_and_privacy_utility_figures_are_pngs():
    from fllab.report.plots import privacy_utility_figure, roc_figure

    member = [True] * 5 + [False] * 5
    assert roc_figure([("a", list(range(10)), member), ("b", list(range(10))[::-1], member)], "t").startswith(PNG_MAGIC)
    points = [{"s": "dp", "l": "x", "utility.accuracy": 0.9, "privacy.epsilon": 2.0, "privacy.epsilon_lower_bound": 0.0},
              {"s": "none", "l": "y", "utility.accuracy": 0.95, "privacy.epsilon_lower_bound_one_run": 1.0}]
    assert privacy_utility_figure(points, "s", "l", ["privacy.epsilon"]).startswith(PNG_MAGIC)
