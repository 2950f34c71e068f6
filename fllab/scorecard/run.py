"""Running a scorecard: its cells go through the sweep machinery of :mod:`fllab.runner`.

The directory (default ``runs/NAME-scorecard/``) is laid out like a sweep's: ``scorecard.yaml``
(the definition; a different scorecard in the same directory is refused), ``cells.json``,
``cells/<cell-id>/`` (one run directory per family x setting x seed), ``baselines/<key>/`` (the
poisoning cells' no-attack twins), ``results.csv`` (one row per cell), then ``scorecard.json``
/ ``scorecard.csv`` (one row per defense setting, mean / std / ci95 / n per figure) and the
report.  :class:`fllab.runner.SweepRun` runs each unfinished cell once, so a re-run (after an
interruption, or with more seeds) only trains what is missing.  A cell that a family's
components refuse only once its data is loaded (e.g. DP-SGD on a model Opacus cannot train) is
recorded as not applicable, like the refusals found before training.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, atomic_write_yaml
from ..runner import Cell, SweepRun, write_results_csv
from .expand import expand, parse
from .schema import ScorecardFile
from .score import Row, rows_json, score

DEFINITION = "scorecard.yaml"


class ScorecardRun(SweepRun):
    """A sweep pass whose cells may turn out not to apply only when their data is loaded."""

    def _run(self, i: int) -> None:
        try:
            super()._run(i)
        except ConfigError as err:
            cid, values, seed, _ = self.cells[i]
            self.cells[i] = (cid, values, seed, str(err))
            super()._run(i)  # records the refusal as a skipped cell


def default_dir(sc: ScorecardFile) -> Path:
    return Path("runs") / f"{sc.name}-scorecard"


def open_dir(data: dict[str, Any], out: Path) -> None:
    """Claim ``out`` for this scorecard before anything trains: refuse another scorecard's directory
    and any non-empty directory fllab did not write as a scorecard."""
    previous = out / DEFINITION
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a directory", "--out")
    if out.is_dir() and any(out.iterdir()) and not previous.exists():
        raise ConfigError(f"{out} is not empty and holds no scorecard; choose another --out", "--out")
    if previous.exists() and yaml.safe_load(previous.read_text()) != data:
        raise ConfigError(f"{out} holds a different scorecard; choose another --out or delete it", "--out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(previous, data)


def cells_index(cells: list[Cell]) -> list[dict[str, Any]]:
    return [{"cell": c, "values": v, "seed": s} for c, v, s, _ in cells]


def scorecard_csv(rows: list[Row]) -> str:
    """One row per setting: ``defense``, then ``<metric>.mean/.std/.ci95/.n`` per metric, then ``na:<family>``."""
    metrics = list(dict.fromkeys(k for r in rows for k in r.stats))
    families = list(dict.fromkeys(f for r in rows for f in r.na))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["defense", *[f"{m}.{s}" for m in metrics for s in ("mean", "std", "ci95", "n")], *[f"na:{f}" for f in families]])
    for r in rows:
        cells = [r.stats.get(m, {}).get(s) for m in metrics for s in ("mean", "std", "ci95", "n")]
        writer.writerow([r.label, *["" if v is None else v for v in cells], *[r.na.get(f, "") for f in families]])
    return buf.getvalue()


def write_scores(sc: ScorecardFile, out: Path, cells: list[dict[str, Any]]) -> list[Row]:
    rows = score(sc, out, cells)
    atomic_write_json(out / "scorecard.json", {"name": sc.name, "reference": sc.scorecard.reference_label,
                                                "seeds": sc.scorecard.seeds, "rows": rows_json(rows)})
    atomic_write_text(out / "scorecard.csv", scorecard_csv(rows))
    return rows


def run_scorecard(data: dict[str, Any], out: Path | None = None, *, quiet: bool = True) -> tuple[Path, list[Row], int, int]:
    """Run every unfinished cell of a scorecard mapping and write its scores and report.

    Returns (directory, scored rows, cells run now, cells in total)."""
    sc = parse(data)
    cells = expand(sc)  # every cell resolved (or refused with its reason) before anything trains
    out = Path(out) if out else default_dir(sc)
    open_dir(data, out)
    atomic_write_json(out / "cells.json", cells_index(cells))
    sweep = ScorecardRun(out, sc.name, cells, quiet=quiet)
    ran = sweep.run()
    write_results_csv(out, sweep.cells)
    rows = write_scores(sc, out, cells_index(cells))
    from .report import build_scorecard_report

    build_scorecard_report(out)
    return out, rows, ran, len(cells)
