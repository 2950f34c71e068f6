"""The scorecard report (``report.md`` + self-contained ``report.html``), rebuilt from the directory.

It reads only ``scorecard.yaml``, ``cells.json`` and the cells' run directories (data first,
reports second), and renders through the report package's machinery (figures, formatting,
Pareto fronts, page style).  Sections: the table (a row per defense setting, a column per family,
cells coloured by :func:`fllab.scorecard.table.protection`), n/a reasons, one Pareto figure per
privacy or robustness measure against accuracy with the front named, each attack's threat model
in one sentence, reconstructions of the most and least private settings side by side, and the
resolved configs.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..io import atomic_write_text
from ..registry import ATTACKS
from ..report.output import FigureRef, _environment, existing_figure, save_figure
from ..report.tables import fmt
from .expand import parse
from .figures import ACCURACY, MEASURES, front, pareto_png
from .run import DEFINITION
from .schema import ScorecardFile
from .score import Row, score
from .table import TITLES, cells, columns, poisoning_measure


def _load(name: str) -> str:
    own = resources.files(__package__) / "templates" / name
    if own.is_file():
        return own.read_text(encoding="utf-8")
    return (resources.files("fllab.report") / "templates" / name).read_text(encoding="utf-8")


def _env(html: bool) -> jinja2.Environment:
    env = _environment(html)  # the report package's filters and settings
    env.loader = jinja2.FunctionLoader(_load)  # scorecard templates, falling back to the report's
    return env


def threat_models(sc: ScorecardFile) -> list[dict[str, str]]:
    """Per family: the attack and its threat model in one sentence (from its registry entry)."""
    out = []
    for family in sc.scorecard.families:
        name = getattr(sc.scorecard, family).attack.name
        cls = ATTACKS.get(name)
        sentence = (getattr(cls, "threat_model", "") or getattr(cls, "summary", "")).strip()
        out.append({"family": family, "attack": name, "threat": sentence[:1].upper() + sentence[1:].rstrip(".") + "."})
    return out


def _reconstruction(out: Path, row: Row, attack: str) -> Path | None:
    for rel in row.runs.get("inversion", []):
        found = sorted((out / rel / "artefacts" / attack).glob("*.png"))
        if found:
            return found[0]
    return None


def reconstructions(out: Path, sc: ScorecardFile, rows: list[Row]) -> list[FigureRef]:
    """The most private (lowest PSNR) and least private (highest PSNR) settings' reconstructions."""
    if sc.scorecard.inversion is None:
        return []
    ranked = sorted((r for r in rows if r.mean("inversion.psnr") is not None), key=lambda r: r.mean("inversion.psnr"))
    if not ranked:
        return []
    attack = sc.scorecard.inversion.attack.name
    figs = []
    for role, row in (("best", ranked[0]), ("worst", ranked[-1])):
        path = _reconstruction(out, row, attack)
        if path is not None:
            figs.append(existing_figure(path, path.relative_to(out).as_posix(), f"{role}: {row.label}",
                                        f"PSNR {fmt(row.mean('inversion.psnr'))} dB; originals on top, reconstructions below"))
    return figs


def pareto_sections(out: Path, rows: list[Row]) -> list[dict[str, Any]]:
    pm = poisoning_measure(rows)
    sections = []
    for measure, (higher, label, _) in MEASURES.items():
        if measure.startswith("poisoning.") and measure != pm:
            continue
        if sum(r.mean(measure) is not None and r.mean(ACCURACY) is not None for r in rows) < 2:
            continue
        best = front(rows, measure)
        named = ", ".join(f"{r.label} (accuracy {fmt(r.mean(ACCURACY))}, {fmt(r.mean(measure))})" for r in best)
        fig = save_figure(out, f"pareto-{measure}", pareto_png(rows, measure), f"{label} vs accuracy",
                          f"mean over seeds with 95% CI bars; {'higher' if higher else 'lower'} is better")
        sections.append({"measure": measure, "label": label, "figure": fig, "front": named})
    return sections


def resolved_configs(out: Path, sc: ScorecardFile, rows: list[Row]) -> list[dict[str, str]]:
    """Each family's testbed as resolved, read from the reference setting's first cell."""
    ref = next(r for r in rows if r.label == sc.scorecard.reference_label)
    configs = []
    for family in sc.scorecard.families:
        runs = ref.runs.get(family, [])
        path = out / runs[0] / "config.resolved.yaml" if runs else None
        if path is not None and path.is_file():
            configs.append({"family": family, "text": path.read_text()})
    return configs


def context(out: Path) -> tuple[dict[str, Any], ScorecardFile, list[Row]]:
    data = yaml.safe_load((out / DEFINITION).read_text())
    sc = parse(data)
    cell_index = json.loads((out / "cells.json").read_text())
    rows = score(sc, out, cell_index)
    families = sc.scorecard.families
    cols = columns(families)
    table = cells(rows, sc.scorecard.reference_label, families)
    ctx = {
        "title": sc.name,
        "description": sc.description,
        "directory": out.name,
        "seeds": sc.scorecard.seeds,
        "reference": sc.scorecard.reference_label,
        "utility_family": sc.scorecard.utility_family,
        "headers": [("defense", "setting"), *[TITLES[c] for c in cols]],
        "rows": [{"label": r.label, "cells": [t[c] for c in cols]} for r, t in zip(rows, table)],
        "na": [{"defense": r.label, "family": f, "reason": why} for r in rows for f, why in r.na.items()],
        "threats": threat_models(sc),
        "pareto": pareto_sections(out, rows),
        "reconstructions": reconstructions(out, sc, rows),
        "configs": resolved_configs(out, sc, rows),
        "definition": yaml.safe_dump(data, sort_keys=False),
        "cells_total": len(cell_index),
    }
    return ctx, sc, rows


def build_scorecard_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` of a scorecard directory; return their paths."""
    out = Path(out)
    ctx, _, _ = context(out)
    paths = []
    for html, suffix in ((False, "md"), (True, "html")):
        text = _env(html).get_template(f"scorecard.{suffix}.j2").render(**ctx)
        path = out / f"report.{suffix}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths[0], paths[1]
