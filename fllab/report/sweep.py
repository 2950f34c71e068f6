"""Sweep report: trade-offs across grid cells, read from ``sweep_dir/results.csv``.

``results.csv`` has one row per cell: a ``cell`` id, swept values in ``param:<dotted.path>``
columns, an optional ``seed``, and metric columns with the dotted names of ``summary.json``
(empty where a metric does not apply).  Cells that differ only by seed are aggregated into one
parameter setting (mean ± 95% Student-t interval, ``aggregate.csv``); trade-off figures plot settings, or cells when each setting ran
once, and mark the Pareto front.  The sweep definition (``sweep.yaml``) is shown when present,
and each cell links to its own run directory (``cells/<cell>/``) when that exists.

Privacy sweeps (membership attacks, audits, DP defenses) also get a privacy section built from the
cell directories: membership ROC curves overlaid across cells (log-log, from each cell's saved
per-record scores), the privacy-utility curve (test accuracy against TPR at 0.1% FPR and against
the accounted epsilon, one line per defense, audited lower bounds beside each accounted epsilon)
and a table of accounted beside audited epsilon.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import grid, plots
from .directions import AUDITED_EPSILONS, REFERENCES, direction_phrase, higher_is_better
from .output import FigureRef, save_figure, write_report
from .aggregate import settings as seed_settings, several_seeds
from .pareto import pareto_front
from .results import AGGREGATE, DEFINITION, RESULTS, SweepResults, load_results
from ..rundir import ARTEFACTS, attack_scores, defense_names
from .tables import Table, fmt, fmt_spread, records_table, short_names
from ..errors import ConfigError
from ..io import read_text

CELLS = "cells"
#: header of the settings table's seed-count column
SEEDS_HEADER = "n (seeds)"
RISK_FAMILIES = ("inversion", "membership", "privacy", "poisoning")


def aggregate(results: SweepResults) -> list[dict[str, Any]]:
    """One point per parameter setting (:func:`fllab.report.aggregate.settings`), keyed the way the
    figures read rows: parameter values, ``n`` (seeds that finished), each metric's mean under its
    own name, ``"<metric>:std"``, ``"<metric>:ci95"`` (Student-t 95% half-width) and ``"<metric>:n"``."""
    points = []
    for record in seed_settings(results):
        point: dict[str, Any] = {p: record[p] for p in results.params}
        point["n"] = record["n"]
        for metric in results.metrics:
            point[metric] = record[f"{metric}.mean"]
            for stat in ("std", "ci95", "n"):
                point[f"{metric}:{stat}"] = record[f"{metric}.{stat}"]
        points.append(point)
    return points


def _varies(rows: list[dict[str, Any]], metric: str) -> bool:
    return len({r[metric] for r in rows if r.get(metric) is not None}) > 1


def metric_pairs(results: SweepResults, x: str | None = None, y: str | None = None) -> list[tuple[str, str]]:
    """Trade-off pairs to plot: the requested one, or utility vs. every privacy/robustness metric that varies.

    A requested metric that is not in ``results.csv`` is a :class:`ConfigError` listing the ones that are.
    """
    for requested in (x, y):
        if requested is not None and requested not in results.metrics:
            raise ConfigError(f"metric {requested!r} is not in {RESULTS}; available: {', '.join(results.metrics) or 'none'}")
    if x is None:
        utility = [m for m in results.metrics if m.startswith("utility.")]
        x = "utility.accuracy" if "utility.accuracy" in utility else (utility[0] if utility else None)
    if x is None:
        if y is not None:
            raise ConfigError("no utility metric to plot against: give x explicitly")
        return []
    if y is not None:
        return [(x, y)]
    references = set(REFERENCES.values())
    return [(x, m) for m in results.metrics
            if m != x and m not in references and m.split(".", 1)[0] in RISK_FAMILIES and _varies(results.rows, m)]


def fronts(points: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
    """Indices of the Pareto-optimal points for each (x, y) metric pair."""
    return {
        (px, py): pareto_front([(p.get(px), p.get(py)) for p in points], [higher_is_better(px), higher_is_better(py)])
        for px, py in pairs
    }


def _front_labels(count: int, by_pair: dict[tuple[str, str], list[int]]) -> list[list[str]]:
    """For each point, the pairs on whose front it lies (named by y alone when every pair shares x)."""
    shared_x = len({px for px, _ in by_pair}) == 1
    labels: list[list[str]] = [[] for _ in range(count)]
    for (px, py), indices in by_pair.items():
        for i in indices:
            labels[i].append(py if shared_x else f"{py} vs {px}")
    return labels


def cell_link(sweep_dir: Path, cell: str) -> str | None:
    """Relative link to a cell's report (or, when it has none, its summary), if the cell directory exists."""
    if not cell:
        return None
    for folder in (f"{CELLS}/{cell}", cell):
        for name in ("report.html", "summary.json"):
            if (sweep_dir / folder / name).is_file():
                return f"{folder}/{name}"
    return None


def seed_cell(point: dict[str, Any], metric: str) -> str:
    """A setting's metric as ``mean ± ci95`` (Student-t 95%), saying how many seeds it rests on
    when that is fewer than the setting's ``n``; ``mean (1 seed)`` when no interval exists."""
    mean = point.get(metric)
    if mean is None:
        return fmt(mean)
    count, ci95 = point.get(f"{metric}:n") or 0, point.get(f"{metric}:ci95")
    fewer = f" (n={count})" if count != point["n"] else ""
    return f"{fmt(mean)} ± {fmt_spread(ci95)}{fewer}" if ci95 is not None else f"{fmt(mean)} ({count} seed{'s' if count != 1 else ''})"


def _points_table(points: list[dict[str, Any]], results: SweepResults, names: dict[str, str],
                  front_labels: list[list[str]] | None, aggregated: bool, sweep_dir: Path) -> Table:
    """Settings (aggregated: mean ± 95% CI and the seed count n) or cells (id, seed, raw values, info columns)."""
    lead = [SEEDS_HEADER] if aggregated else (["seed"] if results.has_seed else [])
    info = [] if aggregated else results.info
    headers = ([] if aggregated else ["cell"]) + [names[p] for p in results.params] + lead + results.metrics + info
    numeric = [h in results.metrics or h in lead for h in headers]
    rows = []
    for point in points:
        row = ([] if aggregated else [point.get("cell", "")]) + [point[p] for p in results.params]
        row += [fmt(point["n"])] if aggregated else [point.get("seed", "") for _ in lead]
        row += [seed_cell(point, m) if aggregated else fmt(point[m]) for m in results.metrics]
        rows.append(row + [point.get(c, "") for c in info])
    links = [] if aggregated else [cell_link(sweep_dir, str(p.get("cell") or "")) for p in points]
    table = Table(headers, rows, numeric, links=links)
    if front_labels is not None:
        table.headers.append("Pareto-optimal for")
        table.numeric.append(False)
        for row, front in zip(table.rows, front_labels):
            row.append(("★ " + ", ".join(front)) if front else "")
        table.marked = [bool(f) for f in front_labels]
    return table


def seeds_phrase(points: list[dict[str, Any]]) -> str:
    """How many seeds the settings' means rest on: ``3 seeds`` or ``2-3 seeds``."""
    counts = sorted({int(p["n"]) for p in points if "n" in p})
    if not counts:
        return "no seeds"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{span} seed{'s' if counts[-1] != 1 else ''}"


def _tradeoff_caption(x: str, y: str, seeds: str | None, on_front: int, total: int) -> str:
    unit = f"parameter setting (mean over {seeds}; bars: 95% confidence interval, Student t)" if seeds else "grid cell"
    return (f"Each point is one {unit}. The {on_front} of {total} red points form the Pareto front: no other "
            f"point is at least as good on both {x} ({direction_phrase(x)}) and {y} ({direction_phrase(y)}) "
            f"and better on one.")


#: at most this many heat-maps per metric when a sweep varies more than two parameters.
MAX_HEATMAP_SLICES = 12


def _heatmaps(sweep_dir: Path, results: SweepResults, settings: list[dict[str, Any]], params: list[str],
              names: dict[str, str], metrics: list[str], seeds: str | None) -> list[FigureRef]:
    """Metric over the grid of the last two varying parameters (e.g. attack x defense), one
    heat-map per plotted metric; with more varying parameters, one heat-map per combination of the
    others (e.g. fraction x defense for each attack), the first :data:`MAX_HEATMAP_SLICES` of them.
    Poisoning grids add the accuracy drop against the undefended clean model and a worst-case
    entry on the attack axis (:mod:`fllab.report.grid`)."""
    *outer, row_param, col_param = params
    roles = grid.setting_roles(sweep_dir, results.rows, results.params)
    if any(m.startswith("poisoning.") for m in metrics) and grid.add_drop_vs_undefended(settings, results.params, roles, outer):
        metrics = [*metrics, grid.DROP_VS_UNDEFENDED]
    attack_axis = next((p for p in (row_param, col_param) if grid.axis_role(p) == "attack"), None)
    slices = list(dict.fromkeys(tuple(s[p] for p in outer) for s in settings))[:MAX_HEATMAP_SLICES]
    figures = []
    for metric in metrics:
        span = grid.min_colour_span(settings, metric)
        for key in slices:
            chosen = [s for s in settings if tuple(s[p] for p in outer) == key]
            row_labels = list(dict.fromkeys(s[row_param] for s in chosen))
            col_labels = list(dict.fromkeys(s[col_param] for s in chosen))
            lookup = {(s[row_param], s[col_param]): s for s in chosen}
            matrix = [[(lookup.get((r, c)) or {}).get(metric) for c in col_labels] for r in row_labels]
            attacked = {(s[row_param], s[col_param]) for s in chosen if grid.is_attacked(s, results.params, roles, attack_axis)}
            if attack_axis == row_param and len(row_labels) > 1:
                matrix.append([grid.worst([m for r, m in zip(row_labels, col) if (r, c) in attacked], metric)
                               for c, col in zip(col_labels, zip(*matrix))])
                row_labels.append(grid.WORST)
            elif attack_axis == col_param and len(col_labels) > 1:
                for r, row in zip(row_labels, matrix):
                    row.append(grid.worst([m for c, m in zip(col_labels, row) if (r, c) in attacked], metric))
                col_labels.append(grid.WORST)
            where = ", ".join(f"{names[p]}={v}" for p, v in zip(outer, key))
            title = f"{metric}{f' (mean of {seeds})' if seeds else ''}{f' at {where}' if where else ''}"
            png = plots.heatmap_figure(matrix, row_labels, col_labels, title, metric=metric,
                                       xlabel=names[col_param], ylabel=names[row_param], min_span=span,
                                       limits=grid.bounds(metric))
            name = "-".join(["heatmap", metric, *(f"{names[p]}-{v}" for p, v in zip(outer, key))])
            caption = (f"Brighter is better for the defender ({direction_phrase(metric)}); grey cells were not run "
                       f"or did not report the metric. The colour scale spans at least {fmt(span)}"
                       + (" (four standard errors of a mean over seeds, or a tenth of the metric's range) so seed "
                          "noise does not look like an effect." if span else "."))
            if grid.WORST in row_labels or grid.WORST in col_labels:
                caption += (f" The '{grid.WORST}' entry is each defense's worst value over the attacks "
                            "(a defense is as good as its worst attack).")
            if metric == grid.DROP_VS_UNDEFENDED:
                caption += (" Drop against the clean accuracy of the setting with neither attack nor defense, so a "
                            "defense that costs accuracy without attackers is not mistaken for a robust one.")
            figures.append(save_figure(sweep_dir, name, png,
                                       f"{metric} by {names[row_param]} and {names[col_param]}{f' ({where})' if where else ''}",
                                       caption))
    return figures


#: privacy quantities the privacy-utility figure draws test accuracy against, when the sweep has them.
PRIVACY_AXES = ("membership.tpr_at_0.001_fpr", "privacy.epsilon")
UTILITY = "utility.accuracy"
_SERIES, _LABEL = "defenses", "setting"


def _cell_dir(sweep_dir: Path, row: dict[str, Any]) -> Path | None:
    folder = sweep_dir / CELLS / str(row.get("cell") or "")
    return folder if row.get("cell") and folder.is_dir() else None


def _series(sweep_dir: Path, row: dict[str, Any]) -> str:
    """A cell's defenses (from its ``config.resolved.yaml``): the line it belongs to in the
    privacy-utility figure, e.g. ``dp_sgd`` or ``rqm``; ``none`` without defenses."""
    folder = _cell_dir(sweep_dir, row)
    names = defense_names(folder) if folder else None
    return "?" if names is None else ("+".join(names) or "none")


def _privacy_section(sweep_dir: Path, results: SweepResults, points: list[dict[str, Any]], varying: list[str],
                     seeds: str | None) -> dict[str, Any] | None:
    """Membership ROC curves overlaid across cells (from each cell's ``artefacts/<attack>/scores.csv``),
    test accuracy against TPR at 0.1% FPR and against the accounted epsilon with its audited lower
    bounds, and a table of accounted beside audited epsilon; None when the sweep has none of them."""
    def label(row: dict[str, Any]) -> str:
        return " / ".join(str(row[p]) for p in varying) or str(row.get("cell") or "")

    series_of = {tuple(r[p] for p in results.params): _series(sweep_dir, r) for r in results.rows}
    marked = [{**p, _SERIES: series_of[tuple(p[k] for k in results.params)], _LABEL: label(p)} for p in points]
    figures = []
    axes = [m for m in PRIVACY_AXES if m in results.metrics]
    if UTILITY in results.metrics and axes:
        png = plots.privacy_utility_figure(marked, _SERIES, _LABEL, axes, UTILITY)
        figures.append(save_figure(
            sweep_dir, "privacy-utility", png, "Privacy-utility curve",
            "Test accuracy against " + " and against ".join(axes) + ", one line per defense"
            + (f" (means of {seeds}; bars: 95% confidence intervals)" if seeds else "") + ". On the epsilon panel, filled points are accounted "
            "epsilons and hollow ones audited lower bounds at the same accuracy: the true epsilon lies between them; "
            "a dashed line is a run without DP accounting (ε = ∞)."))
    seeds = len({r.get("seed") for r in results.rows}) > 1
    curves: dict[str, list[tuple[str, Any, Any]]] = {}
    for row in results.rows:
        folder = _cell_dir(sweep_dir, row)
        for attack, scores in (attack_scores(folder) if folder else {}).items():
            if scores.is_member.any() and not scores.is_member.all():
                name = label(row) + (f" (seed {row.get('seed')})" if seeds else "")
                curves.setdefault(attack, []).append((name, scores.score, scores.is_member))
    for attack, drawn in curves.items():
        png = plots.roc_figure(drawn, f"{attack}: ROC across cells (log-log)")
        figures.append(save_figure(
            sweep_dir, f"roc-{attack}", png, f"{attack}: ROC curves across cells",
            "One curve per cell from its saved per-record scores, both axes logarithmic; the dotted diagonal is guessing."))
    audited = [m for m in AUDITED_EPSILONS if m in results.metrics]
    table = None
    if "privacy.epsilon" in results.metrics or audited:
        columns = [_LABEL, _SERIES] + ([UTILITY] if UTILITY in results.metrics else []) + ["privacy.epsilon", *audited]
        records = [{**p, "privacy.epsilon": p.get("privacy.epsilon") if p.get("privacy.epsilon") is not None else float("inf")}
                   for p in marked]
        table = records_table(records, columns)
    if not figures and table is None:
        return None
    return {"figures": figures, "table": table}


#: reconstruction images an inversion attack saves: ``reconstruction.png`` or ``<target>_reconstruction.png``
RECONSTRUCTION_GLOB = "*reconstruction*.png"
#: at most this many targets per setting in the sweep's reconstruction grid
MAX_TARGETS = 6


def reconstructions(sweep_dir: Path, results: SweepResults, varying: list[str], names: dict[str, str]) -> list[FigureRef]:
    """One reconstruction grid per parameter setting and inversion attack (its first cell that saved
    images; up to :data:`MAX_TARGETS` targets side by side, each original above its
    reconstruction): what readers of an inversion sweep look at first."""
    figures, seen = [], set()
    for row in results.rows:
        key = tuple(row[p] for p in results.params)
        folder = _cell_dir(sweep_dir, row)
        if key in seen or folder is None or not (folder / ARTEFACTS).is_dir():
            continue
        by_attack: dict[str, list[Path]] = {}
        for path in sorted((folder / ARTEFACTS).glob(f"*/{RECONSTRUCTION_GLOB}")):
            by_attack.setdefault(path.parent.name, []).append(path)
        if not by_attack:
            continue
        seen.add(key)
        setting = ", ".join(f"{names[p]}={row[p]}" for p in varying) or str(row.get("cell"))
        for attack, paths in by_attack.items():
            shown = paths[:MAX_TARGETS]
            labels = [p.stem.removesuffix("reconstruction").rstrip("_-") or "target" for p in shown]
            png = plots.image_row_figure([p.read_bytes() for p in shown], labels, f"{setting}: {attack}")
            figures.append(save_figure(sweep_dir, f"reconstructions-{attack}-{setting}", png, f"{setting} ({attack})",
                                       f"{len(shown)} of {len(paths)} targets of cell {row.get('cell')} (seed {row.get('seed')}): "
                                       "each original above the attacker's reconstruction."))
    return figures


def _no_tradeoff_reason(results: SweepResults) -> str:
    if not any(m.startswith("utility.") for m in results.metrics):
        return "the results have no utility metric"
    return "no privacy or robustness metric varies across cells, so there is no trade-off with utility to plot"


def _sweep_name(definition_text: str) -> str | None:
    try:
        data = yaml.safe_load(definition_text)
    except yaml.YAMLError:
        return None  # the definition is still shown verbatim
    return str(data["name"]) if isinstance(data, dict) and data.get("name") else None


def build_cell_reports(sweep_dir: Path, results: SweepResults) -> int:
    """Write the report of every finished cell that has none (or an older one than its summary),
    so each cell links to a report titled with its own values; return how many were written."""
    from .render import build_report

    written = 0
    for row in results.rows:
        folder = _cell_dir(sweep_dir, row)
        summary, report = (folder / "summary.json", folder / "report.html") if folder else (None, None)
        if summary is None or not summary.is_file() or str(row.get("status", "ok")) != "ok":
            continue
        if not report.is_file() or report.stat().st_mtime < summary.stat().st_mtime:
            build_report(folder)
            written += 1
    return written


def sweep_context(sweep_dir: Path, x: str | None = None, y: str | None = None) -> dict[str, Any]:
    """Everything the sweep templates show; writes the figures (and missing cell reports) as a side effect."""
    results = load_results(sweep_dir / RESULTS)
    build_cell_reports(sweep_dir, results)
    pairs = metric_pairs(results, x, y)
    settings = aggregate(results)
    aggregated = several_seeds(results)
    points = settings if aggregated else results.rows
    seeds_used = seeds_phrase(settings)
    names = short_names(results.params)
    by_pair = fronts(points, pairs)
    labels = _front_labels(len(points), by_pair) if pairs else None
    tradeoffs = []
    for px, py in pairs:
        png = plots.tradeoff_figure(points, px, py, results.params)
        total = sum(p.get(px) is not None and p.get(py) is not None for p in points)
        on_front = len(by_pair[(px, py)])
        tradeoffs.append(save_figure(sweep_dir, f"tradeoff-{px}-{py}", png, f"{py} vs {px}",
                                     _tradeoff_caption(px, py, seeds_used if aggregated else None, on_front, total)))
    plotted = list(dict.fromkeys(m for pair in pairs for m in pair))
    varying = [p for p in results.params if len({r[p] for r in results.rows}) > 1]
    heatmaps = _heatmaps(sweep_dir, results, settings, varying, names, plotted, seeds_used if aggregated else None) if len(varying) >= 2 else []
    privacy = _privacy_section(sweep_dir, results, points, varying, seeds_used if aggregated else None)
    seeds = sorted({str(r.get("seed")) for r in results.rows if r.get("seed") not in (None, "")}, key=lambda s: (len(s), s))
    recon = reconstructions(sweep_dir, results, varying, names)
    toc = [("tradeoffs", "Trade-offs")] + ([("reconstructions", "Reconstructions")] if recon else [])
    toc += ([("privacy", "Privacy")] if privacy else []) + ([("grid", "Grid")] if heatmaps else [])
    toc += ([("settings", "Settings")] if aggregated else []) + [("cells", "All cells")]
    definition = sweep_dir / DEFINITION
    definition_text = read_text(definition) if definition.is_file() else None
    name = _sweep_name(definition_text) if definition_text else None
    toc += [("definition", "Sweep definition")] if definition_text is not None else []
    return {
        "title": str(name or sweep_dir.resolve().name),
        "definition_text": definition_text,
        "directory": sweep_dir.resolve().name,
        "cells": len(results.rows),
        "settings_count": len(settings),
        "swept": [(names[p], list(dict.fromkeys(r[p] for r in results.rows))) for p in results.params],
        "seeds": seeds,
        "aggregated": aggregated,
        "seeds_used": seeds_used,
        "aggregate_file": AGGREGATE if (sweep_dir / AGGREGATE).is_file() else None,
        "toc": toc,
        "tradeoffs": tradeoffs,
        "no_tradeoff_reason": None if pairs else _no_tradeoff_reason(results),
        "heatmaps": heatmaps,
        "privacy": privacy,
        "reconstructions": recon,
        "settings": _points_table(settings, results, names, labels, True, sweep_dir) if aggregated else None,
        "cells_table": _points_table(results.rows, results, names, None if aggregated else labels, False, sweep_dir),
    }


def build_sweep_report(sweep_dir: str | Path, x: str | None = None, y: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and ``figures/*.png``) into ``sweep_dir``; return both paths.

    ``x``/``y`` pick the trade-off metrics; by default utility.accuracy is plotted against every
    privacy/robustness metric in the results that varies across cells.
    """
    sweep_dir = Path(sweep_dir)
    return write_report(sweep_dir, "sweep", sweep_context(sweep_dir, x, y))
