"""Scorecard figures: each privacy or robustness measure against accuracy, Pareto front marked.

Drawn with the report package's figure frame (:mod:`fllab.report.plots`): one point per defense
setting at its mean over seeds, with 95% confidence bars, the front of settings that no other
setting beats on both axes, and the measure's no-information level as a dashed line.
"""
from __future__ import annotations

from typing import Any

from ..report.pareto import pareto_front
from ..report.plots import FRONT, MUTED, _place_labels, _png
from .score import CHANCE, UNDEFENDED_DROP, Row

ACCURACY = "utility.accuracy"

#: measure -> (better when higher, axis label, no-information level or the metric that holds it)
MEASURES: dict[str, tuple[bool, str, Any]] = {
    "inversion.psnr": (False, "inversion PSNR (dB)", "inversion.psnr_random_guess"),
    "inversion.lpips": (True, "inversion LPIPS", None),
    "membership.auc": (False, "membership AUC", CHANCE["membership.auc"]),
    "membership.tpr_at_0.001_fpr": (False, "membership TPR at 0.1% FPR", CHANCE["membership.tpr_at_0.001_fpr"]),
    UNDEFENDED_DROP: (False, "poisoning: accuracy drop vs clean undefended", 0.0),
    "poisoning.backdoor_success_rate": (False, "poisoning: backdoor success rate", None),
    "privacy.epsilon": (False, "accounted ε", None),
    "privacy.epsilon_lower_bound": (False, "audited ε lower bound", 0.0),
}


def points(rows: list[Row], measure: str) -> list[tuple[Row, float, float]]:
    return [(r, r.mean(ACCURACY), r.mean(measure)) for r in rows
            if r.mean(ACCURACY) is not None and r.mean(measure) is not None]


def front(rows: list[Row], measure: str) -> list[Row]:
    """Settings on the Pareto front of (accuracy up, measure in its better direction), by accuracy."""
    pts = points(rows, measure)
    idx = pareto_front([(a, m) for _, a, m in pts], [True, MEASURES[measure][0]])
    return sorted((pts[i][0] for i in idx), key=lambda r: -r.mean(ACCURACY))


def _ci(row: Row, metric: str) -> float:
    return row.stats.get(metric, {}).get("ci95") or 0.0


def pareto_png(rows: list[Row], measure: str) -> bytes:
    higher, label, no_info = MEASURES[measure]
    pts = points(rows, measure)
    on_front = {id(r) for r in front(rows, measure)}
    if isinstance(no_info, str):
        levels = [r.mean(no_info) for r in rows if r.mean(no_info) is not None]
        no_info = sum(levels) / len(levels) if levels else None

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for flag in (False, True):
            chosen = [p for p in pts if (id(p[0]) in on_front) == flag]
            if not chosen:
                continue
            colour = FRONT if flag else MUTED
            ax.errorbar([p[1] for p in chosen], [p[2] for p in chosen], xerr=[_ci(p[0], ACCURACY) for p in chosen],
                        yerr=[_ci(p[0], measure) for p in chosen], fmt="none", ecolor=colour, alpha=0.6, linewidth=1)
            ax.scatter([p[1] for p in chosen], [p[2] for p in chosen], s=46 if flag else 30, color=colour, zorder=3,
                       edgecolors="white", linewidths=0.6,
                       label=f"Pareto front ({len(chosen)})" if flag else f"dominated ({len(chosen)})")
        line = sorted((p[1], p[2]) for p in pts if id(p[0]) in on_front)
        if len(line) > 1:
            ax.plot(*zip(*line), color=FRONT, linewidth=1.2, alpha=0.8, zorder=2)
        if no_info is not None:
            ax.axhline(no_info, color="#5b6770", linestyle="--", linewidth=1, label="no information")
        ax.margins(x=0.15, y=0.12)
        ax.set_xlabel("test accuracy (higher is better)")
        ax.set_ylabel(f"{label} ({'higher' if higher else 'lower'} is better)")
        ax.set_title(f"{label} vs accuracy")
        if pts:
            ax.legend(loc="best", fontsize=8)
            mid = (min(p[1] for p in pts) + max(p[1] for p in pts)) / 2
            _place_labels(fig, ax, [(p[0].label, p[1], p[2], p[1] > mid) for p in pts])

    return _png((6.4, 4.2), draw)
