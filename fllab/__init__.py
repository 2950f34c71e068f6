"""fllab: a lab for attacking and defending federated learning.

Public API::

    import fllab
    scenario = fllab.load_scenario("scenarios/baselines/digits_fedavg.yaml", overrides=["federation.rounds=5"])
    run_dir, summary = fllab.run(scenario)
    sweep_dir = fllab.sweep("scenarios/membership/dp_sweep.yaml", overrides=["federation.rounds=2"])
    frame = fllab.load_results(sweep_dir)            # pandas, one row per cell
    settings = fllab.load_results(sweep_dir, aggregate=True)  # mean, std, 95% CI per setting
    fllab.ATTACKS.register("my_attack")(MyAttack)
"""
__version__ = "0.1.0"

from typing import Any, Sequence  # noqa: E402

from .errors import CapabilityError, ConfigError, FllabError  # noqa: E402
from .registry import (  # noqa: E402
    AGGREGATORS, ALGORITHMS, ATTACKS, DATASETS, DEFENSES, EXECUTORS, MODELS, PARTITIONS, NoParams, Params,
)
from .scenario.loader import load_raw, load_scenario  # noqa: E402


def _scenario_data(scenario: Any, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A scenario given as a YAML path, a mapping or a :class:`~fllab.scenario.schema.Scenario`, as a mapping."""
    import copy
    from pathlib import Path

    from .scenario.loader import parse_override, set_path

    if isinstance(scenario, (str, Path)):
        return load_raw(scenario, list(overrides))
    if isinstance(scenario, dict):
        data = copy.deepcopy(scenario)
    else:
        data = scenario.model_dump(mode="json")
        for key in ("sweep", "tracking"):
            if data.get(key) is None:
                data.pop(key, None)
    for text in overrides:
        set_path(data, *parse_override(text))
    return data


def run(scenario: Any, out: Any = None, *, overrides: Sequence[str] = (), quiet: bool = True, overwrite: bool = False,
        resume: bool = False):
    """Run one scenario (a YAML path, a mapping or a :class:`~fllab.scenario.schema.Scenario`) and
    return ``(run_dir, summary)``, like ``fllab run``.  A scenario with a sweep block is refused:
    :func:`sweep` runs it.  ``resume=True`` continues the interrupted run at ``out`` from its last
    checkpoint (``checkpoint: {every: k}``), like ``fllab run --resume``."""
    from pathlib import Path

    from .runner import has_sweep, run_scenario

    data = _scenario_data(scenario, overrides)
    if has_sweep(data):
        raise ConfigError("the scenario has a sweep block: run it with fllab.sweep(), or remove the block", "sweep")
    protect = (scenario,) if isinstance(scenario, (str, Path)) else ()  # --overwrite never removes the scenario file
    return run_scenario(data, out, quiet=quiet, overwrite=overwrite, protect=protect, resume=resume)


def sweep(
    scenario: Any, out: Any = None, *, overrides: Sequence[str] = (), quiet: bool = True, jobs: int = 1,
    executor: str | None = None, ray_address: str | None = None,
):
    """Run every unfinished cell of a scenario's sweep, like ``fllab sweep``; return the sweep
    directory (``results.csv``, ``aggregate.csv`` with several seeds, ``report.html``, ``cells/``).
    ``jobs``, ``executor`` (``processes`` or ``ray``) and ``ray_address`` are the CLI's
    ``--jobs``, ``--executor`` and ``--ray-address``.  Read its results with :func:`load_results`."""
    from .runner import has_sweep, run_sweep

    data = _scenario_data(scenario, overrides)
    if not has_sweep(data):
        raise ConfigError("the scenario has no sweep block; add sweep: {grid: {...}, seeds: [...]} or use fllab.run()", "sweep")
    return run_sweep(data, out, quiet=quiet, jobs=jobs, executor=executor, ray_address=ray_address)[0]


def validate(scenario: Any, *, overrides: Sequence[str] = (), data: bool = True) -> dict[str, Any]:
    """Check a scenario without training, like ``fllab validate``: schema, components,
    capabilities, every sweep cell, and (``data=True``) the data and partition of the first cell.
    Returns ``{"cells", "skipped": [{"cell", "reason"}], "resolved"}``; a refused scenario raises
    :class:`ConfigError`."""
    from .runner import resolve_cells

    cells = resolve_cells(_scenario_data(scenario, overrides))
    setups = [s for *_, s in cells if not isinstance(s, str)]
    skipped = [{"cell": values, "reason": s} for _, values, _, s in cells if isinstance(s, str)]
    if not setups:
        raise ConfigError(f"every one of the {len(cells)} sweep cells is refused; first: {skipped[0]['reason']}", "sweep")
    if data:
        from .training.engine import Engine

        Engine(setups[0]).prepare()
    return {"cells": len(cells), "skipped": skipped, "resolved": setups[0].resolved}


def describe(name: str) -> dict[str, Any]:
    """A registered component's parameters, threat model and references, like ``fllab describe``."""
    from .description import describe_component

    return describe_component(name)


def build_report(directory: Any):
    """Rebuild ``report.md`` and ``report.html`` of a run, sweep or LDP-audit directory, like
    ``fllab report``; return their paths.  (Not ``fllab.report``: that name is the report package.)"""
    from .report import rebuild

    return rebuild(directory)


def load_results(path: Any, *, aggregate: bool = False):
    """Results as a pandas DataFrame (:func:`fllab.report.frame.load_results`): a sweep's cells, its
    ``aggregate.csv`` settings (``aggregate=True``), a run, or a folder of runs."""
    from .report.frame import load_results as load

    return load(path, aggregate=aggregate)


__all__ = [
    "__version__", "run", "sweep", "validate", "describe", "build_report", "load_results", "load_scenario", "load_raw", "Params", "NoParams", "ConfigError", "CapabilityError",
    "FllabError", "AGGREGATORS", "ALGORITHMS", "ATTACKS", "DATASETS", "DEFENSES", "EXECUTORS", "MODELS", "PARTITIONS",
]
