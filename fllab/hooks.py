"""The hooks a component may implement, as typed protocols, checked when the component registers.

The engine never probes a component with ``hasattr``: :meth:`fllab.registry.Registry.register`
runs :func:`check_hooks`, which refuses a class whose hook does not accept the protocol's
arguments (or an attack whose family has no driver, or that lacks its family's hooks), and
records the hooks the class implements in ``cls.hooks``; the wiring and the server then ask
:func:`has_hook`.  Each protocol below has exactly one member, named like the hook.

Kinds and their hooks (``*`` required):

=============  ==================================================================================
algorithm      ``sends``* ``public_hyper``* ``client_update``* ``server_step``* ``wrap_model``
               ``aggregate`` ``evaluate`` ``plan`` ``account`` (an algorithm that owns its privacy
               accounting, e.g. DIFF2) ``round_metrics`` ``summary_metrics`` (the bundle's own
               figures per round / per run, e.g. LoRA's ``lora.aggregation_error``)
aggregator     ``__call__``* ``check``* ``last_flagged`` (a detector)
defense        ``transform`` ``wrap_fit`` ``wrap_trainer`` ``wrap_aggregator`` ``server_view``
               ``plan`` ``account`` (at least one)
attack         per family (:data:`FAMILY_HOOKS`): poisoning ``poison_data`` / ``craft_uploads``
               (at least one) and ``score_final_model``; inversion ``reconstruct``*
               ``reconstruct_many``; membership ``score`` / ``score_rounds`` (at least one);
               audit ``craft_canaries``* ``score_canaries``*
executor       ``start``* ``map``* ``close``* ``used``* ``check``
any kind       ``state_dict`` + ``load_state_dict`` (both or neither): round-to-round state, for
               checkpoints (:mod:`fllab.state`)
=============  ==================================================================================
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from .types import (
    Aggregator, ClientResult, ClientTask, EvalContext, FitFn, ModelHandle, ModelObservation, PoisonObservation,
    PublicHyperParams, TensorData, UpdateKind, UpdateObservation,
)

Trainer = Callable[..., Any]  # (model, data, *, steps, batch_size, lr, momentum, weight_decay, gen) -> TrainReport


# ------------------------------------------------------------------------------------ algorithm
class Sends(Protocol):
    sends: UpdateKind


class PublicHyper(Protocol):
    def public_hyper(self, num_examples: int) -> PublicHyperParams: ...


class ClientUpdate(Protocol):
    def client_update(self, model: torch.nn.Module, task: ClientTask, gen: torch.Generator, trainer: Trainer) -> ClientResult: ...


class ServerStep(Protocol):
    def server_step(self, global_params: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor: ...


class WrapModel(Protocol):
    def wrap_model(self, build: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]: ...


class OwnAggregate(Protocol):
    aggregate: Aggregator  # replaces the scenario's aggregator (FRL's vote)


class OwnEvaluate(Protocol):
    def evaluate(self, ctx: EvalContext) -> dict[str, float]: ...


class RoundMetrics(Protocol):
    def round_metrics(self, results: Sequence[ClientResult]) -> Mapping[str, float]: ...  # e.g. lora.aggregation_error


class SummaryMetrics(Protocol):
    def summary_metrics(self, rounds: Sequence[Mapping[str, Any]]) -> Mapping[str, float]: ...  # run-level figures


# ----------------------------------------------------------------------------------- aggregator
class Aggregate(Protocol):
    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None, client_ids: list[int] | None = None) -> torch.Tensor: ...


class Check(Protocol):
    def check(self, n: int) -> None: ...


class Detector(Protocol):
    last_flagged: tuple[int, ...] | None  # ids excluded as malicious in the last call; None while warming up


# -------------------------------------------------------------------------------------- defense
class Transform(Protocol):
    def transform(self, update: torch.Tensor, gen: torch.Generator) -> torch.Tensor: ...


class WrapFit(Protocol):
    def wrap_fit(self, fit: FitFn) -> FitFn: ...


class WrapTrainer(Protocol):
    def wrap_trainer(self, trainer: Trainer) -> Trainer: ...


class WrapAggregator(Protocol):
    def wrap_aggregator(self, aggregator: Aggregator) -> Aggregator: ...


class ServerView(Protocol):
    def server_view(self, updates: torch.Tensor, weights: torch.Tensor, rng: np.random.Generator) -> list[Any]: ...


class Plan(Protocol):
    def plan(self, *, rounds: int, num_clients: int, clients_per_round: int, model: ModelHandle) -> None: ...


class Account(Protocol):
    def account(self, round: int, sampled_ids: Sequence[int], results: Sequence[ClientResult], num_clients: int) -> Mapping[str, float]: ...


# --------------------------------------------------------------------------------------- attack
class PoisonData(Protocol):
    def poison_data(self, data: TensorData, gen: torch.Generator, num_classes: int) -> TensorData: ...


class CraftUploads(Protocol):
    def craft_uploads(self, obs: PoisonObservation) -> torch.Tensor: ...


class ScoreFinalModel(Protocol):
    def score_final_model(self, model: torch.nn.Module, test: TensorData) -> dict[str, float]: ...


class Reconstruct(Protocol):
    def reconstruct(self, obs: UpdateObservation, num_images: int, labels: torch.Tensor | None, seed: int) -> Any: ...


class ReconstructMany(Protocol):
    def reconstruct_many(self, observations: Sequence[UpdateObservation], num_images: int, labels: Any, seeds: Sequence[int]) -> Any: ...


class Score(Protocol):
    def score(self, obs: ModelObservation, candidates: TensorData, seed: int) -> torch.Tensor: ...


class ScoreRounds(Protocol):
    def score_rounds(self, observations: Sequence[UpdateObservation], candidates: TensorData, seed: int) -> torch.Tensor: ...


class CraftCanaries(Protocol):
    def craft_canaries(self, data: TensorData, num_classes: int, gen: torch.Generator) -> tuple[TensorData, torch.Tensor]: ...


class ScoreCanaries(Protocol):
    def score_canaries(self, obs: ModelObservation, canaries: TensorData) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------- executor
class Start(Protocol):
    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None: ...


class Map(Protocol):
    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]: ...


class Close(Protocol):
    def close(self) -> None: ...


class Used(Protocol):
    used: str  # the executor that actually runs (auto resolves to another)


class CheckRun(Protocol):
    def check(self, setup: Any, model: ModelHandle) -> None: ...


class Drive(Protocol):  # an executor that owns the round loop (Flower's simulation), instead of map
    def drive(self, server: Any, rounds: range, finish: Callable[[dict[str, Any]], None]) -> None: ...


# ------------------------------------------------------------------------------------ any kind
class StateDict(Protocol):
    def state_dict(self) -> dict[str, Any]: ...


class LoadStateDict(Protocol):
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: the checkpoint hooks any component may implement, always together (:mod:`fllab.state`)
STATE_HOOKS = (StateDict, LoadStateDict)


@dataclass(frozen=True)
class KindHooks:
    """The hooks of one component kind: all of ``required``, at least one of each group in
    ``one_of``, any of ``optional``."""

    required: tuple[type, ...] = ()
    optional: tuple[type, ...] = ()
    one_of: tuple[tuple[type, ...], ...] = ()

    def all(self) -> tuple[type, ...]:
        return (*self.required, *self.optional, *(p for group in self.one_of for p in group))


#: The hooks of each attack family; a family without an entry here has no driver and is refused.
FAMILY_HOOKS: dict[str, KindHooks] = {
    "poisoning": KindHooks(optional=(ScoreFinalModel,), one_of=((PoisonData, CraftUploads),)),
    "inversion": KindHooks(required=(Reconstruct,), optional=(ReconstructMany,)),
    "membership": KindHooks(one_of=((Score, ScoreRounds),)),
    "audit": KindHooks(required=(CraftCanaries, ScoreCanaries)),
}

KIND_HOOKS: dict[str, KindHooks] = {
    "algorithm": KindHooks(
        required=(Sends, PublicHyper, ClientUpdate, ServerStep),
        optional=(WrapModel, OwnAggregate, OwnEvaluate, Plan, Account, RoundMetrics, SummaryMetrics),
    ),
    "aggregator": KindHooks(required=(Aggregate, Check), optional=(Detector,)),
    "defense": KindHooks(one_of=((Transform, WrapFit, WrapTrainer, WrapAggregator, ServerView, Plan, Account),)),
    "executor": KindHooks(required=(Start, Close, Used), optional=(CheckRun,), one_of=((Map, Drive),)),
}


#: Hooks renamed when their names collided (issue 14): old name -> new name.
RENAMED = {"craft": "craft_uploads", "evaluate": "score_final_model"}


def hook_name(protocol: type) -> str:
    """The one member a hook protocol declares: its method (``__call__`` included) or its
    annotated attribute."""
    methods = [n for n, v in vars(protocol).items() if callable(v) and (n == "__call__" or not n.startswith("_"))]
    return (methods or list(vars(protocol).get("__annotations__", {})))[0]


def _accepts(cls: type, protocol: type, name: str) -> str | None:
    """Why ``cls.<name>`` cannot be called as the protocol declares it, or None."""
    expected = protocol.__dict__.get(name)
    if not callable(expected):
        return None  # an attribute hook: presence is enough
    member = inspect.getattr_static(cls, name)
    if isinstance(member, (staticmethod, classmethod)) or not callable(member):
        return f"must be a method, got {type(member).__name__}"
    want = inspect.signature(expected)
    try:
        have = inspect.signature(member)
    except (TypeError, ValueError):
        return None  # a builtin or C callable: cannot tell
    params = list(want.parameters.values())[1:]  # without self
    positional = [None] * (1 + sum(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params))
    keywords = {p.name: None for p in params if p.kind is p.KEYWORD_ONLY}
    try:
        have.bind(*positional, **keywords)
    except TypeError as err:
        return f"must accept {name}{str(want).replace('self, ', '', 1)}: {err}"
    return None


def check_hooks(kind: str, name: str, cls: type) -> frozenset[str]:
    """Refuse ``cls`` (ValueError naming it) when its hooks do not fit its kind's protocols;
    return the names of the hooks it implements."""
    spec = KIND_HOOKS.get(kind)
    if kind == "attack":
        family = getattr(cls, "family", None)
        spec = FAMILY_HOOKS.get(family)
        if spec is None:
            raise ValueError(
                f"attack {name!r} has family {family!r}, which no driver runs; families: {', '.join(FAMILY_HOOKS)}"
            )
    if spec is None:
        return frozenset()
    present = set()
    for protocol in (*spec.all(), *STATE_HOOKS):
        hook = hook_name(protocol)
        if not hasattr(cls, hook):
            continue
        problem = _accepts(cls, protocol, hook)
        if problem:
            raise ValueError(f"{kind} {name!r}: hook {hook} {problem}")
        present.add(hook)
    missing = [hook_name(p) for p in spec.required if hook_name(p) not in present]
    for group in spec.one_of:
        if not any(hook_name(p) in present for p in group):
            missing.append(" or ".join(hook_name(p) for p in group))
    if missing:
        renamed = {old: new for old, new in RENAMED.items() if hasattr(cls, old) and any(new in m for m in missing)}
        hint = "".join(f"; rename {old} to {new}" for old, new in renamed.items())
        raise ValueError(f"{kind} {name!r} lacks the hook(s) {', '.join(missing)}{hint}")
    state = [hook_name(p) for p in STATE_HOOKS]
    if any(h in present for h in state) and not all(h in present for h in state):
        raise ValueError(f"{kind} {name!r} must implement both {' and '.join(state)} or neither")
    return frozenset(present)


def has_hook(component: Any, hook: str) -> bool:
    """Whether a registered component implements ``hook`` (recorded when it registered)."""
    return hook in getattr(type(component), "hooks", frozenset())
