"""The ``tracking:`` block of a scenario (kept free of heavy imports: the schema imports it).

    tracking:
      mlflow: true                      # or {tracking_uri: file:./mlruns, experiment: my-study}
      tensorboard: {log_dir: tb}        # or true: <run dir>/tensorboard

Nothing is tracked without the block (or ``fllab run --track mlflow,tensorboard``).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLflowCfg(_Strict):
    tracking_uri: str = Field("file:./mlruns", description="MLflow tracking URI; the default is a local file store, no server")
    experiment: str | None = Field(None, description="experiment name; null = the scenario's name")


class TensorBoardCfg(_Strict):
    log_dir: str | None = Field(None, description="event-file directory; null = <run dir>/tensorboard")


def _switch(value: Any) -> Any:
    """``true`` means the defaults, ``false``/``null`` means off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class TrackingCfg(_Strict):
    mlflow: MLflowCfg | None = Field(None, description="log params, per-round metrics and the report to MLflow")
    tensorboard: TensorBoardCfg | None = Field(None, description="write per-round metrics as TensorBoard event files")

    _norm = field_validator("mlflow", "tensorboard", mode="before")(_switch)

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.tensorboard is not None


#: the backends ``--track`` accepts
BACKENDS = tuple(TrackingCfg.model_fields)


def from_flag(value: str) -> dict[str, Any]:
    """The ``tracking`` mapping of ``--track mlflow,tensorboard`` (each with its defaults); an
    unknown backend is a ValueError naming the allowed ones."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"--track: unknown backend {', '.join(unknown) or repr(value)}; allowed: {', '.join(BACKENDS)}")
    return {name: {} for name in names}
