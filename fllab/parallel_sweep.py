"""A sweep's cells in N local worker processes (``fllab sweep --jobs N``).

The cells are those of :class:`fllab.runner.SweepRun`, run in two waves so that every no-attack
twin exists before the poisoning cell that needs it: first every cell that trains without a
twin and every shared twin (``baselines/<key>``), then the poisoning cells (their twin read from
its finished run directory).  Copies of identical cells and refused cells are then written by
this process, as in a serial sweep.  Each cell is written atomically (``<cell>.partial`` renamed
when whole), so a parallel sweep killed mid-way loses no finished cell, and a re-run runs only
the unfinished ones; ``results.csv`` is rebuilt after every finished cell, in grid order.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .runner import SWEEP_BASELINES, THREADS_CAP, SweepRun, baseline_key, baseline_setup, cached_run, execute, needs_baseline, write_results_csv
from .scenario.build import Setup
from .training.executors import cpu_cores


class FixedTwin:
    """A baseline provider that hands over an already finished twin (picklable)."""

    def __init__(self, twin: tuple[dict[str, Any], str]):
        self.twin = twin

    def __call__(self, setup: Setup) -> tuple[dict[str, Any], str]:
        return self.twin


def _worker_start(threads: int) -> None:
    """Each worker gets its share of the cores: a cell's ``threads`` is cut to it (no oversubscription)."""
    os.environ[THREADS_CAP] = str(threads)
    torch.set_num_threads(threads)


def _run_cell(setup: Setup, out: Path, twin: tuple[dict[str, Any], str] | None) -> None:
    execute(setup, out, quiet=True, overwrite=True, report=False, baseline=None if twin is None else FixedTwin(twin))


def _run_twin(setup: Setup, out: Path) -> None:
    cached_run(baseline_setup(setup), out, quiet=True)


class ParallelSweep(SweepRun):
    """:class:`SweepRun` with the trained cells spread over ``jobs`` worker processes."""

    def __init__(self, sweep_dir: Path, name: str, cells: list, *, quiet: bool, jobs: int):
        super().__init__(sweep_dir, name, cells, quiet=quiet)
        self.jobs = jobs

    def _pending(self) -> tuple[list[int], list[int], dict[str, int]]:
        """Unfinished trained cells without and with a twin, and the shared twins to train (key -> a cell)."""
        plain, twinned, shared = [], [], {}
        for i, (_, _, _, setup) in enumerate(self.cells):
            if not isinstance(setup, Setup) or self.first[i] != i or (self.cell_dir(i) / "summary.json").exists():
                continue
            if needs_baseline(setup):
                twinned.append(i)
                key = baseline_key(setup.resolved)
                if key not in self.clean and not (self.dir / SWEEP_BASELINES / key / "summary.json").exists():
                    shared.setdefault(key, i)
            else:
                plain.append(i)
        return plain, twinned, shared

    def run(self) -> int:
        plain, twinned, shared = self._pending()
        threads = max(1, cpu_cores() // self.jobs)
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"), initializer=_worker_start, initargs=(threads,)) as pool:
            first = {pool.submit(_run_cell, self.cells[i][3], self.cell_dir(i), None): f"cell {self.cells[i][0]}" for i in plain}
            first |= {pool.submit(_run_twin, self.cells[i][3], self.dir / SWEEP_BASELINES / key): f"baseline {key}"
                      for key, i in shared.items()}
            self._drain(first)
            second = {pool.submit(_run_cell, self.cells[i][3], self.cell_dir(i), self.baseline(self.cells[i][3])): f"cell {self.cells[i][0]}"
                      for i in twinned}
            self._drain(second)
        for i in range(len(self.cells)):  # copies and refused cells, as a serial sweep writes them
            self.summary(i)
        write_results_csv(self.dir, self.cells)
        return self.ran

    def _drain(self, running: dict[Future, str]) -> None:
        """Wait for ``running``; count each finished cell, rebuild results.csv, show progress."""
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                label = running.pop(future)
                future.result()  # a failed cell fails the sweep (its finished siblings are kept)
                if label.startswith("cell"):
                    self.ran += 1
                    write_results_csv(self.dir, self.cells)
                if not self.quiet:
                    finished = sum((self.cell_dir(i) / "summary.json").exists() for i in range(len(self.cells)))
                    busy = ", ".join(sorted(running.values())) or "-"
                    print(f"[{finished}/{len(self.cells)} cells done] finished {label}; running: {busy}", file=sys.stderr)
