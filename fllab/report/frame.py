"""Results as a pandas DataFrame: a sweep (``results.csv`` or ``aggregate.csv``), one run
directory, or a folder of run directories, one row per cell / setting / run.

Swept values lose their ``param:`` prefix (``algorithm.lr``, ``attack``); metric columns keep the
dotted names of ``summary.json``; a metric a row does not report is NaN.  pandas is the
``analysis`` extra and imported only here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FllabError
from .results import AGGREGATE, PARAM_PREFIX, RESULTS
from ..rundir import SUMMARY


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise FllabError("load_results needs pandas: pip install 'fllab[analysis]'") from None
    return pandas


def _run_row(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FllabError(f"{run_dir / SUMMARY}: cannot read ({exc})") from exc
    row = {"run_dir": str(run_dir), "name": summary.get("name"), "seed": summary.get("seed"), "status": summary.get("status")}
    row.update(summary.get("metrics") or {})
    return row


def _csv(path: Path) -> Any:
    pd = _pandas()
    frame = pd.read_csv(path, dtype={"cell": str}, keep_default_na=True)
    frame.columns = [c.removeprefix(PARAM_PREFIX) for c in frame.columns]
    return frame


def load_results(path: str | Path, *, aggregate: bool = False) -> Any:
    """A DataFrame of the results under ``path``:

    - a sweep directory (or its ``results.csv``): one row per cell; with ``aggregate=True`` its
      ``aggregate.csv`` instead (one row per setting, ``<metric>.mean/.std/.ci95`` and ``n``);
    - an ``aggregate.csv`` file: one row per setting;
    - a run directory (``summary.json``): one row; a folder of run directories: one row each.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        return _csv(path)
    if (path / RESULTS).is_file():
        if aggregate:
            if not (path / AGGREGATE).is_file():
                raise FllabError(f"{path}: no {AGGREGATE} (the sweep ran one seed per setting)")
            return _csv(path / AGGREGATE)
        return _csv(path / RESULTS)
    if aggregate:
        raise FllabError(f"{path}: aggregate=True needs a sweep directory")
    if (path / SUMMARY).is_file():
        runs = [path]
    elif path.is_dir():
        runs = sorted(p for p in path.iterdir() if (p / SUMMARY).is_file())
    else:
        runs = []
    if not runs:
        raise FllabError(f"{path}: no results here (expected a sweep's {RESULTS}, a run's {SUMMARY}, or run directories)")
    return _pandas().DataFrame([_run_row(r) for r in runs])
