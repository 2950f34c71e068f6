"""The scorecard table: a row per defense setting, a column per family, each cell scored.

A cell's *protection score* places the setting between two references on the family's headline
measure: 0 is the no-defense reference setting, 1 is no information (inversion: the PSNR of a
uniform-noise guess; membership: AUC 0.5; poisoning: no accuracy lost and no backdoor; utility,
read the other way: 1 is the reference's accuracy, 0 is chance, 1 / classes).  Reports colour
cells by it (red -> green); it is clipped to [0, 1] and absent where a reference is missing or
the reference already sits at no information.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..report.tables import MISSING, fmt
from .score import CHANCE, UNDEFENDED_DROP, Row

COLUMNS = ("utility", "inversion", "membership", "poisoning", "privacy", "seconds")
#: column -> (title, what its cells show)
TITLES = {
    "utility": ("utility", "accuracy (change)"),
    "inversion": ("inversion", "PSNR dB (random guess) · LPIPS"),
    "membership": ("membership", "AUC · TPR at 0.1% FPR (chance 0.5 · 0.001)"),
    "poisoning": ("poisoning", "accuracy drop vs clean undefended (vs own twin)"),
    "privacy": ("privacy", "ε accounted · audited lower bound"),
    "seconds": ("seconds", "all trainings"),
}


@dataclass
class Cell:
    text: str
    score: float | None = None  # protection score in [0, 1]
    na: str | None = None  # why the family does not apply


def num(row: Row, metric: str, unit: str = "", ci: bool = True) -> str:
    """``mean ± ci95`` (the interval only where several seeds give one)."""
    s = row.stats.get(metric)
    if not s or s.get("mean") is None:
        return MISSING
    text = f"{fmt(s['mean'])}{unit}"
    if ci and s.get("ci95") is not None:
        text += f" ± {s['ci95']:.2g}"
    return text


def protection(value: float | None, reference: float | None, no_info: float | None) -> float | None:
    """Share of the way from ``reference`` (0) to ``no_info`` (1) that ``value`` covers, in [0, 1]."""
    if value is None or reference is None or no_info is None:
        return None
    gap = no_info - reference
    if not math.isfinite(gap) or abs(gap) < 1e-9:
        return None
    return min(1.0, max(0.0, (value - reference) / gap))


def poisoning_measure(rows: list[Row]) -> str:
    """The headline poisoning figure: the backdoor success rate when the attack plants one, else the
    accuracy drop against the clean undefended model."""
    return "poisoning.backdoor_success_rate" if any(r.mean("poisoning.backdoor_success_rate") is not None for r in rows) \
        else UNDEFENDED_DROP


def cells(rows: list[Row], reference: str, families: list[str]) -> list[dict[str, Cell]]:
    """Per row, the text and score of each of :data:`COLUMNS` (families not declared are left out)."""
    ref = next((r for r in rows if r.label == reference), None)
    pm = poisoning_measure(rows)
    out = []
    for row in rows:
        c: dict[str, Cell] = {}
        chance = 1.0 / row.num_classes if row.num_classes else None
        drop = row.stats.get("utility.accuracy_drop", {}).get("mean")
        c["utility"] = Cell(f"{num(row, 'utility.accuracy')}" + (f" ({-drop:+.3f})" if drop is not None and row is not ref else ""),
                            protection(row.mean("utility.accuracy"), chance, ref.mean("utility.accuracy") if ref else None))
        if "inversion" in families:
            c["inversion"] = Cell(f"{num(row, 'inversion.psnr')} ({num(row, 'inversion.psnr_random_guess', ci=False)}) · "
                                  f"{num(row, 'inversion.lpips')}",
                                  protection(row.mean("inversion.psnr"), ref.mean("inversion.psnr") if ref else None,
                                             row.mean("inversion.psnr_random_guess")))
        if "membership" in families:
            c["membership"] = Cell(f"{num(row, 'membership.auc')} · {num(row, 'membership.tpr_at_0.001_fpr')}",
                                   protection(row.mean("membership.auc"), ref.mean("membership.auc") if ref else None,
                                              CHANCE["membership.auc"]))
        if "poisoning" in families:
            text = f"{num(row, UNDEFENDED_DROP)} ({num(row, 'poisoning.accuracy_drop', ci=False)})"
            if pm == "poisoning.backdoor_success_rate":
                text += f" · backdoor {num(row, pm)}"
            c["poisoning"] = Cell(text, protection(row.mean(pm), ref.mean(pm) if ref else None, 0.0))
        eps = row.mean("privacy.epsilon")
        c["privacy"] = Cell(f"{'∞' if eps is None else num(row, 'privacy.epsilon', ci=False)} · "
                            f"{num(row, 'privacy.epsilon_lower_bound', ci=False)}")
        c["seconds"] = Cell(num(row, "seconds", ci=False))
        for family, reason in row.na.items():
            if family in c:
                c[family] = Cell("n/a", None, reason)
        for family, count in row.missing.items():
            if family in c and family not in row.na:
                c[family].text += f" [{count} seed(s) unfinished]"
        out.append(c)
    return out


def columns(families: list[str]) -> list[str]:
    return [c for c in COLUMNS if c not in ("inversion", "membership", "poisoning") or c in families]


def terminal_table(rows: list[Row], reference: str, families: list[str]) -> str:
    """The table as plain text for the end of a run (n/a reasons listed below it)."""
    cols = columns(families)
    table = cells(rows, reference, families)
    short = {"utility": "accuracy", "inversion": "inversion PSNR (rand) · LPIPS", "membership": "MIA AUC · TPR@0.1%",
             "poisoning": "poison drop (own) · BSR", "privacy": "eps · audited", "seconds": "s"}
    header = ["defense", *[short[c] for c in cols]]
    body = [[row.label, *[t[c].text for c in cols]] for row, t in zip(rows, table)]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  n/a {row.label} / {fam}: {reason}" for row in rows for fam, reason in row.na.items()]
    return "\n".join(lines + notes)
