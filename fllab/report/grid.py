"""Heat-maps of a sweep's grid (e.g. attack x defense), read the way robustness papers read them.

Three things keep a heat-map honest:

- **Against the undefended clean model.**  ``poisoning.accuracy_drop`` is measured against each
  defense's own no-attack cell, so a defense that is weak even without attackers (Krum on non-IID
  data) looks robust.  :func:`add_drop_vs_undefended` adds ``poisoning.accuracy_drop_vs_undefended``:
  the clean accuracy of the setting with neither attack nor defense minus the setting's accuracy.
- **Worst case over attacks.**  A defense is as good as its worst attack (ByzFL, Allouah et al.
  2023, report the minimum accuracy over attacks): the attack axis gets a ``worst case`` entry
  holding, per defense, the worst value over the attacked settings.
- **Colour scales that do not stretch noise.**  The colour range spans at least
  :func:`min_colour_span`: four standard errors of a mean over seeds, and a
  tenth of the natural scale of a bounded metric, so two cells that differ by seed noise look alike
  (kept inside the metric's own bounds, e.g. [0, 1] for an accuracy).

Which parameter is the attack axis and which the defense axis is read from its name (``attack``,
``attacks.0.name``, ``defense``, ``aggregator`` ...); which settings are clean or undefended is read
from their cells' resolved configs.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

from .directions import higher_is_better
from ..rundir import CONFIG
from .threat import parse_config, threat_summary

DROP_VS_UNDEFENDED = "poisoning.accuracy_drop_vs_undefended"
WORST = "worst case"
#: metrics whose values lie in [0, 1]: their colour range spans at least a tenth of that
_BOUNDED_FAMILIES = ("utility.accuracy", "utility.baseline_accuracy", "membership.", "poisoning.", "inversion.ssim",
                     "inversion.lpips", "inversion.label_accuracy")
_NATURAL_SPAN = {"inversion.psnr": 2.0}  # dB


def axis_role(param: str) -> str | None:
    """``attack`` or ``defense`` for a swept parameter whose name says so, else None."""
    name = param.removeprefix("param:").lower()
    if "attack" in name:
        return "attack"
    if any(word in name for word in ("defen", "aggregator")) or name in ("algorithm", "algorithm.name"):
        return "defense"
    return None


def setting_roles(sweep_dir: Path, rows: list[dict[str, Any]], params: list[str]) -> dict[tuple, tuple[bool, bool]]:
    """``(attacked, defended)`` per setting, from the resolved config of its first cell."""
    roles: dict[tuple, tuple[bool, bool]] = {}
    for row in rows:
        key = tuple(row[p] for p in params)
        if key in roles or not row.get("cell"):
            continue
        path = sweep_dir / "cells" / str(row["cell"]) / CONFIG
        if not path.is_file():
            continue
        threat = threat_summary(parse_config(path.read_text(encoding="utf-8")), {}, None)
        roles[key] = (threat["attacked"] != ["none"], threat["defended"] != ["none"])
    return roles


#: attack-axis labels that mean "no attack" when a setting's config cannot be read
NO_ATTACK_LABELS = {"none", "no_attack", "clean", "benign", "[]"}


def is_attacked(setting: dict[str, Any], params: list[str], roles: dict[tuple, tuple[bool, bool]],
                attack_axis: str | None) -> bool:
    """Whether a setting has attackers: from its config when read, else from its attack-axis label."""
    role = roles.get(tuple(setting[p] for p in params))
    if role is not None:
        return role[0]
    return attack_axis is None or str(setting.get(attack_axis, "")).strip().lower() not in NO_ATTACK_LABELS


def add_drop_vs_undefended(settings: list[dict[str, Any]], params: list[str], roles: dict[tuple, tuple[bool, bool]],
                           outer: list[str]) -> bool:
    """Set :data:`DROP_VS_UNDEFENDED` on every setting with an accuracy: the mean clean accuracy of
    the settings with neither attack nor defense (in the same slice of the ``outer`` parameters,
    else anywhere) minus its own.  Returns whether any such reference existed."""
    def reference(keep: Callable[[dict[str, Any]], bool]) -> float | None:
        values = [s["utility.accuracy"] for s in settings if keep(s) and s.get("utility.accuracy") is not None
                  and roles.get(tuple(s[p] for p in params)) == (False, False)]
        return statistics.fmean(values) if values else None

    overall = reference(lambda s: True)
    if overall is None:
        return False
    for setting in settings:
        if setting.get("utility.accuracy") is None:
            continue
        local = reference(lambda s: all(s[p] == setting[p] for p in outer)) if outer else None
        base = local if local is not None else overall
        setting[DROP_VS_UNDEFENDED] = base - setting["utility.accuracy"]
    return True


def worst(values: list[float], metric: str) -> float | None:
    """The defender's worst of ``values`` (min when higher is better, else max)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if higher_is_better(metric) else max(present)


def bounds(metric: str) -> tuple[float, float] | None:
    """The range a metric's values cannot leave ([0, 1] for accuracies, rates, AUC), if any."""
    return (0.0, 1.0) if metric.startswith(_BOUNDED_FAMILIES) and metric != DROP_VS_UNDEFENDED else None


def min_colour_span(settings: list[dict[str, Any]], metric: str) -> float:
    """The least range a heat-map's colours span for ``metric``: four standard errors of a
    setting's mean over seeds (median over settings: a difference smaller than that is noise), and
    a tenth of the natural scale of a bounded metric (2 dB for PSNR)."""
    errors = [s[f"{metric}:std"] / s[f"{metric}:n"] ** 0.5 for s in settings
              if s.get(f"{metric}:std") is not None and (s.get(f"{metric}:n") or 0) > 1]
    noise = 4 * statistics.median(errors) if errors else 0.0
    natural = _NATURAL_SPAN.get(metric, 0.1 if metric.startswith(_BOUNDED_FAMILIES) else 0.0)
    return max(noise, natural)

