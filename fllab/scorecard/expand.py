"""A scorecard's cells: one plain scenario per (family, defense setting, seed), like a sweep's.

Each cell is the family's testbed with the setting applied (its ``defenses`` appended to the
testbed's, its ``aggregator`` in place of the testbed's, then its dotted ``set`` and
``per_family`` overrides) and the family's one attack.  An aggregator ``f`` a setting leaves
unset is the cell's number of malicious clients (:mod:`fllab.defenses.aggregators.byzantine`):
the poisoning attack's on the poisoning testbed, 0 on the passive ones.  The confound rules hold by
construction: a cell carries exactly one attack, so the passive cells (inversion, membership)
have no malicious client at all, and their training is that of their no-attack twin (same
config and seed without the attack; the attack only observes).  Poisoning cells switch on
``evaluation.baseline``: their twin gives ``poisoning.accuracy_drop``.

A setting that a family's components refuse (a capability or feasibility check of
:func:`fllab.scenario.build.resolve`) becomes a cell that carries the one-line reason instead of
a setup: the scorecard shows it as "n/a" with that reason.  The reference (no-defense) setting
must work on every testbed; its refusal is the file's error.
"""
from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from ..defenses.aggregators.byzantine import with_default_f
from ..errors import ConfigError
from ..registry import AGGREGATORS, ATTACKS, DEFENSES, did_you_mean, format_validation_error
from ..runner import Cell, baseline_setup, needs_baseline
from ..scenario.build import Setup, resolve
from ..scenario.loader import cell_id, set_path, validate_schema
from .schema import DefenseSetting, ScorecardFile


def parse(data: dict[str, Any]) -> ScorecardFile:
    """Validate a scorecard mapping (after ``--set`` overrides); errors name the YAML path."""
    try:
        return ScorecardFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", ScorecardFile)) from None


def is_scorecard(data: dict[str, Any]) -> bool:
    return "scorecard" in data


def _load_components() -> None:
    from .. import components  # noqa: F401  (registers the built-in components)
    from ..registry import load_plugins

    load_plugins()


def _check_attack(sc: ScorecardFile, family: str) -> None:
    """The attack slot holds a known attack of that family (a wrong one is the file's error)."""
    name = getattr(sc.scorecard, family).attack.name
    path = f"scorecard.{family}.attack.name"
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}{did_you_mean(name, list(ATTACKS))} (see fllab list attack)", path)
    declared = getattr(ATTACKS[name], "family", None)
    if declared != family:
        raise ConfigError(f"{name!r} is a {declared} attack; this slot takes a {family} attack", path)


def _check_setting(setting: DefenseSetting, i: int) -> None:
    """A setting's own components build from their params: a typo is the file's error, not "n/a"."""
    for j, comp in enumerate(setting.defenses):
        DEFENSES.build(comp.spec(), f"scorecard.defenses.{i}.defenses.{j}")
    if setting.aggregator is not None:
        AGGREGATORS.build(setting.aggregator.spec(), f"scorecard.defenses.{i}.aggregator")


def cell_scenario(sc: ScorecardFile, family: str, setting: DefenseSetting, seed: int) -> dict[str, Any]:
    """The plain scenario of one cell (validated against the scenario schema)."""
    fam = getattr(sc.scorecard, family)
    data: dict[str, Any] = {
        "name": f"{sc.name}.{family}.{setting.label}",
        "description": f"scorecard {sc.name}: {family} attack {fam.attack.name} against defense setting {setting.label}",
        "seed": seed,
        "device": sc.device,
        "threads": sc.threads,
        **fam.testbed.model_dump(mode="json"),
        "attacks": [fam.attack.spec()],
    }
    data["defenses"] = [*data["defenses"], *(d.spec() for d in setting.defenses)]
    if setting.aggregator is not None:
        data["aggregator"] = setting.aggregator.spec()
    for path, value in [*setting.set.items(), *setting.per_family.get(family, {}).items()]:
        set_path(data, path, copy.deepcopy(value), origin=f"scorecard.defenses[{setting.label}]")
    if family == "poisoning":
        data["evaluation"]["baseline"] = True
    try:
        validate_schema(data)
    except ConfigError as err:
        raise ConfigError(f"{family} testbed with setting {setting.label!r}: {err}", "scorecard") from None
    return data


def _resolve(data: dict[str, Any]) -> Setup:
    # an unset aggregator f is the cell's declared malicious clients: 0 on the passive testbeds
    setup = resolve(with_default_f(validate_schema(data)))
    if needs_baseline(setup):
        baseline_setup(setup)
    return setup


def expand(sc: ScorecardFile) -> list[Cell]:
    """Every cell, resolved before any trains: ``(cell id, {"family", "defense"}, seed, setup or
    the reason it does not apply)``, ordered family by family, setting by setting, seed by seed."""
    card = sc.scorecard
    _load_components()
    for i, setting in enumerate(card.defenses):
        _check_setting(setting, i)
    cells: list[Cell] = []
    for family in card.families:
        _check_attack(sc, family)
        for setting in card.defenses:
            values = {"family": family, "defense": setting.label}
            for seed in card.seeds:
                data = cell_scenario(sc, family, setting, seed)
                try:
                    outcome: Setup | str = _resolve(data)
                except ConfigError as err:
                    if setting.label == card.reference_label:
                        raise ConfigError(f"the reference setting must run on every testbed: {err}", f"scorecard.{family}") from None
                    outcome = str(err)
                cells.append((cell_id(values, seed), values, seed, outcome))
    return cells
