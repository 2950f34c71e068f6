"""From test outcomes to an empirical epsilon: LDP-Auditor's bound and threshold learning.

A test ``T`` of the report ("the input was v1") run on ``n1`` reports of ``v1`` and ``n2`` of
``v2`` has ``TP`` and ``FP`` positives.  (epsilon, delta)-LDP forces
``P[T | v1] <= e^eps P[T | v2] + delta``, so with Clopper-Pearson bounds ``TPR_low`` on
``P[T | v1]`` and ``FPR_up`` on ``P[T | v2]``

    eps_emp = ln((TPR_low - delta) / FPR_up)

is a lower bound on epsilon with high confidence (Arcolezi & Gambs, PoPETs 2024, Sec. 4).  As in
their code, each rate gets a two-sided ``1 - alpha/2`` Clopper-Pearson interval
(``proportion_confint(count, n, alpha/2, "beta")``), so each one-sided bound fails with
probability ``alpha/4`` and both hold together with probability at least ``1 - alpha/2``.  A
non-positive log-ratio (the test shows nothing) is reported as 0.

Learned tests.  When the test is ``score >= tau`` with ``tau`` chosen from data, choosing it on the
same trials that are counted would make the bound optimistic; :func:`learn_threshold` picks
``tau`` (and the direction) on a learning half, and the bound is computed once on the other half.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audit import clopper_pearson

MAX_CANDIDATES = 4096


def epsilon_from_counts(tp, n1, fp, n2, delta: float, alpha: float):
    """``(eps_emp, TPR_low, FPR_up)`` (vectorised over the counts)."""
    tpr_low, _ = clopper_pearson(tp, n1, alpha / 2)
    _, fpr_up = clopper_pearson(fp, n2, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.log(np.clip(tpr_low - delta, 0.0, None) / fpr_up)
    return np.maximum(np.nan_to_num(eps, nan=0.0, neginf=0.0), 0.0), tpr_low, fpr_up


@dataclass(frozen=True)
class Threshold:
    """The test ``sign * score >= tau``: ``sign = +1`` says "v1", ``-1`` says "v2" (roles swapped)."""

    tau: float
    sign: int
    learn_epsilon: float


def _one_direction(pos: np.ndarray, neg: np.ndarray, delta: float, alpha: float) -> tuple[float, float]:
    """Best ``tau`` for ``score >= tau`` with ``pos`` the positive input's scores."""
    pooled = np.unique(np.concatenate([pos, neg]))
    if pooled.size > MAX_CANDIDATES:
        pooled = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, MAX_CANDIDATES)))
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    tp = pos_s.size - np.searchsorted(pos_s, pooled, side="left")
    fp = neg_s.size - np.searchsorted(neg_s, pooled, side="left")
    eps, _, _ = epsilon_from_counts(tp, pos_s.size, fp, neg_s.size, delta, alpha)
    best = int(np.argmax(eps))
    return float(pooled[best]), float(eps[best])


def learn_threshold(s1: np.ndarray, s2: np.ndarray, delta: float, alpha: float, both_directions: bool = True) -> Threshold:
    """The threshold test on scores that maximises the bound on this (learning) data."""
    tau, eps = _one_direction(s1, s2, delta, alpha)
    best = Threshold(tau, 1, eps)
    if both_directions:
        tau_r, eps_r = _one_direction(-s2, -s1, delta, alpha)
        if eps_r > eps:
            best = Threshold(tau_r, -1, eps_r)
    return best
