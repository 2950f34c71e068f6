"""Property tests (issue 10, "Must show"): mutants of every shipped scenario.

1. Any mutant is accepted (exit 0) or refused with exactly one ``error:`` line and exit 2, and a
   refused one writes nothing when run.
2. An accepted mutant, run for one round, exits 0, 1 or 2 without a traceback.

Mutations act on the parsed document (replace a value anywhere with an awkward one, drop a key,
add an unknown key) and on its text (cut it, splice in a YAML fragment).  Both tests are
derandomized and bounded in examples so that they fit the default suite (about a minute together).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fllab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "scenarios").rglob("*.yaml"))

AWKWARD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "krum", "mean", "-1", "1e400", "0x10", "yes", "~", "nan", "digits", "fedavg"]),
    st.lists(st.integers(min_value=-3, max_value=10**12), max_size=3),
    st.dictionaries(st.sampled_from(["name", "f", "lr", "x"]), st.integers(min_value=-2, max_value=5), max_size=2),
)
FRAGMENTS = ["&a [*a]", "{", "]", "!!binary Zm9v", "!!python/object:os.system ls", "\t", "- - -", "? x", "*undefined", "\x00", "name: x"]


def load(rel: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / rel).read_text())


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in the document (the document itself excluded)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths(value, (*prefix, key)))
    return out


@st.composite
def mutants(draw: Any) -> str:
    """A shipped scenario with one or two mutations, as YAML text."""
    doc = load(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(paths(doc)))
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "drop", "unknown"]))
        if op == "replace":
            parent[where[-1]] = draw(AWKWARD)
        elif op == "drop" and isinstance(parent, dict):
            del parent[where[-1]]
        elif op == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["nmae", "rounds_", "x", "sweep"]))] = draw(AWKWARD)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if draw(st.integers(0, 4)) == 0:  # a text-level mutation
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(FRAGMENTS + [""])) + text[cut:] if draw(st.booleans()) else text[:cut]
    return text


def invoke(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def check_outcome(res: Any, allowed: tuple[int, ...]) -> None:
    assert res.exit_code in allowed, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if not line.startswith("warning:")]
    if res.exit_code in (1, 2):
        assert len(errors) == 1 and errors[0].startswith("error: "), res.stderr


FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(text=mutants())
def test_mutants_are_accepted_or_refused_in_one_line_writing_nothing(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "scenario.yaml"
        scenario.write_text(text, encoding="utf-8")
        res = invoke("validate", scenario, "--no-data")
        check_outcome(res, (0, 2))
        if res.exit_code == 2:
            again = invoke("run", scenario, "--out", Path(tmp) / "out", "-q")
            check_outcome(again, (2,))
            assert again.stderr == res.stderr  # run refuses with validate's line
            assert os.listdir(tmp) == ["scenario.yaml"]  # and writes nothing


# --------------------------------------------------------------------- 2. accepted mutants run
class OverBudget(BaseException):
    """Raised by the alarm when an example outlives its time budget (a BaseException, so no
    ``except Exception`` in fllab can swallow it)."""


#: seconds one accepted mutant may run; what ran until then must not have failed (the suite's
#: time budget; `slow`-marked `test_every_shipped_scenario_runs_one_round` runs each one whole)
RUN_BUDGET = 8


def shrink(doc: dict[str, Any]) -> dict[str, Any]:
    """One round of the scenario's first cell on a stratified subset of its data (where the
    dataset takes ``train_limit``/``test_limit``), so that a mutant runs in seconds."""
    from fllab.registry import DATASETS

    doc = copy.deepcopy(doc)
    doc.pop("sweep", None)
    doc["threads"] = 1
    fed = doc.get("federation")
    if isinstance(fed, dict):
        fed["rounds"] = 1
    task = doc.get("task")
    dataset = task.get("dataset") if isinstance(task, dict) else None
    if isinstance(dataset, str):
        dataset = task["dataset"] = {"name": dataset}
    if isinstance(dataset, dict) and isinstance(dataset.get("name"), str) and dataset["name"] in DATASETS:
        fields = DATASETS[dataset["name"]].Params.model_fields
        clients = fed.get("num_clients") if isinstance(fed, dict) else None
        per_client = clients if isinstance(clients, int) and not isinstance(clients, bool) and 0 < clients <= 1000 else 10
        if "train_limit" in fields:
            dataset.setdefault("train_limit", max(20 * per_client, 200))
        if "test_limit" in fields:
            dataset.setdefault("test_limit", 200)
    return doc


def nearby(value: Any) -> st.SearchStrategy:
    """Values of the same kind as ``value`` that a user might plausibly write instead (edge values
    included), so that most mutants pass validation and reach training."""
    from fllab.registry import ALL_REGISTRIES

    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from([0, 1, 2, value + 1, 2 * value]), st.integers(0, 2 * abs(value) + 2))
    if isinstance(value, float):
        return st.one_of(st.sampled_from([0.0, 1e-9, 1.0, 10 * value, -value]), st.floats(0, 10 * abs(value) + 1))
    if isinstance(value, str):
        return st.sampled_from([value, *sorted({n for reg in ALL_REGISTRIES.values() for n in reg})])
    if isinstance(value, list):
        return st.integers(0, len(value)).map(lambda k: value[:k])
    return st.just(value)


@st.composite
def accepted_mutants(draw: Any) -> dict[str, Any]:
    """A mutant (data-level: one value replaced by a nearby one, or anything awkward), shrunk;
    what ``validate --no-data`` refuses is not run."""
    doc = load(draw(st.sampled_from(SHIPPED)))
    where = draw(st.sampled_from(paths(doc)))
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = draw(st.one_of(nearby(parent[where[-1]]), AWKWARD) if draw(st.integers(0, 3)) == 0 else nearby(parent[where[-1]]))
    return shrink(doc)


def run_one_round(doc: dict[str, Any], budget: int | None) -> None:
    """``fllab run`` on ``doc`` (when ``validate --no-data`` accepts it): exit 0, 1 or 2 with no
    traceback, or still running cleanly after ``budget`` seconds."""
    import signal

    from hypothesis import event

    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "scenario.yaml"
        scenario.write_text(yaml.safe_dump(doc), encoding="utf-8")
        if invoke("validate", scenario, "--no-data").exit_code != 0:
            event("refused by validate")
            return

        def over(*_: Any) -> None:
            raise OverBudget

        old = signal.signal(signal.SIGALRM, over)
        signal.alarm(budget or 0)
        try:
            res = CliRunner().invoke(main, ["run", str(scenario), "--out", str(Path(tmp) / "out"), "-q"], catch_exceptions=False,
                                     env={"FLLAB_MAX_LOCAL_STEPS": "20000"})
        except OverBudget:
            event("over the time budget")
            return
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        event(f"exit {res.exit_code}")
        check_outcome(res, (0, 1, 2))


@settings(
    max_examples=6, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=accepted_mutants())
def test_accepted_mutants_run_one_round_without_a_traceback(doc: dict[str, Any]) -> None:
    run_one_round(doc, RUN_BUDGET)


@pytest.mark.slow
@pytest.mark.parametrize("rel", SHIPPED)
def test_every_shipped_scenario_runs_one_round(rel: str) -> None:
    """Each shipped scenario itself, shrunk (:func:`shrink`), runs one round to exit 0."""
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "scenario.yaml"
        scenario.write_text(yaml.safe_dump(shrink(load(rel))), encoding="utf-8")
        res = CliRunner().invoke(main, ["run", str(scenario), "--out", str(Path(tmp) / "out"), "-q"], catch_exceptions=False)
        check_outcome(res, (0,))
