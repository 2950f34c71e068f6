"""``fllab audit-ldp``: audit a grid of mechanisms x epsilons x domain sizes x attacks.

A scenario file (YAML, unknown keys refused)::

    name: audit_frequency_oracles
    trials: 1000000          # reports per input
    alpha: 0.01              # Clopper-Pearson level (LDP-Auditor's convention)
    delta: 1.0e-5            # delta of the approximate mechanisms (agrr, gm, agm)
    attacks: [paper, optimal]
    mechanisms: [grr, ss, sue, oue, blh, olh, the, she, agrr, gm, agm]
    epsilons: [0.5, 1, 2, 4, 6]
    domain_sizes: [25, 200]

The output directory holds ``config.resolved.yaml``, ``env.json``, ``audit.csv`` (one row per cell: the
settings, ``epsilon_lower_bound``, its ratio to epsilon, the Clopper-Pearson rates, counts,
seconds, the test), ``summary.json`` and ``report.md`` / ``report.html`` with one figure per
attack in the paper's style (empirical against nominal epsilon, a panel per domain size); the
report is rebuilt from the data files alone by :func:`build_audit_report`.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
from pydantic import AfterValidator, Field, PositiveFloat, ValidationError, field_validator

from ...errors import ConfigError
from ...io import atomic_write_bytes, atomic_write_json, atomic_write_yaml
from ...registry import Params, format_validation_error
from .attacks import ATTACKS
from .audit import audit_mechanism
from .oracles import ORACLES, make_oracle


def _known_mechanism(name: str) -> str:
    try:
        ORACLES.get_class(name)
    except ConfigError as err:  # re-raised as ValueError so that pydantic adds the YAML path
        raise ValueError(str(err)) from None
    return name


class AuditGrid(Params):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="name of the audit (output directory prefix)")
    description: str = ""
    seed: int = Field(0, ge=0)
    trials: int = Field(10**6, ge=2, description="reports drawn per input")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="Clopper-Pearson level")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the approximate mechanisms")
    attacks: list[Literal["paper", "optimal"]] = Field(default_factory=lambda: list(ATTACKS), min_length=1)
    mechanisms: list[Annotated[str, AfterValidator(_known_mechanism)]] = Field(min_length=1)
    epsilons: list[PositiveFloat] = Field(min_length=1)
    domain_sizes: list[int] = Field(min_length=1)

    @field_validator("domain_sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        bad = [k for k in sizes if k < 2]
        if bad:
            raise ValueError(f"every domain size must be >= 2 (got {bad[0]})")
        return sizes


def load_grid(data: dict[str, Any]) -> AuditGrid:
    try:
        return AuditGrid.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", AuditGrid)) from None


def cells(grid: AuditGrid) -> list[tuple[str, int, float, str]]:
    return [(m, k, float(e), a) for m in grid.mechanisms for k in grid.domain_sizes for e in grid.epsilons for a in grid.attacks]


def audit_cell(grid: AuditGrid, name: str, k: int, eps: float, attack: str) -> dict[str, Any]:
    """One cell's result row.  Its randomness depends on the cell only (seeded by the grid's seed,
    mechanism, attack, epsilon, k and input), so cells may run in any order or process."""
    mech = make_oracle(name, eps, k, grid.delta if ORACLES[name].approximate else 0.0)
    res = audit_mechanism(mech, attack, grid.trials, alpha=grid.alpha, seed=grid.seed)
    return {
        "mechanism": name, "k": k, "epsilon": eps, "delta": mech.delta, "attack": attack,
        "epsilon_lower_bound": res.epsilon_lower_bound, "ratio": res.epsilon_lower_bound / eps,
        "tpr_low": res.tpr_low, "fpr_up": res.fpr_up, "tp": res.tp, "fp": res.fp,
        "trials": res.trials, "evaluated": res.evaluated, "seconds": res.seconds, "test": res.test,
    }


def run_grid(grid: AuditGrid, progress: Callable[[int, int, dict[str, Any]], None] | None = None,
             jobs: int = 1) -> list[dict[str, Any]]:
    """One result row per cell, in the grid's order (module docstring); ``jobs`` worker
    processes audit cells in parallel with the same results."""
    todo = cells(grid)
    rows: list[dict[str, Any] | None] = [None] * len(todo)

    def done(i: int, row: dict[str, Any]) -> None:
        rows[i] = row
        if progress:
            progress(sum(r is not None for r in rows), len(todo), row)

    if jobs <= 1:
        for i, cell in enumerate(todo):
            done(i, audit_cell(grid, *cell))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(audit_cell, grid, *cell): i for i, cell in enumerate(todo)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return [r for r in rows if r is not None]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _report_context(grid: AuditGrid, rows: list[dict[str, Any]], out: Path, seconds: float) -> dict[str, Any]:
    from ...report.output import save_figure
    from ...report.plots import epsilon_audit_figure
    from ...report.tables import Table, fmt

    figures = []
    for attack in grid.attacks:
        part = [r for r in rows if r["attack"] == attack]
        figures.append(save_figure(out, f"epsilon_{attack}", epsilon_audit_figure(part, f"{attack} attack"),
                                   f"Empirical vs nominal epsilon, {attack} attack",
                                   "Dashed: the nominal epsilon; a correct mechanism stays on or below it."))
    headers = ["mechanism", "k", "ε", "attack", "ε_emp", "ε_emp / ε", "TPR_low", "FPR_up", "seconds"]
    table = Table(headers, [[r["mechanism"], fmt(r["k"]), fmt(r["epsilon"]), r["attack"], fmt(r["epsilon_lower_bound"]),
                             fmt(r["ratio"]), fmt(r["tpr_low"]), fmt(r["fpr_up"]), fmt(r["seconds"])] for r in rows],
                  [False, True, True, False, True, True, True, True, True])
    above = [r for r in rows if r["epsilon_lower_bound"] > r["epsilon"]]
    verdict = ("No cell is audited above its nominal epsilon." if not above else
               "Audited ABOVE the nominal epsilon (a bug in the mechanism or its analysis): "
               + "; ".join(f"{r['mechanism']} k={r['k']} ε={r['epsilon']:g} ({r['attack']}): {r['epsilon_lower_bound']:.3f}" for r in above))
    meta = [("trials per input", f"{grid.trials:,}"), ("alpha", fmt(grid.alpha)), ("delta (approximate)", fmt(grid.delta)),
            ("seed", str(grid.seed)), ("cells", str(len(rows))), ("wall time", f"{seconds:.1f} s")]
    return {"title": grid.name, "description": grid.description, "meta": meta, "figures": figures, "table": table, "verdict": verdict}


_INT_COLUMNS = {"k", "tp", "fp", "trials", "evaluated"}
_TEXT_COLUMNS = {"mechanism", "attack", "test"}


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``audit.csv`` with their types restored."""
    with open(out / "audit.csv", newline="", encoding="utf-8") as fh:
        return [{key: value if key in _TEXT_COLUMNS else int(value) if key in _INT_COLUMNS else float(value)
                 for key, value in row.items()} for row in csv.DictReader(fh)]


def write_audit(grid: AuditGrid, rows: list[dict[str, Any]], out: Path, seconds: float) -> None:
    """Write the data files (module docstring) into ``out``; the report is built from them."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / "config.resolved.yaml", grid.model_dump())
    atomic_write_bytes(out / "audit.csv", _csv(rows))
    atomic_write_json(out / "env.json", {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()})
    above = sum(r["epsilon_lower_bound"] > r["epsilon"] for r in rows)
    metrics = {"ldp_audit.cells": len(rows), "ldp_audit.max_ratio": max(r["ratio"] for r in rows),
               "ldp_audit.cells_above_epsilon": int(above), "run.seconds": seconds}
    atomic_write_json(out / "summary.json", {"name": grid.name, "seed": grid.seed, "status": "ok", "metrics": metrics})


def build_audit_report(out: str | Path) -> tuple[Path, Path]:
    """(Re)build ``report.md`` / ``report.html`` of an audit directory from its data files alone."""
    from ...report.output import write_report
    from ...scenario.loader import read_yaml

    out = Path(out)
    grid = load_grid(read_yaml(out / "config.resolved.yaml"))
    seconds = json.loads((out / "summary.json").read_text())["metrics"]["run.seconds"]
    return write_report(out, "ldp_audit", _report_context(grid, read_rows(out), out, seconds))


def audit_ldp_file(path: str | Path, out: Path | None, overwrite: bool,
                   progress: Callable[[int, int, dict[str, Any]], None] | None = None,
                   jobs: int = 1) -> tuple[Path, dict[str, Any]]:
    """Load, run and write a grid (the ``fllab audit-ldp`` command): ``(out, summary metrics)``.
    Everything is validated before any audit runs; the directory is written only at the end."""
    from ...runner import default_out
    from ...scenario.loader import read_yaml

    grid = load_grid(read_yaml(path))
    out = Path(out) if out is not None else default_out(grid.name)
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} already exists; pass --overwrite or choose another --out", "--out")
        if not (out / "summary.json").exists():
            raise ConfigError(f"{out} was not written by fllab (no summary.json); refusing to overwrite it", "--out")
    start = time.perf_counter()
    rows = run_grid(grid, progress, jobs)
    seconds = time.perf_counter() - start
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    write_audit(grid, rows, partial, seconds)
    build_audit_report(partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out, json.loads((out / "summary.json").read_text())["metrics"]
