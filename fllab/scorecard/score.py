"""From a scorecard directory's finished cells to one scored row per defense setting.

Each seed of a setting is scored first (so that differences against the reference setting pair
runs of the same seed), then every figure is summarised over the seeds (mean, std, Student-t
95% CI, n; :mod:`.stats`).  Where a figure comes from:

* ``utility.accuracy``: the final model of the utility family's training (a passive cell, whose
  training is its no-attack twin's; with ``utility: poisoning``, the poisoning cell's twin); where
  that family does not apply to the setting, the next family's (membership, inversion, poisoning).
  ``utility.accuracy_drop``: the reference setting's accuracy (same seed) minus this one's.
* ``inversion.*`` and ``membership.*``: the family's cell; beside them their no-information
  references: ``inversion.psnr_random_guess`` (uniform noise), and chance for membership
  (AUC 0.5, TPR at FPR x = x).
* ``poisoning.accuracy_drop``: against the setting's own no-attack twin;
  ``poisoning.accuracy_drop_vs_undefended``: the reference setting's twin (clean and undefended,
  same seed) minus the attacked accuracy, i.e. what attack and defense cost together (a weak
  defense cannot look robust by being weak when nobody attacks);
  ``poisoning.backdoor_success_rate`` when the attack plants a backdoor.
* ``privacy.epsilon`` (accounted) and ``privacy.epsilon_lower_bound`` (audited from the
  membership attack's scores): the membership cell, else the utility family's.
* ``seconds``: wall-clock seconds of every training of the setting (cells and poisoning twin).

A family whose cell was refused is "n/a" with the refusal as reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import ScorecardFile
from ..report.aggregate import summarize

CELLS_DIR = "cells"

#: per family: the metrics a cell reports that the scorecard keeps
FAMILY_METRICS: dict[str, tuple[str, ...]] = {
    "inversion": ("inversion.psnr", "inversion.psnr_random_guess", "inversion.lpips", "inversion.ssim", "inversion.label_accuracy"),
    "membership": ("membership.auc", "membership.tpr_at_0.001_fpr", "membership.tpr_at_0.01_fpr", "privacy.epsilon_lower_bound"),
    "poisoning": ("poisoning.accuracy_drop", "poisoning.backdoor_success_rate"),
}
#: chance level of the membership metrics (a guesser that ignores the model)
CHANCE: dict[str, float] = {"membership.auc": 0.5, "membership.tpr_at_0.001_fpr": 0.001, "membership.tpr_at_0.01_fpr": 0.01}
UNDEFENDED_DROP = "poisoning.accuracy_drop_vs_undefended"


@dataclass
class Row:
    """One defense setting: figures summarised over seeds, and why a family does not apply."""

    label: str
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> {mean, std, ci95, n}
    na: dict[str, str] = field(default_factory=dict)  # family -> reason
    missing: dict[str, int] = field(default_factory=dict)  # family -> seeds not finished yet
    runs: dict[str, list[str]] = field(default_factory=dict)  # family -> run directories (relative), by seed
    num_classes: int | None = None

    def mean(self, metric: str) -> float | None:
        return self.stats.get(metric, {}).get("mean")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _twin(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    rel = summary.get("baseline")
    return _read(run_dir / rel / "summary.json") if rel else None


def _seed_records(sc: ScorecardFile, out: Path, cells: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> {"metrics": {...}, "na": {family: reason}, "missing": [...], "runs": {family: dir}}."""
    card = sc.scorecard
    records: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in cells:
        family, label, seed = cell["values"]["family"], cell["values"]["defense"], cell["seed"]
        rec = records.setdefault(label, {}).setdefault(seed, {"metrics": {}, "na": {}, "missing": [], "runs": {}, "classes": None})
        run_dir = out / CELLS_DIR / cell["cell"]
        summary = _read(run_dir / "summary.json")
        if summary is None:
            rec["missing"].append(family)
            continue
        if summary["status"] != "ok":
            rec["na"][family] = summary.get("reason", summary["status"])
            continue
        rec["runs"][family] = f"{CELLS_DIR}/{cell['cell']}"
        m = summary["metrics"]
        got = rec["metrics"]
        got.update({k: m[k] for k in FAMILY_METRICS[family] if k in m})
        got[f"seconds.{family}"] = m.get("run.seconds")
        partition = _read(run_dir / "partition.json") or {}
        rec["classes"] = rec["classes"] or partition.get("num_classes")
        if family == "poisoning":
            twin = _twin(run_dir, summary) or {"metrics": {}}
            got["poisoning.attacked_accuracy"] = m.get("utility.accuracy")
            got["poisoning.clean_accuracy"] = m.get("utility.baseline_accuracy")
            got["seconds.poisoning_twin"] = twin["metrics"].get("run.seconds")
            accuracy = m.get("utility.baseline_accuracy")
        else:
            accuracy = m.get("utility.accuracy")
        got[f"accuracy.{family}"] = accuracy
        for key in ("privacy.epsilon", "privacy.delta"):
            if key in m:
                got.setdefault(f"{key}.{family}", m[key])
    for seeds in records.values():
        for rec in seeds.values():
            got = rec["metrics"]
            # the utility family's training; another family's only where that one does not apply
            order = [card.utility_family]
            if card.utility_family in rec["na"]:
                order += [f for f in ("membership", "inversion", "poisoning") if f != card.utility_family]
            got["utility.accuracy"] = next((got[f"accuracy.{f}"] for f in order if got.get(f"accuracy.{f}") is not None), None)
            for key in ("privacy.epsilon", "privacy.delta"):
                src = ["membership", card.utility_family, *card.families]
                got[key] = next((got[f"{key}.{f}"] for f in src if f"{key}.{f}" in got), None)
            got["seconds"] = sum(v for k, v in got.items() if k.startswith("seconds.") and v is not None) or None
    return records


def score(sc: ScorecardFile, out: Path, cells: list[dict[str, Any]]) -> list[Row]:
    """One :class:`Row` per defense setting, in the file's order."""
    records = _seed_records(sc, out, cells)
    ref = records.get(sc.scorecard.reference_label, {})
    rows = []
    for setting in sc.scorecard.defenses:
        seeds = records.get(setting.label, {})
        per_seed: list[dict[str, Any]] = []
        row = Row(setting.label)
        for seed, rec in seeds.items():
            got = dict(rec["metrics"])
            base = ref.get(seed, {}).get("metrics", {})
            if got.get("utility.accuracy") is not None and base.get("utility.accuracy") is not None:
                got["utility.accuracy_drop"] = base["utility.accuracy"] - got["utility.accuracy"]
            if got.get("poisoning.attacked_accuracy") is not None and base.get("poisoning.clean_accuracy") is not None:
                got[UNDEFENDED_DROP] = base["poisoning.clean_accuracy"] - got["poisoning.attacked_accuracy"]
            per_seed.append(got)
            row.na.update(rec["na"])
            for family in rec["missing"]:
                row.missing[family] = row.missing.get(family, 0) + 1
            for family, rel in rec["runs"].items():
                row.runs.setdefault(family, []).append(rel)
            row.num_classes = row.num_classes or rec["classes"]
        metrics = list(dict.fromkeys(k for got in per_seed for k in got))
        row.stats = {k: summarize([got.get(k) for got in per_seed]) for k in metrics}
        rows.append(row)
    return rows


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    """``scorecard.json``'s rows: label, per-metric statistics, n/a reasons, run directories."""
    return [{"defense": r.label, "metrics": r.stats, "not_applicable": r.na, "unfinished": r.missing, "runs": r.runs} for r in rows]
