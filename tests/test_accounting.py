"""Privacy accounting: fllab's ledger must report exactly what Opacus's accountants report."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.rdp import compute_rdp

from fllab.errors import ConfigError
from fllab.privacy.accounting import ACCOUNTANTS, RDP_ORDERS, PrivacyLedger, noise_for_target_epsilon, step_rdp
from fllab.types import ClientResult

Q, SIGMA, STEPS, DELTA = 0.01, 1.0, 1000, 1e-5


def _opacus_stepped(cls, segments):
    acc = cls()
    for sigma, q, n in segments:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc


def test_registry_names_the_two_opacus_accountants():
    assert dict(ACCOUNTANTS) == {"rdp": RDPAccountant, "prv": PRVAccountant}


@pytest.mark.parametrize("name, cls, published", [("rdp", RDPAccountant, 2.101), ("prv", PRVAccountant, 1.838)])
def test_epsilon_equals_opacus_for_the_same_history(name, cls, published):
    ledger = PrivacyLedger(name)
    ledger.step(SIGMA, Q, STEPS)
    eps = ledger.epsilon(DELTA)
    ref = _opacus_stepped(cls, [(SIGMA, Q, STEPS)]).get_epsilon(delta=DELTA)
    assert abs(eps - ref) <= 1e-6
    assert eps == pytest.approx(published, abs=1e-3)  # MEASURED.md


def test_rdp_epsilon_matches_hand_composition_of_rdp_curves():
    segments = [(1.0, 0.01, 300), (1.5, 0.02, 200), (0.8, 0.005, 50)]
    ledger = PrivacyLedger("rdp")
    for s in segments:
        ledger.step(*s)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=sg, steps=n, orders=orders) for sg, q, n in segments)
    eps_by_hand = np.min(rdp - (math.log(DELTA) + np.log(orders)) / (np.array(orders) - 1) + np.log((np.array(orders) - 1) / orders))
    assert ledger.epsilon(DELTA) == pytest.approx(eps_by_hand, abs=1e-9)


@pytest.mark.parametrize("name, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_heterogeneous_steps_compose_like_opacus(name, cls):
    segments = [(1.0, 0.01, 300), (1.5, 0.02, 150), (1.5, 0.02, 50), (1.0, 0.01, 100)]
    ledger = PrivacyLedger(name)
    for s in segments:
        ledger.step(*s)
    # consecutive equal settings merge, as in Opacus
    assert ledger.history == ((1.0, 0.01, 300), (1.5, 0.02, 200), (1.0, 0.01, 100))
    assert len(ledger) == 600
    ref = _opacus_stepped(cls, segments)
    assert ref.history == list(ledger.history)
    assert abs(ledger.epsilon(DELTA) - ref.get_epsilon(delta=DELTA)) <= 1e-6
    shorter = PrivacyLedger(name)
    for s in segments[:2]:
        shorter.step(*s)
    assert shorter.epsilon(DELTA) < ledger.epsilon(DELTA)


def test_empty_ledger_spent_nothing():
    assert PrivacyLedger("prv").epsilon(DELTA) == 0.0


def test_numpy_scalars_are_accepted():
    ledger = PrivacyLedger("rdp")
    ledger.step(np.float64(SIGMA), np.float64(Q), np.int64(STEPS))
    assert ledger.history == ((SIGMA, Q, STEPS),) and isinstance(ledger.history[0][2], int)


def test_cross_check_with_google_dp_accounting():
    dpa = pytest.importorskip("dp_accounting")
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(SIGMA)), STEPS)
    rdp_ref = dpa.rdp.RdpAccountant()
    rdp_ref.compose(event)
    pld_ref = dpa.pld.PLDAccountant()
    pld_ref.compose(event)
    rdp, prv = PrivacyLedger("rdp"), PrivacyLedger("prv")
    rdp.step(SIGMA, Q, STEPS)
    prv.step(SIGMA, Q, STEPS)
    # RDP: same analysis, different order grids -> agree to ~1e-6 relative
    assert rdp.epsilon(DELTA) == pytest.approx(rdp_ref.get_epsilon(DELTA), rel=1e-4)
    # PRV reports an upper bound; the PLD accountant's estimate sits just below it
    pld = pld_ref.get_epsilon(DELTA)
    assert pld - 1e-3 <= prv.epsilon(DELTA) <= pld * 1.015


@pytest.mark.parametrize("accountant, target", [("rdp", 2.0), ("rdp", 0.5), ("prv", 1.0)])
def test_calibration_lands_within_two_percent_below_target(accountant, target):
    cal = noise_for_target_epsilon(target, DELTA, Q, STEPS, accountant=accountant)
    assert cal.epsilon <= target
    assert 0.0 <= cal.relative_error <= 0.02
    # independent re-accounting with a bare Opacus accountant
    acc = ACCOUNTANTS[accountant]()
    acc.history = [(cal.noise_multiplier, Q, STEPS)]
    assert acc.get_epsilon(delta=DELTA) == pytest.approx(cal.epsilon, abs=1e-9)
    # less noise than calibrated must overspend: the answer is not needlessly noisy
    acc.history = [(cal.noise_multiplier * 0.95, Q, STEPS)]
    assert acc.get_epsilon(delta=DELTA) > target


def test_calibration_to_unreachable_budget_is_a_config_error():
    # with Opacus's RDP orders (max 63) no noise level certifies epsilon 0.1 at delta 1e-5
    with pytest.raises(ConfigError, match="target_epsilon"):
        noise_for_target_epsilon(0.1, DELTA, Q, STEPS, accountant="rdp")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(target_epsilon=0.0), "target_epsilon: must be > 0"),
        (dict(target_epsilon=-1.0), "target_epsilon: must be > 0"),
        (dict(delta=0.0), r"delta: must be in \(0, 1\)"),
        (dict(delta=1.0), r"delta: must be in \(0, 1\)"),
        (dict(sample_rate=0.0), r"sample_rate: must be in \(0, 1\]"),
        (dict(sample_rate=1.5), r"sample_rate: must be in \(0, 1\]"),
        (dict(steps=0), "steps: must be an integer >= 1"),
        (dict(accountant="rpd"), "accountant: unknown accountant 'rpd'; did you mean 'rdp'"),
        (dict(rel_tolerance=0.05), r"rel_tolerance: must be in \(0, 0.02\]"),
    ],
)
def test_calibration_rejects_bad_settings(kwargs, field):
    args = dict(target_epsilon=1.0, delta=DELTA, sample_rate=Q, steps=STEPS, accountant="rdp")
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        noise_for_target_epsilon(**args)


def test_ledger_rejects_bad_steps():
    ledger = PrivacyLedger("rdp")
    with pytest.raises(ConfigError, match="noise_multiplier: must be > 0"):
        ledger.step(0.0, Q)
    with pytest.raises(ConfigError, match=r"sample_rate: must be in \(0, 1\]"):
        ledger.step(1.0, 0.0)
    with pytest.raises(ConfigError, match=r"delta: must be in \(0, 1\)"):
        ledger.epsilon(0.0)
    with pytest.raises(ConfigError, match="allowed: prv, rdp"):
        PrivacyLedger("gdp")
    assert ledger.history == ()


# ------------------------------------------------------- cached accounting == Opacus, cheaply
def _random_history(rng: np.random.Generator, sigmas, rates, max_steps) -> list[tuple[float, float, int]]:
    return [(float(rng.choice(sigmas)), float(rng.choice(rates)), int(rng.integers(1, max_steps + 1)))
            for _ in range(int(rng.integers(1, 4)))]


@pytest.mark.parametrize("seed", range(4))
def test_rdp_epsilon_is_opacus_to_the_bit_on_random_histories(seed):
    rng = np.random.default_rng(seed)
    history = _random_history(rng, [0.6, 1.0, 1.7, rng.uniform(0.5, 4.0)], [1.0, 0.3, rng.uniform(1e-3, 0.5)], 2000)
    ledger = PrivacyLedger("rdp")
    for segment in history:
        ledger.step(*segment)
    ref = _opacus_stepped(RDPAccountant, [(s, q, 1) for s, q, n in history for _ in range(n)])
    assert ref.history == list(ledger.history)
    for delta in (1e-5, 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus's own order warning
            expected = ref.get_epsilon(delta=delta)
        assert ledger.epsilon(delta) == expected


@pytest.mark.parametrize("seed", range(2))
def test_prv_epsilon_is_opacus_to_the_bit_on_random_histories(seed):
    rng = np.random.default_rng(100 + seed)
    history = _random_history(rng, [0.9, 1.3, rng.uniform(0.8, 2.0)], [0.05, rng.uniform(0.01, 0.2)], 120)
    ledger = PrivacyLedger("prv")
    for segment in history:
        ledger.step(*segment)
    ref = PRVAccountant()
    ref.history = list(ledger.history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.get_epsilon(delta=DELTA)
    assert ledger.epsilon(DELTA) == expected


def test_rounds_of_a_federation_reuse_each_settings_rdp_curve(monkeypatch):
    """A client's history grows every round; the RDP series of (sigma, q) is computed once."""
    calls = []
    real = rdp_analysis.compute_rdp
    monkeypatch.setattr(rdp_analysis, "compute_rdp", lambda **kw: calls.append(kw) or real(**kw))
    step_rdp.cache_clear()
    ledger = PrivacyLedger("rdp")
    for _ in range(20):
        ledger.step(1.0, 0.07, 12)
        ledger.epsilon(DELTA)
    assert len(calls) == 1
    ledger.step(1.5, 0.07, 12)
    for name in ("rdp", "prv"):  # PRV's domain bounds come from the same cache
        again = PrivacyLedger(name)
        for segment in ledger.history:
            again.step(*segment)
        again.epsilon(DELTA)
    assert len(calls) == 2


# --------------------------------------------------- Opacus's order warning: once per run
def _records(action) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    return seen


def test_best_order_at_the_range_end_is_reported_not_warned_per_call():
    spent = PrivacyLedger("rdp")
    spent.step(20.0, 0.25, 4)
    seen = _records(lambda: spent.spent(DELTA))
    assert seen == [] and spent.spent(DELTA).order == RDP_ORDERS[-1] and spent.spent(DELTA).edge == "largest"
    inside = PrivacyLedger("rdp")
    inside.step(SIGMA, Q, STEPS)
    assert inside.spent(DELTA).edge is None
    prv = PrivacyLedger("prv")  # PRV sizes its domain with RDP at tiny deltas: no warning either
    prv.step(20.0, 0.25, 4)
    assert _records(lambda: prv.epsilon(DELTA)) == []
    # the calibration's trial noise levels are silent too
    assert _records(lambda: noise_for_target_epsilon(2.0, DELTA, Q, STEPS, accountant="rdp")) == []


@pytest.mark.parametrize("defense", ["dp_sgd", "dp_fedavg"])
def test_order_note_says_it_once_per_run_naming_the_accountant(defense):
    from fllab.defenses.dp import DPFedAvg, DPSGD

    comp = DPSGD(DPSGD.Params(noise_multiplier=20.0, accountant="rdp")) if defense == "dp_sgd" else \
        DPFedAvg(DPFedAvg.Params(noise_multiplier=20.0, accountant="rdp"))

    def rounds():
        history = ()
        for rnd in range(6):
            history = ((20.0, 0.25, 4 * (rnd + 1)),)
            res = [ClientResult(0, torch.zeros(3), 1, extras={"dp_sgd.history": history})]
            comp.account(rnd, [0], res, 4)

    for _ in range(2):  # a second run says it again, once
        seen = _records(rounds)
        assert len(seen) == 1, [str(w.message) for w in seen]
        msg = str(seen[0].message)
        assert seen[0].category is RuntimeWarning and msg.startswith(f"{defense}: the RDP accountant")
        assert "largest alpha (63)" in msg and "once per run" in msg
