"""fllab: a lab for attacking and defending federated learning.

Public API::

    import fllab
    scenario = fllab.load_scenario("scenarios/baselines/digits_fedavg.yaml", overrides=["federation.rounds=5"])
    run_dir, summary = fllab.run(scenario)
    fllab.ATTACKS.register("my_attack")(MyAttack)
"""
__version__ = "0.1.0"

from .errors import CapabilityError, ConfigError, FllabError  # noqa: E402
from .registry import (  # noqa: E402
    AGGREGATORS, ALGORITHMS, ATTACKS, DATASETS, DEFENSES, EXECUTORS, MODELS, PARTITIONS, NoParams, Params,
)
from .scenario.loader import load_raw, load_scenario  # noqa: E402


def run(scenario, out=None, *, quiet=True, overwrite=False):
    """Run a scenario (a :class:`fllab.scenario.schema.Scenario`, a mapping, or a YAML path) and
    return ``(run_dir, summary)``."""
    from pathlib import Path

    from .runner import run_scenario

    if isinstance(scenario, (str, Path)):
        data = load_raw(scenario)
    elif isinstance(scenario, dict):
        data = scenario
    else:
        data = scenario.model_dump(mode="json", exclude={"sweep"})
    return run_scenario(data, out, quiet=quiet, overwrite=overwrite)


__all__ = [
    "__version__", "run", "load_scenario", "load_raw", "Params", "NoParams", "ConfigError", "CapabilityError",
    "FllabError", "AGGREGATORS", "ALGORITHMS", "ATTACKS", "DATASETS", "DEFENSES", "EXECUTORS", "MODELS", "PARTITIONS",
]
