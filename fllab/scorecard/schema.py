"""The scorecard file format: pydantic models with unknown keys forbidden at every level.

A scorecard asks one question of a list of defense settings: what each costs in accuracy and
what it buys against one attack of each family.  Each family attacks on its own *testbed* (a
scenario without a name, declared once), because the families need different federations
(inversion: small batches; membership: a model that memorises; poisoning: enough clients for
a robust aggregator) and because combining them in one run confounds them (poisoning changes
the model the passive attacks observe; a malicious client could be a target)::

    name: quickstart
    threads: 1
    scorecard:
      seeds: [0, 1, 2]
      defenses:
        - {label: none}
        - {label: dp_sgd_eps4, defenses: [{name: dp_sgd, target_epsilon: 4.0}]}
        - {label: krum, aggregator: {name: krum, f: 2}}
      inversion: {testbed: {task: ..., federation: ..., algorithm: ...}, attack: {name: inverting_gradients}}
      membership: {testbed: {...}, attack: {name: loss}}
      poisoning: {testbed: {...}, attack: {name: sign_flip, fraction: 0.2}}
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from ..scenario.schema import Component, EvaluationCfg, FederationCfg, Strict, TaskCfg, _component

#: the attack families a scorecard scores, in column order; the first two only observe
FAMILIES: tuple[str, ...] = ("inversion", "membership", "poisoning")
PASSIVE: frozenset[str] = frozenset({"inversion", "membership"})
Family = Literal["inversion", "membership", "poisoning"]

_LABEL = r"^[A-Za-z0-9_.\-]+$"


class Testbed(Strict):
    """A scenario without name, seed or attacks: the federation one family is attacked on."""

    task: TaskCfg
    federation: FederationCfg
    algorithm: Component
    aggregator: Component = Field(default_factory=lambda: Component(name="mean"))
    defenses: list[Component] = Field(default_factory=list, description="defenses every setting keeps (rarely needed)")
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    executor: Component = Field(default_factory=lambda: Component(name="serial"))

    _norm = field_validator("algorithm", "aggregator", "executor", mode="before")(_component)

    @field_validator("defenses", mode="before")
    @classmethod
    def _norm_list(cls, value: Any) -> Any:
        return [_component(v) for v in value] if isinstance(value, list) else value


class FamilyCfg(Strict):
    """One family's attack and the testbed it attacks."""

    testbed: Testbed
    attack: Component = Field(description="one registered attack of this family, with its params")

    _norm = field_validator("attack", mode="before")(_component)


class DefenseSetting(Strict):
    """One row of the scorecard: what the defender deploys, applied to every family's testbed."""

    label: str = Field(pattern=_LABEL, description="row name (letters, digits, _ . -)")
    defenses: list[Component] = Field(default_factory=list, description="defenses added to each testbed's")
    aggregator: Component | None = Field(None, description="replaces each testbed's aggregator")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted path -> value, applied to every testbed")
    per_family: dict[Family, dict[str, Any]] = Field(
        default_factory=dict, description="family -> {dotted path: value}, applied to that family's testbed only"
    )

    _norm = field_validator("aggregator", mode="before")(_component)

    @field_validator("defenses", mode="before")
    @classmethod
    def _norm_list(cls, value: Any) -> Any:
        return [_component(v) for v in value] if isinstance(value, list) else value


class ScorecardCfg(Strict):
    defenses: list[DefenseSetting] = Field(min_length=1, description="the rows; the reference row is the undefended one")
    reference: str | None = Field(None, description="label of the no-defense row (default: the first)")
    utility: Family | None = Field(
        None, description="whose training gives utility.accuracy (default: membership, else inversion, else "
        "poisoning's no-attack twin)"
    )
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1, description="root seeds")
    inversion: FamilyCfg | None = None
    membership: FamilyCfg | None = None
    poisoning: FamilyCfg | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ScorecardCfg":
        labels = [d.label for d in self.defenses]
        twice = sorted({lab for lab in labels if labels.count(lab) > 1})
        if twice:
            raise ValueError(f"defense labels must be unique; repeated: {', '.join(twice)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique (got {self.seeds})")
        if not self.families:
            raise ValueError(f"declare at least one of {', '.join(FAMILIES)}")
        if self.reference is not None and self.reference not in labels:
            raise ValueError(f"reference {self.reference!r} is not a defense label; labels: {', '.join(labels)}")
        if self.utility is not None and self.utility not in self.families:
            raise ValueError(f"utility {self.utility!r} names a family that is not declared; declared: {', '.join(self.families)}")
        return self

    @property
    def families(self) -> list[str]:
        return [f for f in FAMILIES if getattr(self, f) is not None]

    @property
    def reference_label(self) -> str:
        return self.reference or self.defenses[0].label

    @property
    def utility_family(self) -> str:
        if self.utility:
            return self.utility
        return next(f for f in ("membership", "inversion", "poisoning") if f in self.families)


class ScorecardFile(Strict):
    """The whole file: a name, run-wide settings, and the ``scorecard`` block."""

    name: str = Field(pattern=_LABEL, description="letters, digits, _ . -")
    description: str = ""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: PositiveInt | None = Field(None, description="torch intra-op threads; null = torch default")
    scorecard: ScorecardCfg
