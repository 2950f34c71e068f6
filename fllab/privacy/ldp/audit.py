"""LDP-Auditor for fllab's own frequency oracles (Arcolezi & Gambs, PoPETs 2024, Algorithm 1).

For a mechanism ``M`` and two inputs ``v1 != v2`` (by default ``0`` and ``k - 1``, as the paper):
run ``M(v1)`` and ``M(v2)`` ``trials`` times each, apply a distinguishing test
(:mod:`~fllab.privacy.ldp.attacks`: the paper's attack or the optimal test of the encoding),
count ``TP`` (test says v1 on v1's reports) and ``FP`` (says v1 on v2's reports), and bound
epsilon from below with :func:`~fllab.privacy.ldp.bounds.epsilon_from_counts`.

Speed: reports are generated and tested in chunks of about 2^21 numbers with the oracle's
vectorised ``randomize``: the audited code is the mechanism itself (a bug in it shows in the
audit), with no Python loop over trials.  A learned test (Gaussian mechanisms, optimal attack)
keeps one float per trial and evaluates its threshold on the second half of the trials.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...seeding import derive_seed
from .attacks import distinguishing_test
from .bounds import epsilon_from_counts, learn_threshold
from .checks import LDPArgumentError, positive_int, probability
from .oracles import FrequencyOracle

CHUNK_NUMBERS = 1 << 21


@dataclass(frozen=True)
class AuditResult:
    """An empirical lower bound on epsilon and the counts behind it.

    ``trials`` is the number of reports drawn per input; ``evaluated`` of them (per input) were
    counted by the final test (``trials // 2`` when the test was learned on the other half).
    ``tpr_low`` and ``fpr_up`` are the Clopper-Pearson bounds on the test's rates on the
    positive input and on the other input."""

    epsilon_lower_bound: float
    tpr_low: float
    fpr_up: float
    trials: int
    evaluated: int
    tp: int
    fp: int
    test: str
    alpha: float
    delta: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunks(total: int, width: int) -> list[int]:
    """Chunk sizes (rows) summing to ``total`` with about :data:`CHUNK_NUMBERS` numbers each."""
    rows = max(1, CHUNK_NUMBERS // max(1, width))
    return [min(rows, total - start) for start in range(0, total, rows)]


def bound_from_outcomes(
    out1: np.ndarray, out2: np.ndarray, learned: bool, delta: float, alpha: float
) -> tuple[float, float, float, int, int, int, str]:
    """Bound from per-trial verdicts (booleans) or scores (learned threshold on the first half).

    Returns ``(eps, tpr_low, fpr_up, evaluated, tp, fp, note)``."""
    if not learned:
        tp, fp, n = int(out1.sum()), int(out2.sum()), out1.size
        eps, lo, hi = epsilon_from_counts(tp, n, fp, out2.size, delta, alpha)
        return float(eps), float(lo), float(hi), n, tp, fp, ""
    h1, h2 = out1.size // 2, out2.size // 2
    thr = learn_threshold(out1[:h1], out2[:h2], delta, alpha)
    pos, neg = (out1[h1:], out2[h2:]) if thr.sign > 0 else (-out2[h2:], -out1[h1:])
    tp, fp = int((pos >= thr.tau).sum()), int((neg >= thr.tau).sum())
    eps, lo, hi = epsilon_from_counts(tp, pos.size, fp, neg.size, delta, alpha)
    side = "v1" if thr.sign > 0 else "v2 (roles swapped)"
    return float(eps), float(lo), float(hi), pos.size, tp, fp, f"; tau = {thr.tau:.4g} for {side}"


def audit_result(
    out1: np.ndarray, out2: np.ndarray, learned: bool, *, delta: float, alpha: float, trials: int, test: str, start: float
) -> AuditResult:
    """The :class:`AuditResult` of a test's outcomes on the two inputs (:func:`bound_from_outcomes`),
    timed from ``start`` (a ``time.perf_counter()`` reading): the one place both audit paths end."""
    eps, lo, hi, evaluated, tp, fp, note = bound_from_outcomes(out1, out2, learned, delta, alpha)
    return AuditResult(
        epsilon_lower_bound=eps, tpr_low=lo, fpr_up=hi, trials=trials, evaluated=evaluated, tp=tp, fp=fp,
        test=test + note, alpha=float(alpha), delta=float(delta), seconds=time.perf_counter() - start,
    )


def audit_mechanism(
    mechanism: FrequencyOracle,
    attack: str = "paper",
    trials: int = 10**6,
    v1: int = 0,
    v2: int | None = None,
    alpha: float = 0.01,
    seed: int = 0,
) -> AuditResult:
    """Audit a built-in oracle (or a subclass of one, e.g. a deliberately broken variant) with
    the ``paper`` or ``optimal`` test of its encoding; ``delta`` is the mechanism's own."""
    trials = positive_int(trials, "trials")
    probability(alpha, "alpha", allow_zero=False)
    v2 = mechanism.k - 1 if v2 is None else v2
    for name, v in (("v1", v1), ("v2", v2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < mechanism.k:
            raise LDPArgumentError(f"must be an integer in 0..{mechanism.k - 1} (got {v!r})", name)
    if v1 == v2:
        raise LDPArgumentError(f"v1 and v2 must differ (both {v1!r})", "v2")
    test = distinguishing_test(mechanism, attack)
    start = time.perf_counter()
    outcomes = []
    for v in (v1, v2):
        rng = np.random.default_rng(derive_seed(seed, "ldp-audit", mechanism.name, attack, mechanism.epsilon, mechanism.k, v))
        parts = []
        for rows in chunks(trials, mechanism.k):
            reports = mechanism.randomize(np.full(rows, v, dtype=np.int64), rng)
            parts.append(test.statistic(mechanism, reports, v1, v2, rng))
        outcomes.append(np.concatenate(parts))
    return audit_result(outcomes[0], outcomes[1], test.learned, delta=mechanism.delta, alpha=alpha, trials=trials,
                        test=test.description, start=start)
