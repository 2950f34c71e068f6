"""LDP frequency oracles: vectorised client randomizers and their unbiased frequency estimators.

Every oracle maps a batch of values in ``{0..k-1}`` to a batch of reports with one numpy call
per step (no Python loop over users) and estimates the value frequencies from the reports.
Parameters follow LDP-Auditor's reference implementation (Arcolezi & Gambs, PoPETs 2024; the
clients of multi-freq-ldpy) and the papers it cites:

=======  =====================================================  ==============================
name     report                                                 reference
=======  =====================================================  ==============================
grr      one value; kept w.p. p = e^eps/(e^eps+k-1)             Kairouz et al. 2016 (k-RR)
ss       a subset of size w = max(1, rint(k/(e^eps+1)))         Wang et al. 2016; Ye & Barg 2018
sue      k bits, p = e^(eps/2)/(e^(eps/2)+1), q = 1-p            Erlingsson et al. 2014 (RAPPOR)
oue      k bits, p = 1/2, q = 1/(e^eps+1)                        Wang et al., USENIX Sec. 2017
blh/olh  (GRR of H_seed(v) over g values, seed); g = 2 /        Wang et al., USENIX Sec. 2017
         g = rint(e^eps)+1
the/she  one-hot + Laplace(2/eps) noise (histogram encoding);   Wang et al., USENIX Sec. 2017
         THE counts coordinates above the variance-optimal
         threshold in (1/2, 1), SHE sums them
agrr     GRR with p = (e^eps+(k-1)delta)/(e^eps+k-1)             Wang et al., VLDB 2019 (approx.)
gm/agm   one-hot + N(0, sigma^2), L2 sensitivity sqrt(2);       Dwork & Roth 2014 / Balle &
         classic / analytic calibration                         Wang, ICML 2018
=======  =====================================================  ==============================

Estimators.  For the *support* oracles (all but SHE and the Gaussian ones) each report supports a
set of values (the value itself, the subset, the set bits, the coordinates above the threshold,
the values hashing to the report); a user's own value is supported with probability ``p`` and
any other value with probability ``q``.  The count ``C_v`` of reports supporting ``v`` gives the
unbiased estimate ``f_v = (C_v / n - q) / (p - q)`` with variance

    Var[f_v] = (f_v p (1-p) + (1 - f_v) q (1-q)) / (n (p-q)^2)

(Wang et al. 2017, Eq. (2), exact for fixed inputs).  SHE and the Gaussian mechanisms average the
reports, ``f_v = mean(y_v)``, with variance ``noise variance / n`` (``8/eps^2`` for Laplace(2/eps)).
No post-processing (clipping to the simplex) is applied: it would bias the estimate.

Random numbers: every draw comes from the numpy ``Generator`` passed in.  Bernoulli bits of the
unary encodings are drawn from float32 uniforms (a probability error below 2^-24).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from pydantic import Field, PositiveFloat
from scipy.optimize import minimize_scalar

from ...registry import Params, Registry
from .gaussian import analytic_sigma, classic_sigma
from .hashing import seeded_hash

ORACLES = Registry("ldp mechanism")


class PureParams(Params):
    epsilon: PositiveFloat = Field(description="privacy budget of one report (pure epsilon-LDP)")
    k: int = Field(ge=2, description="domain size: values are 0..k-1")


class ApproxParams(PureParams):
    delta: float = Field(gt=0.0, lt=1.0, description="delta of (epsilon, delta)-LDP")


def _values(values: np.ndarray, k: int) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer) or (v.size and (v.min() < 0 or v.max() >= k)):
        raise ValueError(f"values: expected a 1-D integer array with entries in 0..{k - 1}")
    return v.astype(np.int64, copy=False)


def one_hot(values: np.ndarray, k: int, dtype: type = np.float64) -> np.ndarray:
    out = np.zeros((values.size, k), dtype=dtype)
    out[np.arange(values.size), values] = 1
    return out


def grr_perturb(values: np.ndarray, k: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each value with probability ``p``, else replace it by a uniform *other* value."""
    keep = rng.random(values.size) < p
    other = (values + 1 + rng.integers(0, k - 1, values.size)) % k
    return np.where(keep, values, other)


def ue_perturb(values: np.ndarray, k: int, p: float, q: float, rng: np.random.Generator) -> np.ndarray:
    """Unary encoding: the true bit is 1 w.p. ``p``, every other bit w.p. ``q`` (independently)."""
    bits = rng.random((values.size, k), dtype=np.float32) < np.float32(q)
    bits[np.arange(values.size), values] = rng.random(values.size) < p
    return bits


def laplace(rng: np.random.Generator, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """Laplace(0, scale) noise as ``scale (E1 - E2)`` with E1, E2 i.i.d. standard exponential
    (exactly Laplace; the ziggurat exponentials are about twice as fast as ``Generator.laplace``)."""
    noise = rng.standard_exponential(shape)
    noise -= rng.standard_exponential(shape)
    noise *= scale
    return noise


class FrequencyOracle(ABC):
    """Base class: ``randomize`` a batch of values, ``estimate`` frequencies from reports."""

    encoding: ClassVar[str]
    approximate: ClassVar[bool] = False
    references: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""

    def __init__(self, params: PureParams):
        self.params = params
        self.epsilon = float(params.epsilon)
        self.k = int(params.k)
        self.delta = float(getattr(params, "delta", 0.0))

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__.lower())

    def randomize(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One report per value (row ``i`` of the result is user ``i``'s report)."""
        return self._randomize(_values(values, self.k), rng)

    @abstractmethod
    def _randomize(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The reports of validated ``values`` (one row per user)."""

    @abstractmethod
    def estimate(self, reports: np.ndarray) -> np.ndarray:
        """Unbiased frequency estimate of every value from the reports."""

    @abstractmethod
    def variance(self, n: int, frequencies: np.ndarray) -> np.ndarray:
        """Analytic variance of :meth:`estimate` for ``n`` users with true ``frequencies``."""


class SupportOracle(FrequencyOracle):
    """An oracle whose report supports a set of values: own value w.p. ``p``, others w.p. ``q``."""

    p: float
    q: float

    @abstractmethod
    def support(self, reports: np.ndarray) -> np.ndarray:
        """(n, k) boolean: which values each report supports."""

    def estimate(self, reports: np.ndarray) -> np.ndarray:
        counts = self.support(reports).sum(axis=0, dtype=np.float64)
        n = len(reports)
        return (counts / n - self.q) / (self.p - self.q)

    def variance(self, n: int, frequencies: np.ndarray) -> np.ndarray:
        f = np.asarray(frequencies, dtype=np.float64)
        p, q = self.p, self.q
        return (f * p * (1 - p) + (1 - f) * q * (1 - q)) / (n * (p - q) ** 2)


@ORACLES.register("grr")
class GRR(SupportOracle):
    """Generalized randomized response (k-RR, direct encoding)."""

    encoding = "value"
    summary = "generalized randomized response: keep the value w.p. e^eps/(e^eps+k-1)"
    references = ("Kairouz, Bonawitz and Ramage, Discrete Distribution Estimation under Local Privacy, ICML 2016",)
    Params = PureParams

    def __init__(self, params: PureParams):
        super().__init__(params)
        e = math.exp(self.epsilon)
        self.p = e / (e + self.k - 1)
        self.q = (1 - self.p) / (self.k - 1)

    def _randomize(self, values, rng):
        return grr_perturb(values, self.k, self.p, rng)

    def support(self, reports):
        return one_hot(np.asarray(reports, dtype=np.int64), self.k, bool)


@ORACLES.register("agrr")
class AGRR(GRR):
    """Approximate GRR: (epsilon, delta)-LDP randomized response (Wang et al. 2019)."""

    approximate = True
    summary = "approximate GRR: keep w.p. (e^eps+(k-1)delta)/(e^eps+k-1)"
    references = ("Wang, Lopuhaa-Zwakenberg and Wang, Locally Differentially Private Protocols for Frequency Estimation (approximate variants), VLDB 2019",)
    Params = ApproxParams

    def __init__(self, params: ApproxParams):
        FrequencyOracle.__init__(self, params)
        e = math.exp(self.epsilon)
        self.p = (e + (self.k - 1) * self.delta) / (e + self.k - 1)
        self.q = (1 - self.p) / (self.k - 1)


@ORACLES.register("ss")
class SubsetSelection(SupportOracle):
    """Subset selection: report a subset of ``w`` values, containing the true one w.p. ``p_v``."""

    encoding = "subset"
    summary = "subset selection: a random subset of w = rint(k/(e^eps+1)) values (indicator of length k)"
    references = (
        "Wang, Li and Jha, Mutual Information Optimally Local Private Discrete Distribution Estimation, arXiv:1607.08025, 2016",
        "Ye and Barg, Optimal Schemes for Discrete Distribution Estimation under Locally Differential Privacy, IEEE TIT 2018",
    )
    Params = PureParams

    def __init__(self, params: PureParams):
        super().__init__(params)
        e, k = math.exp(self.epsilon), self.k
        self.w = int(max(1, np.rint(k / (e + 1))))
        w = self.w
        self.p = w * e / (w * e + k - w)
        self.q = ((w - 1) * w * e + (k - w) * w) / ((k - 1) * (w * e + k - w))

    def _randomize(self, values, rng):
        """Indicator rows of the subset.  The true value is kept w.p. ``p``; the other ``w - 1``
        (kept) or ``w`` members are a uniform subset of the ``k - 1`` other values, drawn by
        Floyd's algorithm (Bentley & Floyd, CACM 1987) vectorised over rows: ``w`` steps of one
        integer per row instead of ``k`` keys per row."""
        n, k, w = values.size, self.k, self.w
        rows = np.arange(n)
        keep = rng.random(n) < self.p
        members = np.zeros((n, k), dtype=bool)
        others = k - 1
        for step in range(w):
            j = others - w + step  # Floyd: draw t in [0, j]; if taken, take j instead
            t = rng.integers(0, j + 1, n)
            t_value = t + (t >= values)  # index among the others -> domain value
            j_value = j + (j >= values)
            chosen = np.where(members[rows, t_value], j_value, t_value)
            active = ~keep | (step > 0)  # a kept row draws w - 1 others: it skips the first step
            members[rows[active], chosen[active]] = True
        members[rows, values] = keep
        return members

    def support(self, reports):
        return np.asarray(reports, dtype=bool)


class UnaryEncoding(SupportOracle):
    encoding = "unary"
    Params = PureParams

    def _randomize(self, values, rng):
        return ue_perturb(values, self.k, self.p, self.q, rng)

    def support(self, reports):
        return np.asarray(reports, dtype=bool)


@ORACLES.register("sue")
class SUE(UnaryEncoding):
    """Symmetric unary encoding (basic one-time RAPPOR): p = e^(eps/2)/(e^(eps/2)+1), q = 1 - p."""

    summary = "symmetric unary encoding (basic RAPPOR): k bits, p = e^(eps/2)/(e^(eps/2)+1), q = 1-p"
    references = ("Erlingsson, Pihur and Korolova, RAPPOR: Randomized Aggregatable Privacy-Preserving Ordinal Response, CCS 2014",)

    def __init__(self, params: PureParams):
        super().__init__(params)
        h = math.exp(self.epsilon / 2)
        self.p = h / (h + 1)
        self.q = 1 - self.p


@ORACLES.register("oue")
class OUE(UnaryEncoding):
    """Optimized unary encoding: p = 1/2, q = 1/(e^eps + 1)."""

    summary = "optimized unary encoding: k bits, p = 1/2, q = 1/(e^eps+1)"
    references = ("Wang, Blocki, Li and Jha, Locally Differentially Private Protocols for Frequency Estimation, USENIX Security 2017",)

    def __init__(self, params: PureParams):
        super().__init__(params)
        self.p = 0.5
        self.q = 1 / (math.exp(self.epsilon) + 1)


class LocalHashing(SupportOracle):
    """Local hashing: the client draws a hash seed, hashes its value into ``g`` buckets and sends
    GRR (over ``g``) of the bucket together with the seed.  Reports are (n, 2) int64 rows
    ``(bucket, seed)``, the seed stored as the bits of a uint64.  Server-side ``q = 1/g``."""

    encoding = "hashing"
    Params = PureParams
    references = ("Wang, Blocki, Li and Jha, Locally Differentially Private Protocols for Frequency Estimation, USENIX Security 2017",)
    g: int

    def _setup(self) -> None:
        e = math.exp(self.epsilon)
        self.p = e / (e + self.g - 1)
        self.q = 1.0 / self.g

    def _randomize(self, values, rng):
        seeds = rng.integers(0, np.iinfo(np.int64).max, values.size, dtype=np.int64, endpoint=True)
        buckets = seeded_hash(seeds.view(np.uint64), values, self.g)
        return np.stack([grr_perturb(buckets, self.g, self.p, rng), seeds], axis=1)

    def hashes(self, reports: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``H_seed(v)`` of every report's seed for every value in ``values`` (n, len(values))."""
        seeds = np.asarray(reports)[:, 1].view(np.uint64)
        return seeded_hash(seeds[:, None], np.asarray(values)[None, :], self.g)

    def support(self, reports):
        return self.hashes(reports, np.arange(self.k)) == np.asarray(reports)[:, :1]


@ORACLES.register("blh")
class BLH(LocalHashing):
    summary = "binary local hashing: GRR of a 1-bit seeded hash of the value"

    def __init__(self, params: PureParams):
        super().__init__(params)
        self.g = 2
        self._setup()


@ORACLES.register("olh")
class OLH(LocalHashing):
    summary = "optimal local hashing: GRR of a seeded hash into g = rint(e^eps)+1 buckets"

    def __init__(self, params: PureParams):
        super().__init__(params)
        self.g = int(np.rint(math.exp(self.epsilon))) + 1
        self._setup()


def the_threshold(epsilon: float) -> float:
    """THE's threshold: the minimiser over [1/2, 1] of the estimator's variance factor
    ``(2 e^(eps t/2) - 1) / (1 + e^(eps (t - 1/2)) - 2 e^(eps t/2))^2`` (as the reference code)."""

    def factor(t: float) -> float:
        a = math.exp(epsilon * t / 2)
        return (2 * a - 1) / (1 + math.exp(epsilon * (t - 0.5)) - 2 * a) ** 2

    return float(minimize_scalar(factor, bounds=(0.5, 1.0), method="bounded").x)


class HistogramEncoding(FrequencyOracle):
    """Histogram encoding: one-hot vector plus i.i.d. Laplace(2/eps) noise (L1 sensitivity 2)."""

    encoding = "histogram"
    Params = PureParams
    references = ("Wang, Blocki, Li and Jha, Locally Differentially Private Protocols for Frequency Estimation, USENIX Security 2017",)

    @property
    def scale(self) -> float:
        return 2.0 / self.epsilon

    def _randomize(self, values, rng):
        return one_hot(values, self.k) + laplace(rng, self.scale, (values.size, self.k))


@ORACLES.register("she")
class SHE(HistogramEncoding):
    summary = "summation with histogram encoding: one-hot + Laplace(2/eps), server averages"

    def estimate(self, reports):
        return np.asarray(reports, dtype=np.float64).mean(axis=0)

    def variance(self, n, frequencies):
        return np.full(np.shape(frequencies), 2 * self.scale**2 / n)


@ORACLES.register("the")
class THE(HistogramEncoding, SupportOracle):
    summary = "thresholding with histogram encoding: one-hot + Laplace(2/eps), server counts coordinates > theta"

    def __init__(self, params: PureParams):
        super().__init__(params)
        self.threshold = the_threshold(self.epsilon)
        self.p = 1 - 0.5 * math.exp(self.epsilon * (self.threshold - 1) / 2)
        self.q = 0.5 * math.exp(-self.epsilon * self.threshold / 2)

    def support(self, reports):
        return np.asarray(reports) > self.threshold


class GaussianOracle(FrequencyOracle):
    """One-hot vector plus N(0, sigma^2) per coordinate; L2 sensitivity sqrt(2)."""

    encoding = "gaussian"
    approximate = True
    Params = ApproxParams
    sensitivity = math.sqrt(2.0)
    sigma: float

    def _randomize(self, values, rng):
        return one_hot(values, self.k) + self.sigma * rng.standard_normal((values.size, self.k))

    def estimate(self, reports):
        return np.asarray(reports, dtype=np.float64).mean(axis=0)

    def variance(self, n, frequencies):
        return np.full(np.shape(frequencies), self.sigma**2 / n)


@ORACLES.register("gm")
class GM(GaussianOracle):
    summary = "Gaussian mechanism, classic calibration sigma = sqrt(2) sqrt(2 ln(1.25/delta)) / eps"
    references = ("Dwork and Roth, The Algorithmic Foundations of Differential Privacy, 2014, Thm A.1",)

    def __init__(self, params: ApproxParams):
        super().__init__(params)
        self.sigma = classic_sigma(self.epsilon, self.delta, self.sensitivity)


@ORACLES.register("agm")
class AGM(GaussianOracle):
    summary = "analytic Gaussian mechanism: the smallest sigma that is (eps, delta)-DP"
    references = ("Balle and Wang, Improving the Gaussian Mechanism for Differential Privacy, ICML 2018",)

    def __init__(self, params: ApproxParams):
        super().__init__(params)
        self.sigma = analytic_sigma(self.epsilon, self.delta, self.sensitivity)


def make_oracle(name: str, epsilon: float, k: int, delta: float = 0.0) -> FrequencyOracle:
    """Build a registered oracle; ``delta`` is used by the approximate ones only (and must then
    be in (0, 1)).  Bad arguments raise :class:`~fllab.privacy.ldp.checks.LDPArgumentError`
    naming the argument."""
    from .checks import LDPArgumentError, domain_size, positive_real, probability

    from ...errors import ConfigError

    try:
        cls = ORACLES.get_class(name, "mechanism")
    except ConfigError as err:
        raise LDPArgumentError(str(err).removeprefix("mechanism: "), "mechanism") from None
    raw: dict[str, float | int] = {"epsilon": positive_real(epsilon, "epsilon"), "k": domain_size(k)}
    if cls.approximate:
        raw["delta"] = probability(delta, "delta", allow_zero=False)
    elif delta != 0.0:
        raise LDPArgumentError(f"{name} is pure epsilon-LDP: delta must be 0 (got {delta!r})", "delta")
    return cls(cls.Params(**raw))
