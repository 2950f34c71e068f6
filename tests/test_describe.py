"""``fllab describe`` for aggregators (fllab.description): every registered aggregator says what it
tolerates, every parameter is described, f-parameterised rules state their n/f rule (the same
one their check() enforces) and what an unset f means."""
from __future__ import annotations

import re

import pytest

from fllab.defenses.aggregators.byzantine import F_DEFAULT
from fllab.description import describe_component, render_text
from fllab.errors import ConfigError
from fllab.registry import AGGREGATORS

NAMES = sorted(AGGREGATORS)


@pytest.mark.parametrize("name", NAMES)
def test_every_aggregator_describes_its_threat_model_params_and_paper(name):
    info = describe_component(name)
    assert info["kind"] == "aggregator" and info["summary"] and info["description"]
    assert info["threat_model"] and info["threat_model"][0].isupper(), f"{name}: no one-sentence threat model"
    assert info["references"], f"{name}: no paper"
    for field, spec in info["params"].items():
        assert spec["description"].strip(), f"{name}.{field} has no description"
    text = render_text(info)
    assert f"threat model: {info['threat_model']}" in text
    assert all(f"    {field}: " in text for field in info["params"])
    assert all(f"ref: {ref}" in text for ref in info["references"])


@pytest.mark.parametrize("name", [n for n in NAMES if "f" in AGGREGATORS[n].Params.model_fields])
def test_f_rules_state_their_feasibility_and_default_and_enforce_the_stated_rule(name):
    info = describe_component(name)
    assert info["f_default"] == F_DEFAULT and "f default: " in render_text(info)
    condition = info["feasibility"]
    assert condition and condition.startswith("n ") and "f" in condition
    op, a, b = re.fullmatch(r"n (>=|>) (\d+)f(?: \+ (\d+))?", condition).groups()
    bound = int(a) * 2 + int(b or 0)
    ok = bound if op == ">=" else bound + 1  # the smallest n the stated rule allows with f = 2
    agg = AGGREGATORS.build({"name": name, "f": 2})
    agg.check(ok)
    with pytest.raises(ValueError, match=rf"{name} needs {condition.replace('+', '[+]')} \(f=2, n={ok - 1}\)"):
        agg.check(ok - 1)


def test_known_rules_read_as_in_their_papers():
    rules = {name: describe_component(name)["feasibility"] for name in ("krum", "multi_krum", "bulyan", "trimmed_mean", "nnm", "arc", "monna")}
    assert rules == {"krum": "n > 2f + 2", "multi_krum": "n > 2f + 2", "bulyan": "n >= 4f + 3", "trimmed_mean": "n > 2f",
                     "nnm": "n > 2f", "arc": "n > 2f", "monna": "n > 2f"}
    assert describe_component("mean")["feasibility"] is None and describe_component("mean")["f_default"] is None


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'krum'"):
        describe_component("krun")
