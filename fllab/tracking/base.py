"""The callback the runner calls: start, once per round, finish."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

#: summary and round values that are not metrics to chart
_NOT_METRICS = {"round", "clients"}


class Tracker(Protocol):
    """What a tracking backend implements; every method is called from the runner's process."""

    def on_start(self, run_dir: Path, config: Mapping[str, Any]) -> None: ...

    def on_round(self, record: Mapping[str, Any]) -> None: ...

    def on_finish(self, run_dir: Path, summary: Mapping[str, Any]) -> None: ...


def numeric_items(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a round record or metrics mapping (booleans and lists left out)."""
    import math

    out = {}
    for key, value in record.items():
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as dotted keys with text values (lists and components spelled out), the shape
    experiment trackers store parameters in."""
    import json

    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(flat_params(item, f"{name}.{i}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


class Trackers:
    """Several backends behind one callback (what :func:`fllab.tracking.from_config` returns)."""

    def __init__(self, backends: list[Tracker]):
        self.backends = backends

    def on_start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        for backend in self.backends:
            backend.on_start(run_dir, config)

    def on_round(self, record: Mapping[str, Any]) -> None:
        for backend in self.backends:
            backend.on_round(record)

    def on_finish(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        for backend in self.backends:
            backend.on_finish(run_dir, summary)
