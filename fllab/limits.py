"""Resource limits checked before anything runs: scenario file size and shape, sweep size, memory.

Each limit has a default that no shipped scenario comes near and an environment variable that
raises it (README, "Limits"):

==============================  ===========  ==================================================
variable                        default      what it bounds
==============================  ===========  ==================================================
``FLLAB_MAX_SCENARIO_BYTES``    1 MiB        bytes read from a scenario file
``FLLAB_MAX_SCENARIO_NODES``    100,000      YAML nodes after alias expansion (billion laughs)
``FLLAB_MAX_SCENARIO_DEPTH``    64           nesting depth of the YAML document
``FLLAB_MAX_SWEEP_CELLS``       10,000       cells of one sweep (grid x cases x seeds)
``FLLAB_MEMORY_LIMIT``          80% of RAM   estimated peak memory of one run (bytes, or 8G, 512M)
``FLLAB_MAX_LOCAL_STEPS``       100M         optimizer steps of all clients over a run
==============================  ===========  ==================================================

A value over a limit is a :class:`ConfigError` naming the limit, the value and the variable.
"""
from __future__ import annotations

import os
import re
from typing import Any

from .errors import ConfigError

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, name: str) -> int:
    """``"8G"`` -> 8 GiB; a plain number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"{name}={text!r}: expected a size like 8G, 512M or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw is None or not raw.strip() else parse_size(raw, name)


def max_scenario_bytes() -> int:
    return env_limit("FLLAB_MAX_SCENARIO_BYTES", 1 << 20)


def max_scenario_nodes() -> int:
    return env_limit("FLLAB_MAX_SCENARIO_NODES", 100_000)


def max_scenario_depth() -> int:
    return env_limit("FLLAB_MAX_SCENARIO_DEPTH", 64)


def max_sweep_cells() -> int:
    return env_limit("FLLAB_MAX_SWEEP_CELLS", 10_000)


def max_local_steps() -> int:
    return env_limit("FLLAB_MAX_LOCAL_STEPS", 10**8)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; absurd sizes stay short (``"1.46e+16 PiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}" if n >= 1000 else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def total_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit() -> int:
    return env_limit("FLLAB_MEMORY_LIMIT", int(0.8 * total_memory()))


def check_sweep_size(cells: int) -> None:
    limit = max_sweep_cells()
    if cells > limit:
        raise ConfigError(
            f"{cells:,} cells exceed the limit of {limit:,}; split the sweep, or raise FLLAB_MAX_SWEEP_CELLS", "sweep"
        )


# Float32 model-sized buffers a run holds besides the per-round stacked updates: global weights,
# the server model, a client's model, its gradients, optimizer state, the aggregate, a spare copy.
MODEL_COPIES = 8


def estimate_memory(setup: Any, num_params: int) -> dict[str, int]:
    """A run's peak memory in bytes, by what holds it: the model-sized buffers, the round's stacked
    updates (clients per round x parameters, float32) and what components declare through an
    optional ``memory_bytes(num_params=, clients_per_round=)`` method (e.g. RQM's exact
    accountant, cubic in its number of levels)."""
    per_round = setup.scenario.federation.per_round
    parts = {"model buffers": MODEL_COPIES * 4 * num_params, "stacked updates": 2 * 4 * per_round * num_params}
    for comp in [setup.algorithm, setup.aggregator, *setup.defenses, *setup.attacks]:
        hook = getattr(comp, "memory_bytes", None)
        if hook is not None:
            parts[comp.registry_name] = int(hook(num_params=num_params, clients_per_round=per_round))
    return parts


def check_memory(setup: Any, num_params: int) -> None:
    """Refuse a run whose estimate (:func:`estimate_memory`) exceeds :func:`memory_limit`, with
    the estimate and its largest part in the message."""
    parts = estimate_memory(setup, num_params)
    total, limit = sum(parts.values()), memory_limit()
    if total > limit:
        largest = max(parts, key=parts.__getitem__)
        raise ConfigError(
            f"the run would need about {human_bytes(total)} of memory ({largest}: {human_bytes(parts[largest])}; "
            f"{num_params:,} model parameters), more than the {human_bytes(limit)} allowed; reduce the sizes, "
            "or raise FLLAB_MEMORY_LIMIT"
        )


def check_work(setup: Any, client_sizes: list[int]) -> None:
    """Refuse a run whose clients would take more than :func:`max_local_steps` optimizer steps in
    all (``local_epochs: 1e308`` validates as a float but would never finish): rounds x clients
    per round x the steps of the largest client, for algorithms that say (``local_steps(n)``)."""
    steps_of = getattr(setup.algorithm, "local_steps", None)
    if steps_of is None:
        return
    fed = setup.scenario.federation
    try:
        per_client = float(steps_of(max(client_sizes)))
    except OverflowError:  # more steps than a float can count
        per_client = float("inf")
    total = fed.rounds * fed.per_round * per_client
    limit = max_local_steps()
    if total > limit:
        raise ConfigError(
            f"the run would take about {total:.3g} local optimizer steps ({fed.rounds} rounds x {fed.per_round} clients x "
            f"{per_client:.3g} steps), more than the {limit:.3g} allowed; lower local_epochs/local_steps or rounds, "
            "or raise FLLAB_MAX_LOCAL_STEPS"
        )


def allocation_error(err: BaseException) -> str | None:
    """The one-line reason when ``err`` is a failed memory allocation (torch or numpy), else None."""
    text = str(err)
    if isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        m = re.search(r"allocate (\d+) bytes", text)
        size = f" ({human_bytes(int(m.group(1)))} in one piece)" if m else ""
        return f"setting up the run failed to allocate memory{size}; reduce the model or data sizes"
    return None
