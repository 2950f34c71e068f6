"""What ``fllab describe NAME`` (and ``fllab.describe(NAME)``) tells a user about a registered
component: its parameters (each with its description, type, default and allowed values), its
threat model and its references, as a dict (``--json``) and as text.

Aggregators say more, from their class attributes (:mod:`fllab.defenses.aggregators`): the
threat model in one sentence (what they tolerate, from which paper), the feasibility rule on the
n updates per round and the f Byzantine ones (``feasibility``, e.g. Krum's ``n > 2f + 2``), and
what ``f`` means when a scenario leaves it unset (:mod:`fllab.defenses.aggregators.byzantine`).

(Not named ``fllab/describe.py``: importing such a submodule would replace the package's public
``fllab.describe`` function by the module.)
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .registry import ALL_REGISTRIES, did_you_mean, load_plugins


def _param_table(params_model: Any) -> dict[str, dict[str, Any]]:
    """field -> type, default, description and (for a choice) the allowed values."""
    schema = params_model.model_json_schema()
    table = {}
    for field, spec in schema.get("properties", {}).items():
        table[field] = {
            "type": spec.get("type") or [s.get("type") for s in spec.get("anyOf", [])] or spec.get("$ref") or "any",
            "default": spec.get("default"),
            "description": spec.get("description", ""),
            **({"allowed": spec["enum"]} if "enum" in spec else {}),
        }
    return table


def _aggregator_facts(cls: type) -> dict[str, Any]:
    """The feasibility rule and f's default of an aggregator (None where it has no ``f``)."""
    from .defenses.aggregators.byzantine import F_DEFAULT

    takes_f = "f" in cls.Params.model_fields
    feasibility = getattr(cls, "feasibility", None)
    return {
        "feasibility": feasibility.condition if feasibility is not None else None,
        "f_default": F_DEFAULT if takes_f else None,
    }


def describe_component(name: str) -> dict[str, Any]:
    """A registered component's description as a dict; ConfigError (with a did-you-mean) for an
    unknown name."""
    load_plugins()
    hits = [(kind, reg[name]) for kind, reg in ALL_REGISTRIES.items() if name in reg]
    if not hits:
        every = [n for reg in ALL_REGISTRIES.values() for n in reg]
        raise ConfigError(f"no component named {name!r}{did_you_mean(name, every)} (see fllab list)")
    kind, cls = hits[0]
    info = {
        "name": name,
        "kind": kind,
        "summary": getattr(cls, "summary", ""),
        "description": (cls.__doc__ or "").strip(),
        "family": getattr(cls, "family", None),
        "threat_model": getattr(cls, "threat_model", None),
        "needs": sorted(getattr(cls, "needs", []) or []),
        "sends": getattr(getattr(cls, "sends", None), "value", None),
        "params": _param_table(cls.Params),
        "references": list(getattr(cls, "references", ())),
    }
    if kind == "aggregator":
        info.update(_aggregator_facts(cls))
    return info


def render_text(info: dict[str, Any]) -> str:
    """The terminal form of :func:`describe_component`'s dict."""
    lines = [f"{info['name']} ({info['kind']}{', ' + info['family'] if info['family'] else ''})"]
    if info["description"]:
        lines.append(f"  {' '.join(info['description'].split())}")
    for key in ("threat_model", "sends", "feasibility", "f_default"):
        if info.get(key):
            label = {"feasibility": "needs per round", "f_default": "f default"}.get(key, key.replace("_", " "))
            lines.append(f"  {label}: {info[key]}")
    if info["needs"]:
        lines.append(f"  needs: {', '.join(info['needs'])}")
    lines.append("  params:" if info["params"] else "  params: none")
    for field, spec in info["params"].items():
        allowed = f" one of {spec['allowed']}" if "allowed" in spec else ""
        lines.append(f"    {field}: {spec['type']} = {spec['default']!r}{allowed}  {spec['description']}")
    lines += [f"  ref: {ref}" for ref in info["references"]]
    return "\n".join(lines)
