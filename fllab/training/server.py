"""The server half of a round, one method per round, reusable by any loop (the serial loop of
:mod:`fllab.training.engine`, a Ray driver, a Flower strategy).

:meth:`Server.round` runs: sample -> (clients train, through whatever ``run`` the caller gives)
-> poison -> server view -> drivers -> aggregate -> server step -> account -> detect ->
evaluate, and returns the round's record.  A loop that trains clients elsewhere calls
:meth:`Server.tasks` and :meth:`Server.receive` itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.partitions import partition_table
from ..hooks import has_hook
from ..models.flat import flatten_params, load_flat_
from ..seeding import derive_seed, numpy_gen
from ..types import ClientResult, ClientTask, EvalContext
from .drivers import AttackOutcome, FinalState, RoundView, Upload
from .drivers.base import sampled_clients
from .local import evaluate
from .wiring import Federation

RunClients = Callable[[Sequence[ClientTask]], list[ClientResult]]


@dataclass
class DetectionTally:
    """Scores a detecting aggregator (one exposing ``last_flagged``) against the truth of which
    uploads were malicious, pooled over the rounds in which it detected (``last_flagged`` is None
    while a detector warms up): precision = flagged and malicious / flagged, recall = flagged and
    malicious / malicious, each over (client, round) pairs.  A ratio with a zero denominator
    (nothing flagged; no malicious upload) is absent, not zero."""

    true_pos: int = 0
    flagged: int = 0
    malicious: int = 0

    def add(self, flagged: set[int], malicious: set[int]) -> None:
        self.true_pos += len(flagged & malicious)
        self.flagged += len(flagged)
        self.malicious += len(malicious)

    def metrics(self) -> dict[str, float]:
        out = {}
        if self.flagged:
            out["poisoning.detection_precision"] = self.true_pos / self.flagged
        if self.malicious:
            out["poisoning.detection_recall"] = self.true_pos / self.malicious
        return out


def _to(obj: Any, device: str) -> Any:
    """``obj`` with every tensor moved to ``device`` (checkpoints load on the CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to(v, device) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _to(getattr(obj, f.name), device) for f in fields(obj) if f.init})
    return obj


@dataclass
class EngineResult:
    metrics: dict[str, float]
    rounds: list[dict[str, Any]]
    partition: dict[str, Any]
    attacks: dict[str, AttackOutcome]
    final_params: torch.Tensor


class Server:
    """The server of a wired :class:`Federation`: holds the global weights, the clients' private
    states (kept by the simulation on the clients' behalf), the privacy spent and the detection
    tally, and runs one round per call."""

    def __init__(self, fed: Federation):
        self.fed = fed
        self.setup = fed.setup
        self.global_params = flatten_params(fed.server_model)
        self.client_states: dict[int, Any] = {}
        self.privacy: dict[str, float] = {}  # latest privacy.* figures reported by the accounting algorithm or defenses
        self.detection = DetectionTally()
        self.last_eval: dict[str, float] = {}

    # ------------------------------------------------------------------------------ one round
    def sample(self, rnd: int) -> list[int]:
        fed = self.setup.scenario.federation
        return sampled_clients(self.fed.root, rnd, fed.num_clients, fed.per_round)

    def tasks(self, rnd: int) -> list[ClientTask]:
        """The round's client tasks: sampled clients, the global weights, derived seeds."""
        fed = self.fed
        return [
            ClientTask(cid, rnd, self.global_params, fed.client_data[cid], derive_seed(fed.root, "client", cid, rnd), fed.device,
                       self.client_states.get(cid))
            for cid in self.sample(rnd)
        ]

    def round(self, rnd: int, run: RunClients) -> dict[str, Any]:
        """One whole round, clients trained by ``run`` (an executor's ``map``); returns its record."""
        t0 = time.perf_counter()
        tasks = self.tasks(rnd)
        record = self.receive(rnd, tasks, run(tasks))
        record["seconds"] = time.perf_counter() - t0
        return record

    def view(self, rnd: int, updates: torch.Tensor, weights: torch.Tensor) -> list[Upload]:
        """What the server receives: each client's upload, or a view defense's grouping of them."""
        for defense in self.setup.defenses:
            if has_hook(defense, "server_view"):
                return defense.server_view(updates, weights, numpy_gen(self.fed.root, "defense", defense.registry_name, rnd))
        return [Upload((i,), updates[i], int(weights[i])) for i in range(updates.shape[0])]

    def receive(self, rnd: int, tasks: Sequence[ClientTask], results: Sequence[ClientResult]) -> dict[str, Any]:
        """The server half of round ``rnd`` given its tasks and the clients' results."""
        fed, setup = self.fed, self.setup
        sampled = [t.client_id for t in tasks]
        for res in results:
            if res.state is not None:
                self.client_states[res.client_id] = res.state
        updates = torch.stack([r.update for r in results])
        weights = torch.tensor([float(r.num_examples) for r in results], device=updates.device)
        for poisoner in fed.poisoners:
            poisoner.poison(rnd, sampled, updates, self.global_params, fed.aggregator)
        uploads = self.view(rnd, updates, weights)
        view = RoundView(rnd, sampled, results, uploads, self.global_params)
        for driver in fed.drivers:
            driver.on_round(view)
        per_client = len(uploads) == len(sampled)
        if per_client:
            aggregate = fed.aggregator(updates, weights, client_ids=sampled)
        else:  # secure aggregation: the server only has the group sums
            seen = torch.stack([u.update for u in uploads])
            seen_w = torch.tensor([float(u.num_examples) for u in uploads], device=seen.device)
            aggregate = fed.aggregator(seen, seen_w, client_ids=None)
        self.global_params = setup.algorithm.server_step(self.global_params, aggregate)
        record: dict[str, Any] = {
            "round": rnd,
            "train_loss": float(np.mean([r.metrics.get("train_loss", float("nan")) for r in results])),
            "clients": sampled,
        }
        for key in sorted({k for r in results for k in r.metrics} - {"train_loss"}):  # e.g. run.upload_bytes
            record[key] = float(np.mean([r.metrics[key] for r in results if key in r.metrics]))
        if has_hook(setup.algorithm, "round_metrics"):  # e.g. lora.aggregation_error
            record.update(setup.algorithm.round_metrics(results))
        num_clients = setup.scenario.federation.num_clients
        for component in (setup.algorithm, *setup.defenses):  # privacy spent so far (accounting algorithm or defense)
            if has_hook(component, "account"):
                spent = component.account(rnd, sampled, results, num_clients)
                record.update(spent)
                self.privacy.update(spent)
        if has_hook(setup.aggregator, "last_flagged") and setup.aggregator.last_flagged is not None:
            flagged = setup.aggregator.last_flagged
            record["flagged"] = list(flagged)
            if per_client:  # flagged ids are client ids (not secure-aggregation groups)
                self.detection.add(set(flagged), {c for c in sampled if fed.acting(rnd, c)})
        evaluation = setup.scenario.evaluation
        if (rnd + 1) % evaluation.every == 0 or rnd == setup.scenario.federation.rounds - 1:
            self.last_eval = self.evaluate()
            record["test_accuracy"] = self.last_eval["accuracy"]
            record["test_loss"] = self.last_eval["loss"]
        return record

    # ------------------------------------------------------------------------------ checkpoints
    def stateful(self) -> list[tuple[str, Any]]:
        """The components with round-to-round state, by scenario path: the registered ones that
        implement ``state_dict`` (algorithm, aggregator, defenses, attacks) and every driver."""
        setup = self.setup
        named = [("algorithm", setup.algorithm), ("aggregator", setup.aggregator),
                 *((f"defenses.{i}", d) for i, d in enumerate(setup.defenses)),
                 *((f"attacks.{i}", a) for i, a in enumerate(setup.attacks))]
        return [(k, c) for k, c in named if has_hook(c, "state_dict")] + [(f"drivers.{i}", d) for i, d in enumerate(self.fed.drivers)]

    def state_dict(self) -> dict[str, Any]:
        """Everything a later round depends on (:mod:`fllab.state` data): the global weights, the
        clients' private states, the privacy figures, the detection tally, the last evaluation and
        each stateful component's own state.  RNG state needs no saving: every draw derives its
        seed from (purpose, round)."""
        return {
            "global_params": self.global_params, "client_states": dict(self.client_states), "privacy": dict(self.privacy),
            "detection": (self.detection.true_pos, self.detection.flagged, self.detection.malicious),
            "last_eval": dict(self.last_eval), "components": {key: comp.state_dict() for key, comp in self.stateful()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a freshly wired server."""
        device = self.fed.device
        self.global_params = state["global_params"].to(device)
        self.client_states = {int(k): _to(v, device) for k, v in state["client_states"].items()}
        self.privacy, self.last_eval = dict(state["privacy"]), dict(state["last_eval"])
        self.detection = DetectionTally(*state["detection"])
        components = state["components"]
        for key, comp in self.stateful():
            if key not in components:
                raise KeyError(f"the checkpoint has no state for {key}")
            comp.load_state_dict(_to(components[key], device))

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Accuracy and loss of the global model on the test split (or the algorithm's own
        evaluation, e.g. HyperFL's personalised models)."""
        fed = self.fed
        if has_hook(self.setup.algorithm, "evaluate"):
            ctx = EvalContext(
                fed.model_handle, self.global_params, fed.test, tuple(fed.client_data), dict(self.client_states),
                fed.truth.num_classes,
            )
            return self.setup.algorithm.evaluate(ctx)
        return evaluate(self.final_model(), fed.test, self.setup.scenario.evaluation.batch_size)

    def final_model(self) -> torch.nn.Module:
        """The server's model holding the current global weights."""
        return load_flat_(self.fed.server_model, self.global_params)

    def result(self, rounds: list[dict[str, Any]]) -> EngineResult:
        """After the last round: the drivers score, and everything is gathered as data."""
        fed, setup = self.fed, self.setup
        metrics = {"utility.accuracy": self.last_eval["accuracy"], "utility.loss": self.last_eval["loss"], **self.privacy,
                   **self.detection.metrics()}
        if has_hook(setup.algorithm, "summary_metrics"):  # run-level figures of a bundle
            metrics.update(setup.algorithm.summary_metrics(rounds))
        final = FinalState(self.global_params, self.final_model(), dict(self.privacy))
        attacks: dict[str, AttackOutcome] = {}
        for driver in fed.drivers:
            outcome = driver.finish(final)
            if outcome is not None:
                attacks[driver.attack.registry_name] = outcome
        # Two attacks of one family write the same metric names: the summary's plain names belong
        # to the first one declared in the scenario; every attack's own values are in attacks.json.
        for attack in setup.attacks:
            outcome = attacks.get(attack.registry_name)
            for key, value in (outcome.metrics if outcome else {}).items():
                metrics.setdefault(key, value)
        bundle = fed.bundle
        table = partition_table(bundle.train.y.numpy(), fed.parts, bundle.num_classes)
        for row in table:
            row["malicious"] = row["client"] in fed.truth.malicious
        partition = {"num_classes": bundle.num_classes, "class_names": list(bundle.class_names), "clients": table}
        return EngineResult(metrics, rounds, partition, attacks, self.global_params)
