"""Noise scales of the Gaussian mechanism for (epsilon, delta)-DP.

* classic: ``sigma = Delta_2 sqrt(2 ln(1.25 / delta)) / epsilon`` (Dwork & Roth 2014, Thm A.1;
  proved for epsilon < 1, used by LDP-Auditor at every epsilon).
* analytic: the smallest sigma with
  ``Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D) <= delta`` (Balle & Wang, ICML 2018,
  Thm 8), which is exact for every epsilon; found by bracketing and Brent's method, with the
  second term evaluated in log space.
"""
from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr


def classic_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The tight delta of the Gaussian mechanism with noise ``sigma`` at ``epsilon`` (Balle & Wang Thm 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)))


def analytic_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    hi = sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        hi *= 2.0
    lo = hi / 2.0
    while gaussian_delta(lo, epsilon, sensitivity) <= delta and lo > 1e-12:
        lo /= 2.0
    return float(brentq(lambda s: gaussian_delta(s, epsilon, sensitivity) - delta, lo, hi, xtol=1e-14, rtol=1e-12))
