"""Scorecards: one list of defense settings scored against an inversion, a membership and a
poisoning attack, each on its own testbed (see :mod:`fllab.scorecard.schema` for the file)."""
from .expand import is_scorecard, parse
from .report import build_scorecard_report
from .run import run_scorecard
from .table import terminal_table

__all__ = ["build_scorecard_report", "is_scorecard", "parse", "run_scorecard", "terminal_table"]
