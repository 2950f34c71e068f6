"""Membership inference: metric kernels against sklearn, statistic kernels against the reference
implementations' formulas, the vectorized ensemble against separate trainings, and every attack
against its no-information baseline (AUC 0.5) on real data (sklearn digits)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from fllab.attacks.membership import (
    LiRA,
    LossAttack,
    PopulationAttack,
    ShadowAttack,
    UpdateCosine,
    UpdateGradNorm,
    UpdateLoss,
    balanced_masks,
    client_weights,
    ensemble_logits,
    init_ensemble,
    model_logits,
    per_example_gradients,
    train_ensemble,
    tune_offline_a,
)
from fllab.attacks.membership import kernels
from fllab.models.victim import VictimModel
from fllab.errors import CapabilityError, ConfigError
from fllab.metrics.membership import auc, membership_metrics, roc_curve, tpr_at_fpr
from fllab.models.flat import flatten_params, load_flat_
from fllab.models.mlp import MLP
from fllab.registry import ATTACKS
from fllab.seeding import torch_gen
from fllab.algorithms.fedavg import FedAvg, FedSGD
from fllab.training.local import sgd_train, steps_for
from fllab.types import ClientTask, ModelHandle, ModelObservation, TensorData, UpdateKind, UpdateObservation

# ------------------------------------------------------------------------------------ metrics


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=60).filter(
        lambda rows: 0 < sum(m for _, m in rows) < len(rows)
    )
)
def test_roc_and_auc_equal_sklearn_with_ties(rows):
    scores = np.array([s for s, _ in rows], dtype=np.float64) / 3.0  # few values: many ties
    member = np.array([m for _, m in rows])
    fpr, tpr, thr = roc_curve(scores, member)
    ref_fpr, ref_tpr, ref_thr = sklearn.metrics.roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr)
    np.testing.assert_allclose(thr.numpy()[1:], ref_thr[1:])
    assert math.isinf(thr[0]) and thr[0] > 0
    assert auc(scores, member) == pytest.approx(sklearn.metrics.roc_auc_score(member, scores), abs=1e-12)


def test_tpr_at_fpr_takes_the_best_threshold_within_the_budget():
    g = torch.Generator().manual_seed(0)
    member = torch.arange(4000) < 2000
    scores = torch.randn(4000, generator=g, dtype=torch.float64) + 0.8 * member
    fpr, tpr, _ = sklearn.metrics.roc_curve(member.numpy(), scores.numpy(), drop_intermediate=False)
    for target in (0.0, 0.001, 0.01, 0.1):
        assert tpr_at_fpr(scores, member, target) == pytest.approx(tpr[fpr <= target].max(), abs=1e-12)
    # exact case: members 3, 2; non-members 2.5, 1 -> at FPR 0 only the 3 is caught
    assert tpr_at_fpr([3.0, 2.0, 2.5, 1.0], [True, True, False, False], 0.0) == 0.5
    assert tpr_at_fpr([3.0, 2.0, 2.5, 1.0], [True, True, False, False], 0.5) == 1.0


def test_membership_metrics_names_and_values():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    member = torch.tensor([True, False, True, True, False, False])
    out = membership_metrics(scores, member)
    assert set(out) == {"membership.auc", "membership.tpr_at_0.001_fpr", "membership.tpr_at_0.01_fpr"}
    assert out["membership.auc"] == pytest.approx(sklearn.metrics.roc_auc_score(member.numpy(), scores.numpy()))
    assert out["membership.tpr_at_0.01_fpr"] == pytest.approx(1 / 3)  # only the top score before the first FP


def test_metrics_refuse_one_class_and_bad_input():
    with pytest.raises(ValueError, match="both members and non-members"):
        auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="scores for"):
        auc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="finite"):
        auc([0.1, float("nan")], [True, False])


# --------------------------------------------------------------------------------- kernels


def test_logit_confidence_is_log_odds_of_the_true_class_and_stable():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (50,), generator=g)
    p = torch.softmax(logits, -1).gather(-1, y.expand(3, 50).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(kernels.logit_confidence(logits, y), torch.log(p / (1 - p)))
    # a confident prediction keeps its precision where 1 - p underflows
    confident = torch.tensor([[60.0, 0.0, 0.0]])
    assert kernels.logit_confidence(confident, torch.tensor([0])).item() == pytest.approx(60 - math.log(2), rel=1e-12)
    torch.testing.assert_close(kernels.true_class_probability(logits, y), p)


def test_masked_median_and_std_match_numpy():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(9, 40, generator=g, dtype=torch.float64)
    m = torch.rand(9, 40, generator=g) < 0.5
    m[:, 0] = False
    m[:2, 0] = True  # an even count
    m[:, 1] = False
    m[4, 1] = True  # a single value
    med, sd = kernels.masked_median(v, m), kernels.masked_std(v, m)
    for j in range(40):
        vals = v[:, j][m[:, j]].numpy()
        if vals.size == 0:
            assert torch.isnan(med[j])
            continue
        assert med[j].item() == pytest.approx(np.median(vals))
        assert sd[j].item() == pytest.approx(np.std(vals))


def _reference_lira(keep, scores, target, online, fix_variance):
    """Carlini et al.'s ``generate_ours`` / ``generate_ours_offline`` for one query per record,
    with the paper's one-sided offline test and separate global sigmas."""
    dat_in = [scores[keep[:, j], j] for j in range(scores.shape[1])]
    dat_out = [scores[~keep[:, j], j] for j in range(scores.shape[1])]
    mu_out = np.array([np.median(d) for d in dat_out])
    sd_out = np.full(len(dat_out), np.std(np.concatenate(dat_out))) if fix_variance else np.array([np.std(d) for d in dat_out])
    if not online:
        return scipy.stats.norm.logcdf(target, mu_out, sd_out + 1e-30)
    mu_in = np.array([np.median(d) for d in dat_in])
    sd_in = np.full(len(dat_in), np.std(np.concatenate(dat_in))) if fix_variance else np.array([np.std(d) for d in dat_in])
    return scipy.stats.norm.logpdf(target, mu_in, sd_in + 1e-30) - scipy.stats.norm.logpdf(target, mu_out, sd_out + 1e-30)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fix_variance", [True, False])
def test_lira_statistics_match_the_reference_formulas(online, fix_variance):
    g = torch.Generator().manual_seed(3)
    k, n = 16, 200
    inside = balanced_masks(k, n, 0.5, g) if online else torch.zeros(k, n, dtype=torch.bool)
    ref = torch.randn(k, n, generator=g, dtype=torch.float64) + 2.0 * inside
    target = torch.randn(n, generator=g, dtype=torch.float64) + 1.0
    stat = kernels.lira_online if online else kernels.lira_offline
    got = stat(target, ref, inside, fix_variance)
    want = _reference_lira(inside.numpy(), ref.numpy(), target.numpy(), online, fix_variance)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_balanced_masks_put_every_record_in_the_same_number_of_models():
    masks = balanced_masks(16, 300, 0.5, torch.Generator().manual_seed(4))
    assert (masks.sum(0) == 8).all()
    assert 100 < masks.sum(1).float().mean() < 200 and masks.sum(1).min() > 0
    with pytest.raises(ValueError, match="pkeep"):
        balanced_masks(4, 10, 1.0, torch.Generator())


def test_rmia_statistic_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(5)
    k, n, m = 6, 50, 80
    p_target_x = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    p_target_z = torch.rand(m, generator=g, dtype=torch.float64) * 0.9 + 0.05
    ref_x = torch.rand(k, n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    ref_z = torch.rand(k, m, generator=g, dtype=torch.float64) * 0.9 + 0.05
    in_x, in_z = torch.zeros(k, n, dtype=torch.bool), balanced_masks(k, m, 0.5, g)
    a, gamma = 0.3, 1.5
    got = kernels.rmia_scores(
        p_target_x / kernels.rmia_marginal(ref_x, in_x, False, a), p_target_z / kernels.rmia_marginal(ref_z, in_z, False, a), gamma
    )
    # privacy_meter's run_rmia: OUT means, the linear IN approximation, and the explicit pairwise count
    out_x = ref_x.numpy().mean(0)
    out_z = np.array([ref_z.numpy()[~in_z.numpy()[:, j], j].mean() for j in range(m)])
    ratio_x = p_target_x.numpy() / ((1 + a) / 2 * out_x + (1 - a) / 2)
    ratio_z = p_target_z.numpy() / ((1 + a) / 2 * out_z + (1 - a) / 2)
    want = np.mean(ratio_x[:, None] / ratio_z[None, :] > gamma, axis=1)
    np.testing.assert_allclose(got.numpy(), want)
    # online: plain mean over all references
    on = kernels.rmia_marginal(ref_z, in_z, True, None)
    torch.testing.assert_close(on, ref_z.mean(0))


def test_tune_offline_a_picks_from_the_grid_and_needs_three_references():
    g = torch.Generator().manual_seed(6)
    inside = balanced_masks(8, 300, 0.5, g)
    ref_p = (0.5 + 0.3 * inside + 0.1 * torch.rand(8, 300, generator=g, dtype=torch.float64)).clamp(max=1.0)
    a = tune_offline_a(ref_p, inside, gamma=1.0)
    assert a in [i / 10 for i in range(11)]
    with pytest.raises(ValueError, match="at least 3"):
        tune_offline_a(ref_p[:2], balanced_masks(2, 300, 0.5, g), gamma=1.0)


def test_population_scores_are_conformal_p_values():
    pop = torch.tensor([0.1, 0.5, 0.5, 2.0])
    cand = torch.tensor([0.05, 0.5, 3.0])
    # p = (1 + #{pop <= loss}) / (1 + 4)
    torch.testing.assert_close(kernels.population_scores(cand, pop), 1 - torch.tensor([1, 4, 5], dtype=torch.float64) / 5)


# ------------------------------------------------------------------------------- ensemble

DIGITS_SHAPE = (1, 8, 8)


def mlp_build(hidden: int = 128):
    return lambda: MLP(MLP.Params(hidden=[hidden])).build(DIGITS_SHAPE, 10)


@pytest.fixture(scope="module")
def digits() -> TensorData:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, *DIGITS_SHAPE)
    return TensorData(x, torch.tensor(d.target, dtype=torch.long))


def gelu_mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.GELU(), torch.nn.Linear(16, 10))


ENSEMBLE_MODELS = {
    "relu": mlp_build(32),
    "sigmoid": lambda: MLP(MLP.Params(hidden=[16, 8], activation="sigmoid")).build(DIGITS_SHAPE, 10),
    "tanh": lambda: MLP(MLP.Params(hidden=[16], activation="tanh")).build(DIGITS_SHAPE, 10),
    "leaky_relu": lambda: MLP(MLP.Params(hidden=[16], activation="leaky_relu")).build(DIGITS_SHAPE, 10),
    "softmax_regression": lambda: MLP(MLP.Params(hidden=[])).build(DIGITS_SHAPE, 10),
    "gelu_vmap": gelu_mlp,  # no stacked kernel for GELU: the vmap path
}


def test_stacked_kernels_cover_the_mlp_zoo_and_fall_back_to_vmap(digits):
    from fllab.models.victim import VictimModel
    from fllab.training.stacked import StackedMLP

    for name, build in ENSEMBLE_MODELS.items():
        model = VictimModel(build, digits.x.device, digits.x.dtype)
        chosen = StackedMLP.of(model, init_ensemble(build, 2, 0), digits.x, digits.y)
        assert (chosen is None) == (name == "gelu_vmap"), name


@pytest.mark.parametrize("model", list(ENSEMBLE_MODELS))
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 1e-3)])
def test_ensemble_member_equals_a_separately_trained_model(digits, model, momentum, weight_decay):
    """Model k of the ensemble follows sgd_train on its own subset with the same init and batches;
    subsets of different sizes (different step counts, partial batches) included; both gradient
    paths (the stacked kernels of the MLP zoo, vmap for anything else)."""
    build = ENSEMBLE_MODELS[model]
    pool = digits.subset(range(120))
    masks = balanced_masks(4, 120, 0.5, torch_gen(0, "masks"))
    masks[3, :] = False
    masks[3, :7] = True  # a tiny subset: fewer steps, one partial batch per epoch
    ens = train_ensemble(build, pool.x, pool.y, masks, epochs=2, batch_size=16, lr=0.1, seed=11, momentum=momentum, weight_decay=weight_decay)
    init = init_ensemble(build, 4, 11)
    for k in range(4):
        model = load_flat_(build(), init[k])
        members = masks[k].nonzero().squeeze(1)
        steps = steps_for(members.numel(), 16, 2, None)
        sgd_train(
            model, pool.subset(members), steps=steps, batch_size=16, lr=0.1, momentum=momentum, weight_decay=weight_decay,
            gen=torch_gen(11, "ensemble", "batches", k),
        )
        torch.testing.assert_close(ens.params[k], flatten_params(model), rtol=0, atol=1e-4)
    logits = ensemble_logits(ens, pool.x[:10])
    assert logits.shape == (4, 10, 10)
    torch.testing.assert_close(logits[2], model_logits(ens.model, ens.params[2], pool.x[:10]))


def test_ensemble_refuses_bad_shapes(digits):
    with pytest.raises(ValueError, match="masks must be"):
        train_ensemble(mlp_build(8), digits.x[:10], digits.y[:10], torch.ones(2, 9, dtype=torch.bool), epochs=1, batch_size=4, lr=0.1, seed=0)
    with pytest.raises(ValueError, match="at least one training record"):
        train_ensemble(mlp_build(8), digits.x[:10], digits.y[:10], torch.zeros(2, 10, dtype=torch.bool), epochs=1, batch_size=4, lr=0.1, seed=0)


# ----------------------------------------------------------------------- outsider attacks

HANDLE = ModelHandle(mlp_build(128), DIGITS_SHAPE, 10)


def train_target(data: TensorData, epochs: float, seed: int, hidden: int = 128) -> torch.Tensor:
    """The victim: an MLP trained alone with the engine's local trainer (not the ensemble code)."""
    build = mlp_build(hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    sgd_train(
        model, data, steps=steps_for(len(data), 32, epochs, None), batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
        gen=torch_gen(seed, "target"),
    )
    return flatten_params(model)


@pytest.fixture(scope="module")
def outsider_setting(digits):
    """100 members (the target's whole training set, trained to overfit), 100 non-members and a
    disjoint population of 400 records; returns (observation, candidates, is_member)."""
    perm = torch.randperm(len(digits), generator=torch_gen(0, "split"))
    members, non_members, population = perm[:100], perm[100:200], perm[200:600]
    params = train_target(digits.subset(members), epochs=60, seed=1)
    obs = ModelObservation(HANDLE, params, digits.subset(population))
    candidates = digits.subset(torch.cat([members, non_members]))
    return obs, candidates, torch.arange(200) < 100


def attack_auc(name: str, setting, **params) -> float:
    obs, candidates, truth = setting
    attack = ATTACKS.build({"name": name, **params})
    scores = attack.score(obs, candidates, seed=7)
    assert scores.shape == (len(candidates),) and scores.dtype == torch.float64
    return auc(scores, truth)


def test_loss_attack_beats_guessing(outsider_setting):
    assert attack_auc("loss", outsider_setting) > 0.6


def test_population_attack_ranks_like_the_loss_attack_with_calibrated_scores(outsider_setting):
    obs, candidates, truth = outsider_setting
    scores = ATTACKS.build("population").score(obs, candidates, seed=0)
    assert auc(scores, truth) == pytest.approx(attack_auc("loss", outsider_setting), abs=0.01)
    # calibration: thresholding at 1 - alpha flags about alpha of the non-members
    flagged = (scores[~truth] >= 0.9).float().mean().item()
    assert flagged <= 0.2


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_lira_with_8_references_beats_guessing_and_the_loss_attack(outsider_setting, mode):
    lira = attack_auc("lira", outsider_setting, mode=mode, num_models=8, epochs=60)
    assert lira > 0.6
    if mode == "online":
        assert lira > attack_auc("loss", outsider_setting)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_rmia_beats_guessing(outsider_setting, mode):
    assert attack_auc("rmia", outsider_setting, mode=mode, num_models=8, epochs=60) > 0.6


def test_shadow_attack_beats_guessing(outsider_setting):
    assert attack_auc("shadow", outsider_setting, num_models=4, epochs=60) > 0.6


def test_reference_attacks_are_reproducible_and_seed_dependent(outsider_setting):
    obs, candidates, _ = outsider_setting
    attack = ATTACKS.build({"name": "lira", "num_models": 2, "epochs": 2, "mode": "offline"})
    a, b = attack.score(obs, candidates, seed=3), attack.score(obs, candidates, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, attack.score(obs, candidates, seed=4))


def test_outsider_attacks_refuse_the_server_position():
    with pytest.raises(ConfigError, match="position"):
        ATTACKS.build({"name": "lira", "position": "server"})
    with pytest.raises(ConfigError, match="position"):
        ATTACKS.build({"name": "update_cosine", "position": "outsider"})


@pytest.mark.slow
def test_lira_with_16_references_reaches_5_percent_tpr_at_1_percent_fpr(digits):
    """The issue's target on a setting that trains for real: four target MLPs (64-128-10, 60
    epochs of SGD with momentum, ~95% test accuracy), each on a random half of 1,000 candidate
    digits; online LiRA with 16 references trained as one ensemble on random halves of the
    candidates plus 97 population digits (so references and targets see ~500 records each);
    scores pooled over the targets (2,000 non-members: 1% FPR is 20 false positives).
    Measured: TPR 6.55% at 1% FPR, 1.8% at 0.1%, AUC 0.604 (loss attack: 1.95%, AUC 0.528)."""
    perm = torch.randperm(len(digits), generator=torch_gen(0, "split"))
    population, pool = perm[:97], perm[97:1097]
    candidates = digits.subset(pool)
    lira = LiRA(LiRA.Params(num_models=16, epochs=60))
    scores, truth = [], []
    for t in range(4):
        member = torch.zeros(len(pool), dtype=torch.bool)
        member[torch.randperm(len(pool), generator=torch_gen(t, "members"))[: len(pool) // 2]] = True
        params = train_target(candidates.subset(member.nonzero().squeeze(1)), epochs=60, seed=100 + t)
        obs = ModelObservation(HANDLE, params, digits.subset(population))
        scores.append(lira.score(obs, candidates, seed=t))
        truth.append(member)
    metrics = membership_metrics(torch.cat(scores), torch.cat(truth))
    assert metrics["membership.tpr_at_0.01_fpr"] >= 0.05, metrics


# ------------------------------------------------------------------------- server attacks


@pytest.fixture(scope="module")
def fl_round(digits):
    """Ten clients with 40 digits each at the start of training (round 0, random global MLP);
    each client's FedSGD gradient and FedAvg delta, and 40 non-member digits per client."""
    perm = torch.randperm(len(digits), generator=torch_gen(0, "fl"))
    clients = [perm[40 * i : 40 * (i + 1)] for i in range(10)]
    outsiders = [perm[400 + 40 * i : 440 + 40 * i] for i in range(10)]
    global_params = init_ensemble(HANDLE.build, 1, seed=5)[0]
    uploads = {}
    for algo in (FedSGD(FedSGD.Params(lr=0.1)), FedAvg(FedAvg.Params(local_epochs=1, batch_size=10, lr=0.05))):
        ups = []
        for c, idx in enumerate(clients):
            model = load_flat_(HANDLE.build(), global_params)
            task = ClientTask(c, 0, global_params, digits.subset(idx), seed=c)
            ups.append(algo.client_update(model, task, torch_gen(0, "client", c)).update)
        uploads[algo.sends] = (torch.stack(ups), algo.public_hyper(40))
    return global_params, clients, outsiders, uploads


def mean_client_auc(digits, fl_round, name: str, kind: UpdateKind, aggregate: bool, **params) -> float:
    """AUC of one client's members vs as many outsiders, averaged over the ten clients."""
    global_params, clients, outsiders, uploads = fl_round
    ups, hyper = uploads[kind]
    attack = ATTACKS.build({"name": name, **params})
    aucs = []
    for c in range(10):
        update = ups.mean(0) if aggregate else ups[c]
        obs = UpdateObservation(0, c, HANDLE, global_params, update, kind, hyper)
        candidates = digits.subset(torch.cat([clients[c], outsiders[c]]))
        aucs.append(auc(attack.score(obs, candidates, seed=0), torch.arange(80) < 40))
    return float(np.mean(aucs))


@pytest.mark.parametrize("kind", [UpdateKind.GRADIENT, UpdateKind.DELTA])
def test_update_cosine_finds_one_clients_members_and_not_in_the_mean_of_ten(digits, fl_round, kind):
    one = mean_client_auc(digits, fl_round, "update_cosine", kind, aggregate=False)
    mean_of_ten = mean_client_auc(digits, fl_round, "update_cosine", kind, aggregate=True)
    assert one > 0.65
    assert 0.4 < mean_of_ten < 0.6 and one - mean_of_ten > 0.1


@pytest.mark.parametrize("name", ["update_loss", "update_gradnorm"])
def test_calibrated_update_signals_beat_guessing_on_one_clients_update(digits, fl_round, name):
    """Measured on this fixture: loss 0.70 calibrated / 0.63 raw; gradient norm 0.66 / 0.55."""
    calibrated = mean_client_auc(digits, fl_round, name, UpdateKind.DELTA, aggregate=False)
    raw = mean_client_auc(digits, fl_round, name, UpdateKind.DELTA, aggregate=False, calibrated=False)
    assert calibrated > 0.6 and calibrated > raw > 0.5


def test_scores_combine_over_rounds(digits, fl_round):
    """A second round of the same client: the mean of the per-round scores, or of standardized ones."""
    global_params, clients, outsiders, uploads = fl_round
    ups, hyper = uploads[UpdateKind.GRADIENT]
    next_global = global_params - 0.1 * ups.mean(0)
    model = load_flat_(HANDLE.build(), next_global)
    second = FedSGD(FedSGD.Params(lr=0.1)).client_update(model, ClientTask(0, 1, next_global, digits.subset(clients[0]), 1), torch_gen(1, "c")).update
    rounds = [
        UpdateObservation(0, 0, HANDLE, global_params, ups[0], UpdateKind.GRADIENT, hyper),
        UpdateObservation(1, 0, HANDLE, next_global, second, UpdateKind.GRADIENT, hyper),
    ]
    candidates = digits.subset(torch.cat([clients[0], outsiders[0]]))
    for combine in ("mean", "zscore"):
        attack = ATTACKS.build({"name": "update_cosine", "combine": combine})
        per_round = torch.stack([attack.score(obs, candidates, seed=0) for obs in rounds])
        combined = attack.score_rounds(rounds, candidates, seed=0)
        want = per_round.mean(0) if combine == "mean" else kernels.standardize(per_round).mean(0)
        torch.testing.assert_close(combined, want)
        assert auc(combined, torch.arange(80) < 40) > 0.6


def test_update_helpers(digits):
    build = mlp_build(16)
    victim = VictimModel(build, torch.device("cpu"), torch.float32)
    w = init_ensemble(build, 1, 0)[0]
    grads = per_example_gradients(victim, w, digits.x[:5], digits.y[:5])
    for i in range(5):  # against autograd, one record at a time
        model = load_flat_(build(), w)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.x[i : i + 1]), digits.y[i : i + 1]).backward()
        torch.testing.assert_close(grads[i], torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    hyper = FedSGD(FedSGD.Params(lr=0.5)).public_hyper(5)
    g = torch.ones_like(w)
    assert torch.equal(client_weights(UpdateObservation(0, 0, HANDLE, w, g, UpdateKind.GRADIENT, hyper)), w - 0.5 * g)
    assert torch.equal(client_weights(UpdateObservation(0, 0, HANDLE, w, g, UpdateKind.DELTA, hyper)), w + g)
    with pytest.raises(CapabilityError, match="ranking"):
        client_weights(UpdateObservation(0, 0, HANDLE, w, g, UpdateKind.RANKING, hyper))


def test_every_membership_attack_declares_what_describe_needs():
    for name in ("loss", "population", "shadow", "lira", "rmia", "update_cosine", "update_loss", "update_gradnorm"):
        cls = ATTACKS[name]
        assert cls.family == "membership" and cls.summary and cls.threat_model and cls.references and cls.needs
        assert hasattr(cls, "score")
    assert ATTACKS["update_cosine"].needs == frozenset({"gradient", "delta"})
    for cls in (LossAttack, PopulationAttack, ShadowAttack, LiRA, UpdateCosine, UpdateLoss, UpdateGradNorm):
        assert cls.Params().position in ("outsider", "server")
