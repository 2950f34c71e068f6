"""LDP frequency oracles and numeric mechanisms: hand cases, report distributions against the
analytic (p, q), unbiased estimators whose spread matches the analytic variance."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fllab.privacy.ldp import ORACLES, LDPArgumentError, make_oracle
from fllab.privacy.ldp.gaussian import analytic_sigma, classic_sigma, gaussian_delta
from fllab.privacy.ldp.hashing import seeded_hash
from fllab.privacy.ldp.numeric import (
    default_coordinates,
    duchi,
    duchi_variance,
    hybrid,
    perturb_vectors,
    piecewise,
    piecewise_variance,
)
from fllab.privacy.ldp.oracles import SupportOracle, the_threshold

ALL = ["grr", "ss", "sue", "oue", "blh", "olh", "the", "she", "agrr", "gm", "agm"]


def oracle(name: str, eps: float, k: int):
    return make_oracle(name, eps, k, 1e-5 if ORACLES[name].approximate else 0.0)


def test_registry_holds_the_eleven_mechanisms():
    assert sorted(ORACLES) == sorted(ALL)


# ------------------------------------------------------------------------------- hand cases
def test_parameters_by_hand():
    g = make_oracle("grr", math.log(3), 3)
    assert (g.p, g.q) == pytest.approx((3 / 5, 1 / 5))
    ss = make_oracle("ss", 1.0, 10)
    assert ss.w == 3  # rint(10 / (e + 1)) = rint(2.69)
    e = math.e
    assert ss.p == pytest.approx(3 * e / (3 * e + 7))
    assert ss.q == pytest.approx((2 * 3 * e + 7 * 3) / (9 * (3 * e + 7)))
    sue = make_oracle("sue", 2.0, 5)
    assert (sue.p, sue.q) == pytest.approx((e / (e + 1), 1 / (e + 1)))
    oue = make_oracle("oue", 2.0, 5)
    assert (oue.p, oue.q) == pytest.approx((0.5, 1 / (e**2 + 1)))
    assert make_oracle("olh", 2.0, 5).g == 8 and make_oracle("blh", 2.0, 5).g == 2  # rint(e^2) + 1
    agrr = make_oracle("agrr", 1.0, 4, 0.01)
    assert agrr.p == pytest.approx((e + 3 * 0.01) / (e + 3))
    assert math.log((agrr.p - 0.01) / agrr.q) == pytest.approx(1.0)  # the test "y == v1" is tight


def test_the_threshold_minimises_the_variance_factor_in_the_open_interval():
    for eps in (0.5, 2.0, 6.0):
        t = the_threshold(eps)
        assert 0.5 <= t <= 1.0
        th = make_oracle("the", eps, 4)
        grid = np.linspace(0.5, 1.0, 2001)
        var = [(2 * math.exp(eps * x / 2) - 1) / (1 + math.exp(eps * (x - 0.5)) - 2 * math.exp(eps * x / 2)) ** 2 for x in grid]
        assert t == pytest.approx(grid[int(np.argmin(var))], abs=1e-3)
        assert th.p == pytest.approx(1 - stats.laplace.cdf(t - 1, scale=2 / eps))  # P[1 + Lap > t]
        assert th.q == pytest.approx(stats.laplace.sf(t, scale=2 / eps))


def test_gaussian_calibrations():
    assert classic_sigma(1.0, 1e-5, math.sqrt(2)) == pytest.approx(math.sqrt(2) * math.sqrt(2 * math.log(1.25e5)))
    for eps, delta in ((0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-3)):
        s = analytic_sigma(eps, delta, math.sqrt(2))
        assert gaussian_delta(s, eps, math.sqrt(2)) == pytest.approx(delta, rel=1e-6)
        assert s < classic_sigma(eps, delta, math.sqrt(2))
        # delta(eps) = E_{Y ~ N(D, s^2)}[(1 - e^(eps - L(Y)))_+], L = privacy loss of N(D, s^2) vs N(0, s^2)
        d = math.sqrt(2)

        def integrand(y: float) -> float:
            loss = (d * y - d * d / 2) / s**2
            return stats.norm.pdf(y, d, s) * max(0.0, 1 - math.exp(eps - loss))

        numeric, _ = integrate.quad(integrand, d, d + 40 * s, limit=200)
        assert numeric == pytest.approx(delta, rel=1e-4)


def test_seeded_hash_is_uniform_and_pairwise_independent():
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**63, 200_000, dtype=np.uint64)
    h = seeded_hash(seeds[:, None], np.array([[3, 17]]), 5)
    assert np.bincount(h[:, 0], minlength=5) / len(h) == pytest.approx(np.full(5, 0.2), abs=0.005)
    assert np.mean(h[:, 0] == h[:, 1]) == pytest.approx(0.2, abs=0.005)


# ------------------------------------------------------------------------ report distributions
@pytest.mark.parametrize("name", [n for n in ALL if issubclass(ORACLES[n], SupportOracle)])
@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_support_rates_match_p_and_q(name, eps):
    """Reports of value 2 support 2 w.p. p and every other value w.p. q (5-sigma bands)."""
    m = oracle(name, eps, 6)
    n = 40_000
    sup = m.support(m.randomize(np.full(n, 2), np.random.default_rng(1)))
    rate = sup.mean(axis=0)
    assert abs(rate[2] - m.p) < 5 * math.sqrt(m.p * (1 - m.p) / n)
    others = np.delete(rate, 2)
    assert np.all(np.abs(others - m.q) < 5 * math.sqrt(m.q * (1 - m.q) / n))


def test_subset_has_w_members_and_unary_bits_are_independent():
    ss = make_oracle("ss", 1.0, 12)
    rep = ss.randomize(np.arange(12).repeat(100), np.random.default_rng(0))
    assert np.all(rep.sum(axis=1) == ss.w)
    oue = make_oracle("oue", 1.0, 3)
    bits = oue.randomize(np.zeros(60_000, dtype=int), np.random.default_rng(0))
    joint = np.mean(bits[:, 1] & bits[:, 2])
    assert joint == pytest.approx(oue.q**2, abs=4 * math.sqrt(oue.q**2 / 60_000))


def test_histogram_and_gaussian_noise_scales():
    she = make_oracle("she", 2.0, 3)
    y = she.randomize(np.zeros(100_000, dtype=int), np.random.default_rng(0))
    assert stats.kstest(y[:, 1], stats.laplace(scale=1.0).cdf).pvalue > 1e-3
    agm = make_oracle("agm", 1.0, 3, 1e-5)
    y = agm.randomize(np.ones(100_000, dtype=int), np.random.default_rng(0))
    assert stats.kstest(y[:, 1] - 1, stats.norm(scale=agm.sigma).cdf).pvalue > 1e-3


# --------------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("name", ALL)
def test_estimator_is_unbiased_with_the_analytic_variance(name):
    """400 independent surveys of 300 users with a fixed histogram: the mean estimate is within
    5 standard errors of the truth and the empirical variance within 25% of the analytic one."""
    k, n, surveys = 4, 300, 400
    m = oracle(name, 1.5, k)
    truth = np.array([0.5, 0.3, 0.2, 0.0])
    values = np.repeat(np.arange(k), (truth * n).astype(int))
    rng = np.random.default_rng(7)
    est = np.array([m.estimate(m.randomize(values, rng)) for _ in range(surveys)])
    var = m.variance(n, truth)
    assert np.all(np.abs(est.mean(axis=0) - truth) < 5 * np.sqrt(var / surveys))
    assert est.var(axis=0, ddof=1) == pytest.approx(var, rel=0.25)


def test_grr_estimate_by_hand():
    g = make_oracle("grr", math.log(3), 3)  # p = 3/5, q = 1/5
    reports = np.array([0, 0, 0, 1, 2])
    # (C/n - q) / (p - q) = (count/5 - 0.2) / 0.4
    assert g.estimate(reports) == pytest.approx([(3 / 5 - 0.2) / 0.4, (1 / 5 - 0.2) / 0.4, (1 / 5 - 0.2) / 0.4])


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "args, field",
    [(("grr", 0.0, 5), "epsilon"), (("grr", -1.0, 5), "epsilon"), (("sue", 1.0, 1), "k"), (("oue", 1.0, 2.5), "k"),
     (("agrr", 1.0, 5, 0.0), "delta"), (("grr", 1.0, 5, 0.1), "delta"), (("grx", 1.0, 5), "mechanism")],
)
def test_bad_mechanism_arguments_name_the_argument(args, field):
    with pytest.raises(ValueError, match=field):
        make_oracle(*args)


def test_values_outside_the_domain_are_refused():
    with pytest.raises(ValueError, match="values"):
        make_oracle("grr", 1.0, 3).randomize(np.array([3]), np.random.default_rng(0))
    assert issubclass(LDPArgumentError, ValueError)


# ------------------------------------------------------------------------ numeric mechanisms
@pytest.mark.parametrize("mech, var", [(duchi, duchi_variance), (piecewise, piecewise_variance)])
@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_numeric_mechanisms_are_unbiased_with_the_analytic_variance(mech, var, eps):
    x = np.repeat(np.array([-1.0, -0.3, 0.0, 0.8, 1.0]), 100_000).reshape(5, -1)
    y = mech(x, eps, np.random.default_rng(0))
    v = var(x[:, 0], eps)
    assert np.all(np.abs(y.mean(axis=1) - x[:, 0]) < 5 * np.sqrt(v / x.shape[1]))
    assert y.var(axis=1) == pytest.approx(v, rel=0.03)


def test_numeric_outputs_stay_in_their_ranges():
    eps = 1.0
    x = np.linspace(-1, 1, 50_001)
    b = (math.e + 1) / (math.e - 1)
    assert np.abs(duchi(x, eps, np.random.default_rng(0))) == pytest.approx(np.full(x.size, b))
    h = math.exp(eps / 2)
    c = (h + 1) / (h - 1)
    y = piecewise(x, eps, np.random.default_rng(0))
    assert y.min() >= -c and y.max() <= c
    z = hybrid(x, 2.0, np.random.default_rng(0))
    assert np.all(np.isfinite(z)) and abs(z.mean() - x.mean()) < 0.05


def test_piecewise_density_ratio_is_at_most_e_to_the_eps():
    """Histogram of the outputs for x = -1 and x = 1: the density ratio in every bin is within
    e^eps (up to sampling noise), and reaches it where the central pieces do not overlap."""
    eps, n = 1.0, 400_000
    rng = np.random.default_rng(0)
    a, b = piecewise(np.full(n, -1.0), eps, rng), piecewise(np.full(n, 1.0), eps, rng)
    h = math.exp(eps / 2)
    c = (h + 1) / (h - 1)
    edges = np.linspace(-c, c, 41)
    ca, cb = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    ratio = (cb + 1) / (ca + 1)
    assert ratio.max() < math.exp(eps) * 1.15 and ratio.max() > math.exp(eps) * 0.85


def test_vector_perturbation_samples_coordinates_and_is_unbiased():
    assert default_coordinates(1.0, 100) == 1 and default_coordinates(10.0, 100) == 4 and default_coordinates(10.0, 3) == 3
    x = np.tile(np.array([0.5, -0.25, 0.0, 1.0]), (200_000, 1))
    y = perturb_vectors(x, 2.0, "piecewise", np.random.default_rng(0), coordinates=2)
    assert np.all((y != 0).sum(axis=1) == 2)
    assert np.abs(y.mean(axis=0) - x[0]).max() < 0.05
    full = perturb_vectors(x[:10], 2.0, "duchi", np.random.default_rng(0), coordinates=4)
    assert np.all(np.abs(full) == pytest.approx((math.exp(0.5) + 1) / (math.exp(0.5) - 1)))  # eps/4 per coordinate
