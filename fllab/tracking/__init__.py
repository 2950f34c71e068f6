"""Experiment tracking: log a run's parameters, per-round metrics and report where users already
look (MLflow, TensorBoard).  Optional: each backend needs the ``tracking`` extra
(``pip install 'fllab[tracking]'``) and is imported only when a scenario asks for it.

    tracker = fllab.tracking.from_config({"mlflow": True})   # or a scenario's `tracking:` block
    tracker.on_start(run_dir, resolved_config)
    tracker.on_round(record)          # every record the run appends to rounds.jsonl
    tracker.on_finish(run_dir, summary)
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError
from .base import Tracker, Trackers
from .config import BACKENDS, TrackingCfg, from_flag


def from_config(cfg: TrackingCfg | Mapping[str, Any] | None, name: str = "fllab") -> Trackers | None:
    """The callback for a ``tracking:`` block (None when nothing is tracked).  A backend whose
    package is missing is a ConfigError naming the extra to install."""
    if cfg is None:
        return None
    if not isinstance(cfg, TrackingCfg):
        cfg = TrackingCfg.model_validate(dict(cfg))
    backends: list[Tracker] = []
    try:
        if cfg.mlflow is not None:
            from .mlflow_backend import MLflowTracker

            backends.append(MLflowTracker(cfg.mlflow, name))
        if cfg.tensorboard is not None:
            from .tensorboard_backend import TensorBoardTracker

            backends.append(TensorBoardTracker(cfg.tensorboard, name))
    except ImportError as err:
        raise ConfigError(f"tracking needs {err.name}: pip install 'fllab[tracking]'", "tracking") from None
    return Trackers(backends) if backends else None


__all__ = ["BACKENDS", "Tracker", "Trackers", "TrackingCfg", "from_config", "from_flag"]
