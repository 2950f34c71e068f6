"""Black-box LDP audit: any randomizer callable, a test learned from its reports.

``audit_blackbox(randomize, v1, v2, trials)`` calls ``randomize(v1)`` and ``randomize(v2)``
``trials`` times each; every call must return an int, a float or a 1-D array of one fixed
length.  Nothing about the mechanism is known, so the distinguishing test is learned:

1. The first half of each input's reports is the *learning* half.  Each report coordinate is
   discretised (a coordinate with at most :data:`MAX_CATEGORIES` distinct learning values is
   categorical -- bits, values of GRR; any other is cut at :data:`QUANTILE_BINS` pooled quantiles).
2. Per coordinate and bin, the log ratio ``log P[bin | v1] / P[bin | v2]`` is estimated with
   add-1/2 smoothing.  Coordinates whose bins differ between the inputs (a chi-square test at
   ``1e-3`` Bonferroni-corrected over coordinates, at most :data:`MAX_COORDINATES` of the
   strongest; the strongest one if none passes) enter the score
   ``s(y) = sum_j log-ratio_j(bin_j(y))``: the naive-Bayes log-likelihood ratio, the most
   powerful statistic when coordinates are independent given the input (UE, HE, Gaussian).
3. The test is ``s >= tau`` (or ``s <= tau`` with the roles of v1 and v2 swapped), ``tau`` and the
   side chosen to maximise the LDP-Auditor bound on the learning half
   (:func:`~fllab.privacy.ldp.bounds.learn_threshold`).
4. That single test is counted on the *evaluation* half and bounded with Clopper-Pearson
   (:func:`~fllab.privacy.ldp.bounds.epsilon_from_counts`): since the test was fixed before the
   evaluation reports were looked at, the bound holds at the stated confidence.

Limits: the score sees the report's values only, so a mechanism whose privacy rests on a
relation between fields (local hashing: a bucket and the seed of its hash) needs the built-in
audit, which knows the encoding.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from scipy.stats import chi2

from .audit import AuditResult, audit_result
from .checks import LDPArgumentError, positive_int, probability

MAX_CATEGORIES = 1024
QUANTILE_BINS = 64
MAX_COORDINATES = 16
SELECTION_LEVEL = 1e-3


def _collect(randomize: Callable[[Any], Any], value: Any, trials: int, name: str) -> np.ndarray:
    """``trials`` reports of ``value`` as a (trials, width) array; checks every report."""
    first = None
    rows = []
    for i in range(trials):
        try:
            report = randomize(value)
        except Exception as err:  # noqa: BLE001 -- any failure of user code is a bad argument
            raise LDPArgumentError(f"raised {type(err).__name__}: {err} on input {name}={value!r}", "randomize") from None
        arr = np.asarray(report)
        if arr.ndim > 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise LDPArgumentError(
                f"must return an int, a float or a 1-D numeric array (got {type(report).__name__} of shape {arr.shape})", "randomize"
            )
        arr = arr.reshape(-1)
        if first is None:
            first = arr.shape
        elif arr.shape != first:
            raise LDPArgumentError(f"returned reports of inconsistent shapes {first} and {arr.shape} (call {i} on {name})", "randomize")
        rows.append(arr)
    out = np.stack(rows)  # the reports' own dtype (bits stay one byte each)
    if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
        raise LDPArgumentError("returned a non-finite report", "randomize")
    return out


def _bins(column: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(edges, categorical)`` of one pooled learning column: its distinct values, or quantiles."""
    values = np.unique(column)
    if values.size <= MAX_CATEGORIES:
        return values, True
    return np.unique(np.quantile(column, np.linspace(0.0, 1.0, QUANTILE_BINS + 1)[1:-1])), False


def _bin_index(column: np.ndarray, edges: np.ndarray, categorical: bool) -> np.ndarray:
    """Categorical: index of the value, ``len(edges)`` for a value unseen while learning."""
    if not categorical:
        return np.searchsorted(edges, column, side="right")
    pos = np.clip(np.searchsorted(edges, column), 0, edges.size - 1)
    return np.where(edges[pos] == column, pos, edges.size)


class _NaiveBayesScore:
    """Sum of per-coordinate log ratios over the selected coordinates (module docstring, step 2)."""

    def __init__(self, learn1: np.ndarray, learn2: np.ndarray):
        pooled = np.concatenate([learn1, learn2])
        self.columns: list[tuple[int, np.ndarray, bool, np.ndarray]] = []
        stats = []
        for j in range(pooled.shape[1]):
            column = pooled[:, j].astype(np.float64)
            edges, categorical = _bins(column)
            nbins = edges.size + 1
            c1 = np.bincount(_bin_index(learn1[:, j].astype(np.float64), edges, categorical), minlength=nbins).astype(np.float64)
            c2 = np.bincount(_bin_index(learn2[:, j].astype(np.float64), edges, categorical), minlength=nbins).astype(np.float64)
            used = (c1 + c2) > 0
            expected1 = (c1 + c2) * c1.sum() / (c1.sum() + c2.sum())
            expected2 = (c1 + c2) - expected1
            with np.errstate(divide="ignore", invalid="ignore"):
                stat = np.nansum(((c1 - expected1) ** 2 / expected1 + (c2 - expected2) ** 2 / expected2)[used])
            dof = max(1, int(used.sum()) - 1)
            log_ratio = np.log((c1 + 0.5) / (c1.sum() + 0.5 * nbins)) - np.log((c2 + 0.5) / (c2.sum() + 0.5 * nbins))
            stats.append((chi2.sf(stat, dof), -stat, j, edges, categorical, log_ratio))
        level = SELECTION_LEVEL / len(stats)
        ranked = sorted(stats, key=lambda s: (s[0], s[1]))
        chosen = [s for s in ranked if s[0] < level][:MAX_COORDINATES] or ranked[:1]
        self.columns = [(j, edges, categorical, log_ratio) for _, _, j, edges, categorical, log_ratio in chosen]

    def __call__(self, reports: np.ndarray) -> np.ndarray:
        score = np.zeros(reports.shape[0])
        for j, edges, categorical, log_ratio in self.columns:
            score += log_ratio[_bin_index(reports[:, j].astype(np.float64), edges, categorical)]
        return score

    def describe(self) -> str:
        cols = ", ".join(str(j) for j, *_ in self.columns)
        return f"naive-Bayes log-likelihood ratio over report coordinate(s) {cols}"


def audit_blackbox(
    randomize: Callable[[Any], Any],
    v1: Any,
    v2: Any,
    trials: int,
    delta: float = 0.0,
    alpha: float = 0.01,
    seed: int = 0,
) -> AuditResult:
    """Empirical epsilon lower bound of the randomizer ``randomize`` between inputs ``v1`` and
    ``v2`` (module docstring).  ``trials`` reports are drawn per input (at least 2: half learn
    the test, half evaluate it).  ``seed`` seeds the shuffle that splits the trials; the
    randomizer's own randomness is its business.

    Raises ``ValueError`` (:class:`LDPArgumentError`) naming the argument for a non-callable
    ``randomize``, ``v1 == v2``, ``trials < 2``, ``delta`` outside [0, 1), ``alpha`` outside
    (0, 1), and a randomizer that raises or returns reports of inconsistent shapes."""
    if not callable(randomize):
        raise LDPArgumentError(f"must be callable (got {type(randomize).__name__})", "randomize")
    trials = positive_int(trials, "trials")
    if trials < 2:
        raise LDPArgumentError("must be at least 2 (half learn the test, half evaluate it)", "trials")
    delta = probability(delta, "delta", allow_zero=True)
    alpha = probability(alpha, "alpha", allow_zero=False)
    try:
        same = bool(np.array_equal(np.asarray(v1), np.asarray(v2)))
    except Exception:  # noqa: BLE001 -- incomparable inputs are different inputs
        same = False
    if same:
        raise LDPArgumentError(f"v1 and v2 must differ (both {v1!r})", "v2")
    start = time.perf_counter()
    y1 = _collect(randomize, v1, trials, "v1")
    y2 = _collect(randomize, v2, trials, "v2")
    if y1.shape[1] != y2.shape[1]:
        raise LDPArgumentError(f"returned reports of inconsistent shapes ({y1.shape[1]},) for v1 and ({y2.shape[1]},) for v2", "randomize")
    rng = np.random.default_rng(seed)
    y1, y2 = y1[rng.permutation(trials)], y2[rng.permutation(trials)]
    half = trials // 2
    score = _NaiveBayesScore(y1[:half], y2[:half])
    # audit_result learns tau on the first half of the scores and counts the second half
    return audit_result(score(y1), score(y2), True, delta=delta, alpha=alpha, trials=trials, test=score.describe(), start=start)
