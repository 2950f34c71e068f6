"""TensorBoard: event files with one scalar per round-record number (``step = round``), the
summary's metrics at the last step, and the resolved config and Markdown report as text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from .base import numeric_items
from .config import TensorBoardCfg

#: where the event files go when ``log_dir`` is not given, relative to the run directory
DEFAULT_DIR = "tensorboard"


class TensorBoardTracker:
    def __init__(self, cfg: TensorBoardCfg, name: str):
        from torch.utils.tensorboard import SummaryWriter  # needs the `tracking` extra (tensorboard)

        self.Writer, self.cfg, self.name = SummaryWriter, cfg, name
        self.writer: Any = None
        self.last_step = 0

    def on_start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        log_dir = Path(self.cfg.log_dir) / Path(run_dir).name.removesuffix(".partial") if self.cfg.log_dir \
            else Path(run_dir) / DEFAULT_DIR
        self.writer = self.Writer(log_dir=str(log_dir))
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```", 0)

    def on_round(self, record: Mapping[str, Any]) -> None:
        self.last_step = step = int(record.get("round", 0))
        for key, value in numeric_items(record).items():
            self.writer.add_scalar(key, value, step)

    def on_finish(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        for key, value in numeric_items(summary.get("metrics") or {}).items():
            self.writer.add_scalar(f"summary/{key}", value, self.last_step)
        report = Path(run_dir) / "report.md"
        if report.is_file():
            self.writer.add_text("report", report.read_text(encoding="utf-8"), self.last_step)
        self.writer.close()
