"""Reports rebuilt from run and sweep directories ("data first, reports second").

``build_report(run_dir)`` writes ``report.md`` + a self-contained ``report.html`` for one run;
``build_sweep_report(sweep_dir)`` does the same for a sweep's ``results.csv`` with trade-off
figures and Pareto fronts.
"""
from .directions import HIGHER_IS_BETTER, higher_is_better
from .pareto import pareto_front
from .render import build_report
from .sweep import build_sweep_report


def rebuild(directory, *, x=None, y=None):
    """Rebuild the report of whatever fllab wrote in ``directory`` -- a scorecard
    (``scorecard.yaml``), a sweep (``results.csv``), an LDP audit grid (``audit.csv``) or a run (``summary.json``) -- and return ``(md, html)`` paths:
    the one dispatcher behind ``fllab report`` and :func:`fllab.build_report`."""
    from pathlib import Path

    from ..errors import ConfigError

    directory = Path(directory)
    if (directory / "scorecard.yaml").is_file():
        from ..scorecard import build_scorecard_report

        return build_scorecard_report(directory)
    if (directory / "results.csv").is_file():
        return build_sweep_report(directory, x=x, y=y)
    if (directory / "audit.csv").is_file():
        from ..privacy.ldp.grid import build_audit_report

        return build_audit_report(directory)
    if (directory / "summary.json").is_file():
        return build_report(directory)
    raise ConfigError(
        f"{directory} is not a run (summary.json), sweep (results.csv), scorecard (scorecard.yaml) or LDP audit (audit.csv)", "directory"
    )


__all__ = ["HIGHER_IS_BETTER", "build_report", "build_sweep_report", "higher_is_better", "pareto_front", "rebuild"]
