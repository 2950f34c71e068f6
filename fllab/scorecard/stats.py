"""Mean, spread and Student-t 95% confidence interval of one metric over a scorecard's seeds.

The interval for a mean of ``n`` draws with unknown variance is ``mean ± t_{0.975, n-1} s / sqrt(n)``
(``s`` the sample standard deviation); with one seed the interval is unknown (None).  Same
signature and output as ``fllab.report.aggregate.summarize`` on the ``report`` branch (the sweep's
``aggregate.csv``), so the two can become one function when both are merged.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from scipy import stats


def ci95_halfwidth(values: Sequence[float]) -> float | None:
    """Half-width of the two-sided 95% Student-t interval of the mean; None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def summarize(values: Sequence[Any]) -> dict[str, float | int | None]:
    """``mean``, ``std`` (sample; 0 for one value), ``ci95`` and ``n`` of the finite numbers among ``values``."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "ci95": ci95_halfwidth(finite),
        "n": len(finite),
    }
