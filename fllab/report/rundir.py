"""Read a run directory (the engine's data) into one object; every file but one is optional.

Reports are rebuilt from these files alone; the file names come from :mod:`fllab.rundir`.
A missing optional file leaves its field empty and the report omits that section; a file that
exists but cannot be parsed is an error naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import FllabError
from ..io import read_jsonl, read_text
from ..rundir import ARTEFACTS, ATTACKS, CONFIG, ENV, PARTITION, ROUNDS, SUMMARY  # the layout's one owner
from .output import IMAGE_SUFFIXES

FIGURES_MANIFEST = "figures.json"
RECONSTRUCTION = "reconstruction.png"
SCORES = "scores.csv"  # artefacts/<attack>/scores.csv: per-record membership scores
_SCORES_HEADER = "index,is_member,score"


@dataclass(frozen=True)
class Scores:
    """Per-record scores of a membership attack or audit (higher = member) and the truth."""

    score: np.ndarray  # float64 (n,)
    is_member: np.ndarray  # bool (n,)


def scores_csv(score: Any, is_member: Any) -> bytes:
    """The :data:`SCORES` file of per-record scores and their membership truth (what the engine
    writes for every membership attack and audit)."""
    lines = [_SCORES_HEADER] + [f"{i},{int(m)},{float(s)!r}" for i, (m, s) in enumerate(zip(is_member, score))]
    return ("\n".join(lines) + "\n").encode()


def read_scores(path: Path) -> Scores:
    """Parse a :data:`SCORES` file; a malformed one is an error naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or lines[0].strip() != _SCORES_HEADER:
            raise ValueError(f"the header is not {_SCORES_HEADER!r}")
        rows = [line.split(",") for line in lines[1:] if line.strip()]
        return Scores(np.array([float(r[2]) for r in rows]), np.array([r[1].strip() == "1" for r in rows], dtype=bool))
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise FllabError(f"{path}: cannot read membership scores ({exc})") from exc


def attack_scores(run_dir: Path) -> dict[str, Scores]:
    """``artefacts/<attack>/scores.csv`` of every attack that wrote one, by attack name."""
    artefacts = run_dir / ARTEFACTS
    if not artefacts.is_dir():
        return {}
    return {d.name: read_scores(d / SCORES) for d in sorted(artefacts.iterdir()) if (d / SCORES).is_file()}


def defense_names(run_dir: Path) -> list[str] | None:
    """Names of the defenses in ``config.resolved.yaml`` (None when the file is absent or unreadable)."""
    path = run_dir / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    defenses = config.get("defenses") or []
    return [str(d.get("name") if isinstance(d, dict) else d) for d in defenses]


@dataclass
class ArtefactFigure:
    """An image some attack asked to show: ``path`` is absolute, ``rel`` relative to the run dir."""

    title: str
    path: Path
    rel: str
    caption: str = ""


@dataclass
class RunData:
    """Everything a run report shows, as loaded from disk."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    partition: dict[str, Any] | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[ArtefactFigure] = field(default_factory=list)
    artefact_files: list[str] = field(default_factory=list)
    scores: dict[str, Scores] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.summary.get("metrics")
        return metrics if isinstance(metrics, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FllabError(f"{path}: cannot read JSON ({exc})") from exc


def _optional_json(path: Path, kind: type) -> Any:
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, kind):
        raise FllabError(f"{path}: expected a JSON {kind.__name__}, found {type(data).__name__}")
    return data


def _inside(base: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def _figure_path(run_dir: Path, raw: str) -> Path | None:
    """Resolve a manifest path against ``artefacts/`` then the run dir, refusing paths outside it."""
    for base in (run_dir / ARTEFACTS, run_dir):
        candidate = base / raw
        if candidate.is_file() and _inside(run_dir, candidate):
            return candidate
    return None


def _artefact_figures(run_dir: Path) -> list[ArtefactFigure]:
    manifest = _optional_json(run_dir / ARTEFACTS / FIGURES_MANIFEST, list) or []
    figures = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise FllabError(f"{run_dir / ARTEFACTS / FIGURES_MANIFEST}: each entry needs a 'path' string")
        path = _figure_path(run_dir, entry["path"])
        if path is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # a figure that was never written, or is no image: show the rest
        rel = path.relative_to(run_dir).as_posix()
        figures.append(ArtefactFigure(str(entry.get("title") or path.stem), path, rel, str(entry.get("caption") or "")))
    return figures


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``; raises :class:`FllabError` when it holds neither a summary nor rounds."""
    path = Path(run_dir)
    summary = _optional_json(path / SUMMARY, dict)
    rounds = read_jsonl(path / ROUNDS)
    if summary is None and not rounds:
        raise FllabError(f"{path}: not a run directory (no {SUMMARY} or {ROUNDS})")
    artefacts = path / ARTEFACTS
    artefact_files = sorted(
        p.relative_to(path).as_posix() for p in artefacts.rglob("*") if p.is_file()
    ) if artefacts.is_dir() else []
    config = path / CONFIG
    return RunData(
        path=path,
        summary=summary or {},
        config_text=read_text(config) if config.is_file() else None,
        env=_optional_json(path / ENV, dict) or {},
        rounds=[r for r in rounds if isinstance(r.get("round"), int)],
        partition=_optional_json(path / PARTITION, dict),
        attacks=_optional_json(path / ATTACKS, dict) or {},
        figures=_artefact_figures(path),
        artefact_files=artefact_files,
        scores=attack_scores(path),
    )
