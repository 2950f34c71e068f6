"""epsilon-LDP mechanisms for bounded numbers, and their use on d-dimensional vectors.

All take values ``x`` in [-1, 1] (numpy arrays, any shape) and return unbiased reports.

* ``duchi`` -- Duchi, Jordan & Wainwright (JASA 2018; as stated in Wang et al. ICDE 2019, Alg. 1):
  report ``+B`` w.p. ``1/2 + x (e^eps - 1) / (2 (e^eps + 1))`` and ``-B`` otherwise, with
  ``B = (e^eps + 1) / (e^eps - 1)``.  Variance ``B^2 - x^2``.
* ``piecewise`` -- the piecewise mechanism of Wang et al. (ICDE 2019, Alg. 2): with
  ``C = (e^(eps/2) + 1) / (e^(eps/2) - 1)``, ``l(x) = (C+1)/2 x - (C-1)/2``, ``r(x) = l(x) + C - 1``,
  report a uniform value in ``[l, r]`` w.p. ``e^(eps/2) / (e^(eps/2) + 1)`` and a uniform value in
  ``[-C, l) u (r, C]`` otherwise.  Variance ``x^2 / (e^(eps/2) - 1) + (e^(eps/2) + 3) / (3 (e^(eps/2) - 1)^2)``.
* ``hybrid`` -- Wang et al.'s hybrid mechanism (Alg. 3): the piecewise mechanism w.p.
  ``1 - e^(-eps/2)`` when ``eps > 0.61``, Duchi's otherwise.

:func:`perturb_vectors` is Wang et al.'s Algorithm 4 for d dimensions: each report perturbs ``m``
uniformly sampled coordinates with budget ``eps / m`` each, scales them by ``d / m`` and sends
zeros elsewhere, which is epsilon-LDP for the whole vector and unbiased.  The paper's choice is
``m = max(1, min(d, floor(eps / 2.5)))``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Mechanism = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def duchi(x: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    e = math.exp(epsilon)
    bound = (e + 1) / (e - 1)
    plus = rng.random(np.shape(x)) < 0.5 + np.asarray(x) * (e - 1) / (2 * (e + 1))
    return np.where(plus, bound, -bound)


def piecewise(x: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    h = math.exp(epsilon / 2)
    c = (h + 1) / (h - 1)
    x = np.asarray(x, dtype=np.float64)
    left = (c + 1) / 2 * x - (c - 1) / 2
    right = left + c - 1
    centre = rng.random(x.shape) < h / (h + 1)
    inside = left + (c - 1) * rng.random(x.shape)
    u = (c + 1) * rng.random(x.shape)  # total length of [-C, l) u (r, C] is C + 1
    outside = np.where(u < left + c, u - c, right + (u - (left + c)))
    return np.where(centre, inside, outside)


def hybrid(x: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    use_pm = rng.random(np.shape(x)) < (1 - math.exp(-epsilon / 2) if epsilon > 0.61 else 0.0)
    return np.where(use_pm, piecewise(x, epsilon, rng), duchi(x, epsilon, rng))


def duchi_variance(x: np.ndarray, epsilon: float) -> np.ndarray:
    e = math.exp(epsilon)
    return ((e + 1) / (e - 1)) ** 2 - np.asarray(x) ** 2


def piecewise_variance(x: np.ndarray, epsilon: float) -> np.ndarray:
    h = math.exp(epsilon / 2)
    return np.asarray(x) ** 2 / (h - 1) + (h + 3) / (3 * (h - 1) ** 2)


NUMERIC: dict[str, Mechanism] = {"duchi": duchi, "piecewise": piecewise, "hybrid": hybrid}


def default_coordinates(epsilon: float, d: int) -> int:
    """Wang et al.'s number of coordinates per report, ``max(1, min(d, floor(eps / 2.5)))``."""
    return max(1, min(d, int(math.floor(epsilon / 2.5))))


def perturb_vectors(
    x: np.ndarray, epsilon: float, mechanism: str, rng: np.random.Generator, coordinates: int | None = None
) -> np.ndarray:
    """Wang et al. Alg. 4 on every row of ``x`` (n, d) with entries in [-1, 1]: ``m`` sampled
    coordinates, each perturbed with ``eps / m`` and scaled by ``d / m``; unbiased, eps-LDP per row."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n, d = x.shape
    m = default_coordinates(epsilon, d) if coordinates is None else min(int(coordinates), d)
    out = np.zeros_like(x)
    if m == d:
        return NUMERIC[mechanism](x, epsilon / m, rng)
    cols = np.argpartition(rng.random((n, d)), m - 1, axis=1)[:, :m]
    rows = np.arange(n)[:, None]
    out[rows, cols] = (d / m) * NUMERIC[mechanism](x[rows, cols], epsilon / m, rng)
    return out
