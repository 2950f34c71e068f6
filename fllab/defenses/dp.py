"""Accounted differential privacy: record-level DP-SGD inside every client, and user-level DP-FedAvg.

``dp_sgd`` -- record-level DP (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS)
    Every client trains with DP-SGD through Opacus (:mod:`fllab.defenses.dp_train`: Poisson
    sampling at rate ``q = batch_size / n`` from the client's seeded generator, per-sample
    clipping to ``max_grad_norm``, Gaussian noise of multiplier ``sigma``).  Each client has its
    own accountant for the whole federation: its history of ``(sigma, q, steps)`` segments lives
    in the client's private state, grows every round it takes part in, and comes back in
    ``ClientResult.extras["dp_sgd.history"]``.  ``account`` reports the largest epsilon over the
    clients seen so far: the record-level guarantee of the worst-off client (a client's records
    are touched only by its own training; the rest of the federation is post-processing).

    ``target_epsilon`` calibrates sigma per client (per distinct ``(q, steps)``) with
    :func:`fllab.privacy.noise_for_target_epsilon` for the *planned* number of steps: the
    client's local steps per round times ``federation.rounds``.  Assumption: the client may take
    part in every round.  With client sampling it takes part in fewer, so its accounted epsilon
    (always computed from what really ran) ends below the target.

``dp_fedavg`` -- user-level DP (McMahan, Ramage, Talwar & Zhang 2018, "Learning Differentially
Private Recurrent Language Models", ICLR, Algorithm 1 "DP-FedAvg")
    Each client clips its update to L2 norm ``C`` (``flat``; or ``per_layer``: each parameter
    tensor to ``C / sqrt(L)``, the paper's per-layer clipping with an equal split, so the whole
    update still has norm at most ``C``).  The server forms the paper's fixed-denominator
    estimator with unit client weights, ``sum_k Delta_k / (qN)``, and adds N(0, (zC / (qN))^2)
    per coordinate (noise ``zC`` on the sum).  The engine samples exactly ``clients_per_round =
    qN`` clients each round, so the fixed denominator is the number of updates received and the
    estimator is the scenario's (unweighted) ``mean`` plus noise; other aggregators are refused,
    as their sensitivity to one client is not ``C / (qN)``, and so is a secure-aggregation view
    (the server would receive example-weighted group means, not unit-weight client updates).

    Accounting: one user-level accountant, a step per round of the sampled Gaussian mechanism
    with ``q = clients_per_round / num_clients`` and noise multiplier ``z`` (Opacus's RDP or PRV
    accountant through :class:`fllab.privacy.PrivacyLedger`).  As in the paper, the analysis is
    that of Poisson client sampling at rate ``q``; the engine draws a fixed-size sample of
    ``qN`` clients instead (the usual approximation; exact when every client takes part,
    ``q = 1``).  The guarantee covers what is released after aggregation (the global models);
    the server itself sees the clipped, un-noised updates (central DP, trusted aggregator).

    ``target_epsilon`` calibrates ``z`` for ``federation.rounds`` rounds at that ``q``.

    Server noise stream: round ``k``'s noise is drawn from a generator seeded with
    ``derive_seed(seed, "dp_fedavg", k)`` (``seed`` is a parameter of the defense; the round
    counter starts at 0 each time the engine wraps the aggregator), so a run is reproducible.

Both defenses learn the federation through ``plan(rounds=, num_clients=, clients_per_round=,
model=)``, which the engine calls once before training: ``target_epsilon`` needs the number of
rounds, ``dp_fedavg``'s per-layer clipping the model's parameter sizes.

Both account every round through :mod:`fllab.privacy.accounting` (Opacus's arithmetic, equal to
the bit, with each ``(sigma, q)``'s RDP series computed once), so a round's accounting costs
milliseconds (RDP) to tens of milliseconds per client (PRV's discretisation and FFT), not a fresh
accountant's seconds.  When an RDP epsilon's best order is an end of Opacus's order range, the
defense says so in one warning per run (:class:`fllab.privacy.accounting.OrderNote`), not Opacus's
warning at every call.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping, Sequence

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, model_validator
from torch import nn

from ..errors import ConfigError
from ..registry import DEFENSES
from ..state import AttrState
from ..seeding import torch_gen
from ..training.local import TrainReport, sgd_train
from ..types import ClientResult, ClientTask, FitFn, ModelHandle, TensorData
from ..privacy import PrivacyLedger, noise_for_target_epsilon
from ..privacy.accounting import SPENT, OneNoiseSource, OrderNote, Spent
from .dp_train import Clipping, GradSampleMode, check_dp_model, dp_sgd_train

Accountant = Literal["rdp", "prv"]
History = tuple[tuple[float, float, int], ...]  # (noise_multiplier, sample_rate, steps) segments

#: Noise multiplier used when neither ``noise_multiplier`` nor ``target_epsilon`` is set.
DEFAULT_NOISE_MULTIPLIER = 1.0


def param_sizes(model: ModelHandle) -> list[int]:
    """Sizes of the model's trainable parameter tensors, in flat-vector order (built on the meta
    device: no memory, no draw from any generator)."""
    with torch.device("meta"):
        net = model.build()
    return [p.numel() for p in net.parameters() if p.requires_grad]


def clip_segments(update: torch.Tensor, sizes: Sequence[int], bounds: Sequence[float]) -> torch.Tensor:
    """Scale each consecutive segment of ``update`` (lengths ``sizes``) to L2 norm at most its bound:
    ``u_j * b_j / max(||u_j||, b_j)``.  One segment of the full length is flat clipping."""
    seg = torch.repeat_interleave(
        torch.arange(len(sizes), device=update.device), torch.as_tensor(list(sizes), device=update.device)
    )
    sq = torch.zeros(len(sizes), dtype=update.dtype, device=update.device).index_add_(0, seg, update * update)
    b = torch.as_tensor(list(bounds), dtype=update.dtype, device=update.device)
    return update * (b / torch.maximum(sq.sqrt(), b))[seg]


@functools.lru_cache(maxsize=4096)  # sweep cells over the same federation ask for the same calibrations
def _calibrate(target: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """sigma for ``target`` epsilon; an unreachable budget is a ValueError naming the field."""
    try:
        return noise_for_target_epsilon(target, delta, sample_rate, steps, accountant).noise_multiplier
    except ConfigError as err:
        raise ValueError(str(err)) from None


@functools.lru_cache(maxsize=65536)
def history_spent(history: History, accountant: str, delta: float) -> Spent:
    """Epsilon of a client's ``(sigma, q, steps)`` history (memoised: clients and sweep cells
    repeat histories; each new one costs little, :mod:`fllab.privacy.accounting` caches its parts)."""
    return SPENT[accountant](history, delta)


class _NoiseParams(OneNoiseSource):
    """Noise choice shared by the two defenses: a multiplier, or a target epsilon to calibrate it."""

    noise_multiplier: PositiveFloat | None = Field(
        None, description=f"noise std / clip norm; null: {DEFAULT_NOISE_MULTIPLIER} unless target_epsilon is set"
    )
    target_epsilon: PositiveFloat | None = Field(
        None, description="calibrate the noise multiplier to reach this epsilon after federation.rounds rounds"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the reported (epsilon, delta)")
    accountant: Accountant = Field("prv", description="Opacus accountant: prv (tight, numerical) or rdp")



# ------------------------------------------------------------------------------------ dp_sgd
@dataclass(frozen=True)
class DPSGDState:
    """A client's private state under ``dp_sgd``: its accountant history, and the state of the
    fit function it wraps (the algorithm's own)."""

    history: History
    inner: Any = None


class DPSGDParams(_NoiseParams):
    max_grad_norm: PositiveFloat = Field(1.0, description="per-sample gradient clip norm C")
    clipping: Clipping = Field("flat", description="flat: whole gradient to C; per_layer: each tensor to C/sqrt(L)")
    grad_sample_mode: GradSampleMode = Field("hooks", description="hooks: per-sample gradients; ghost: ghost clipping")

    @model_validator(mode="after")
    def _ghost_flat(self) -> "DPSGDParams":
        if self.grad_sample_mode == "ghost" and self.clipping != "flat":
            raise ValueError("grad_sample_mode ghost supports clipping flat only (Opacus)")
        return self


class _DPSGDTrainer:
    """The trainer interface of :func:`fllab.training.local.sgd_train`, running DP-SGD."""

    def __init__(self, defense: "DPSGD"):
        self.defense = defense

    def __call__(
        self, model: nn.Module, data: TensorData, *, steps: int, batch_size: int, lr: float, momentum: float,
        weight_decay: float, gen: torch.Generator,
    ) -> TrainReport:
        n = len(data)
        q = min(batch_size, n) / n
        sigma = self.defense.noise_multiplier_for(q, steps)
        p = self.defense.params
        clipped = [0, 0]  # [clipped per-sample gradients, samples]
        loss = dp_sgd_train(
            model, data, steps=steps, sample_rate=q, lr=lr, momentum=momentum, weight_decay=weight_decay, gen=gen,
            noise_multiplier=sigma, max_grad_norm=p.max_grad_norm, clipping=p.clipping,
            grad_sample_mode=p.grad_sample_mode, clip_count=clipped,
        )
        return TrainReport(loss, steps, ((sigma, q, steps),), clipped=(clipped[0], clipped[1]))


class _DPSGDFit:
    """Runs the client's fit, then appends the DP-SGD segments its trainer reported
    (:attr:`ClientResult.training`) to the client's history (private state) and reports the
    history in the result's extras."""

    def __init__(self, defense: "DPSGD", fit: FitFn):
        self.defense = defense
        self.fit = fit

    def __call__(self, task: ClientTask) -> ClientResult:
        previous: DPSGDState = task.state if task.state is not None else DPSGDState(())
        return self.defense.settle(previous, self.fit(replace(task, state=previous.inner)))


@DEFENSES.register("dp_sgd")
class DPSGD(AttrState):
    """Record-level DP-SGD in every client through Opacus, one accountant per client across rounds
    (see the module docstring).  Needs a model without batch norm."""

    summary = "record-level DP-SGD in every client (Opacus: Poisson sampling, per-sample clipping, noise); worst-client epsilon"
    references = (
        "Abadi et al., Deep Learning with Differential Privacy, CCS 2016",
        "Yousefpour et al., Opacus: User-Friendly Differential Privacy Library in PyTorch, arXiv:2109.12298, 2021",
        "Mironov, Talwar and Zhang, Renyi Differential Privacy of the Sampled Gaussian Mechanism, arXiv:1908.10530, 2019",
        "Gopi, Lee and Wutschitz, Numerical Composition of Differential Privacy, NeurIPS 2021",
        "Li, Tramer, Liang and Hashimoto, Large Language Models Can Be Strong Differentially Private Learners, ICLR 2022",
    )
    Params = DPSGDParams
    needs = frozenset({"delta"})  # algorithms that train locally through the client trainer
    state_attrs = ("_client_eps",)  # each client's epsilon so far (their histories are client states)

    def __init__(self, params: DPSGDParams):
        self.params = params
        self.rounds: int | None = None
        self._sigma: dict[tuple[float, int], float] = {}  # (q, steps per round) -> calibrated sigma
        self._client_eps: dict[int, float] = {}
        self._note = OrderNote("dp_sgd")

    # -- set-up ---------------------------------------------------------------------------------
    def plan(self, *, rounds: int, num_clients: int, clients_per_round: int, model: ModelHandle) -> None:
        """Learn the federation's length (for ``target_epsilon``) and refuse a batch-norm model
        before any training."""
        self.rounds = int(rounds)
        with torch.device("meta"):
            check_dp_model(model.build())

    def preflight(self, *, client_sizes: Sequence[int], algorithm: Any) -> None:
        """Calibrate ``target_epsilon`` for every client size before training (what the first round
        would do), so that an unreachable budget is refused by ``validate`` and before ``run``
        writes anything, with the same line."""
        batch_size = getattr(getattr(algorithm, "params", None), "batch_size", None)
        steps_of = getattr(algorithm, "local_steps", None)
        if self.params.target_epsilon is None or batch_size is None or steps_of is None:
            return
        for n in sorted(set(client_sizes)):
            self.noise_multiplier_for(min(batch_size, n) / n, steps_of(n))

    def noise_multiplier_for(self, sample_rate: float, steps: int) -> float:
        """sigma for a client sampling at ``sample_rate`` for ``steps`` local steps per round."""
        p = self.params
        if p.target_epsilon is None:
            return p.noise_multiplier or DEFAULT_NOISE_MULTIPLIER
        if self.rounds is None:
            raise RuntimeError("dp_sgd.target_epsilon needs the number of rounds: the engine must call plan() first")
        key = (sample_rate, steps)
        if key not in self._sigma:
            try:
                self._sigma[key] = _calibrate(p.target_epsilon, p.delta, sample_rate, steps * self.rounds, p.accountant)
            except ValueError as err:  # found at the client's first round: its sampling rate is known only then
                raise ConfigError(f"dp_sgd.{err}") from None
        return self._sigma[key]

    def settle(self, previous: DPSGDState | None, result: ClientResult) -> ClientResult:
        """``result`` with the DP-SGD segments its trainer reported (:attr:`ClientResult.training`)
        appended to the client's history ``previous`` (its new private state, and the result's
        ``dp_sgd.history`` extra) and the fraction of per-sample gradients it clipped
        (``dp.clipped_fraction``, where the trainer counted them).  Shared by the wrapped fit and the vectorized executor."""
        previous = previous if previous is not None else DPSGDState(())
        spent = result.training.privacy if result.training is not None else ()
        if not spent:
            raise RuntimeError("the algorithm did not train through the client trainer, so dp_sgd could not protect it")
        ledger = PrivacyLedger(self.params.accountant)
        for segment in (*previous.history, *spent):
            ledger.step(*segment)
        clipped, samples = result.training.clipped
        return replace(
            result,
            state=DPSGDState(ledger.history, result.state),
            metrics={**result.metrics, **({"dp.clipped_fraction": clipped / samples} if samples else {})},
            extras={**result.extras, "dp_sgd.history": ledger.history},
        )

    # -- hooks ----------------------------------------------------------------------------------
    def wrap_trainer(self, trainer: Any) -> _DPSGDTrainer:
        if trainer is not sgd_train:
            raise ConfigError("dp_sgd replaces local SGD and cannot follow another defense that changes local training", "defenses")
        return _DPSGDTrainer(self)

    def wrap_fit(self, fit: FitFn) -> _DPSGDFit:
        return _DPSGDFit(self, fit)

    def account(self, round: int, sampled_ids: Sequence[int], results: Sequence[ClientResult], num_clients: int) -> Mapping[str, float]:
        """Largest record-level epsilon over the clients trained so far (a run starts at round 0)."""
        if round == 0:
            self._client_eps.clear()
            self._note.reset()
        for res in results:
            spent = history_spent(res.extras["dp_sgd.history"], self.params.accountant, self.params.delta)
            self._note.check(spent)
            self._client_eps[res.client_id] = spent.epsilon
        return {"privacy.epsilon": max(self._client_eps.values()), "privacy.delta": self.params.delta}


# ------------------------------------------------------------------------------------ dp_fedavg
class DPFedAvgParams(_NoiseParams):
    clip: PositiveFloat = Field(1.0, description="L2 norm C every client update is clipped to")
    clipping: Clipping = Field("flat", description="flat: whole update to C; per_layer: each tensor to C/sqrt(L)")
    seed: NonNegativeInt = Field(0, description="seed of the server's noise stream")


class _NoisyMean:
    """The unweighted mean of the clipped updates plus N(0, (zC/n)^2) per coordinate: the
    fixed-denominator estimator with n = qN updates per round (see the module docstring)."""

    def __init__(self, inner: Any, defense: "DPFedAvg"):
        self.inner = inner
        self.defense = defense
        self.round = 0

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, client_ids: Any = None) -> torch.Tensor:
        if client_ids is None:  # the engine passes none when a secure-aggregation view hands over group means
            raise ConfigError(
                "dp_fedavg needs every client's clipped update at unit weight; a server view of "
                "(example-weighted) group means breaks its sensitivity bound: drop one of the two",
                "defenses",
            )
        mean = self.inner(updates, None, client_ids=client_ids)  # unit weights bound one client's share
        std = self.defense.noise_multiplier * self.defense.params.clip / updates.shape[0]
        gen = torch_gen(self.defense.params.seed, "dp_fedavg", self.round)
        self.round += 1
        noise = torch.randn(mean.shape, generator=gen, dtype=mean.dtype).to(mean.device)
        return mean + std * noise


@DEFENSES.register("dp_fedavg")
class DPFedAvg:
    """User-level DP-FedAvg: clip each client's update to C, the server adds Gaussian noise of std
    zC to the sum (fixed-denominator mean); RDP/PRV accounting over rounds (see the module docstring)."""

    summary = "user-level DP-FedAvg: clip client updates to C, server adds N(0, (zC)^2) to the sum; accounted per round"
    references = (
        "McMahan, Ramage, Talwar and Zhang, Learning Differentially Private Recurrent Language Models, ICLR 2018",
        "Mironov, Talwar and Zhang, Renyi Differential Privacy of the Sampled Gaussian Mechanism, arXiv:1908.10530, 2019",
        "Gopi, Lee and Wutschitz, Numerical Composition of Differential Privacy, NeurIPS 2021",
    )
    Params = DPFedAvgParams
    needs = frozenset({"gradient", "delta"})

    def __init__(self, params: DPFedAvgParams):
        self.params = params
        self._planned_noise: float | None = None
        self._sizes: list[int] | None = None
        self._ledger = PrivacyLedger(params.accountant)
        self._noisy_mean: _NoisyMean | None = None
        self._note = OrderNote("dp_fedavg")

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and how many noisy means were drawn (the noise seed's counter)."""
        return {"ledger": self._ledger.history, "noised": self._noisy_mean.round if self._noisy_mean else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ledger = PrivacyLedger(self.params.accountant)
        for segment in state["ledger"]:
            self._ledger.step(*segment)
        if self._noisy_mean is not None:
            self._noisy_mean.round = int(state["noised"])

    def plan(self, *, rounds: int, num_clients: int, clients_per_round: int, model: ModelHandle) -> None:
        """Calibrate z to ``target_epsilon`` for this federation; record the layer sizes for per-layer clipping."""
        p = self.params
        if p.target_epsilon is not None:
            self._planned_noise = _calibrate(p.target_epsilon, p.delta, clients_per_round / num_clients, rounds, p.accountant)
        if p.clipping == "per_layer":
            self._sizes = param_sizes(model)

    @property
    def noise_multiplier(self) -> float:
        p = self.params
        if p.target_epsilon is None:
            return p.noise_multiplier or DEFAULT_NOISE_MULTIPLIER
        if self._planned_noise is None:
            raise RuntimeError("dp_fedavg.target_epsilon needs the federation: the engine must call plan() first")
        return self._planned_noise

    def transform(self, update: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Clip (deterministic: ``gen`` is unused)."""
        c = self.params.clip
        if self.params.clipping == "flat":
            return clip_segments(update, [update.numel()], [c])
        if self._sizes is None:
            raise RuntimeError("dp_fedavg per_layer clipping needs the model's layer sizes: the engine must call plan() first")
        return clip_segments(update, self._sizes, [c / math.sqrt(len(self._sizes))] * len(self._sizes))

    def wrap_aggregator(self, aggregator: Any) -> _NoisyMean:
        if getattr(aggregator, "registry_name", None) != "mean":
            name = getattr(aggregator, "registry_name", None) or getattr(aggregator, "__qualname__", type(aggregator).__name__)
            raise ConfigError(f"dp_fedavg's guarantee holds for the mean aggregator; got {name}", "aggregator")
        self._noisy_mean = _NoisyMean(aggregator, self)
        return self._noisy_mean

    def account(self, round: int, sampled_ids: Sequence[int], results: Sequence[ClientResult], num_clients: int) -> Mapping[str, float]:
        """User-level epsilon after this round: one sampled-Gaussian step per round (a run starts at round 0)."""
        if round == 0:
            self._ledger = PrivacyLedger(self.params.accountant)
            self._note.reset()
        self._ledger.step(self.noise_multiplier, len(sampled_ids) / num_clients)
        spent = self._ledger.spent(self.params.delta)
        self._note.check(spent)
        return {"privacy.epsilon": spent.epsilon, "privacy.delta": self.params.delta}
