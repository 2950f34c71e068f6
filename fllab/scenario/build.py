"""From a validated :class:`Scenario` to live components, with every cross-component check done
before any training: component params, aggregator vs clients per round, attack needs vs what the
algorithm sends, federation sizes vs the data."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import CapabilityError, ConfigError
from ..hooks import has_hook
from ..lora.model import build_model, check_public_split
from ..registry import AGGREGATORS, ALGORITHMS, ATTACKS, DATASETS, DEFENSES, EXECUTORS, PARTITIONS, Registry
from ..types import ModelHandle
from .schema import Component, Scenario


@dataclass
class Setup:
    """A scenario's components, built and cross-checked."""

    scenario: Scenario
    resolved: dict[str, Any]  # the scenario with every default filled in (config.resolved.yaml)
    dataset: Any
    model: Any
    partition: Any
    algorithm: Any
    aggregator: Any
    defenses: list[Any]
    attacks: list[Any]
    executor: Any


def _build(registry: Registry, comp: Component, path: str) -> tuple[Any, dict[str, Any]]:
    obj = registry.build(comp.spec(), path)
    return obj, {"name": comp.name, **obj.params.model_dump(mode="json")}


def resolve(scenario: Scenario) -> Setup:
    from ..defenses.aggregators.byzantine import with_default_f

    scenario = with_default_f(scenario)  # an unset aggregator f: the declared malicious clients (ByzFL's default)
    resolved = scenario.model_dump(mode="json", exclude={"sweep", "tracking"})  # tracking changes no result
    dataset, resolved["task"]["dataset"] = _build(DATASETS, scenario.task.dataset, "task.dataset")
    model, resolved["task"]["model"] = build_model(scenario.task.model.spec(), "task.model")
    check_public_split(model, scenario.task.dataset.spec())
    partition, resolved["federation"]["partition"] = _build(PARTITIONS, scenario.federation.partition, "federation.partition")
    algorithm, resolved["algorithm"] = _build(ALGORITHMS, scenario.algorithm, "algorithm")
    aggregator, resolved["aggregator"] = _build(AGGREGATORS, scenario.aggregator, "aggregator")
    executor, resolved["executor"] = _build(EXECUTORS, scenario.executor, "executor")
    defenses, attacks = [], []
    for i, comp in enumerate(scenario.defenses):
        obj, resolved["defenses"][i] = _build(DEFENSES, comp, f"defenses.{i}")
        defenses.append(obj)
    for i, comp in enumerate(scenario.attacks):
        obj, resolved["attacks"][i] = _build(ATTACKS, comp, f"attacks.{i}")
        attacks.append(obj)
    setup = Setup(scenario, resolved, dataset, model, partition, algorithm, aggregator, defenses, attacks, executor)
    check_capabilities(setup)
    return setup


def malicious_count(fraction: float, num_clients: int) -> int:
    return max(1, math.floor(fraction * num_clients + 1e-9))


def check_capabilities(setup: Setup) -> None:
    fed = setup.scenario.federation
    if has_hook(setup.algorithm, "aggregate") and setup.aggregator.registry_name != "mean":
        raise CapabilityError(
            f"algorithm {setup.algorithm.registry_name} aggregates its own way; remove the aggregator entry", "aggregator"
        )
    try:
        setup.aggregator.check(fed.per_round)
    except ValueError as err:
        raise ConfigError(f"{err} (federation.clients_per_round = {fed.per_round})", "aggregator") from None
    if getattr(setup.algorithm, "needs_every_client", False) and fed.per_round != fed.num_clients:
        raise ConfigError(
            f"algorithm {setup.algorithm.registry_name} needs every client every round; remove clients_per_round "
            f"(got {fed.per_round} of {fed.num_clients})",
            "federation.clients_per_round",
        )
    if has_hook(setup.algorithm, "account"):  # one accountant owns privacy.epsilon
        for i, defense in enumerate(setup.defenses):
            if has_hook(defense, "account"):
                raise ConfigError(
                    f"algorithm {setup.algorithm.registry_name} accounts its own privacy; {defense.registry_name} would "
                    "report a second epsilon: drop the defense",
                    f"defenses.{i}",
                )
    sends = setup.algorithm.sends.value
    names = [a.registry_name for a in setup.attacks]
    if len(set(names)) != len(names):
        raise ConfigError("each attack may appear once; merge the duplicate entries", "attacks")
    poisoners = 0
    for i, attack in enumerate(setup.attacks):
        if sends not in attack.needs:
            raise CapabilityError(
                f"{attack.registry_name} needs a {' or '.join(sorted(attack.needs))} update; "
                f"algorithm {setup.algorithm.registry_name} sends a {sends}",
                f"attacks.{i}",
            )
        if attack.family == "poisoning":
            poisoners += malicious_count(attack.params.fraction, fed.num_clients)
    if poisoners >= fed.num_clients:
        raise ConfigError(
            f"{poisoners} malicious clients leave no honest client among {fed.num_clients}; lower the fractions",
            "attacks",
        )
    views = [i for i, d in enumerate(setup.defenses) if hasattr(d, "server_view")]
    if len(views) > 1:
        raise ConfigError("only one defense may change what the server sees", f"defenses.{views[1]}")
    for i in views:
        k = setup.defenses[i].params.group_size
        if k > fed.per_round:
            raise ConfigError(f"group_size {k} exceeds the {fed.per_round} clients sampled per round", f"defenses.{i}.group_size")
        for j, defense in enumerate(setup.defenses):
            # accounted server-side noise (DP-FedAvg) is calibrated to one client's own clipped update
            if hasattr(defense, "wrap_aggregator") and hasattr(defense, "account"):
                raise ConfigError(
                    f"{defense.registry_name} calibrates its noise to each client's own update at unit weight; "
                    f"{setup.defenses[i].registry_name} shows the server only example-weighted group means, which breaks "
                    "that sensitivity bound: drop one of the two",
                    f"defenses.{j}",
                )
    for i, defense in enumerate(setup.defenses):
        needs = getattr(defense, "needs", None)
        if needs is not None and sends not in needs:
            raise CapabilityError(
                f"{defense.registry_name} works on {' or '.join(sorted(needs))} updates; "
                f"algorithm {setup.algorithm.registry_name} sends a {sends}",
                f"defenses.{i}",
            )


def plan_defenses(setup: Setup, model: Any) -> None:
    """Let the algorithm and the defenses that calibrate to the federation and the model
    (``plan(rounds=, num_clients=, clients_per_round=, model=)``, e.g. DP-SGD's noise for a target
    epsilon, DIFF2's noise multipliers) do so; a refusal is a ConfigError naming the component.
    ``model`` is a :class:`~fllab.types.ModelHandle`."""
    fed = setup.scenario.federation
    planners = [(setup.algorithm, "algorithm")] + [(d, f"defenses.{i}") for i, d in enumerate(setup.defenses)]
    for component, path in planners:
        if has_hook(component, "plan"):
            try:
                component.plan(rounds=fed.rounds, num_clients=fed.num_clients, clients_per_round=fed.per_round, model=model)
            except ValueError as err:
                raise ConfigError(str(err), path) from None


@dataclass(frozen=True)
class ModelBuilder:
    """Picklable factory of the task's network (worker processes build their own copy)."""

    model: Any  # the registered model component
    input_shape: tuple[int, ...]
    num_classes: int

    def __call__(self) -> Any:
        return self.model.build(self.input_shape, self.num_classes)


def model_handle(setup: Setup, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The public model handle (:class:`~fllab.types.ModelHandle`) for this data shape; an
    algorithm bundle may change the network (``wrap_model``: FRL, HyperFL, LoRA)."""
    build: Any = ModelBuilder(setup.model, tuple(input_shape), num_classes)
    if has_hook(setup.algorithm, "wrap_model"):
        build = setup.algorithm.wrap_model(build)
    return ModelHandle(build, tuple(input_shape), num_classes)


def check_without_data(setup: Setup) -> None:
    """What can be checked of the model without loading the data (``validate --no-data``): when
    the dataset states its ``signature()`` (input shape, classes), the defenses plan against the
    model built on the meta device (e.g. dp_sgd refuses batch norm, as ``run`` does)."""
    signature = getattr(setup.dataset, "signature", None)
    if signature is not None:
        plan_defenses(setup, model_handle(setup, *signature()))
