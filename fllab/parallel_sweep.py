"""A sweep's cells in parallel: N local worker processes (``fllab sweep --jobs N``) or Ray tasks
(``fllab sweep --executor ray``, optionally ``--ray-address``).

The cells are those of :class:`fllab.runner.SweepRun`, run in two waves so that every no-attack
twin exists before the poisoning cell that needs it: first every cell that trains without a
twin and every shared twin (``baselines/<key>``), then the poisoning cells (their twin read from
its finished run directory).  Copies of identical cells and refused cells are then written by
this process, as in a serial sweep.  Each cell is written atomically (``<cell>.partial`` renamed
when whole), so a parallel sweep killed mid-way loses no finished cell, and a re-run runs only
the unfinished ones, each continuing from the last checkpoint its ``.partial`` holds
(``checkpoint: {every: k}``); ``results.csv`` is rebuilt after every finished cell, in grid order.

Where the cells run is a :class:`Pool`: :class:`ProcessCells` (worker processes writing their
cells in place) or :class:`fllab.ray_sweep.RayCells` (Ray tasks whose run directories come back
to this process, which writes them).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import torch

from .runner import SWEEP_BASELINES, THREADS_CAP, SweepRun, baseline_key, baseline_setup, needs_baseline, run_cell, write_results_csv
from .rundir import SUMMARY
from .scenario.build import Setup
from .training.executors import cpu_cores


class FixedTwin:
    """A baseline provider that hands over an already finished twin (picklable)."""

    def __init__(self, twin: tuple[dict[str, Any], str]):
        self.twin = twin

    def __call__(self, setup: Setup) -> tuple[dict[str, Any], str]:
        return self.twin


class Pool(Protocol):
    """Runs up to ``slots`` cells at once somewhere else: ``submit`` one (``setup`` into run directory ``out``, its
    no-attack twin already finished or None), ``wait`` until at least one of ``handles`` has
    finished and its run directory is whole (raising the cell's error), ``close`` on every exit."""

    slots: int

    def submit(self, setup: Setup, out: Path, twin: tuple[dict[str, Any], str] | None) -> Any: ...

    def wait(self, handles: list[Any]) -> list[Any]: ...

    def close(self) -> None: ...


def _worker_start(threads: int) -> None:
    """Each worker gets its share of the cores: a cell's ``threads`` is cut to it (no oversubscription)."""
    os.environ[THREADS_CAP] = str(threads)
    torch.set_num_threads(threads)


def _run_cell(setup: Setup, out: Path, twin: tuple[dict[str, Any], str] | None) -> None:
    run_cell(setup, out, quiet=True, baseline=None if twin is None else FixedTwin(twin))


class ProcessCells:
    """Cells in ``jobs`` worker processes of this machine, each on its share of the cores."""

    def __init__(self, jobs: int):
        self.slots = jobs
        threads = max(1, cpu_cores() // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_start, initargs=(threads,))

    def submit(self, setup: Setup, out: Path, twin: tuple[dict[str, Any], str] | None) -> Future:
        return self.pool.submit(_run_cell, setup, out, twin)

    def wait(self, handles: list[Future]) -> list[Future]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        for future in done:
            future.result()  # a failed cell fails the sweep (its finished siblings are kept)
        return list(done)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class ParallelSweep(SweepRun):
    """:class:`SweepRun` with the trained cells spread over a :class:`Pool`."""

    def __init__(self, sweep_dir: Path, name: str, cells: list, *, quiet: bool, pool: Pool):
        super().__init__(sweep_dir, name, cells, quiet=quiet)
        self.pool = pool

    def _pending(self) -> tuple[list[int], list[int], dict[str, int]]:
        """Unfinished trained cells without and with a twin, and the shared twins to train (key -> a cell)."""
        plain, twinned, shared = [], [], {}
        for i, (_, _, _, setup) in enumerate(self.cells):
            if not isinstance(setup, Setup) or self.first[i] != i or (self.cell_dir(i) / SUMMARY).exists():
                continue
            if needs_baseline(setup):
                twinned.append(i)
                key = baseline_key(setup.resolved)
                if key not in self.clean and not (self.dir / SWEEP_BASELINES / key / SUMMARY).exists():
                    shared.setdefault(key, i)
            else:
                plain.append(i)
        return plain, twinned, shared

    def run(self) -> int:
        plain, twinned, shared = self._pending()
        try:
            first = [(self.cells[i][3], self.cell_dir(i), lambda: None, self.label(i), True) for i in plain]
            first += [(baseline_setup(self.cells[i][3]), self.dir / SWEEP_BASELINES / key, lambda: None, f"baseline {key}", False)
                      for key, i in shared.items()]
            self._drain(first)
            self._drain([(self.cells[i][3], self.cell_dir(i), lambda s=self.cells[i][3]: self.baseline(s), self.label(i), True)
                         for i in twinned])
        finally:
            self.pool.close()
        for i in range(len(self.cells)):  # copies and refused cells, as a serial sweep writes them
            self.summary(i)
        write_results_csv(self.dir, self.cells)
        return self.ran

    def _drain(self, todo: list[tuple[Setup, Path, Any, str, bool]]) -> None:
        """Run ``todo`` (setup, run directory, its twin's provider, label, whether it is a cell),
        at most ``pool.slots`` at once; count each finished cell, rebuild results.csv, show progress."""
        todo, running = list(todo), {}
        while todo or running:
            while todo and len(running) < self.pool.slots:
                setup, out, twin, label, is_cell = todo.pop(0)
                running[self.pool.submit(setup, out, twin())] = (label, is_cell)
                self._show(f"started {label}", running)
            for handle in self.pool.wait(list(running)):
                label, is_cell = running.pop(handle)
                if is_cell:
                    self.ran += 1
                    write_results_csv(self.dir, self.cells)
                self._show(f"finished {label}", running)

    def _show(self, what: str, running: dict[Any, tuple[str, bool]]) -> None:
        """One progress line on stderr (none when quiet): cells done / total, what happened, the running cells."""
        if not self.quiet:
            busy = "; ".join(label for label, _ in running.values()) or "-"
            print(f"[{self.finished()}/{len(self.cells)} cells done] {what}; running: {busy}", file=sys.stderr)
