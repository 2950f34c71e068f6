"""A sweep's ``results.csv`` read back as typed rows (the one place that parses it).

``results.csv`` has one row per cell: a ``cell`` id, swept values in ``param:<dotted.path>``
columns, an optional ``seed``, a ``status`` (and ``reason`` for refused cells), and metric columns
with the dotted names of ``summary.json`` (empty where a metric does not apply).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FllabError
from ..io import read_text
from ..rundir import RESULTS, SWEEP_FILE as DEFINITION
from .tables import as_number

AGGREGATE = "aggregate.csv"
PARAM_PREFIX = "param:"


@dataclass
class SweepResults:
    """Parsed ``results.csv``: rows keep parameter values as text and metrics as floats (or None)."""

    rows: list[dict[str, Any]]
    params: list[str]
    metrics: list[str]
    info: list[str]
    has_seed: bool


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file; a missing file is an error naming it."""
    if not path.is_file():
        raise FllabError(f"{path}: no such results file")
    with io.StringIO(read_text(path), newline="") as fh:  # read_text: undecodable bytes are one error line
        reader = csv.DictReader(fh)
        raw = list(reader)
        return list(reader.fieldnames or []), raw


def load_results(path: str | Path) -> SweepResults:
    """Read and type ``results.csv``; a metric column is one whose non-empty values are all numbers."""
    path = Path(path)
    if not path.is_file():
        raise FllabError(f"{path}: no sweep results (expected {RESULTS})")
    columns, raw = read_csv(path)
    params = [c for c in columns if c.startswith(PARAM_PREFIX)]
    fixed = set(params) | {"cell", "seed"}
    metrics = [
        c for c in columns if c not in fixed
        and any(r[c] not in ("", None) for r in raw)
        and all(r[c] in ("", None) or as_number(r[c]) is not None or r[c].strip().lower() == "nan" for r in raw)
    ]
    info = [c for c in columns if c not in fixed and c not in metrics]
    rows = [{c: (as_number(r[c]) if c in metrics else (r[c] or "")) for c in columns} for r in raw]
    return SweepResults(rows, params, metrics, info, "seed" in columns)
