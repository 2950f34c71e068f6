"""DIFF2 and DP-GD: differentially private full-batch optimisation with Renyi-DP accounting.

Murata & Suzuki 2023, "DIFF2: Differential Private Optimization via Gradient Differences for
Nonconvex Distributed Learning", ICML (arXiv:2302.03884), Algorithm 1 with the GD routine
(Algorithm 3).  Every client ``p`` holds ``n_p`` records and takes part in every round.

* **Restart rounds** (``r % T == 0``, rounds counted from 0): client ``p`` sends the clipped mean
  of its per-record gradients at the current iterate plus Gaussian noise,
  ``d_p = ClippedMean({grad l(x_{r-1}, z)}, C1) + N(0, sigma1^2 I)``, and the server restarts its
  estimate ``v_r = mean_p d_p``.
* **Other rounds**: client ``p`` sends the clipped mean of its per-record gradient *differences*
  between the last two iterates, ``ClippedMean({grad l(x_{r-1}, z) - grad l(x_{r-2}, z)}, C2_r) +
  N(0, sigma2_r^2 I)``, and the server accumulates ``v_r = v_{r-1} + mean_p d_p``.
* GD routine: ``x_r = x_{r-1} - eta v_r``.

``ClippedMean({g_i}, C) = (1/n) sum_i g_i min(1, C / ||g_i||)``.  The difference clip radius is
tied to the step length, as in the paper's analysis: for an L-smooth per-record loss
``||grad l(x_{r-1}, z) - grad l(x_{r-2}, z)|| <= L ||x_{r-1} - x_{r-2}||``, so round ``r`` clips to
``C2_r = clip_diff * ||x_{r-1} - x_{r-2}||`` (``clip_diff`` plays L; with the true L nothing is
clipped).  ``x_{r-1}`` and ``x_{r-2}`` are public (post-processing of earlier noisy releases), so a
data-independent radius; the noise scales with it, ``sigma2_r = z2 C2_r / n_p``, which is what makes
the gradient-difference estimator's variance small when the steps are small.  With ``T = 1`` every
round is a restart: DP-GD (registered as ``dp_gd``).

**Privacy (per client, against the server and everyone else).**  Each client adds its own noise
(the paper's setting), so each client's messages are a composition of Gaussian mechanisms on its
own records.  The clipped sum has L2 sensitivity ``C`` when one record is added or removed, ``2C``
when one is replaced; the client divides it by its record count ``n_p``, which the protocol makes
public (it is sent as the aggregation weight), so the clipped mean has sensitivity ``k C / n_p``
(``k = 1`` add/remove, ``2`` replace-one; ``adjacency``).  The noise std is ``z C / n_p``, i.e.
noise multiplier ``z / k`` relative to the sensitivity, and one release has Renyi DP
``alpha k^2 / (2 z^2)`` at every order ``alpha`` (Mironov 2017, Proposition 7).  After ``R`` rounds
with ``R1 = ceil(R / T)`` restarts and ``R2 = R - R1`` difference rounds the composition is
``alpha k^2 (R1 / z1^2 + R2 / z2^2) / 2``, converted to (epsilon, delta) by Opacus's RDP accountant
(Balle et al. 2020, Theorem 21; :class:`fllab.privacy.PrivacyLedger` with sample rate 1).  The
per-round ``privacy.epsilon`` is that of the rounds run so far, the same for every client.

``target_epsilon`` calibrates the pair with the paper's split, ``z1 = c sqrt(R / T)`` and
``z2 = c sqrt(R)`` (its choice of ``sigma1 ~ C1 sqrt(R/T log(1/delta)) / (n eps)`` and ``sigma2 ~ C2
sqrt(R log(1/delta)) / (n eps)``, so restarts and differences spend about half the budget each),
solving for ``c`` through Opacus's calibration of the equivalent single Gaussian mechanism.

Departures from the paper: the last iterate is evaluated (the paper's analysis returns a uniformly
drawn iterate); the server reduces the uploads with the scenario's aggregator (``mean``, weighted by
``n_p``: the paper's ``(1/P) sum_p`` when every client holds the same number of records).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..defenses.dp_train import check_dp_model
from ..models.flat import param_shapes, unflatten
from ..privacy import PrivacyLedger, noise_for_target_epsilon
from ..privacy.accounting import OneNoiseSource, OrderNote
from ..registry import ALGORITHMS
from ..state import AttrState
from ..types import ClientResult, ClientTask, ModelHandle, PublicHyperParams, TensorData, UpdateKind

Adjacency = Literal["add_remove", "replace_one"]

#: L2 sensitivity of a clipped sum, in units of the clip radius, per neighbouring relation.
SENSITIVITY = {"add_remove": 1.0, "replace_one": 2.0}

#: Full-gradient noise multiplier when neither ``noise_multiplier`` nor ``target_epsilon`` is set.
DEFAULT_NOISE_MULTIPLIER = 1.0

#: Records per vectorised per-sample-gradient chunk (bounds memory to CHUNK x model size).
CHUNK = 256


# ------------------------------------------------------------------------------------ kernels
def per_sample_gradients(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record gradients ``(m, d)`` of the cross-entropy at the flat weights ``flat``, and the
    per-record losses ``(m,)`` (``torch.func``: one vectorised pass, no Python loop over records)."""
    shapes = param_shapes(model)
    params = unflatten(flat, shapes)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[name].reshape(x.shape[0], -1) for name, _ in shapes], dim=1), losses


def clip_rows(rows: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``radius``: ``g min(1, radius / ||g||)`` (a zero radius
    gives zero rows; a zero row stays zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * torch.where(norms > radius, radius / norms.clamp_min(torch.finfo(rows.dtype).tiny), torch.ones_like(norms))


def clipped_mean_gradient(
    model: nn.Module, data: TensorData, at: torch.Tensor, radius: float, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """The paper's ClippedMean over the client's records of the per-record gradients at ``at``
    (``previous`` None) or of the per-record differences ``grad l(at, z) - grad l(previous, z)``;
    and the mean loss at ``at``."""
    total = torch.zeros_like(at)
    loss_sum = torch.zeros((), dtype=at.dtype, device=at.device)
    n = len(data)
    for start in range(0, n, CHUNK):
        x, y = data.x[start : start + CHUNK], data.y[start : start + CHUNK]
        rows, losses = per_sample_gradients(model, at, x, y)
        if previous is not None:
            rows = rows - per_sample_gradients(model, previous, x, y)[0]
        total += clip_rows(rows, radius).sum(0)
        loss_sum += losses.detach().sum()
    return total / n, float(loss_sum) / n


# --------------------------------------------------------------------------------- accounting
def release_counts(rounds: int, period: int) -> tuple[int, int]:
    """(restarts, difference rounds) among rounds ``0 .. rounds - 1`` with restart period ``period``."""
    restarts = -(-rounds // period)
    return restarts, rounds - restarts


def diff2_ledger(rounds: int, period: int, z_full: float, z_diff: float, adjacency: Adjacency) -> PrivacyLedger:
    """Opacus RDP ledger of one client's releases after ``rounds`` rounds: each release is the
    Gaussian mechanism with noise multiplier ``z / k`` relative to its sensitivity (sample rate 1)."""
    k = SENSITIVITY[adjacency]
    restarts, diffs = release_counts(rounds, period)
    ledger = PrivacyLedger("rdp")
    ledger.step(z_full / k, 1.0, restarts)
    if diffs:
        ledger.step(z_diff / k, 1.0, diffs)
    return ledger


def calibrate(target_epsilon: float, delta: float, rounds: int, period: int, adjacency: Adjacency) -> tuple[float, float]:
    """``(z1, z2) = (c sqrt(R / T), c sqrt(R))`` (the paper's split) with the smallest ``c`` whose
    composition stays within ``target_epsilon`` (Opacus's calibration, RDP accountant).

    The composition's RDP is that of one Gaussian mechanism with multiplier ``z_eff``,
    ``1 / z_eff^2 = k^2 (R1 / z1^2 + R2 / z2^2)``; Opacus calibrates ``z_eff`` and ``c`` follows."""
    z_eff = noise_for_target_epsilon(target_epsilon, delta, 1.0, 1, "rdp").noise_multiplier
    restarts, diffs = release_counts(rounds, period)
    k = SENSITIVITY[adjacency]
    c = z_eff * k * math.sqrt(restarts * period / rounds + diffs / rounds)
    return c * math.sqrt(rounds / period), c * math.sqrt(rounds)


# ------------------------------------------------------------------------------------ params
class DPGDParams(OneNoiseSource):
    clip: PositiveFloat = Field(1.0, description="C1: per-record clip norm of full gradients")
    lr: PositiveFloat = Field(0.5, description="eta: server step x_r = x_{r-1} - eta v_r")
    noise_multiplier: PositiveFloat | None = Field(
        None, description=f"z1: full-gradient noise std = z1 C1 / n_p; null: {DEFAULT_NOISE_MULTIPLIER} unless target_epsilon is set"
    )
    target_epsilon: PositiveFloat | None = Field(None, description="calibrate the noise to this epsilon after federation.rounds rounds")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the reported (epsilon, delta)")
    adjacency: Adjacency = Field("add_remove", description="neighbouring datasets: add/remove one record (sensitivity C / n) or replace one (2C / n)")



class Diff2Params(DPGDParams):
    period: PositiveInt = Field(10, description="T: a noisy clipped full gradient every T rounds, gradient differences between (T = 1: DP-GD)")
    clip_diff: PositiveFloat = Field(
        1.0, description="L: per-record clip of gradient differences per unit step, C2 = L ||x_{r-1} - x_{r-2}||"
    )
    noise_multiplier_diff: PositiveFloat | None = Field(
        None, description="z2: difference noise std = z2 C2 / n_p; null: sqrt(T) z1 (the paper's split)"
    )

    @model_validator(mode="after")
    def _diff_noise_with_noise(self) -> "Diff2Params":
        if self.noise_multiplier_diff is not None and self.target_epsilon is not None:
            raise ValueError("set noise_multiplier_diff or target_epsilon, not both")
        return self


# ------------------------------------------------------------------------------------ algorithm
@ALGORITHMS.register("diff2")
class Diff2(AttrState):
    """DIFF2 with the GD routine (Murata & Suzuki 2023): noisy clipped full gradients every T
    rounds, noisy clipped per-record gradient differences (clip radius proportional to the step
    length) in between, a server-side running estimate v_r, and Renyi-DP accounting per client."""

    summary = "DP optimisation via gradient differences: restart every T rounds, running estimate v_r (RDP accounted)"
    references = (
        "Murata & Suzuki, DIFF2: Differential Private Optimization via Gradient Differences for Nonconvex "
        "Distributed Learning, ICML 2023 (arXiv:2302.03884)",
    )
    Params = Diff2Params
    sends = UpdateKind.GRADIENT_DIFFERENCE
    needs_every_client = True  # v_r sums every client's differences; a client needs x_{r-2}
    state_attrs = ("_estimate", "_server_round")  # the server's running estimate, for --resume

    def __init__(self, params: DPGDParams):
        self.params = params
        self.period = getattr(params, "period", 1)
        self.clip_diff = getattr(params, "clip_diff", 0.0)
        if self.period == 1:
            self.sends = UpdateKind.GRADIENT
        self.noise = self._fixed_noise()
        self._rounds: int | None = None
        self._estimate: torch.Tensor | None = None
        self._server_round = 0
        self._note = OrderNote(self.registry_name)

    def _fixed_noise(self) -> tuple[float, float] | None:
        """(z1, z2) from the multipliers; None while a target epsilon waits for the round count."""
        p = self.params
        if p.target_epsilon is not None:
            return None
        z1 = p.noise_multiplier if p.noise_multiplier is not None else DEFAULT_NOISE_MULTIPLIER
        z2 = getattr(p, "noise_multiplier_diff", None)
        return z1, z2 if z2 is not None else math.sqrt(self.period) * z1

    # ---------------------------------------------------------------------------- wiring
    def plan(self, *, rounds: int, num_clients: int, clients_per_round: int, model: ModelHandle) -> None:
        """Called once before training: per-record gradients must exist for the model, the noise
        is calibrated for ``rounds`` rounds, and the server state starts empty.  (Every client
        takes part in every round: ``needs_every_client``, checked when the scenario is built.)"""
        with torch.device("meta"):
            check_dp_model(model.build(), self.registry_name)
        p = self.params
        if p.target_epsilon is not None:
            self.noise = calibrate(p.target_epsilon, p.delta, rounds, self.period, p.adjacency)
        self._rounds = rounds
        self._estimate = None
        self._server_round = 0

    def public_hyper(self, num_examples: int) -> PublicHyperParams:
        return PublicHyperParams(self.registry_name, self.params.lr, num_examples, 1, None, num_examples)

    def restart(self, rnd: int) -> bool:
        return rnd % self.period == 0

    # ---------------------------------------------------------------------------- client half
    def client_update(self, model: nn.Module, task: ClientTask, gen: torch.Generator, trainer: object = None) -> ClientResult:
        """One client's message: the noisy clipped mean of its per-record full gradients (restart)
        or gradient differences (otherwise).  The client keeps the iterate it received, ``x_{r-1}``,
        as its state: next round it is ``x_{r-2}``."""
        if self.noise is None:
            raise RuntimeError(f"{self.registry_name}: plan() must run before the first round (target_epsilon needs the round count)")
        x, n = task.global_params, len(task.data)
        if self.restart(task.round):
            radius, previous, z = self.params.clip, None, self.noise[0]
        else:
            if task.state is None:
                raise RuntimeError(f"client {task.client_id} has no x_{{r-2}} in round {task.round}: {self.registry_name} needs every client every round")
            previous = task.state.to(x.device)
            radius, z = self.clip_diff * float((x - previous).norm()), self.noise[1]
        mean, loss = clipped_mean_gradient(model, task.data, x, radius, previous)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        update = mean + (z * radius / n) * noise
        used = torch.arange(n, device=task.data.x.device)
        state = x.detach().clone() if self.period > 1 else None
        return ClientResult(task.client_id, update, n, {"train_loss": loss}, {"used_index": used}, state)

    # ---------------------------------------------------------------------------- server half
    def server_step(self, global_params: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """GD routine on the running estimate: ``v_r`` restarts from the aggregate every T rounds
        and adds the aggregated difference otherwise; ``x_r = x_{r-1} - eta v_r``."""
        if self.restart(self._server_round):
            self._estimate = aggregate.clone()
        else:
            self._estimate = self._estimate + aggregate
        self._server_round += 1
        return global_params - self.params.lr * self._estimate

    def account(self, rnd: int, sampled: list[int], results: list[ClientResult], num_clients: int) -> dict[str, float]:
        """(epsilon, delta) of every client's releases in rounds ``0 .. rnd`` (RDP, Opacus conversion)."""
        z1, z2 = self.noise
        if rnd == 0:
            self._note.reset()
        spent = diff2_ledger(rnd + 1, self.period, z1, z2, self.params.adjacency).spent(self.params.delta)
        self._note.check(spent)  # an edge order: said once per run, not Opacus's warning per call
        return {"privacy.epsilon": spent.epsilon, "privacy.delta": self.params.delta}


@ALGORITHMS.register("dp_gd")
class DPGD(Diff2):
    """DP-GD (full-batch, per-record clipping, Gaussian noise by each client): DIFF2's T = 1 case,
    the baseline of Murata & Suzuki 2023 (and Abadi et al. 2016 without subsampling)."""

    summary = "DP full-batch gradient descent: noisy clipped mean gradients every round (DIFF2 with T = 1)"
    references = (
        "Abadi et al., Deep Learning with Differential Privacy, CCS 2016",
        "Murata & Suzuki, DIFF2, ICML 2023 (the T = 1 case)",
    )
    Params = DPGDParams
    sends = UpdateKind.GRADIENT
