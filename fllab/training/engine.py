"""The round loop.  The engine owns the truth (client data, who is malicious) and hands each
attack only the observation its position allows (see :mod:`fllab.types`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..data.partitions import partition_table
from ..errors import ConfigError
from ..scenario.build import Setup, malicious_count
from ..seeding import derive_seed, numpy_gen, torch_gen
from ..types import ClientTask, DatasetBundle, EvalContext, ModelHandle, PoisonObservation, TensorData
from ..models.flat import flatten_params, load_flat_
from .client import ClientRunner
from .drivers import DRIVERS, RoundView, Upload
from .local import evaluate


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("cuda requested but torch sees no CUDA device; use cpu or auto", "device")
    return requested


@dataclass
class AttackOutcome:
    """What one attack produced: metrics for summary.json, rows/figures for the report."""

    family: str
    metrics: dict[str, float] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # relative path under artefacts/<attack> -> bytes


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


@dataclass
class EngineResult:
    metrics: dict[str, float]
    rounds: list[dict[str, Any]]
    partition: dict[str, Any]
    attacks: dict[str, AttackOutcome]
    final_params: torch.Tensor


class Engine:
    """Simulates the federation described by a :class:`Setup`."""

    def __init__(
        self,
        setup: Setup,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self.setup = setup
        self.sc = setup.scenario
        self.device = pick_device(self.sc.device)
        self.on_round = on_round
        self.progress = progress
        self.root = self.sc.seed

    # ------------------------------------------------------------------------------ set-up
    def prepare(self) -> None:
        """Load data, partition it, build the model factory, assign and equip malicious clients.
        Every failure here is a config error: nothing has trained yet."""
        sc = self.sc
        self.bundle: DatasetBundle = self.setup.dataset.load()
        n_train = len(self.bundle.train)
        if sc.federation.num_clients > n_train:
            raise ConfigError(
                f"{sc.federation.num_clients} clients but the training set has {n_train} examples", "federation.num_clients"
            )
        labels = self.bundle.train.y.numpy()
        try:
            self.parts = self.setup.partition.split(labels, sc.federation.num_clients, numpy_gen(self.root, "partition"))
        except ValueError as err:
            raise ConfigError(str(err), "federation.partition") from None
        train = self.bundle.train.to(self.device)
        self.client_data: list[TensorData] = [train.subset(torch.as_tensor(p, device=self.device)) for p in self.parts]
        self.test = self.bundle.test.to(self.device)
        model_cls, shape, classes = self.setup.model, self.bundle.input_shape, self.bundle.num_classes
        build = lambda: model_cls.build(shape, classes)  # noqa: E731
        wrap = getattr(self.setup.algorithm, "wrap_model", None)  # bundles that change the network (FRL, HyperFL)
        self.model_handle = ModelHandle(wrap(build) if wrap else build, shape, classes)
        self.client_states: dict[int, Any] = {}
        fed = sc.federation
        for i, defense in enumerate(self.setup.defenses):  # defenses that calibrate to the federation and model
            if hasattr(defense, "plan"):
                try:
                    defense.plan(rounds=fed.rounds, num_clients=fed.num_clients, clients_per_round=fed.per_round, model=self.model_handle)
                except ValueError as err:
                    raise ConfigError(str(err), f"defenses.{i}") from None
        self.privacy: dict[str, float] = {}  # latest privacy.* figures reported by accounting defenses
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.root, "init"))
            self.server_model = self.model_handle.build().to(self.device)
        self.global_params = flatten_params(self.server_model)
        self.runner = ClientRunner(self.model_handle, self.setup.algorithm, self.setup.defenses)
        # bundles that aggregate their own way (FRL votes) replace the scenario's aggregator
        self.aggregator = getattr(self.setup.algorithm, "aggregate", None) or self.setup.aggregator
        for defense in self.setup.defenses:  # server-side defenses wrap the aggregation rule
            if hasattr(defense, "wrap_aggregator"):
                self.aggregator = defense.wrap_aggregator(self.aggregator)
        self._assign_malicious()
        self.drivers = [DRIVERS[a.family](a, self) for a in self.setup.attacks if a.family in DRIVERS]

    def _assign_malicious(self) -> None:
        order = numpy_gen(self.root, "malicious").permutation(self.sc.federation.num_clients)
        self.malicious: dict[int, Any] = {}  # client id -> poisoning attack
        taken = 0
        for attack in self.setup.attacks:
            if attack.family != "poisoning":
                continue
            k = malicious_count(attack.params.fraction, self.sc.federation.num_clients)
            for cid in order[taken : taken + k]:
                self.malicious[int(cid)] = attack
                if hasattr(attack, "poison_data"):
                    gen = torch_gen(self.root, "attack", attack.registry_name, "data", int(cid))
                    poisoned = attack.poison_data(self.client_data[cid].to("cpu"), gen, self.bundle.num_classes)
                    self.client_data[cid] = poisoned.to(self.device)
            taken += k

    # ------------------------------------------------------------------------------ rounds
    def sample(self, rnd: int) -> list[int]:
        fed = self.sc.federation
        if fed.per_round == fed.num_clients:
            return list(range(fed.num_clients))
        picked = numpy_gen(self.root, "sampling", rnd).choice(fed.num_clients, fed.per_round, replace=False)
        return sorted(int(c) for c in picked)

    def acting(self, rnd: int, cid: int) -> bool:
        """Whether client ``cid``'s upload of round ``rnd`` is malicious: a data-poisoning client's
        always, a model-poisoning client's from its attack's ``start_round`` on (the truth that
        detection is scored against)."""
        attack = self.malicious.get(cid)
        return attack is not None and (hasattr(attack, "poison_data") or rnd >= attack.params.start_round)

    def _poison(self, rnd: int, sampled: list[int], updates: torch.Tensor, weights: torch.Tensor) -> None:
        """Replace the malicious clients' uploads with what their attack crafts (in place)."""
        by_attack: dict[str, list[int]] = {}
        for pos, cid in enumerate(sampled):
            attack = self.malicious.get(cid)
            if attack is not None and hasattr(attack, "craft") and rnd >= attack.params.start_round:
                by_attack.setdefault(attack.registry_name, []).append(pos)
        honest_mask = torch.tensor([cid not in self.malicious for cid in sampled], device=updates.device)
        for attack in self.setup.attacks:
            pos = by_attack.get(attack.registry_name)
            if not pos:
                continue
            omniscient = getattr(attack, "knowledge", "own") == "omniscient"
            obs = PoisonObservation(
                round=rnd,
                num_clients=len(sampled),
                num_malicious=len(pos),
                global_params=self.global_params.clone(),
                own_updates=updates[pos].clone(),
                kind=self.setup.algorithm.sends,
                seed=derive_seed(self.root, "attack", attack.registry_name, rnd),
                benign_updates=updates[honest_mask].clone() if omniscient else None,
                aggregator=self.aggregator if omniscient else None,
            )
            crafted = attack.craft(obs)
            if crafted.shape != (len(pos), updates.shape[1]):
                raise RuntimeError(f"{attack.registry_name}.craft returned {tuple(crafted.shape)}, expected {(len(pos), updates.shape[1])}")
            updates[pos] = crafted.to(updates.dtype)

    def server_view(self, rnd: int, updates: torch.Tensor, weights: torch.Tensor) -> list[Upload]:
        """What the server receives: each client's upload, or a view defense's grouping of them."""
        for defense in self.setup.defenses:
            if hasattr(defense, "server_view"):
                return defense.server_view(updates, weights, numpy_gen(self.root, "defense", defense.registry_name, rnd))
        return [Upload((i,), updates[i], int(weights[i])) for i in range(updates.shape[0])]

    def evaluate(self) -> dict[str, float]:
        own = getattr(self.setup.algorithm, "evaluate", None)  # e.g. HyperFL: personalised models
        if own is not None:
            ctx = EvalContext(
                self.model_handle, self.global_params, self.test, tuple(self.client_data), dict(self.client_states),
                self.bundle.num_classes,
            )
            return own(ctx)
        load_flat_(self.server_model, self.global_params)
        return evaluate(self.server_model, self.test, self.sc.evaluation.batch_size)

    def run(self) -> EngineResult:
        if not hasattr(self, "global_params"):
            self.prepare()
        sc, setup = self.sc, self.setup
        rounds: list[dict[str, Any]] = []
        executor = setup.executor
        last_eval: dict[str, float] = {}
        detection = DetectionTally()
        try:
            for rnd in range(sc.federation.rounds):
                t0 = time.perf_counter()
                sampled = self.sample(rnd)
                tasks = [
                    ClientTask(
                        cid, rnd, self.global_params, self.client_data[cid], derive_seed(self.root, "client", cid, rnd),
                        self.device, self.client_states.get(cid),
                    )
                    for cid in sampled
                ]
                results = executor.map(self.runner, tasks)
                for res in results:
                    if res.state is not None:
                        self.client_states[res.client_id] = res.state
                updates = torch.stack([r.update for r in results])
                weights = torch.tensor([float(r.num_examples) for r in results], device=updates.device)
                if self.malicious:
                    self._poison(rnd, sampled, updates, weights)
                uploads = self.server_view(rnd, updates, weights)
                if self.drivers:
                    view = RoundView(rnd, sampled, results, uploads, self.global_params)
                    for driver in self.drivers:
                        driver.on_round(view)
                per_client = len(uploads) == len(sampled)
                if per_client:
                    aggregate = self.aggregator(updates, weights, client_ids=sampled)
                else:  # secure aggregation: the server only has the group sums
                    seen = torch.stack([u.update for u in uploads])
                    seen_w = torch.tensor([float(u.num_examples) for u in uploads], device=seen.device)
                    aggregate = self.aggregator(seen, seen_w, client_ids=None)
                self.global_params = setup.algorithm.server_step(self.global_params, aggregate)
                record: dict[str, Any] = {
                    "round": rnd,
                    "train_loss": float(np.mean([r.metrics.get("train_loss", float("nan")) for r in results])),
                    "clients": sampled,
                }
                for key in sorted({k for r in results for k in r.metrics} - {"train_loss"}):  # e.g. run.upload_bytes
                    record[key] = float(np.mean([r.metrics[key] for r in results if key in r.metrics]))
                round_metrics = getattr(setup.algorithm, "round_metrics", None)  # e.g. lora.aggregation_error
                if round_metrics is not None:
                    record.update(round_metrics(results))
                for defense in setup.defenses:  # privacy spent so far, per accounting defense
                    account = getattr(defense, "account", None)
                    if account is not None:
                        spent = account(rnd, sampled, results, self.sc.federation.num_clients)
                        record.update(spent)
                        self.privacy.update(spent)
                flagged = getattr(setup.aggregator, "last_flagged", None)
                if flagged is not None:
                    record["flagged"] = list(flagged)
                    if per_client:  # flagged ids are client ids (not secure-aggregation groups)
                        detection.add(set(flagged), {c for c in sampled if self.acting(rnd, c)})
                if (rnd + 1) % sc.evaluation.every == 0 or rnd == sc.federation.rounds - 1:
                    last_eval = self.evaluate()
                    record["test_accuracy"] = last_eval["accuracy"]
                    record["test_loss"] = last_eval["loss"]
                record["seconds"] = time.perf_counter() - t0
                rounds.append(record)
                if self.on_round:
                    self.on_round(record)
                if self.progress:
                    self.progress(1)
        finally:
            executor.close()
        metrics = {"utility.accuracy": last_eval["accuracy"], "utility.loss": last_eval["loss"], **self.privacy, **detection.metrics()}
        summary_metrics = getattr(setup.algorithm, "summary_metrics", None)  # run-level figures of a bundle
        if summary_metrics is not None:
            metrics.update(summary_metrics(rounds))
        attacks: dict[str, AttackOutcome] = {}
        for driver in self.drivers:
            outcome = driver.finish()
            if outcome is not None:
                attacks[driver.attack.registry_name] = outcome
        for attack in setup.attacks:
            if hasattr(attack, "evaluate"):
                load_flat_(self.server_model, self.global_params)
                out = attack.evaluate(self.server_model, self.test)
                attacks[attack.registry_name] = AttackOutcome(attack.family, dict(out))
        # Two attacks of one family write the same metric names: the summary's plain names belong
        # to the first one declared in the scenario; every attack's own values are in attacks.json.
        for attack in setup.attacks:
            outcome = attacks.get(attack.registry_name)
            for key, value in (outcome.metrics if outcome else {}).items():
                metrics.setdefault(key, value)
        table = partition_table(self.bundle.train.y.numpy(), self.parts, self.bundle.num_classes)
        for row in table:
            row["malicious"] = row["client"] in self.malicious
        partition = {"num_classes": self.bundle.num_classes, "class_names": list(self.bundle.class_names), "clients": table}
        return EngineResult(metrics, rounds, partition, attacks, self.global_params)
