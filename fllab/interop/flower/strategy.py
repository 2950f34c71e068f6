"""A Flower strategy whose server round is fllab's: any registered aggregator, DP-FedAvg's
server noise with its accountant, the secure-aggregation view, validated like a scenario.

One training round of :class:`FllabStrategy` on the replies Flower hands to ``aggregate_train``:

1. read each reply's record as a flat update (:mod:`.arrays`; ``weights`` replies become
   ``reply - sent``) and its ``num-examples`` as the client's weight, its node id as client id;
2. server-side defenses that transform what a client sends and also act on the server
   (``dp_fedavg``'s clipping to C) are applied to every update -- clipping is idempotent, so a
   client that already clipped with :func:`.defense_mod` is unchanged;
3. a view defense (``secure_aggregation``) replaces the updates with group means;
4. the aggregator (wrapped by ``dp_fedavg``'s noisy mean when present) aggregates, exactly as
   :meth:`fllab.training.server.Server.round` calls it;
5. the server step: ``global + server_lr * aggregate`` (weights/delta uploads) or
   ``global - server_lr * aggregate`` (FedSGD gradients);
6. accounting defenses report ``privacy.epsilon`` / ``privacy.delta`` in the round's metrics;
   a detecting aggregator's ``last_flagged`` node ids go into :attr:`FllabStrategy.rounds`.

Validation before round 1: the aggregator's ``check(n)`` for the n nodes sampled per round
(Krum refuses n <= 2f + 2 with the scenario's message), the group size against n, and the
defenses' ``plan`` (DP-FedAvg calibrates a ``target_epsilon`` to the rounds and the sampling
rate).  Any failure is a :class:`fllab.errors.ConfigError` raised before a message is sent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from logging import INFO
from typing import Any, Iterable, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from torch import nn

from ...errors import ConfigError
from ...registry import AGGREGATORS, DEFENSES, load_plugins
from ...seeding import numpy_gen
from ...types import ModelHandle
from .arrays import as_update, check_upload, flat_to_record, record_to_flat
from .client import CLIENT_ID_KEY


class _Shapes(nn.Module):
    """A parameter-only module with the record's shapes: what ``plan`` needs of the model."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]):
        super().__init__()
        self.tensors = nn.ParameterList([nn.Parameter(torch.empty(s)) for s in shapes])


def shapes_handle(record: ArrayRecord) -> ModelHandle:
    """A :class:`ModelHandle` whose model has the record's parameter shapes."""
    shapes = [tuple(record[k].shape) for k in record.keys()]
    return ModelHandle(build=lambda: _Shapes(shapes), input_shape=(), num_classes=0)


@dataclass
class RoundRecord:
    """What one round of the strategy did, for the caller (``strategy.rounds``)."""

    round: int
    clients: list[int]
    num_examples: list[int]
    privacy: dict[str, float] = field(default_factory=dict)
    flagged: list[int] | None = None


def build_server_defenses(specs: Sequence[Any]) -> list[Any]:
    """Build the server-side defenses; a defense that only acts on the client is refused."""
    load_plugins()
    out = []
    for i, spec in enumerate(specs):
        defense = DEFENSES.build(spec, f"defenses.{i}")
        if not (hasattr(defense, "wrap_aggregator") or hasattr(defense, "server_view")):
            raise ConfigError(
                f"{defense.registry_name} acts on the client; apply it there with "
                "fllab.interop.flower.defense_mod", f"defenses.{i}",
            )
        out.append(defense)
    views = [i for i, d in enumerate(out) if hasattr(d, "server_view")]
    if len(views) > 1:
        raise ConfigError("only one defense may change what the server sees", f"defenses.{views[1]}")
    for i in views:
        for j, d in enumerate(out):
            if hasattr(d, "wrap_aggregator") and hasattr(d, "account"):
                raise ConfigError(
                    f"{d.registry_name} calibrates its noise to each client's own update at unit weight; "
                    f"{out[i].registry_name} shows the server only example-weighted group means, which breaks "
                    "that sensitivity bound: drop one of the two", f"defenses.{j}",
                )
    return out


class FllabStrategy(FedAvg):
    """Flower ``FedAvg`` with fllab's aggregation and server-side defenses (module docstring).

    ``aggregator``: a registered aggregator (``"krum"`` or ``{"name": "krum", "f": 1}``);
    ``defenses``: server-side defense specs (``dp_fedavg``, ``secure_aggregation``);
    ``upload``: what the clients' records hold (``weights``, ``delta`` or ``gradient``);
    ``server_lr``: the server step size (the FedSGD learning rate for gradients);
    ``num_rounds``: rounds planned, needed by a ``target_epsilon`` when :meth:`start` is not used;
    ``seed``: root of the secure-aggregation grouping stream; other keywords go to ``FedAvg``.
    """

    def __init__(
        self,
        aggregator: Any = "mean",
        defenses: Sequence[Any] = (),
        *,
        upload: str = "weights",
        server_lr: float = 1.0,
        num_rounds: int | None = None,
        seed: int = 0,
        **fedavg: Any,
    ):
        super().__init__(**fedavg)
        load_plugins()
        try:
            self.upload = check_upload(upload)
        except ValueError as err:
            raise ConfigError(str(err), "upload") from None
        self.base_aggregator = AGGREGATORS.build(aggregator, "aggregator")
        self.defenses = build_server_defenses(defenses)
        self.aggregator: Any = self.base_aggregator
        for defense in self.defenses:
            if hasattr(defense, "wrap_aggregator"):
                self.aggregator = defense.wrap_aggregator(self.aggregator)
        self.server_lr = float(server_lr)
        self.num_rounds = num_rounds
        self.seed = int(seed)
        self.num_nodes = 0
        self.rounds: list[RoundRecord] = []
        self._sent: tuple[int, ArrayRecord] | None = None
        self._validated = False

    # -- validation ----------------------------------------------------------------------------
    def validate(self, clients_per_round: int, num_nodes: int, arrays: ArrayRecord, num_rounds: int | None = None) -> None:
        """Check the aggregator and the defenses against ``clients_per_round`` of ``num_nodes``
        nodes and plan the defenses; ConfigError (one line naming the field) on failure."""
        n = int(clients_per_round)
        try:
            self.base_aggregator.check(n)
        except ValueError as err:
            raise ConfigError(f"{err} (clients sampled per round = {n})", "aggregator") from None
        rounds = num_rounds if num_rounds is not None else self.num_rounds
        for i, defense in enumerate(self.defenses):
            k = getattr(defense.params, "group_size", None)
            if k is not None and k > n:
                raise ConfigError(f"group_size {k} exceeds the {n} clients sampled per round", f"defenses.{i}.group_size")
            if hasattr(defense, "plan"):
                if rounds is None and getattr(defense.params, "target_epsilon", None) is not None:
                    raise ConfigError("target_epsilon needs the number of rounds: pass num_rounds or use start()", f"defenses.{i}")
                try:
                    defense.plan(rounds=rounds or 1, num_clients=num_nodes, clients_per_round=n, model=shapes_handle(arrays))
                except ValueError as err:
                    raise ConfigError(str(err), f"defenses.{i}") from None
        self._validated = True

    # -- Flower hooks --------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs: Any):
        """Flower's round loop, after noting the planned number of rounds (for ``target_epsilon``)."""
        self.prepare(num_rounds)
        return super().start(grid, initial_arrays, num_rounds, **kwargs)

    def prepare(self, num_rounds: int) -> None:
        """Note the planned rounds and forget any previous run (called by :meth:`start`, and by a
        wrapping strategy's start)."""
        self.num_rounds = num_rounds
        self.rounds, self._validated = [], False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample as FedAvg does, validate before the first round, and remember what was sent."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.num_nodes = len(list(grid.get_node_ids()))
        if not self._validated:
            self.validate(len(messages), self.num_nodes, arrays)
        self._sent = (server_round, arrays)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._sent is None or self._sent[0] != server_round:
            raise RuntimeError(f"aggregate_train for round {server_round} without configure_train for it")
        sent_record = self._sent[1]
        sent = record_to_flat(sent_record)
        contents = [m.content for m in valid]
        updates = torch.stack([as_update(record_to_flat(_arrays(c, self.arrayrecord_key)), sent, self.upload) for c in contents])
        weights = torch.tensor([float(_metrics(c)[self.weighted_by_key]) for c in contents])
        ids = [int(m.metadata.src_node_id) for m in valid]
        aggregate = self.aggregate_updates(server_round, updates, weights, ids)
        step = self.server_lr * aggregate
        new = sent - step if self.upload == "gradient" else sent + step
        record = RoundRecord(server_round, ids, [int(w) for w in weights.tolist()])
        for defense in self.defenses:
            account = getattr(defense, "account", None)
            if account is not None:
                record.privacy.update(account(server_round - 1, ids, [], max(self.num_nodes, len(ids))))
        flagged = getattr(self.base_aggregator, "last_flagged", None)
        record.flagged = None if flagged is None else [int(c) for c in flagged]
        self.rounds.append(record)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        if CLIENT_ID_KEY in metrics:  # an id, not a quantity to average
            del metrics[CLIENT_ID_KEY]
        client_eps = [float(_metrics(c)["privacy.epsilon"]) for c in contents if "privacy.epsilon" in _metrics(c)]
        if client_eps:  # record-level DP-SGD in the clients: the worst-off client's guarantee
            metrics["privacy.epsilon"] = max(client_eps)
        for key, value in record.privacy.items():
            metrics[key] = float(value)
        return flat_to_record(new, sent_record), metrics

    def aggregate_updates(self, server_round: int, updates: torch.Tensor, weights: torch.Tensor, client_ids: list[int]) -> torch.Tensor:
        """Steps 2-4 of the module docstring on stacked (n, d) updates: what the engine does
        between the uploads and the server step."""
        for defense in self.defenses:
            if hasattr(defense, "transform") and hasattr(defense, "wrap_aggregator"):  # dp_fedavg's clip (deterministic)
                gen = torch.Generator(device="cpu")
                updates = torch.stack([defense.transform(u, gen) for u in updates])
        for defense in self.defenses:
            if hasattr(defense, "server_view"):
                uploads = defense.server_view(updates, weights, numpy_gen(self.seed, "defense", defense.registry_name, server_round - 1))
                if len(uploads) != updates.shape[0]:
                    seen = torch.stack([u.update for u in uploads])
                    seen_w = torch.tensor([float(u.num_examples) for u in uploads])
                    return self.aggregator(seen, seen_w, client_ids=None)
        return self.aggregator(updates, weights, client_ids=client_ids)

    def summary(self) -> None:
        super().summary()
        names = [getattr(d, "registry_name", "?") for d in self.defenses]
        log(INFO, "\t└──> fllab: aggregator %s, server defenses %s, upload %s", self.base_aggregator.registry_name, names, self.upload)


def _arrays(content: Any, key: str) -> ArrayRecord:
    if key in content.array_records:
        return content.array_records[key]
    return next(iter(content.array_records.values()))


def _metrics(content: Any) -> MetricRecord:
    return next(iter(content.metric_records.values()))
