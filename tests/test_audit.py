"""Empirical epsilon lower bounds (Jagielski et al. 2020; Steinke, Nasr & Jagielski 2023)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from fllab.errors import ConfigError
from fllab.privacy.audit import (
    clopper_pearson,
    counts_epsilon_lower_bound,
    jagielski_epsilon_lower_bound,
    one_run_epsilon_from_scores,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)

RR_EPSILON = 2.0


def _randomized_response(seed, n):
    """n canaries, each a member with probability 1/2, observed through eps-DP randomized response."""
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    truthful = rng.random(n) < math.exp(RR_EPSILON) / (1 + math.exp(RR_EPSILON))
    return np.where(truthful, member, ~member), member


def _paper_p_value(m, r, v, eps, delta):
    """The p-value routine of Steinke, Nasr & Jagielski 2023, transcribed loop by loop."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += scipy.stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


# ----------------------------------------------------------------------------- Clopper-Pearson
def test_clopper_pearson_by_hand_at_the_edges():
    n, alpha = 50, 0.05
    lo, hi = clopper_pearson([0, n], [n, n], alpha)
    # k = 0: P[Bin(n, p) = 0] = (1-p)^n = alpha/2 at the upper end; k = n mirrors it
    assert hi[0] == pytest.approx(1 - (alpha / 2) ** (1 / n), rel=1e-12)
    assert lo[0] == 0.0
    assert lo[1] == pytest.approx((alpha / 2) ** (1 / n), rel=1e-12)
    assert hi[1] == 1.0


@pytest.mark.parametrize("k, n", [(1, 10), (7, 20), (37, 400), (999, 1000)])
def test_clopper_pearson_matches_scipy(k, n):
    lo, hi = clopper_pearson(k, n, 0.1)
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    assert float(lo) == pytest.approx(ref.low, rel=1e-9)
    assert float(hi) == pytest.approx(ref.high, rel=1e-9)
    # the defining tail equations
    assert scipy.stats.binom.cdf(k, n, float(hi)) == pytest.approx(0.05, rel=1e-6)
    assert scipy.stats.binom.sf(k - 1, n, float(lo)) == pytest.approx(0.05, rel=1e-6)


# ------------------------------------------------------------------------- Jagielski et al.
def test_counts_bound_by_hand():
    tp, fn, fp, tn, alpha, delta = 90, 10, 5, 95, 0.05, 1e-3
    fpr_hi = scipy.stats.beta.ppf(1 - alpha / 2, fp + 1, tn)
    fnr_hi = scipy.stats.beta.ppf(1 - alpha / 2, fn + 1, tp)
    by_hand = max(math.log((1 - delta - fpr_hi) / fnr_hi), math.log((1 - delta - fnr_hi) / fpr_hi))
    assert float(counts_epsilon_lower_bound(tp, fp, fn, tn, delta, alpha)) == pytest.approx(by_hand, rel=1e-12)
    assert counts_epsilon_lower_bound(50, 50, 50, 50) == 0.0  # a coin flip proves nothing


def test_threshold_scan_counts_by_hand():
    scores = [0.9, 0.8, 0.8, 0.3, 0.1, 0.7]
    member = [1, 1, 0, 1, 0, 0]
    best = jagielski_epsilon_lower_bound(scores, member, alpha=0.3)
    assert (best.tp + best.fn, best.fp + best.tn) == (3, 3)
    predicted = np.asarray(scores) >= best.threshold
    assert best.tp == int(np.sum(predicted & np.asarray(member, bool)))
    assert best.fp == int(np.sum(predicted & ~np.asarray(member, bool)))
    thresholds = np.append(np.unique(scores), np.inf)
    every = [
        float(counts_epsilon_lower_bound(
            np.sum((np.asarray(scores) >= t) & np.asarray(member, bool)),
            np.sum((np.asarray(scores) >= t) & ~np.asarray(member, bool)),
            np.sum((np.asarray(scores) < t) & np.asarray(member, bool)),
            np.sum((np.asarray(scores) < t) & ~np.asarray(member, bool)),
            0.0, 0.3,
        ))
        for t in thresholds
    ]
    assert best.epsilon == pytest.approx(max(every), rel=1e-12)


def test_perfect_attack_with_many_samples_exceeds_one():
    member = np.repeat([True, False], 1000)
    best = jagielski_epsilon_lower_bound(member.astype(float), member)
    assert best.epsilon > 5.0 and (best.fp, best.fn) == (0, 0)


def test_random_guessing_stays_near_zero():
    member = np.repeat([True, False], 1000)
    for seed in range(5):
        scores = np.random.default_rng(seed).normal(size=member.size)
        assert jagielski_epsilon_lower_bound(scores, member, bonferroni=True).epsilon <= 0.05
        # without correction, maximising over 2,000 thresholds is optimistic but stays small
        assert jagielski_epsilon_lower_bound(scores, member).epsilon < 0.7


@pytest.mark.parametrize("seed", range(5))
def test_randomized_response_bound_never_exceeds_its_epsilon(seed):
    guess, member = _randomized_response(seed, 10_000)
    best = jagielski_epsilon_lower_bound(guess.astype(float), member)
    assert 1.6 < best.epsilon <= RR_EPSILON  # tight, and never above the truth
    assert jagielski_epsilon_lower_bound(guess.astype(float), member, delta=0.01).epsilon < best.epsilon


# ------------------------------------------------------------------ Steinke, Nasr & Jagielski
@pytest.mark.parametrize("m, r, v, eps, delta", [(1000, 200, 150, 0.5, 0.0), (1000, 200, 150, 0.5, 1e-4), (100, 100, 91, 2.0, 1e-3), (50, 10, 0, 1.0, 1e-5)])
def test_p_value_matches_the_papers_routine(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(_paper_p_value(m, r, v, eps, delta), rel=1e-10)


def test_p_value_without_delta_is_a_binomial_tail_by_hand():
    # P[Bin(3, q) >= 2] = 3 q^2 (1-q) + q^3 with q = e / (1 + e)
    q = math.e / (1 + math.e)
    assert one_run_p_value(10, 3, 2, 1.0) == pytest.approx(3 * q**2 * (1 - q) + q**3, rel=1e-12)


def test_one_run_bound_is_the_edge_of_rejection():
    m, r, v, delta, beta = 1000, 300, 240, 1e-5, 0.05
    eps = one_run_epsilon_lower_bound(m, r, v, delta, beta)
    assert eps > 0.5
    assert one_run_p_value(m, r, v, eps, delta) < beta <= one_run_p_value(m, r, v, eps + 1e-6, delta)


def test_one_run_perfect_and_random_attacks():
    assert one_run_epsilon_lower_bound(1000, 1000, 1000) > 5.0
    member = np.random.default_rng(0).random(2000) < 0.5
    for seed in range(5):
        scores = np.random.default_rng(100 + seed).normal(size=member.size)
        assert one_run_epsilon_from_scores(scores, member, 200, 200).epsilon < 0.2


@pytest.mark.parametrize("seed", range(5))
def test_one_run_on_randomized_response_never_exceeds_its_epsilon(seed):
    guess, member = _randomized_response(100 + seed, 10_000)
    audit = one_run_epsilon_from_scores(guess.astype(float), member, k_pos=int(guess.sum()), k_neg=int((~guess).sum()))
    assert audit.guesses == audit.m == 10_000 and audit.correct == int(np.sum(guess == member))
    assert 1.6 < audit.epsilon <= RR_EPSILON
    assert one_run_epsilon_lower_bound(audit.m, audit.guesses, audit.correct, delta=1e-4) < audit.epsilon


def test_scores_to_guesses_by_hand():
    scores = [0.9, 0.1, 0.5, 0.8, 0.2, 0.4]
    member = [1, 0, 1, 0, 1, 0]
    audit = one_run_epsilon_from_scores(scores, member, k_pos=2, k_neg=2)
    # "in": 0.9 (right), 0.8 (wrong); "out": 0.1 (right), 0.2 (wrong)
    assert (audit.m, audit.guesses, audit.correct) == (6, 4, 2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: clopper_pearson(3, 2), "counts"),
        (lambda: clopper_pearson(1, 2, alpha=0.0), r"alpha: must be in \(0, 1\)"),
        (lambda: counts_epsilon_lower_bound(1, 1, 1, 1, delta=1.0), r"delta: must be in \[0, 1\)"),
        (lambda: jagielski_epsilon_lower_bound([0.1, 0.2], [1, 1]), "is_member: needs at least one member"),
        (lambda: jagielski_epsilon_lower_bound([0.1, 0.2], [1]), "is_member: scores and is_member differ"),
        (lambda: one_run_p_value(10, 5, 6, 1.0), "guesses: needs 0 <= correct <= guesses <= m"),
        (lambda: one_run_epsilon_lower_bound(10, 5, 3, beta=1.0), r"beta: must be in \(0, 1\)"),
        (lambda: one_run_epsilon_from_scores([0.1, 0.2], [1, 0], 2, 1), "k_pos: k_pos \\+ k_neg must be <="),
    ],
)
def test_bad_settings_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ------------------------------------------------------------- the one-run audit in a scenario
def _leaky(kind="noise", **audit):
    """No DP, 2 clients of ~225 digits, 20 rounds of 10 local epochs: the MLP memorises its data."""
    return {
        "name": "leaky", "seed": 0, "threads": 1,
        "task": {"dataset": {"name": "digits", "test_fraction": 0.75}, "model": {"name": "mlp", "hidden": [128]}},
        "federation": {"num_clients": 2, "rounds": 20, "partition": "iid"},
        "algorithm": {"name": "fedavg", "local_epochs": 10, "batch_size": 16, "lr": 0.1},
        "evaluation": {"every": 20},
        "attacks": [{"name": "canary_audit", "canaries": 100, "kind": kind, "guess_members": 20, "guess_nonmembers": 20, **audit}],
    }


def _audit_row(out):
    import json

    return json.loads((out / "attacks.json").read_text())["canary_audit"]["table"][0]


def test_canaries_are_planted_in_one_clients_data_half_at_random():
    import torch

    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema
    from fllab.training.engine import Engine

    def planted(seed, kind="mislabeled"):
        sc = _leaky(kind, canaries=60)
        sc["seed"] = seed
        engine = Engine(resolve(validate_schema(sc)))
        engine.prepare()
        return engine

    engine = planted(0)
    driver = engine.federation.drivers[0]
    original = engine.federation.bundle.train.subset(torch.as_tensor(engine.federation.parts[0]))
    inserted = int(driver.inserted.sum())
    assert 15 < inserted < 45  # Binomial(60, 1/2)
    # the client lost the 60 source records and gained exactly the inserted canaries, last
    assert len(engine.federation.client_data[0]) == len(original) - 60 + inserted
    tail = engine.federation.client_data[0].subset(torch.arange(len(engine.federation.client_data[0]) - inserted, len(engine.federation.client_data[0])))
    assert torch.equal(tail.x, driver.canaries.x[driver.inserted]) and torch.equal(tail.y, driver.canaries.y[driver.inserted])
    # mislabeled canaries are the client's own inputs, each with a wrong label
    rows = {tuple(x.flatten().tolist()): int(y) for x, y in zip(original.x, original.y)}
    assert all(rows[tuple(x.flatten().tolist())] != int(y) for x, y in zip(driver.canaries.x, driver.canaries.y))
    assert len(engine.federation.client_data[1]) == len(engine.federation.parts[1])  # the other client is untouched
    # membership attacks in the same scenario draw their members from the client's own records only
    assert torch.equal(engine.federation.truth.records(0).x, engine.federation.client_data[0].x[: len(original) - 60])
    again = planted(0).federation.drivers[0]
    assert torch.equal(again.inserted, driver.inserted) and torch.equal(again.canaries.y, driver.canaries.y)
    assert not torch.equal(planted(1).federation.drivers[0].inserted, driver.inserted)
    # noise canaries are additions in [0, 1]: the client keeps every record of its own
    noisy = planted(0, "noise")
    canaries = noisy.federation.drivers[0].canaries
    assert len(noisy.federation.client_data[0]) == len(original) + int(noisy.federation.drivers[0].inserted.sum())
    assert torch.equal(noisy.federation.client_data[0].x[: len(original)], original.x)
    assert canaries.x.shape == (60, *original.x.shape[1:]) and 0 <= canaries.x.min() and canaries.x.max() <= 1


@pytest.mark.parametrize("kind", ["noise", "mislabeled"])
def test_one_run_audit_exceeds_one_on_a_leaky_federation(kind, tmp_path):
    import fllab

    out, summary = fllab.run(_leaky(kind), tmp_path / kind)
    metrics = summary["metrics"]
    assert metrics["privacy.epsilon_lower_bound_one_run"] > 1.0
    assert "privacy.epsilon" not in metrics  # nothing accounted without a DP defense
    row = _audit_row(out)
    assert row["guesses"] == 40 and row["correct"] >= 36
    scores = (out / "artefacts" / "canary_audit" / "scores.csv").read_text().splitlines()
    assert scores[0] == "index,is_member,score" and len(scores) == 101
    assert sum(line.split(",")[1] == "1" for line in scores[1:]) == row["inserted"]


DP_CONFIGS = {
    "dp_fedavg_eps1": {"name": "dp_fedavg", "target_epsilon": 1.0},
    "dp_fedavg_eps8": {"name": "dp_fedavg", "target_epsilon": 8.0},
    "dp_fedavg_z0.3": {"name": "dp_fedavg", "noise_multiplier": 0.3, "clip": 5.0},
    "rqm": {"name": "rqm", "c": 0.05, "delta": 0.05, "m": 8, "q": 0.5},
}


def _assert_audit_below_accounting(sc, out_dir):
    import fllab

    _, summary = fllab.run(sc, out_dir)
    metrics = summary["metrics"]
    assert 0.0 <= metrics["privacy.epsilon_lower_bound_one_run"] <= metrics["privacy.epsilon"]
    return metrics


@pytest.mark.parametrize("name", list(DP_CONFIGS))
def test_one_run_audit_stays_below_the_accounted_epsilon(name, tmp_path):
    sc = _leaky()
    sc["defenses"] = [DP_CONFIGS[name]]
    _assert_audit_below_accounting(sc, tmp_path / name)


def test_one_run_audit_stays_below_dp_sgd_epsilon(tmp_path):
    sc = _leaky()
    sc["federation"]["rounds"] = 4
    sc["algorithm"]["local_epochs"] = 2
    sc["defenses"] = [{"name": "dp_sgd", "noise_multiplier": 0.7}]
    _assert_audit_below_accounting(sc, tmp_path / "dp_sgd")


@pytest.mark.slow
@pytest.mark.parametrize("target", [1.0, 8.0])
@pytest.mark.parametrize("kind", ["noise", "mislabeled"])
def test_one_run_audit_stays_below_dp_sgd_target_epsilon_on_the_leaky_federation(kind, target, tmp_path):
    sc = _leaky(kind)
    sc["defenses"] = [{"name": "dp_sgd", "target_epsilon": target}]
    metrics = _assert_audit_below_accounting(sc, tmp_path / "dp_sgd")
    assert metrics["privacy.epsilon"] <= target


@pytest.mark.parametrize(
    "change, message",
    [
        ({"client": 5}, r"attacks\.0\.client: client 5 does not exist"),
        ({"canaries": 1000, "kind": "mislabeled"}, r"attacks\.0\.canaries: 1000 mislabeled canaries need as many records; the client holds \d+ \(client 0\)"),
        ({"guess_members": 60, "guess_nonmembers": 50}, r"attacks\.0.*exceeds canaries = 100"),
    ],
)
def test_bad_canary_settings_are_config_errors(change, message, tmp_path):
    import fllab

    sc = _leaky()
    sc["attacks"][0].update(change)
    with pytest.raises(ConfigError, match=message):
        fllab.run(sc, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
