"""The scenario file format: pydantic models with unknown keys forbidden at every level.

Components are written ``{name: krum, f: 10}`` (or just ``krum``): ``name`` picks the registered
class and the remaining keys are validated against that class's ``Params`` model once the names
are known (:func:`fllab.scenario.build.resolve`).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from ..registry import StrictModel
from ..tracking.config import TrackingCfg

#: torch intra-op threads a scenario may ask for (more is refused; more than the machine's cores
#: is cut to the core count with a warning)
MAX_THREADS = 1024


class Strict(StrictModel):
    """Schema sections: strict values (:class:`~fllab.registry.StrictModel`), unknown keys refused."""


class Component(StrictModel):
    """``name`` plus that component's own parameters (checked against its ``Params``)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def _component(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class TaskCfg(Strict):
    dataset: Component = Field(description="registered dataset, e.g. digits, fashion_mnist, cifar10")
    model: Component = Field(description="registered model, e.g. mlp, convnet, resnet18")

    _norm = field_validator("dataset", "model", mode="before")(_component)


class FederationCfg(Strict):
    num_clients: PositiveInt
    clients_per_round: PositiveInt | None = Field(None, description="sampled per round; null = all clients")
    rounds: PositiveInt
    partition: Component = Field(default_factory=lambda: Component(name="iid"))

    _norm = field_validator("partition", mode="before")(_component)

    @model_validator(mode="after")
    def _sizes(self) -> "FederationCfg":
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be at most num_clients ({self.num_clients})"
            )
        return self

    @property
    def per_round(self) -> int:
        return self.clients_per_round or self.num_clients


class EvaluationCfg(Strict):
    every: PositiveInt = Field(1, description="evaluate the global model every k rounds (and after the last)")
    batch_size: PositiveInt = 1024
    baseline: bool = Field(
        False,
        description="poisoning runs: also train the same scenario without attackers (same seed) and report "
        "utility.baseline_accuracy and poisoning.accuracy_drop (a sweep reuses its matching no-attack cell)",
    )


class CheckpointCfg(Strict):
    every: PositiveInt | None = Field(
        None, description="save a checkpoint every k rounds into the unfinished run directory; `fllab run --resume` continues from it"
    )


class SweepCfg(Strict):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted path -> values; cartesian product")
    cases: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="named axes: axis -> case label -> {dotted path: value}; crossed with the grid and each other",
    )
    seeds: list[NonNegativeInt] = Field(default_factory=list, description="root seeds; empty = the scenario's seed")
    skip_invalid: bool = Field(
        False, description="record cells whose combination is refused (e.g. an attack the algorithm cannot host) as skipped"
    )
    executor: Literal["processes", "ray"] = Field(
        "processes",
        description="where cells run: processes = this machine (fllab sweep --jobs N), ray = Ray tasks, one cell each "
        "(a local Ray started for the sweep, or the cluster at fllab sweep --ray-address)",
    )

    @field_validator("grid", "cases")
    @classmethod
    def _non_empty(cls, grid: dict[str, Any]) -> dict[str, Any]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"entry {key!r} has no values")
        return grid


class Scenario(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="letters, digits, _ . -")
    description: str = ""
    seed: NonNegativeInt = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: PositiveInt | None = Field(
        None, le=MAX_THREADS, description="torch intra-op threads; null = torch default; more than the machine's cores are cut to the core count"
    )
    task: TaskCfg
    federation: FederationCfg
    algorithm: Component
    aggregator: Component = Field(default_factory=lambda: Component(name="mean"))
    defenses: list[Component] = Field(default_factory=list)
    attacks: list[Component] = Field(default_factory=list)
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    executor: Component = Field(default_factory=lambda: Component(name="auto"))
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    sweep: SweepCfg | None = None
    tracking: TrackingCfg | None = Field(None, description="log params, per-round metrics and the report to MLflow / TensorBoard")

    _norm = field_validator("algorithm", "aggregator", "executor", mode="before")(_component)

    @field_validator("defenses", "attacks", mode="before")
    @classmethod
    def _norm_list(cls, value: Any) -> Any:
        return [_component(v) for v in value] if isinstance(value, list) else value
