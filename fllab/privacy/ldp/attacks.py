"""Distinguishing tests of one report, per encoding: LDP-Auditor's attacks and optimal tests.

Each test reads a batch of reports of a known mechanism and says, per report, whether it
concludes "the input was v1".

``paper`` -- the attacks of Arcolezi & Gambs (PoPETs 2024, Sec. 4.2; ``ldp_audit/attacks.py``):
the attacker *guesses* the input and the test is "guess == v1".

* value (GRR, AGRR): the guess is the report.
* subset (SS): a uniform element of the subset.
* unary (SUE, OUE): a uniform set bit; a uniform value when no bit is set.
* histogram: THE -- a uniform coordinate above THE's threshold (uniform value if none);
  SHE -- the maximum-likelihood value under Laplace noise, ties broken uniformly.  The likelihood
  of ``v`` is proportional to ``exp((eps/2) clip(2 y_v - 1, -1, 1))``, so the maximiser is
  computed from that clipped score.
* hashing (BLH, OLH): a uniform value among those hashing to the report (uniform if none).
* gaussian (GM, AGM): the maximum-likelihood value, i.e. ``argmax_v y_v``.

A uniform choice from a set ``S`` hits ``v1`` with probability ``[v1 in S] / |S|``; the test draws
that Bernoulli directly, which has exactly the distribution of the paper's "guess, then compare".

``optimal`` -- for pure LDP the most powerful test is the region where the likelihood ratio
``P[y | v1] / P[y | v2]`` is largest, and for every encoding here that maximum is exactly
``e^eps`` (so eps_emp approaches eps as the trials grow):

* value: ``y == v1`` (the paper's test already is this region);
* subset: ``v1 in S and v2 not in S``;
* unary: ``b[v1] = 1 and b[v2] = 0``;
* histogram: ``y[v1] >= 1 and y[v2] <= 0`` (Laplace ratio ``e^(eps/2)`` on each coordinate);
* hashing: ``H(v1) = y and H(v2) != y``;
* gaussian: ``y[v1] - y[v2] >= tau``, the sufficient statistic, with ``tau`` learned on half of
  the trials (:func:`~fllab.privacy.ldp.bounds.learn_threshold`).

Where the paper's attack is already optimal (GRR, AGRR) both give the same region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .oracles import FrequencyOracle

Statistic = Callable[[FrequencyOracle, np.ndarray, int, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class DistinguishingTest:
    """``statistic`` returns booleans (the test's verdicts) or, when ``learned``, float scores
    (larger = more like v1) that a threshold learned on half of the trials turns into verdicts."""

    description: str
    statistic: Statistic
    learned: bool = False


def _hit_uniform_member(members: np.ndarray, v1: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Does a uniform member of each row's set (uniform over 0..k-1 if empty) equal ``v1``?"""
    size = members.sum(axis=1)
    prob = np.where(size > 0, members[:, v1] / np.maximum(size, 1), 1.0 / k)
    return rng.random(size.size) < prob


def _hit_argmax(scores: np.ndarray, v1: int, rng: np.random.Generator) -> np.ndarray:
    """Does the argmax of each row (ties broken uniformly) equal ``v1``?"""
    return _hit_uniform_member(scores == scores.max(axis=1, keepdims=True), v1, scores.shape[1], rng)


def _paper_value(m, y, v1, v2, rng):
    return np.asarray(y) == v1


def _paper_set(m, y, v1, v2, rng):
    return _hit_uniform_member(np.asarray(y, dtype=bool), v1, m.k, rng)


def _paper_the(m, y, v1, v2, rng):
    return _hit_uniform_member(np.asarray(y) > m.threshold, v1, m.k, rng)


def _paper_she(m, y, v1, v2, rng):
    return _hit_argmax(np.clip(2.0 * np.asarray(y) - 1.0, -1.0, 1.0), v1, rng)


def _paper_hashing(m, y, v1, v2, rng):
    return _hit_uniform_member(m.support(y), v1, m.k, rng)


def _paper_gaussian(m, y, v1, v2, rng):
    return _hit_argmax(np.asarray(y), v1, rng)


def _optimal_bits(m, y, v1, v2, rng):
    y = np.asarray(y, dtype=bool)
    return y[:, v1] & ~y[:, v2]


def _optimal_histogram(m, y, v1, v2, rng):
    y = np.asarray(y)
    return (y[:, v1] >= 1.0) & (y[:, v2] <= 0.0)


def _optimal_hashing(m, y, v1, v2, rng):
    h = m.hashes(y, np.array([v1, v2]))
    bucket = np.asarray(y)[:, 0]
    return (h[:, 0] == bucket) & (h[:, 1] != bucket)


def _optimal_gaussian(m, y, v1, v2, rng):
    y = np.asarray(y)
    return y[:, v1] - y[:, v2]


#: encoding -> attack name -> test
TESTS: dict[str, dict[str, DistinguishingTest]] = {
    "value": {
        "paper": DistinguishingTest("guess = report; guess == v1", _paper_value),
        "optimal": DistinguishingTest("report == v1", _paper_value),
    },
    "subset": {
        "paper": DistinguishingTest("guess = uniform element of the subset; guess == v1", _paper_set),
        "optimal": DistinguishingTest("v1 in subset and v2 not in subset", _optimal_bits),
    },
    "unary": {
        "paper": DistinguishingTest("guess = uniform set bit (uniform value if none); guess == v1", _paper_set),
        "optimal": DistinguishingTest("bit v1 set and bit v2 clear", _optimal_bits),
    },
    "histogram": {
        "optimal": DistinguishingTest("y[v1] >= 1 and y[v2] <= 0", _optimal_histogram),
    },
    "hashing": {
        "paper": DistinguishingTest("guess = uniform value hashing to the report (uniform if none); guess == v1", _paper_hashing),
        "optimal": DistinguishingTest("H(v1) = report and H(v2) != report", _optimal_hashing),
    },
    "gaussian": {
        "paper": DistinguishingTest("guess = argmax_v y_v (maximum likelihood); guess == v1", _paper_gaussian),
        "optimal": DistinguishingTest("y[v1] - y[v2] >= tau (tau learned on half the trials)", _optimal_gaussian, learned=True),
    },
}

#: THE and SHE share the histogram encoding but the paper attacks them differently
PAPER_BY_MECHANISM: dict[str, DistinguishingTest] = {
    "the": DistinguishingTest("guess = uniform coordinate above THE's threshold (uniform if none); guess == v1", _paper_the),
    "she": DistinguishingTest("guess = maximum-likelihood value under Laplace noise; guess == v1", _paper_she),
}

ATTACKS = ("paper", "optimal")


def distinguishing_test(mechanism: FrequencyOracle, attack: str) -> DistinguishingTest:
    """The ``attack`` ("paper" or "optimal") test for ``mechanism``'s encoding."""
    from .checks import LDPArgumentError

    if attack not in ATTACKS:
        raise LDPArgumentError(f"unknown attack {attack!r}; allowed: {', '.join(ATTACKS)}", "attack")
    if attack == "paper" and mechanism.name in PAPER_BY_MECHANISM:
        return PAPER_BY_MECHANISM[mechanism.name]
    by_attack = TESTS.get(mechanism.encoding, {})
    if attack not in by_attack:
        raise LDPArgumentError(f"no {attack} test for encoding {mechanism.encoding!r}", "attack")
    return by_attack[attack]
