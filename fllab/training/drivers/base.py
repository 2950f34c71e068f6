"""What every driver shares: the narrow truth it holds, the public context it acts in, the round
it sees, and the outcome it returns.

A driver is trusted code that puts one attack to work from its family's position.  It never
holds the engine: it receives a :class:`Truth` (client data, the malicious set, the test split)
and a :class:`DriverContext` (the public side: seeds, the model handle, the algorithm's public
recipe), builds the attack's observation from what the server legitimately sees
(:class:`RoundView`), runs the attack, and scores the result against the truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

from ...seeding import numpy_gen
from ...types import ClientResult, ModelHandle, TensorData, UpdateObservation


@dataclass(frozen=True)
class Upload:
    """One vector the server receives: a client's update, or under secure aggregation the
    weighted mean of a group's updates (``members`` are positions in the round's sample)."""

    members: tuple[int, ...]
    update: torch.Tensor
    num_examples: int


@dataclass
class RoundView:
    """One round as the server saw it: the uploads after client-side defenses, poisoning and
    any secure-aggregation grouping; ``results`` hold the truth about each client's work."""

    round: int
    sampled: list[int]
    results: Sequence[ClientResult]
    uploads: list[Upload]
    global_params: torch.Tensor  # the weights the server sent this round


@dataclass
class Truth:
    """What only drivers and metrics hold: each client's training data as it trains on it
    (poisoned or with planted canaries), which clients are malicious, the test split, and how
    many canaries an audit appended to the end of a client's data."""

    client_data: list[TensorData]
    malicious: frozenset[int]
    test: TensorData
    num_classes: int
    planted: dict[int, int] = field(default_factory=dict)

    def records(self, cid: int) -> TensorData:
        """Client ``cid``'s own records: its data without the canaries an audit planted (the
        records a membership attack's members are drawn from)."""
        data = self.client_data[cid]
        k = self.planted.get(cid, 0)
        return data.subset(torch.arange(len(data) - k, device=data.x.device)) if k else data

    def honest(self) -> list[int]:
        """Ids of the honest clients, in order."""
        return [c for c in range(len(self.client_data)) if c not in self.malicious]


@dataclass(frozen=True)
class DriverContext:
    """The public side a driver acts in: the root seed, the scenario path of its attack (for
    error messages), the model handle, the algorithm (what it sends, its public recipe), the
    evaluation settings, the federation block (clients, clients per round, rounds: public, and
    with the root seed they fix which clients each round samples) and the defenses in place (a
    driver refuses, before training, what it could not score under them)."""

    root: int
    path: str
    model: ModelHandle
    algorithm: Any
    evaluation: Any
    federation: Any = None
    defenses: tuple[Any, ...] = ()

    def sampled(self, rnd: int) -> list[int]:
        """The clients round ``rnd`` samples (the server's seeded draw, :func:`sampled_clients`)."""
        fed = self.federation
        return sampled_clients(self.root, rnd, fed.num_clients, fed.per_round)

    def taking_part(self, rounds: Sequence[int] | None = None) -> set[int] | None:
        """The clients that some round of ``rounds`` (default: every round) samples; None when
        the federation is unknown (a context built without it)."""
        if self.federation is None:
            return None
        every = range(self.federation.rounds)
        return {c for rnd in (every if rounds is None else [r for r in rounds if r in every]) for c in self.sampled(rnd)}

    def observe(self, rnd: int, client_id: int, global_params: torch.Tensor, update: torch.Tensor, num_examples: int) -> UpdateObservation:
        """The server's observation of one upload."""
        return UpdateObservation(
            round=rnd, client_id=client_id, model=self.model, global_params=global_params.clone(), update=update.clone(),
            kind=self.algorithm.sends, hyper=self.algorithm.public_hyper(num_examples),
        )


def sampled_clients(root: int, rnd: int, num_clients: int, per_round: int) -> list[int]:
    """The clients round ``rnd`` samples, sorted: every client when ``per_round`` is all of them,
    else ``per_round`` drawn without replacement from ``("sampling", rnd)``.  Sampling depends on
    nothing but the seed, so drivers check before training that the clients they watch take part."""
    if per_round == num_clients:
        return list(range(num_clients))
    picked = numpy_gen(root, "sampling", rnd).choice(num_clients, per_round, replace=False)
    return sorted(int(c) for c in picked)


@dataclass(frozen=True)
class FinalState:
    """What the drivers see after the last round: the final global weights (and the server's
    model holding them) and the privacy figures the accounting defenses reported."""

    global_params: torch.Tensor
    model: torch.nn.Module
    privacy: Mapping[str, float]


@dataclass
class AttackOutcome:
    """What one attack produced: metrics for summary.json, rows/figures for the report."""

    family: str
    metrics: dict[str, float] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # relative path under artefacts/<attack> -> bytes


class Driver(Protocol):
    """One attack at work: sees each round (after poisoning and the server view), then scores."""

    attack: Any

    def on_round(self, view: RoundView) -> None: ...

    def finish(self, final: FinalState) -> AttackOutcome | None: ...

    def state_dict(self) -> dict[str, Any]:
        """What the driver gathered so far (plain data, :mod:`fllab.state`), for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Stateless:
    """Drivers that gather nothing from round to round (everything is decided at wiring)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


#: delta of the audited bounds when no accounting defense reports one (an undefended run).
DEFAULT_AUDIT_DELTA = 1e-5


def audit_delta(privacy: Mapping[str, float]) -> float:
    """The delta an audit tests against: the accounted one, else :data:`DEFAULT_AUDIT_DELTA`."""
    return float(privacy.get("privacy.delta", DEFAULT_AUDIT_DELTA))
