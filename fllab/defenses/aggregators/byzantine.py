"""The number ``f`` of Byzantine updates a robust aggregator tolerates, and its default.

A bare ``aggregator: krum`` used to mean ``f = 0``: Krum, trimmed mean, Bulyan, NNM, ARC and
MoNNA then tolerate no Byzantine update at all, while the scenario's poisoning attack makes 20% of
the clients malicious.  fllab does what ByzFL's benchmark does (``declared_nb_byz`` is copied
into the ``f`` of the aggregator and of every pre-aggregator): an ``f`` the scenario leaves unset
is the number of malicious clients its poisoning attacks declare, at most the clients sampled per
round, in the aggregator and in every inner aggregator of its ``then`` chain.  An ``f`` written in
the scenario is kept as written, 0 included; the resolved config (``config.resolved.yaml``)
shows the value used.  Without a poisoning attack the unset ``f`` stays 0.

González, Guerraoui, Pinot, Rizk, Stephan and Taïani, ByzFL: Research Framework for Robust
Federated Learning, arXiv:2505.24802, 2025.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, NonNegativeInt

from ...registry import AGGREGATORS, ATTACKS, Params, split_spec

#: what an unset ``f`` becomes (``fllab describe`` shows it)
F_DEFAULT = (
    "the number of malicious clients the scenario's poisoning attacks declare, at most the clients per round "
    "(ByzFL's default); 0 without a poisoning attack, and f = 0 guarantees nothing against a Byzantine update"
)
F_DESCRIPTION = "number of Byzantine updates to tolerate per round; unset: the scenario's malicious clients (see 'f default')"


class FParams(Params):
    """Parameters of a rule that tolerates ``f`` Byzantine updates."""

    f: NonNegativeInt = Field(0, description=F_DESCRIPTION)


def takes_f(name: str) -> bool:
    """Whether the registered aggregator ``name`` has an ``f`` parameter."""
    return "f" in AGGREGATORS[name].Params.model_fields


def fill_f(spec: Any, f: int) -> dict[str, Any]:
    """``spec`` (a name or ``{name: ..., **params}``) with ``f`` set wherever it is unset: in the
    aggregator and, recursively, in the inner aggregator of each ``then``."""
    name, raw = split_spec(spec)
    if takes_f(name):
        raw.setdefault("f", f)
    if "then" in raw:
        raw["then"] = fill_f(raw["then"], f)
    return {"name": name, **raw}


def declared_malicious(scenario: Any) -> int:
    """Malicious clients that may take part in one round of ``scenario`` (a validated
    :class:`fllab.scenario.schema.Scenario`): those its poisoning attacks declare, at most the
    clients sampled per round."""
    from ...scenario.build import malicious_count

    fed = scenario.federation
    total = 0
    for i, comp in enumerate(scenario.attacks):
        name, raw = split_spec(comp.spec())
        if name in ATTACKS and getattr(ATTACKS[name], "family", None) == "poisoning":
            fraction = getattr(ATTACKS.parse_params(name, raw, f"attacks.{i}"), "fraction", None)
            if fraction is not None:
                total += malicious_count(fraction, fed.num_clients)
    return min(total, fed.per_round)


def with_default_f(scenario: Any) -> Any:
    """``scenario`` with every unset ``f`` of its aggregator set to :func:`declared_malicious`
    (module docstring); the same object when there is nothing to fill."""
    f = declared_malicious(scenario)
    if f == 0 or scenario.aggregator.name not in AGGREGATORS:
        return scenario  # an unknown name is reported by the build, with its did-you-mean
    spec = fill_f(scenario.aggregator.spec(), f)
    if spec == scenario.aggregator.spec():
        return scenario
    return scenario.model_copy(update={"aggregator": type(scenario.aggregator).model_validate(spec)})
