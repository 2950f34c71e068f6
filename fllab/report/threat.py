"""What a run attacked and defended, read from its ``config.resolved.yaml`` (for report headers).

A reader of a report first needs to know the experiment: which attacks acted, from which family,
and what the defender deployed (defenses, a robust aggregator, an algorithm that changes what is
sent).  Families come from ``attacks.json`` when the engine wrote one for the attack, otherwise
from the attack's registry entry (poisoning attacks act during training and leave no entry).
"""
from __future__ import annotations

from typing import Any, Mapping

import yaml

from .tables import fmt

#: aggregators that are plain averaging, i.e. no defense
PLAIN_AGGREGATORS = {"mean", "fedavg", "weighted_mean"}
#: algorithms that are themselves a defense (they change what clients send)
DEFENSIVE_ALGORITHMS = {"hyperfl", "frl"}


def parse_config(text: str | None) -> dict[str, Any]:
    """The resolved config as a mapping ({} when absent or unreadable: the report still renders)."""
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _spec(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, Mapping):
        params = {k: v for k, v in entry.items() if k != "name"}
        return str(entry.get("name", "?")), params
    return str(entry), {}


def describe_component(entry: Any) -> str:
    """``name (k=v, ...)`` for a component spec, its parameters abbreviated to the first four."""
    name, params = _spec(entry)
    shown = [f"{k}={fmt(v)}" for k, v in list(params.items())[:4]]
    return f"{name} ({', '.join(shown)}{', …' if len(params) > 4 else ''})" if shown else name


def registry_family(name: str) -> str | None:
    """The family an attack's registry entry declares (None when the attack is unknown here)."""
    from .. import components  # noqa: F401  (registers the built-in attacks)
    from ..registry import ATTACKS

    return getattr(ATTACKS.get(name), "family", None)


def attack_family(name: str, attacks_json: Mapping[str, Any]) -> str | None:
    entry = attacks_json.get(name)
    if isinstance(entry, Mapping) and entry.get("family"):
        return str(entry["family"])
    return registry_family(name)


def threat_summary(config: Mapping[str, Any], attacks_json: Mapping[str, Any],
                   partition: Mapping[str, Any] | None) -> dict[str, Any]:
    """``attacked``: one line per attack (family, parameters, malicious clients for poisoning);
    ``defended``: one line per defense, robust aggregator or defensive algorithm; each ``["none"]``
    when empty; ``attacks``: (name, family, params) per attack."""
    clients = (partition or {}).get("clients") or []
    malicious = [str(c.get("client", i)) for i, c in enumerate(clients) if c.get("malicious")]
    attacks, attacked = [], []
    for entry in config.get("attacks") or []:
        name, params = _spec(entry)
        family = attack_family(name, attacks_json)
        attacks.append((name, family, params))
        where = f"{family}: " if family else ""
        extra = f"; {len(malicious)} of {len(clients)} clients malicious" if family == "poisoning" and clients else ""
        attacked.append(f"{describe_component(entry)} [{where.rstrip(': ')}{extra}]" if (family or extra)
                        else describe_component(entry))
    defended = [describe_component(d) for d in config.get("defenses") or []]
    aggregator = config.get("aggregator")
    if aggregator is not None and _spec(aggregator)[0] not in PLAIN_AGGREGATORS:
        defended.append(f"aggregator {describe_component(aggregator)}")
    algorithm = config.get("algorithm")
    if algorithm is not None and _spec(algorithm)[0] in DEFENSIVE_ALGORITHMS:
        defended.append(f"algorithm {describe_component(algorithm)}")
    return {"attacked": attacked or ["none"], "defended": defended or ["none"], "attacks": attacks,
            "malicious": malicious}
