"""Poisoning attacks: exact kernels on small update matrices (ALIE's z_max, IPM, the Min-Max /
Min-Sum scale search against closed-form optima, Fang's lambda bound and Krum selection, Fang's
ranges), the threat-model boundary (own vs omniscient knowledge), backdoor triggers and their
success rate, and end-to-end runs where each attack must beat the clean run or a baseline."""
from __future__ import annotations

import copy
import csv
import math
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fllab
from fllab.attacks.poisoning import kernels
from fllab.attacks.poisoning.backdoor import METRIC, backdoor_success_rate, place
from fllab.errors import ConfigError
from fllab.registry import AGGREGATORS, ATTACKS
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.training.engine import Engine
from fllab.types import PoisonObservation, TensorData, UpdateKind

from conftest import TINY


def observation(benign, own, aggregator=None, seed=0, omniscient=True):
    n = benign.shape[0] + own.shape[0]
    return PoisonObservation(
        round=0, num_clients=n, num_malicious=own.shape[0], global_params=torch.zeros(own.shape[1]),
        own_updates=own, kind=UpdateKind.GRADIENT, seed=seed,
        benign_updates=benign if omniscient else None, aggregator=aggregator if omniscient else None,
    )


def updates(rows, d, seed, shift=0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=dtype) + shift


# ------------------------------------------------------------------------------------- ALIE
def test_alie_z_max_for_50_clients_10_malicious():
    # s = floor(50/2 + 1) - 10 = 16; Phi^-1((50 - 10 - 16) / 40) = Phi^-1(0.6)
    assert kernels.alie_z(50, 10) == pytest.approx(0.2533471031357997, abs=1e-12)
    assert kernels.alie_z(20, 6) == pytest.approx(0.3661063568005697, abs=1e-12)  # s = 5: Phi^-1(9/14)


def test_alie_z_max_refuses_a_malicious_majority():
    with pytest.raises(ValueError, match="set z explicitly"):
        kernels.alie_z(10, 6)  # s = 0: the formula's probability is 1


def test_alie_sends_mean_minus_z_std_of_what_its_knowledge_allows():
    benign, own = updates(40, 6, 0), updates(10, 6, 1, shift=-1.0)
    z = 0.2533471031357997
    expected = benign.mean(0) - z * benign.std(0)
    omni = ATTACKS.build({"name": "alie", "knowledge": "omniscient"})
    assert omni.knowledge == "omniscient"
    torch.testing.assert_close(omni.craft_uploads(observation(benign, own)), expected.expand(10, -1))
    own_only = ATTACKS.build({"name": "alie"})
    assert own_only.knowledge == "own"
    crafted = own_only.craft_uploads(observation(benign, own, omniscient=False))
    torch.testing.assert_close(crafted, (own.mean(0) - z * own.std(0)).expand(10, -1))


def test_a_single_malicious_client_with_own_knowledge_sends_its_honest_update():
    benign, own = updates(6, 4, 0), updates(1, 4, 1)
    for name in ("alie", "min_max", "min_sum"):
        crafted = ATTACKS.build({"name": name, "knowledge": "own"}).craft_uploads(observation(benign, own, omniscient=False))
        torch.testing.assert_close(crafted, own, msg=name)


# -------------------------------------------------------------------------------------- IPM
def test_ipm_is_minus_epsilon_times_the_benign_mean():
    benign = torch.tensor([[1.0, 2.0, -3.0], [3.0, 0.0, 1.0]])
    own = torch.tensor([[10.0, 10.0, 10.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    crafted = ATTACKS.build({"name": "ipm", "epsilon": 0.5}).craft_uploads(observation(benign, own))
    torch.testing.assert_close(crafted, torch.tensor([[-1.0, -0.5, 0.5]] * 3))
    crafted = ATTACKS.build({"name": "ipm", "epsilon": 2.0, "knowledge": "own"}).craft_uploads(observation(benign, own, omniscient=False))
    torch.testing.assert_close(crafted, torch.tensor([[-10.0, -10.0, -10.0]] * 3))


def test_omniscient_attacks_refuse_to_run_without_benign_updates():
    benign, own = updates(6, 4, 0), updates(2, 4, 1)
    for spec in ("ipm", "min_max", "fang_krum", "fang_trimmed_mean", "defense_aware_scaling"):
        with pytest.raises(ValueError, match="benign updates"):
            ATTACKS.build(spec).craft_uploads(observation(benign, own, omniscient=False))


def test_a_round_without_benign_clients():
    """Statistics attacks estimate from their own updates; aggregator-tailored ones send them honestly."""
    own = updates(3, 4, 1)
    obs = observation(own[:0], own)
    torch.testing.assert_close(ATTACKS.build("ipm").craft_uploads(obs), kernels.ipm(own, 0.1).expand(3, -1))
    for name in ("fang_krum", "fang_trimmed_mean", "defense_aware_scaling"):
        assert torch.equal(ATTACKS.build(name).craft_uploads(obs), own), name


MODEL_POISONING = ["alie", "ipm", "min_max", "min_sum", "fang_krum", "fang_trimmed_mean", "defense_aware_scaling"]


@pytest.mark.parametrize("name", MODEL_POISONING + ["pixel_backdoor", "dba"])
def test_every_poisoning_attack_runs_from_defaults_on_the_tiny_scenario(tmp_path, tiny, name):
    tiny["attacks"] = [{"name": name}] if name != "dba" else [{"name": name, "part_shape": [1, 2], "gap": 1}]
    tiny["federation"]["rounds"] = 1
    _, summary = fllab.run(tiny, tmp_path / name)
    assert summary["status"] == "ok"
    assert (METRIC in summary["metrics"]) == name.endswith(("backdoor", "dba"))


# ------------------------------------------------------------------------ Min-Max / Min-Sum
def test_gamma_search_follows_the_reference_code():
    # always feasible: 10, 15, 17.5, ... -> just below 2 * gamma_init
    top = kernels.gamma_search(lambda g: True, 10.0, 1e-5)
    assert 20.0 - 2e-5 < top < 20.0
    assert kernels.gamma_search(lambda g: False, 10.0, 1e-5) == 0.0
    found = kernels.gamma_search(lambda g: g <= 3.3, 10.0, 1e-5)
    assert 3.3 - 2e-5 < found <= 3.3


def closed_form_min_max(ref, mu, p):
    """Largest gamma with max_i ||ref_i - mu + gamma p||^2 <= max pairwise distance (root of a quadratic per row)."""
    bound = max(float(((ref[i] - ref[j]) ** 2).sum()) for i in range(len(ref)) for j in range(len(ref)))
    a, b, c = ((ref - mu) ** 2).sum(1), ((ref - mu) * p).sum(1), float((p**2).sum())
    return float(((-b + torch.sqrt(b**2 - c * (a - bound))) / c).min())


def closed_form_min_sum(ref, mu, p):
    """Largest gamma with sum_i ||ref_i - mu + gamma p||^2 <= min_i sum_j ||ref_i - ref_j||^2
    (the cross term vanishes because the rows of ref - mu sum to zero)."""
    bound = min(sum(float(((ref[i] - ref[j]) ** 2).sum()) for j in range(len(ref))) for i in range(len(ref)))
    a, c = float(((ref - mu) ** 2).sum()), float((p**2).sum())
    return math.sqrt((bound - a) / (len(ref) * c))


@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
def test_min_max_gamma_meets_its_constraint_and_is_maximal(kind):
    ref = updates(8, 5, 3)
    mu = ref.mean(0)
    p = kernels.perturbation(ref, mu, kind)
    gamma = kernels.min_max_gamma(ref, mu, p)
    best = closed_form_min_max(ref, mu, p)
    assert best < 20.0  # below the search's cap of 2 * gamma_init
    assert best - 5e-5 < gamma <= best
    crafted = mu - gamma * p
    assert float(((ref - crafted) ** 2).sum(1).max()) <= float(kernels.pairwise_sq_dists(ref).max())


@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
def test_min_sum_gamma_meets_its_constraint_and_is_maximal(kind):
    ref = updates(8, 5, 4)
    mu = ref.mean(0)
    p = kernels.perturbation(ref, mu, kind)
    gamma = kernels.min_sum_gamma(ref, mu, p)
    best = closed_form_min_sum(ref, mu, p)
    assert best - 5e-5 < gamma <= best
    crafted = mu - gamma * p
    assert float(((ref - crafted) ** 2).sum()) <= float(kernels.pairwise_sq_dists(ref).sum(1).min())


def test_min_max_attack_replicates_the_crafted_update_from_the_benign_updates():
    benign, own = updates(8, 5, 3), updates(3, 5, 9, shift=4.0)
    crafted = ATTACKS.build({"name": "min_max", "perturbation": "std"}).craft_uploads(observation(benign, own))
    mu, p = benign.mean(0), benign.std(0)
    expected = mu - kernels.min_max_gamma(benign, mu, p) * p
    torch.testing.assert_close(crafted, expected.expand(3, -1))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), d=st.integers(1, 6), seed=st.integers(0, 10_000), kind=st.sampled_from(["unit_vec", "std", "sign"]))
def test_min_max_and_min_sum_updates_never_leave_their_feasible_sets(n, d, seed, kind):
    ref = updates(n, d, seed)
    mu = ref.mean(0)
    p = kernels.perturbation(ref, mu, kind)
    sq = kernels.pairwise_sq_dists(ref)
    far = mu - kernels.min_max_gamma(ref, mu, p) * p
    assert float(((ref - far) ** 2).sum(1).max()) <= float(sq.max())
    total = mu - kernels.min_sum_gamma(ref, mu, p) * p
    assert float(((ref - total) ** 2).sum()) <= float(sq.sum(1).min())


# --------------------------------------------------------------------------------- Fang-Krum
def test_fang_krum_lambda_bound_by_hand():
    # n = 5 clients, c = 1 malicious, 4 benign updates in d = 4; n - c - 2 = 2 neighbours,
    # n - 2c - 1 = 2 in the denominator.
    benign = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 2, 0, 0], [0.0, 0, 0, 3]], dtype=torch.float64)
    # two nearest other benign updates: row0 -> 1 + 2; row1 -> 1 + sqrt(5); row2 -> 2 + sqrt(5); row3 -> 3 + sqrt(10)
    nearest = min(3.0, 1 + math.sqrt(5), 2 + math.sqrt(5), 3 + math.sqrt(10))
    expected = nearest / (2 * math.sqrt(4)) + 3.0 / math.sqrt(4)  # largest benign norm is 3
    assert kernels.fang_krum_lambda_bound(benign, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("c", [1, 2, 3])
def test_fang_krum_update_is_selected_by_krum_and_points_against_the_benign_mean(c):
    benign = updates(12, 30, 5, dtype=torch.float32)
    own = updates(c, 30, 6, dtype=torch.float32)
    krum = AGGREGATORS.build({"name": "krum", "f": c})
    crafted = ATTACKS.build("fang_krum").craft_uploads(observation(benign, own, krum))
    assert torch.equal(crafted, crafted[:1].expand(c, -1))
    chosen = krum(torch.cat([crafted, benign]))
    assert torch.equal(chosen, crafted[0])
    _, lam = kernels.fang_krum(benign, c)
    assert lam > 1e-5  # the search stopped on a selected update, not on the threshold
    torch.testing.assert_close(crafted[0], -lam * torch.sign(benign.mean(0)))


def test_fang_krum_needs_two_c_plus_two_clients():
    with pytest.raises(ValueError, match="n >= 2c \\+ 2"):
        kernels.fang_krum(updates(4, 3, 0), 3)


# ----------------------------------------------------------------------- Fang trimmed mean
def test_fang_trimmed_mean_draws_just_beyond_the_benign_extremes():
    benign = torch.tensor([[1.0, -1.0, 2.0, -3.0], [3.0, -2.0, 4.0, 1.0], [2.0, -4.0, -1.0, -1.0]])
    # s = sign(mean) = (+, -, +, -); w_min = (1, -4, -1, -3); w_max = (3, -1, 4, 1)
    lo = torch.tensor([0.5, -1.0, -2.0, 1.0])   # s>0: [w_min/b, w_min] or [b w_min, w_min]; s<0: [w_max, ...]
    hi = torch.tensor([1.0, -0.5, -1.0, 2.0])   # s<0: [w_max, b w_max] (w_max>0) or [w_max, w_max/b]
    crafted = ATTACKS.build("fang_trimmed_mean").craft_uploads(observation(benign, torch.zeros(500, 4), seed=3))
    assert bool(((crafted >= lo) & (crafted <= hi)).all())
    assert torch.allclose(crafted.min(0).values, lo, atol=0.02) and torch.allclose(crafted.max(0).values, hi, atol=0.02)
    again = ATTACKS.build("fang_trimmed_mean").craft_uploads(observation(benign, torch.zeros(500, 4), seed=3))
    assert torch.equal(crafted, again)  # drawn from obs.seed only


def shift_of(spec, aggregator_spec, benign, own):
    """||AGR(crafted + benign) - benign mean|| for one attack."""
    agg = AGGREGATORS.build(aggregator_spec)
    crafted = ATTACKS.build(spec).craft_uploads(observation(benign, own, AGGREGATORS.build(aggregator_spec)))
    return float(torch.linalg.vector_norm(agg(torch.cat([crafted, benign])) - benign.mean(0)))


@pytest.mark.parametrize("aggregator", ["median", {"name": "trimmed_mean", "f": 5}])
def test_fang_trimmed_mean_moves_median_and_trimmed_mean_further_than_ipm_and_alie(aggregator):
    benign, own = updates(15, 50, 7, dtype=torch.float32), updates(5, 50, 8, dtype=torch.float32)
    fang = shift_of("fang_trimmed_mean", aggregator, benign, own)
    assert fang > 1.1 * shift_of("ipm", aggregator, benign, own)
    assert fang > 1.5 * shift_of({"name": "alie", "knowledge": "omniscient"}, aggregator, benign, own)


# -------------------------------------------------------------------- defense-aware scaling
@pytest.mark.parametrize(
    "aggregator", ["median", {"name": "trimmed_mean", "f": 5}, {"name": "krum", "f": 5}, {"name": "multi_krum", "f": 5}, "mean"]
)
def test_defense_aware_scaling_moves_the_aggregate_further_than_fixed_attacks(aggregator):
    benign, own = updates(15, 50, 11, dtype=torch.float32), updates(5, 50, 12, dtype=torch.float32)
    ours = shift_of("defense_aware_scaling", aggregator, benign, own)
    for baseline in ("min_max", "ipm", {"name": "alie", "knowledge": "omniscient"}):
        assert ours >= shift_of(baseline, aggregator, benign, own) * (1 - 1e-6), baseline


def test_defense_aware_scaling_probes_a_copy_of_a_stateful_aggregator():
    benign, own = updates(8, 20, 13, dtype=torch.float32), updates(2, 20, 14, dtype=torch.float32)
    agg = AGGREGATORS.build({"name": "centered_clipping", "tau": 1.0})
    agg(benign)  # the server's state after one round
    before = agg.center.clone()
    attack = ATTACKS.build("defense_aware_scaling")
    _, gamma, shift = attack.search(observation(benign, own, agg))
    assert torch.equal(agg.center, before)
    assert 1e-3 <= gamma <= 1e3 and shift > 0


def test_scale_search_finds_an_interior_maximum():
    gamma, value = kernels.scale_search(lambda g: -(math.log(g) - math.log(3.7)) ** 2, 1e-3, 1e3, 25, 30)
    assert gamma == pytest.approx(3.7, rel=1e-4) and value == pytest.approx(0.0, abs=1e-8)


# -------------------------------------------------------------------------------- backdoors
def test_trigger_position_counts_negative_coordinates_from_the_far_edge():
    assert place((8, 8), (2, 2), (-1, -1)) == (6, 6)
    assert place((28, 28), (1, 4), (0, 0)) == (0, 0)
    assert place((8, 8), (3, 2), (1, -2)) == (1, 5)
    with pytest.raises(ConfigError, match="does not fit"):
        place((8, 8), (3, 3), (6, 0))


def test_pixel_backdoor_stamps_and_relabels_the_requested_fraction():
    attack = ATTACKS.build({"name": "pixel_backdoor", "size": 2, "target": 3, "poison_fraction": 0.25, "value": 0.9})
    data = TensorData(torch.zeros(40, 1, 8, 8), torch.arange(40) % 10)
    out = attack.poison_data(data, torch.Generator().manual_seed(0), 10)
    stamped = (out.x[:, 0, 6:, 6:] == 0.9).all(dim=(1, 2))
    assert int(stamped.sum()) == 10
    assert bool((out.y[stamped] == 3).all()) and torch.equal(out.y[~stamped], data.y[~stamped])
    assert float(out.x[:, 0, :6, :].abs().sum()) == 0.0 and float(out.x[~stamped].abs().sum()) == 0.0
    assert float(data.x.abs().sum()) == 0.0  # the input is not modified
    with pytest.raises(ConfigError, match="target 3 is not a class"):
        attack.poison_data(data, torch.Generator(), 3)


def test_dba_gives_each_malicious_client_its_own_part_of_the_global_trigger():
    attack = ATTACKS.build({"name": "dba", "poison_fraction": 1.0})  # four 1x4 bars, two per row, gap 2
    parts = attack.part_masks((28, 28))
    assert parts.shape == (4, 28, 28) and int(parts.sum()) == 16
    assert int(parts.any(0).sum()) == 16  # disjoint
    rows, cols = parts.any(0).nonzero().T
    assert sorted(set(rows.tolist())) == [0, 3] and sorted(set(cols.tolist())) == [0, 1, 2, 3, 6, 7, 8, 9]
    data = TensorData(torch.zeros(5, 1, 28, 28), torch.ones(5, dtype=torch.long))
    got = [attack.poison_data(data, torch.Generator().manual_seed(i), 10).x[0, 0] > 0 for i in range(5)]
    for i, mask in enumerate(got):
        assert torch.equal(mask, parts[i % 4])
    assert torch.equal(attack.full_mask((28, 28)), parts.any(0))


def test_backdoor_success_rate_counts_only_non_target_inputs():
    class Constant(torch.nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.label), 10).float()

    test = TensorData(torch.zeros(30, 1, 8, 8), torch.arange(30) % 10)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    assert backdoor_success_rate(Constant(2), test, mask, 1.0, target=2) == 1.0
    assert backdoor_success_rate(Constant(5), test, mask, 1.0, target=2) == 0.0


def test_boost_scales_the_honest_update_and_auto_is_n_over_m():
    own = updates(2, 5, 0)
    obs = observation(updates(6, 5, 1), own, omniscient=False)
    torch.testing.assert_close(ATTACKS.build({"name": "pixel_backdoor", "boost": 3.0}).craft_uploads(obs), 3.0 * own)
    torch.testing.assert_close(ATTACKS.build({"name": "dba", "boost": "auto"}).craft_uploads(obs), 4.0 * own)
    assert ATTACKS.build({"name": "dba", "boost": 2.0}).needs == frozenset({"gradient", "delta"})
    assert "ranking" in ATTACKS.build("dba").needs


# ---------------------------------------------------------------------------- end to end
def scenario(attacks=(), **federation):
    data = copy.deepcopy(TINY)
    data["federation"].update(federation)
    data["attacks"] = list(attacks)
    return data


def final_model(data):
    engine = Engine(resolve(validate_schema(data)))
    result = engine.run()
    return engine, result


BACKDOOR_RUN = dict(rounds=10)
BACKDOOR_ALG = {"local_epochs": 2}


def backdoor_scenario(attack, **federation):
    data = scenario([attack] if attack else [], **{**BACKDOOR_RUN, **federation})
    data["algorithm"].update(BACKDOOR_ALG)
    return data


@pytest.mark.parametrize(
    "attack, federation",
    [
        ({"name": "pixel_backdoor", "fraction": 0.25, "size": 2, "poison_fraction": 0.5, "boost": "auto", "start_round": 7}, {}),
        ({"name": "dba", "fraction": 0.25, "parts": 2, "part_shape": [1, 3], "gap": 1, "poison_fraction": 0.3,
          "boost": "auto", "start_round": 7}, {"num_clients": 8}),
    ],
    ids=["pixel_backdoor", "dba"],
)
def test_backdoor_succeeds_without_defense_and_keeps_clean_accuracy(tmp_path, attack, federation):
    _, summary = fllab.run(backdoor_scenario(attack, **federation), tmp_path / "run")
    metrics = summary["metrics"]
    assert metrics[METRIC] > 0.85
    assert metrics["utility.accuracy"] > 0.65
    # the same trigger on a model trained without attack: the baseline the attack must beat
    engine, _ = final_model(backdoor_scenario(None, **federation))
    clean = ATTACKS.build(attack).score_final_model(engine.federation.server_model, engine.federation.test)[METRIC]
    assert clean < 0.3 and metrics[METRIC] > clean + 0.5


def test_norm_clipping_cuts_the_model_replacement_backdoor_on_digits():
    """The boosted update (n/m = 4x) is clipped back to an honest norm; clean accuracy barely moves."""
    attack = {"name": "pixel_backdoor", "fraction": 0.25, "size": 2, "poison_fraction": 0.5, "boost": "auto", "start_round": 7}
    metrics = {}
    for name, aggregator in (("mean", "mean"), ("clipped", {"name": "norm_clipping", "max_norm": 0.5})):
        data = backdoor_scenario(attack)
        data["aggregator"] = aggregator
        metrics[name] = final_model(data)[1].metrics
    assert metrics["mean"][METRIC] > 0.9
    assert metrics["clipped"][METRIC] < metrics["mean"][METRIC] - 0.4
    assert metrics["clipped"]["utility.accuracy"] > metrics["mean"]["utility.accuracy"] - 0.1


@pytest.mark.slow
def test_shipped_backdoor_clipping_sweep(tmp_path):
    """scenarios/poisoning/backdoor_clipping.yaml as shipped: the backdoor succeeds without
    clipping, clipping to 0.5 defeats it, and neither costs more than 2 points of clean accuracy."""
    from fllab.runner import run_sweep
    from fllab.scenario.loader import load_raw

    out, _, _ = run_sweep(load_raw(Path(__file__).resolve().parents[1] / "scenarios" / "poisoning" / "backdoor_clipping.yaml"), tmp_path / "sw")
    with open(out / "results.csv") as fh:
        table = {(r["param:attack"], r["param:defense"]): r for r in csv.DictReader(fh)}
    assert float(table[("backdoor", "no_clipping")][METRIC]) > 0.9
    assert float(table[("backdoor", "clip_0.5")][METRIC]) < 0.3
    for defense in ("no_clipping", "clip_1.0", "clip_0.5"):
        assert abs(float(table[("backdoor", defense)]["poisoning.accuracy_drop"])) < 0.02
    assert float(table[("none", "clip_0.5")]["utility.accuracy"]) > float(table[("none", "no_clipping")]["utility.accuracy"]) - 0.02


E2E_ALGORITHM = {"name": "fedsgd", "lr": 0.5, "batch_size": 32}


@cache
def e2e_accuracy(attack: str | None, knowledge: str | None, aggregator: str, perturbation: str | None = None) -> float:
    spec = {"name": attack, "fraction": 0.3, **({"knowledge": knowledge} if knowledge else {})}
    if perturbation:
        spec["perturbation"] = perturbation
    data = scenario([spec] if attack else [], num_clients=20, rounds=40)
    data["algorithm"] = dict(E2E_ALGORITHM)
    data["aggregator"] = {"krum": {"name": "krum", "f": 6}, "trimmed_mean": {"name": "trimmed_mean", "f": 6}}.get(aggregator, aggregator)
    with tempfile.TemporaryDirectory() as out:
        _, summary = fllab.run(data, Path(out) / "run")
    return summary["metrics"]["utility.accuracy"]


@pytest.mark.parametrize(
    "attack, knowledge, aggregator, drop, perturbation",
    [
        ("alie", "own", "median", 0.05, None),
        ("alie", "omniscient", "median", 0.1, None),
        ("min_max", "omniscient", "median", 0.15, None),
        ("min_max", "own", "median", 0.15, None),
        # on these small digits runs the paper's unit vector is the stronger Min-Sum direction
        # (std: 0.81 against 0.89 clean); the NDSS'21 heat-map setting is the other way round
        ("min_sum", "omniscient", "median", 0.1, "unit_vec"),
        ("ipm", "omniscient", "median", 0.1, None),
        ("fang_trimmed_mean", None, "trimmed_mean", 0.2, None),
        ("defense_aware_scaling", None, "trimmed_mean", 0.2, None),
        ("fang_krum", None, "krum", 0.5, None),
    ],
)
def test_model_poisoning_lowers_accuracy_against_robust_aggregation(attack, knowledge, aggregator, drop, perturbation):
    clean = e2e_accuracy(None, None, aggregator)
    assert clean > 0.8
    assert e2e_accuracy(attack, knowledge, aggregator, perturbation) < clean - drop


FMNIST = {
    "name": "fmnist-backdoor", "seed": 0, "threads": 1,
    "task": {"dataset": {"name": "fashion_mnist", "train_limit": 3000, "test_limit": 1000}, "model": {"name": "mlp", "hidden": [64]}},
    "federation": {"num_clients": 10, "rounds": 20, "partition": {"name": "iid"}},
    "algorithm": {"name": "fedavg", "local_epochs": 2, "batch_size": 32, "lr": 0.1},
    "aggregator": "mean",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack",
    [
        {"name": "pixel_backdoor", "fraction": 0.1, "poison_fraction": 0.5, "boost": "auto", "start_round": 18},
        {"name": "dba", "fraction": 0.4, "poison_fraction": 0.5},
    ],
    ids=["pixel_backdoor_one_attacker_model_replacement", "dba_four_parts"],
)
def test_default_triggers_backdoor_fashion_mnist(tmp_path, attack):
    from fllab.registry import DATASETS

    try:
        DATASETS.build(FMNIST["task"]["dataset"]).files()
    except ConfigError as err:
        pytest.skip(str(err))
    engine, _ = final_model(copy.deepcopy(FMNIST))
    clean_accuracy = engine.server.evaluate()["accuracy"]
    clean_rate = ATTACKS.build(attack).score_final_model(engine.federation.server_model, engine.federation.test)[METRIC]
    _, summary = fllab.run({**copy.deepcopy(FMNIST), "attacks": [attack]}, tmp_path / "run")
    assert clean_rate < 0.2
    assert summary["metrics"][METRIC] > 0.9
    assert summary["metrics"]["utility.accuracy"] > clean_accuracy - 0.05
