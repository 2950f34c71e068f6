"""Privacy accounting of the (Poisson-subsampled) Gaussian mechanism through Opacus.

fllab does not re-derive accountants: the two offered here are Opacus's own, addressed by name,

* ``"rdp"`` -- :class:`opacus.accountants.RDPAccountant`: Renyi DP of the sampled Gaussian
  mechanism (Mironov 2017, "Renyi Differential Privacy", CSF; Mironov, Talwar & Zhang 2019,
  "Renyi Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530), converted to
  (epsilon, delta) with Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi
  Differential Privacy", AISTATS, Theorem 21.
* ``"prv"`` -- :class:`opacus.accountants.PRVAccountant`: numerical composition of privacy loss
  random variables (Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy",
  NeurIPS); it reports the upper end of its error bracket, so it is a valid (and tighter) bound.

:class:`PrivacyLedger` records heterogeneous steps as ``(noise_multiplier, sample_rate, steps)``
segments -- the same history format as Opacus -- and computes epsilon with Opacus's own kernels
in Opacus's order of operations, so a ledger and an Opacus accountant stepped the same way agree
to the last bit (tested on random histories), but without recomputing what a history shares with
the last one (a federation asks after every round):

* the RDP of **one** step of ``(sigma, q)`` at Opacus's orders (:func:`step_rdp`, Opacus's
  ``compute_rdp``; a series per fractional order, the slow part) is computed once per distinct
  ``(sigma, q)`` and cached; a history's RDP is ``sum(step_rdp * steps)`` over its segments (RDP
  composes additively, exactly Opacus's arithmetic), so a round's epsilon costs O(segments x
  orders) plus the conversion (Balle et al. 2020), not the series again;
* PRV (:func:`prv_epsilon`) is Opacus's ``PRVAccountant.get_epsilon`` step by step -- domain,
  truncation, discretisation, FFT composition, error bracket -- with the RDP bounds that size its
  domain (Gopi et al., Remark 5.6) taken from the same cache; the discretisation and the FFT
  depend on the whole history's length and are recomputed.

Opacus warns ("Optimal order is the largest/smallest alpha") when the RDP conversion's best order
sits at an end of its order range.  fllab never lets that warning through per call: the
conversion reports its best order (:class:`Spent`) and :class:`OrderNote` says it once per run
with what it means; the RDP bounds that only size the PRV domain, and the trial noise levels of a
calibration, are not a reported epsilon and are not mentioned.

:func:`noise_for_target_epsilon` wraps :func:`opacus.accountants.utils.get_noise_multiplier`
and reports how far below the target the calibrated epsilon landed.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterator, Mapping, Sequence

import numpy as np
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from opacus.accountants.utils import get_noise_multiplier

from ..errors import ConfigError, FllabError
from pydantic import model_validator

from ..registry import Params, did_you_mean

#: Accountant name -> Opacus accountant class.
ACCOUNTANTS: Mapping[str, type[IAccountant]] = MappingProxyType({"rdp": RDPAccountant, "prv": PRVAccountant})

#: Largest relative shortfall of a calibrated epsilon below its target that fllab accepts.
MAX_CALIBRATION_ERROR = 0.02


def accountant_class(name: object, path: str = "accountant") -> type[IAccountant]:
    """The Opacus accountant class registered under ``name``; ConfigError naming the choices otherwise."""
    if not isinstance(name, str) or name not in ACCOUNTANTS:
        hint = did_you_mean(name, list(ACCOUNTANTS)) if isinstance(name, str) else ""
        raise ConfigError(f"unknown accountant {name!r}{hint} allowed: {', '.join(sorted(ACCOUNTANTS))}", path)
    return ACCOUNTANTS[name]


def real_number(value: object, path: str) -> float:
    """A finite real number (Python or NumPy scalar, not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number (got {value!r})", path)
    return float(value)


def integer(value: object, path: str, minimum: int) -> int:
    """An integer (Python or NumPy, not a bool) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum} (got {value!r})", path)
    return int(value)


def check_delta(delta: object, path: str = "delta") -> float:
    """delta must lie in the open interval (0, 1)."""
    d = real_number(delta, path)
    if not 0.0 < d < 1.0:
        raise ConfigError(f"must be in (0, 1) (got {delta!r})", path)
    return d


def check_epsilon(epsilon: object, path: str = "epsilon") -> float:
    """epsilon must be > 0."""
    e = real_number(epsilon, path)
    if e <= 0.0:
        raise ConfigError(f"must be > 0 (got {epsilon!r})", path)
    return e


def check_sample_rate(sample_rate: object, path: str = "sample_rate") -> float:
    """The Poisson sampling rate must lie in (0, 1]."""
    q = real_number(sample_rate, path)
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"must be in (0, 1] (got {sample_rate!r})", path)
    return q


def check_noise_multiplier(noise_multiplier: object, path: str = "noise_multiplier") -> float:
    """The Gaussian noise multiplier (noise std / L2 sensitivity) must be > 0."""
    s = real_number(noise_multiplier, path)
    if s <= 0.0:
        raise ConfigError(f"must be > 0 (got {noise_multiplier!r})", path)
    return s


def check_steps(steps: object, path: str = "steps") -> int:
    """A step count is an integer >= 1."""
    return integer(steps, path, 1)


History = Sequence[tuple[float, float, int]]  # (noise_multiplier, sample_rate, steps) segments

#: Opacus's RDP orders (``RDPAccountant.DEFAULT_ALPHAS``): 1.1 .. 10.9 by 0.1, then 12 .. 63.
RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)

_ORDER_WARNING = "Optimal order is the"


@contextmanager
def quiet_orders() -> Iterator[None]:
    """Silence Opacus's "optimal order is the smallest/largest alpha" warning (fllab reports the
    best order itself: :class:`Spent`, :class:`OrderNote`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ORDER_WARNING)
        yield


@dataclass(frozen=True)
class Spent:
    """An accounted epsilon and, for RDP, the order alpha whose conversion gave it (None for PRV)."""

    epsilon: float
    order: float | None = None

    @property
    def edge(self) -> str | None:
        """"smallest" or "largest" when the best RDP order is an end of :data:`RDP_ORDERS` (the
        case Opacus warns about: the bound holds but more orders could tighten it), else None."""
        if self.order is None or RDP_ORDERS[0] < self.order < RDP_ORDERS[-1]:
            return None
        return "smallest" if self.order == RDP_ORDERS[0] else "largest"


@functools.lru_cache(maxsize=8192)
def step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled-Gaussian step at :data:`RDP_ORDERS` (Opacus's ``compute_rdp``; Mironov,
    Talwar & Zhang 2019, Section 3.3), cached per ``(sigma, q)``; read-only."""
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS))
    rdp.flags.writeable = False
    return rdp


def history_rdp(history: History) -> np.ndarray:
    """RDP of a history at :data:`RDP_ORDERS`: ``sum(step_rdp(sigma, q) * steps)`` in segment
    order, bit for bit what ``RDPAccountant`` sums."""
    return sum([step_rdp(sigma, q) * steps for sigma, q, steps in history])


def rdp_spent(history: History, delta: float) -> Spent:
    """Epsilon of ``history`` at ``delta`` by RDP (Opacus's ``RDPAccountant.get_privacy_spent``:
    Balle et al. 2020, Theorem 21) and the order that gave it; 0 for an empty history."""
    if not history:
        return Spent(0.0, None)
    with quiet_orders():
        eps, order = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=history_rdp(history), delta=delta)
    return Spent(float(eps), float(order))


def prv_domain_size(history: History, eps_error: float, delta_error: float) -> float:
    """Half-width ``L`` of the PRV discretisation domain: Opacus's ``compute_safe_domain_size``
    (Gopi et al. 2021, Remark 5.6, as in their code) with its RDP bounds from :func:`step_rdp`."""
    total = sum(steps for *_, steps in history)
    bound = rdp_spent(history, delta_error / 4).epsilon
    for sigma, q, _ in history:
        bound = max(bound, rdp_spent(((sigma, q, 1),), delta_error / (8 * total)).epsilon)
    return max(bound, eps_error) + 3


def prv_spent(history: History, delta: float, eps_error: float = 0.01) -> Spent:
    """Epsilon of ``history`` at ``delta`` by numerical PRV composition (Gopi, Lee & Wutschitz
    2021): Opacus's ``PRVAccountant.get_epsilon`` (``eps_error`` 0.01, ``delta_error = delta /
    1000``) step by step -- the domain of :func:`prv_domain_size` on Opacus's mesh, truncated and
    discretised PRVs, FFT self-composition per segment, the upper end of the error bracket."""
    if not history:
        return Spent(0.0, None)
    delta_error = delta / 1000
    counts = [steps for *_, steps in history]
    half = prv_domain_size(history, eps_error, delta_error)
    mesh = eps_error / np.sqrt(sum(counts) * np.log(12 / delta_error) / 2)
    domain = Domain.create_aligned(-half, half, mesh)
    dprvs = [
        discretize(TruncatedPrivacyRandomVariable(PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max), domain)
        for sigma, q, _ in history
    ]
    _, _, eps_upper = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts).compute_epsilon(delta, delta_error, eps_error)
    return Spent(float(eps_upper), None)


#: Accountant name -> its epsilon of a history at a delta.
SPENT = MappingProxyType({"rdp": rdp_spent, "prv": prv_spent})


class OrderNote:
    """Says once per run (a :class:`RuntimeWarning`) that an RDP epsilon's best order was an end
    of Opacus's range, instead of Opacus's warning at every accountant call.  ``owner`` names the
    component whose accountant it is."""

    def __init__(self, owner: str):
        self.owner = owner
        self.said = False

    def reset(self) -> None:
        """A new run: the note may be said again."""
        self.said = False

    def check(self, spent: Spent) -> None:
        if spent.edge is None or self.said:
            return
        self.said = True
        warnings.warn(
            f"{self.owner}: the RDP accountant's best order was the {spent.edge} alpha ({spent.order:g}) of "
            f"Opacus's range [{RDP_ORDERS[0]:g}, {RDP_ORDERS[-1]:g}] at least once in this run: the reported "
            "epsilon is a valid bound but may be loose (accountant: prv is tighter); said once per run",
            RuntimeWarning,
            stacklevel=2,
        )


class PrivacyLedger:
    """Composition of heterogeneous sampled-Gaussian steps, accounted by Opacus.

    ``history`` holds ``(noise_multiplier, sample_rate, steps)`` segments in order; consecutive
    steps with identical settings are merged, exactly as Opacus's accountants do.

        ledger = PrivacyLedger("prv")
        ledger.step(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
        ledger.epsilon(delta=1e-5)   # 1.838..., Opacus's PRVAccountant on the same history
    """

    def __init__(self, accountant: str = "prv"):
        accountant_class(accountant)
        self.accountant = accountant
        self._history: list[tuple[float, float, int]] = []

    @property
    def history(self) -> tuple[tuple[float, float, int], ...]:
        return tuple(self._history)

    def __len__(self) -> int:
        """Total number of steps recorded."""
        return sum(n for _, _, n in self._history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the Gaussian mechanism with Poisson sampling rate ``sample_rate``."""
        sigma = check_noise_multiplier(noise_multiplier)
        q = check_sample_rate(sample_rate)
        n = check_steps(steps)
        if self._history and self._history[-1][:2] == (sigma, q):
            self._history[-1] = (sigma, q, self._history[-1][2] + n)
        else:
            self._history.append((sigma, q, n))

    def spent(self, delta: float) -> Spent:
        """The epsilon spent so far at ``delta`` (0 before any step), with RDP's best order."""
        return SPENT[self.accountant](self.history, check_delta(delta))

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta`` (0 before any step)."""
        return self.spent(delta).epsilon


@dataclass(frozen=True)
class NoiseCalibration:
    """A noise multiplier found for a target (epsilon, delta), with the epsilon it really gives."""

    noise_multiplier: float
    epsilon: float  # achieved by ``noise_multiplier``; never above the target
    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    accountant: str

    @property
    def relative_error(self) -> float:
        """(target - achieved) / target: how much privacy budget the calibration leaves unused."""
        return (self.target_epsilon - self.epsilon) / self.target_epsilon


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    rel_tolerance: float = 0.01,
) -> NoiseCalibration:
    """The smallest noise multiplier (to Opacus's bisection precision) whose epsilon after
    ``steps`` sampled-Gaussian steps is at most ``target_epsilon``.

    Wraps :func:`opacus.accountants.utils.get_noise_multiplier` with an absolute tolerance of
    ``rel_tolerance * target_epsilon``, then re-accounts the result with a :class:`PrivacyLedger`
    and checks the achieved epsilon lies within ``MAX_CALIBRATION_ERROR`` (2%) below the target.
    """
    eps = check_epsilon(target_epsilon, "target_epsilon")
    d = check_delta(delta)
    q = check_sample_rate(sample_rate)
    n = check_steps(steps)
    accountant_class(accountant)
    tol = real_number(rel_tolerance, "rel_tolerance")
    if not 0.0 < tol <= MAX_CALIBRATION_ERROR:
        raise ConfigError(f"must be in (0, {MAX_CALIBRATION_ERROR}] (got {rel_tolerance!r})", "rel_tolerance")
    try:
        with quiet_orders():  # the bisection's trial noise levels are not reported
            sigma = get_noise_multiplier(
                target_epsilon=eps,
                target_delta=d,
                sample_rate=q,
                steps=n,
                accountant=accountant,
                epsilon_tolerance=tol * eps,
            )
    except ValueError as err:  # Opacus: "The privacy budget is too low."
        raise ConfigError(f"{err} (got {target_epsilon!r} at delta={d}, sample_rate={q}, steps={n})", "target_epsilon") from None
    ledger = PrivacyLedger(accountant)
    ledger.step(sigma, q, n)
    result = NoiseCalibration(float(sigma), ledger.epsilon(d), eps, d, q, n, accountant)
    if not 0.0 <= result.relative_error <= MAX_CALIBRATION_ERROR:
        raise FllabError(
            f"noise calibration missed: sigma={sigma} gives epsilon={result.epsilon} for target {eps} "
            f"({accountant}, delta={d}, sample_rate={q}, steps={n})"
        )
    return result


class OneNoiseSource(Params):
    """Params of a Gaussian mechanism whose noise is set one way: a ``noise_multiplier`` or a
    ``target_epsilon`` to calibrate to, not both (DP-SGD, DP-FedAvg, DIFF2/DP-GD)."""

    @model_validator(mode="after")
    def _one_noise(self) -> "OneNoiseSource":
        if getattr(self, "noise_multiplier", None) is not None and getattr(self, "target_epsilon", None) is not None:
            raise ValueError("set noise_multiplier or target_epsilon, not both")
        return self
