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
segments -- the same history format as Opacus -- and asks a fresh Opacus accountant loaded with
that history for epsilon, so a ledger and an Opacus accountant stepped the same way agree to the
last bit.  :func:`noise_for_target_epsilon` wraps :func:`opacus.accountants.utils.get_noise_multiplier`
and reports how far below the target the calibrated epsilon landed.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
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


class PrivacyLedger:
    """Composition of heterogeneous sampled-Gaussian steps, accounted by Opacus.

    ``history`` holds ``(noise_multiplier, sample_rate, steps)`` segments in order; consecutive
    steps with identical settings are merged, exactly as Opacus's accountants do.

        ledger = PrivacyLedger("prv")
        ledger.step(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
        ledger.epsilon(delta=1e-5)   # 1.838..., Opacus's PRVAccountant on the same history
    """

    def __init__(self, accountant: str = "prv"):
        self._cls = accountant_class(accountant)
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

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta`` (0 before any step)."""
        d = check_delta(delta)
        if not self._history:
            return 0.0
        acc = self._cls()
        acc.history = list(self._history)
        return float(acc.get_epsilon(delta=d))


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
