"""Detection scoring: poisoning.detection_precision / poisoning.detection_recall of a detecting
aggregator (mudhog) against the engine's truth of which uploads were malicious."""
from __future__ import annotations

import copy

import pytest

from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine
from fllab.training.server import DetectionTally

from conftest import TINY

PRECISION, RECALL = "poisoning.detection_precision", "poisoning.detection_recall"


def test_detection_tally_by_hand():
    tally = DetectionTally()
    tally.add({1, 2, 7}, {1, 2, 3})  # 2 hits, 1 false alarm, 1 miss
    tally.add(set(), {3})  # a round with a miss only
    tally.add({5}, set())  # a false alarm in a round without attackers
    assert tally.metrics() == {PRECISION: pytest.approx(2 / 4), RECALL: pytest.approx(2 / 4)}
    assert DetectionTally().metrics() == {}  # nothing flagged, nobody malicious: both absent, not zero
    quiet = DetectionTally()
    quiet.add(set(), {4})
    assert quiet.metrics() == {RECALL: 0.0}


def detection_engine(attack, rounds=12, warmup=3):
    data = copy.deepcopy(TINY)
    data["federation"].update(num_clients=20, rounds=rounds)
    data["algorithm"] = {"name": "fedsgd", "lr": 0.5, "batch_size": 32}
    data["aggregator"] = {"name": "mudhog", "warmup": warmup}
    data["attacks"] = [attack] if attack else []
    return Engine(resolve(validate_schema(data)))


@pytest.mark.parametrize(
    "attack",
    [{"name": "sign_flip", "fraction": 0.3}, {"name": "gaussian_noise", "fraction": 0.2, "std": 0.5}],
    ids=["sign_flip_30pct", "gaussian_noise_20pct"],
)
def test_mudhog_detection_beats_chance_on_real_digits(attack):
    """Flagging as many clients at random would have precision = the malicious fraction."""
    engine = detection_engine(attack)
    result = engine.run()
    chance = attack["fraction"]
    assert result.metrics[PRECISION] >= 0.9 > 2 * chance
    assert result.metrics[RECALL] >= 0.6
    # the verdicts are recorded per round, from the first round after the warm-up
    assert ["flagged" in r for r in result.rounds] == [False] * 3 + [True] * 9
    assert set(result.rounds[-1]["flagged"]) <= set(engine.federation.truth.malicious)


def test_truth_follows_when_each_malicious_client_acts():
    data = copy.deepcopy(TINY)
    data["federation"].update(num_clients=20)
    data["attacks"] = [{"name": "sign_flip", "start_round": 2, "fraction": 0.1}, {"name": "label_flip", "start_round": 2, "fraction": 0.1}]
    engine = Engine(resolve(validate_schema(data)))
    engine.prepare()
    crafting, poisoning = (d.clients for d in engine.federation.poisoners)
    assert len(crafting) == len(poisoning) == 2 and not set(crafting) & set(poisoning)
    acting = engine.federation.acting
    assert [acting(r, crafting[0]) for r in range(4)] == [False, False, True, True]  # crafts from start_round on
    assert [acting(r, poisoning[0]) for r in range(4)] == [True] * 4  # its data is poisoned from the start
    honest = next(c for c in range(20) if c not in engine.federation.truth.malicious)
    assert not any(acting(r, honest) for r in range(4))


def test_a_run_without_a_detector_reports_no_detection_metrics():
    data = copy.deepcopy(TINY)
    data["federation"].update(num_clients=10)
    data["attacks"] = [{"name": "sign_flip", "fraction": 0.3}]
    metrics = Engine(resolve(validate_schema(data))).run().metrics
    assert PRECISION not in metrics and RECALL not in metrics


def test_victims_of_server_attacks_are_never_malicious():
    """Membership targets and the audited client are honest: malicious clients are drawn among
    the others (the same permutation otherwise); the truth's honest clients (the outsider's member
    pool) exclude the malicious ones."""
    from fllab.training.wiring import assign_malicious, protected_clients

    data = copy.deepcopy(TINY)
    data["federation"].update(num_clients=10)
    data["attacks"] = [
        {"name": "label_flip", "fraction": 0.5},
        {"name": "update_cosine", "position": "server", "target_clients": [0, 1, 2, 3], "rounds": [0]},
    ]
    setup = resolve(validate_schema(data))
    assert protected_clients(setup.attacks) == {0, 1, 2, 3}
    malicious = assign_malicious(setup.attacks, 10, 0)["label_flip"]
    assert len(malicious) == 5 and not set(malicious) & {0, 1, 2, 3}
    unprotected = resolve(validate_schema({**data, "attacks": data["attacks"][:1]})).attacks
    order = [c for c in assign_malicious(unprotected, 10, 0)["label_flip"]]
    assert [c for c in order if c > 3] == [c for c in malicious if c in order]  # same draw, protected ones skipped
    engine = Engine(setup)
    engine.prepare()
    truth = engine.federation.truth
    assert truth.malicious == set(malicious) and truth.honest() == [c for c in range(10) if c not in malicious]
