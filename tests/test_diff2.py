"""DIFF2 and DP-GD (Murata & Suzuki 2023): the trajectory against a hand-written reference loop,
T = 1 against DP-GD, the noise actually added, the accounted epsilon against a direct Renyi-DP
composition, the canary audits below the accounted epsilon, and bad input."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from opacus.accountants.rdp import RDPAccountant

import fllab
from fllab.algorithms.diff2 import DPGD, Diff2, calibrate, clip_rows, per_sample_gradients
from fllab.cli import main
from fllab.models.flat import load_flat_
from fllab.scenario.build import resolve
from fllab.scenario.loader import validate_schema
from fllab.seeding import derive_seed
from fllab.training.engine import Engine
from fllab.types import ClientTask

DELTA = 1e-5


def scenario(tiny: dict, algorithm: dict, rounds: int = 7) -> dict:
    data = copy.deepcopy(tiny)
    data["task"]["model"]["hidden"] = [16]
    data["federation"].update(num_clients=3, rounds=rounds)
    data["algorithm"] = algorithm
    return data


def engine_run(data: dict) -> tuple[Engine, object]:
    engine = Engine(resolve(validate_schema(data)))
    return engine, engine.run()


# ------------------------------------------------------------------------------- reference
def reference_trajectory(engine: Engine, algorithm: dict, rounds: int) -> torch.Tensor:
    """DIFF2 (Algorithm 1 with the GD routine) written out by hand: per-record gradients by a
    Python loop over records with autograd, clipping by hand, the engine's data, init and the
    clients' noise streams (one standard-normal vector per client and round from its seed)."""
    T = algorithm.get("period", 1)
    C1, L, eta = algorithm["clip"], algorithm.get("clip_diff", 0.0), algorithm["lr"]
    z1 = algorithm["noise_multiplier"]
    z2 = algorithm.get("noise_multiplier_diff", math.sqrt(T) * z1)
    model = engine.federation.model_handle.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(engine.federation.root, "init"))
        x = torch.cat([p.detach().reshape(-1) for p in engine.federation.model_handle.build().parameters()])
    prev, v = None, None

    def grad_at(w: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        load_flat_(model, w)
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    for r in range(rounds):
        msgs, sizes = [], []
        for cid, data in enumerate(engine.federation.client_data):
            n = len(data)
            total = torch.zeros_like(x)
            radius = C1 if r % T == 0 else L * float((x - prev).norm())
            for i in range(n):
                g = grad_at(x, data.x[i], data.y[i])
                if r % T:
                    g = g - grad_at(prev, data.x[i], data.y[i])
                total += g * min(1.0, radius / float(g.norm())) if float(g.norm()) > 0 else g
            gen = torch.Generator().manual_seed(derive_seed(engine.federation.root, "client", cid, r))
            z = z1 if r % T == 0 else z2
            msgs.append(total / n + z * radius / n * torch.randn(x.shape, generator=gen))
            sizes.append(n)
        w = torch.tensor(sizes, dtype=x.dtype)
        agg = (torch.stack(msgs) * w[:, None]).sum(0) / w.sum()  # the scenario's (example-weighted) mean
        v = agg if r % T == 0 else v + agg
        prev, x = x, x - eta * v
    return x


DIFF2 = {"name": "diff2", "period": 3, "clip": 0.5, "clip_diff": 2.0, "lr": 0.5, "noise_multiplier": 0.7}


def test_diff2_follows_the_hand_written_algorithm(tiny):
    algo = dict(DIFF2)
    engine, result = engine_run(scenario(tiny, algo))
    expected = reference_trajectory(engine, algo, 7)
    torch.testing.assert_close(result.final_params, expected, rtol=1e-4, atol=1e-5)


def test_period_one_is_dp_gd_exactly_and_matches_the_reference(tiny):
    common = {"clip": 0.5, "lr": 0.5, "noise_multiplier": 0.7}
    engine, gd = engine_run(scenario(tiny, {"name": "dp_gd", **common}))
    _, d2 = engine_run(scenario(tiny, {"name": "diff2", "period": 1, "clip_diff": 3.0, **common}))
    assert torch.equal(gd.final_params, d2.final_params)
    assert [r["privacy.epsilon"] for r in gd.rounds] == [r["privacy.epsilon"] for r in d2.rounds]
    torch.testing.assert_close(gd.final_params, reference_trajectory(engine, {"name": "dp_gd", **common}, 7), rtol=1e-4, atol=1e-5)
    assert resolve(validate_schema(scenario(tiny, {"name": "diff2", "period": 1}))).algorithm.sends.value == "gradient"
    assert resolve(validate_schema(scenario(tiny, {"name": "diff2", "period": 2}))).algorithm.sends.value == "gradient_difference"


# --------------------------------------------------------------------------------- kernels
def test_per_sample_gradients_and_clipping_match_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    rows, losses = per_sample_gradients(model, flat, x, y)
    for i in range(4):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        torch.testing.assert_close(rows[i], torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        torch.testing.assert_close(losses[i], loss.detach())
    clipped = clip_rows(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]), 1.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    assert torch.equal(clip_rows(torch.tensor([[3.0, 4.0]]), 0.0), torch.zeros(1, 2))


def test_the_noise_added_has_the_std_that_is_accounted(tiny):
    """Two runs of one client's restart round that differ only in the noise seed: their
    difference is N(0, 2 sigma^2) per coordinate with sigma = z C1 / n."""
    engine = Engine(resolve(validate_schema(scenario(tiny, dict(DIFF2)))))
    engine.prepare()
    data, x = engine.federation.client_data[0], engine.server.global_params
    algo, model = engine.setup.algorithm, engine.federation.model_handle.build()
    a, b = (algo.client_update(model, ClientTask(0, 0, x, data, s), torch.Generator().manual_seed(s)).update for s in (1, 2))
    sigma = float((a - b).std()) / math.sqrt(2)
    assert sigma == pytest.approx(DIFF2["noise_multiplier"] * DIFF2["clip"] / len(data), rel=0.05)


# ------------------------------------------------------------------------------ accounting
ORDERS = RDPAccountant.DEFAULT_ALPHAS


def direct_epsilon(releases: list[tuple[float, float]], delta: float) -> float:
    """(epsilon, delta) of a composition of Gaussian releases given as (sensitivity, noise std):
    RDP ``alpha Delta^2 / (2 sigma^2)`` each (Mironov 2017), summed, converted with Balle et al.
    2020 Theorem 21 (Opacus's conversion), minimised over Opacus's default orders."""
    alphas = np.array(ORDERS, dtype=float)
    rdp = sum(alphas * s**2 / (2 * sd**2) for s, sd in releases)
    eps = rdp + np.log1p(-1 / alphas) - (np.log(delta) + np.log(alphas)) / (alphas - 1)
    return float(np.nanmin(eps))


@pytest.mark.parametrize("adjacency,k", [("add_remove", 1.0), ("replace_one", 2.0)])
def test_accounted_epsilon_is_the_direct_rdp_composition(tiny, adjacency, k):
    algo = {**DIFF2, "adjacency": adjacency, "noise_multiplier_diff": 1.3}
    data = scenario(tiny, algo, rounds=8)
    data["federation"]["num_clients"] = 2
    engine, result = engine_run(data)
    n = min(len(d) for d in engine.federation.client_data)
    C1, z1, z2, T = algo["clip"], algo["noise_multiplier"], algo["noise_multiplier_diff"], algo["period"]
    releases = []
    for r, record in enumerate(result.rounds):
        # the difference radius C2_r cancels: sensitivity k C2 / n against std z2 C2 / n
        C2 = 0.37 * (r + 1)
        releases.append((k * C1 / n, z1 * C1 / n) if r % T == 0 else (k * C2 / n, z2 * C2 / n))
        assert record["privacy.epsilon"] == pytest.approx(direct_epsilon(releases, DELTA), rel=1e-9)
        assert record["privacy.delta"] == DELTA
    assert result.metrics["privacy.epsilon"] == result.rounds[-1]["privacy.epsilon"]


@pytest.mark.parametrize("period", [1, 4])
def test_target_epsilon_is_met_from_below_with_the_papers_split(period):
    z1, z2 = calibrate(3.0, DELTA, 40, period, "add_remove")
    assert z2 == pytest.approx(math.sqrt(period) * z1)
    restarts = -(-40 // period)
    eps = direct_epsilon([(1.0, z1)] * restarts + [(1.0, z2)] * (40 - restarts), DELTA)
    assert 0.98 * 3.0 <= eps <= 3.0


# ----------------------------------------------------------------------------------- audits
# A setting in which the audits have power: 2 clients of ~90 digits each, a wide MLP that full-batch
# GD fits closely, 40 uniform-noise canaries (a random half planted in client 0's data) scored by
# the final model's loss (one-run audit, 8 + 8 guesses), beside an outsider loss attack on client
# records (Jagielski et al. bound).  Without noise the one-run audit proves epsilon > 1; with the
# noise calibrated to epsilon = 1 neither bound may exceed 1.
LEAKY = {"clip": 10.0, "lr": 0.5}


def audited(tiny: dict, algorithm: dict) -> dict:
    data = scenario(tiny, algorithm, rounds=100)
    data["federation"]["num_clients"] = 2
    data["task"]["dataset"]["test_fraction"] = 0.9
    data["task"]["model"]["hidden"] = [128]
    data["attacks"] = [
        {"name": "canary_audit", "canaries": 40, "kind": "noise", "client": 0, "guess_members": 8, "guess_nonmembers": 8},
        {"name": "loss", "members": 60},
    ]
    data["evaluation"] = {"every": 100}
    return data


AUDITED = [
    ({"name": "dp_gd", **LEAKY, "target_epsilon": 1.0}, False),
    ({"name": "diff2", "period": 4, "clip_diff": 1.0, **LEAKY, "target_epsilon": 1.0}, False),
    ({"name": "dp_gd", **LEAKY, "noise_multiplier": 0.01}, True),
    ({"name": "diff2", "period": 4, "clip_diff": 1.0, **LEAKY, "noise_multiplier": 0.01}, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,leaky", AUDITED)
def test_audited_lower_bounds_never_exceed_the_accounted_epsilon(tiny, tmp_path, algorithm, leaky):
    """Both audits stay below the accounted epsilon; in the same setting without noise the one-run
    audit exceeds the epsilon = 1 that the noisy runs account, so an accounting (or a noise
    implementation) that claimed 1 there would be caught."""
    _, summary = fllab.run(audited(tiny, algorithm), tmp_path / "run")
    m = summary["metrics"]
    for bound in ("privacy.epsilon_lower_bound", "privacy.epsilon_lower_bound_one_run"):
        assert 0.0 <= m[bound] <= m["privacy.epsilon"], (bound, m)
    if leaky:
        assert m["privacy.epsilon_lower_bound_one_run"] > 1.0, m
    else:
        assert m["privacy.epsilon"] <= 1.0


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("override,field", [
    ("algorithm.period=0", "period"),
    ("algorithm.clip=0", "clip"),
    ("algorithm.clip_diff=-1", "clip_diff"),
    ("algorithm.target_epsilon=0", "target_epsilon"),
    ("algorithm.noise_multiplier=0", "noise_multiplier"),
    ("federation.clients_per_round=2", "clients_per_round"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, write_yaml, override, field):
    path = write_yaml(scenario(tiny, dict(DIFF2)))
    res = CliRunner().invoke(main, ["validate", str(path), "--set", override])
    assert res.exit_code == 2, res.output
    lines = [line for line in (res.stderr or res.output).splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines


def test_a_second_accountant_is_refused(tiny, write_yaml):
    data = scenario(tiny, {"name": "dp_gd"})
    data["defenses"] = [{"name": "dp_fedavg", "noise_multiplier": 1.0, "clip": 1.0}]
    res = CliRunner().invoke(main, ["validate", str(write_yaml(data))])
    assert res.exit_code == 2 and "accounts its own privacy" in (res.stderr or res.output)


def test_classes_are_registered_with_their_kinds():
    assert Diff2.registry_name == "diff2" and DPGD.registry_name == "dp_gd"
    assert Diff2.sends.value == "gradient_difference" and DPGD.sends.value == "gradient"
