"""The run directory as the reports import it: :mod:`fllab.rundir` owns the layout, the writer
and the reader (:func:`load_run`); this module only re-exports the names the renderers use."""
from __future__ import annotations

from ..rundir import (  # noqa: F401  (re-exported)
    ARTEFACTS, ATTACKS, CONFIG, ENV, FIGURES_MANIFEST, PARTITION, RECONSTRUCTION, ROUNDS, SCORES, SUMMARY, ArtefactFigure,
    RunData, Scores, attack_scores, defense_names, load_run, read_scores, scores_csv,
)

__all__ = [
    "ARTEFACTS", "ATTACKS", "CONFIG", "ENV", "FIGURES_MANIFEST", "PARTITION", "RECONSTRUCTION", "ROUNDS", "SCORES", "SUMMARY",
    "ArtefactFigure", "RunData", "Scores", "attack_scores", "defense_names", "load_run", "read_scores", "scores_csv",
]
