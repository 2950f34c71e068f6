"""MLflow: one MLflow run per fllab run, in a local file store by default (no server).

Parameters are the resolved scenario as dotted keys; each round record's numbers are metrics at
``step = round``; at the end the summary's metrics, ``status``, and the run directory's
``report.html``, ``report.md``, ``summary.json`` and ``config.resolved.yaml`` as artifacts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .base import flat_params, numeric_items
from .config import MLflowCfg

#: files of the run directory logged as artifacts, when present
ARTIFACTS = ("report.html", "report.md", "summary.json", "config.resolved.yaml")
#: MLflow refuses longer parameter values
_MAX_PARAM = 6000


def _metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / space``: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


class MLflowTracker:
    def __init__(self, cfg: MLflowCfg, name: str):
        if cfg.tracking_uri.startswith("file:") or "://" not in cfg.tracking_uri:
            # MLflow 3 keeps its file store in "maintenance mode" behind this switch; a local file
            # store (no server, no database) is what fllab promises, so opt in for file URIs only.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow  # the `tracking` extra: pip install 'fllab[tracking]'

        self.mlflow, self.cfg, self.name = mlflow, cfg, name
        self.client = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)
        self.run_id: str | None = None

    def on_start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        experiment = self.cfg.experiment or str(config.get("name") or self.name)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=Path(run_dir).name.removesuffix(".partial"),
                                     tags={"fllab.scenario": str(config.get("name") or self.name)})
        self.run_id = run.info.run_id
        params = [self.mlflow.entities.Param(k, v[:_MAX_PARAM]) for k, v in flat_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def on_round(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("round", 0))
        metrics = [self.mlflow.entities.Metric(_metric_key(k), v, 0, step) for k, v in numeric_items(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_finish(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        metrics = [self.mlflow.entities.Metric(_metric_key(k), v, 0, 0)
                   for k, v in numeric_items(summary.get("metrics") or {}).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        for name in ARTIFACTS:
            if (Path(run_dir) / name).is_file():
                self.client.log_artifact(self.run_id, str(Path(run_dir) / name))
        ok = summary.get("status") == "ok"
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
