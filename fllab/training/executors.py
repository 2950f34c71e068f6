"""The executor seam (DESIGN.md principle 8): client work is a pure function of a ``ClientTask``
(client id, round, global weights, data, derived seed), so any executor that maps it over the
round's tasks gives the same results.  The protocol (:mod:`fllab.hooks`): ``start(fit, clients)``
once before round 0 (the fit function and every client's data), ``map(tasks) -> results`` in
task order each round, ``close()`` after the last (also on failure); optional ``check(setup)``
refuses, before anything runs, a scenario the executor cannot run."""
from __future__ import annotations

from typing import Sequence

from ..registry import EXECUTORS, NoParams
from ..types import ClientResult, ClientTask, FitFn, TensorData


@EXECUTORS.register("serial")
class SerialExecutor:
    """Runs the clients one after another in this process (the reference executor)."""

    summary = "one client after another in this process"
    Params = NoParams

    def __init__(self, params: NoParams):
        self.params = params
        self.fit: FitFn | None = None

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        self.fit = fit

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        return [self.fit(task) for task in tasks]

    def close(self) -> None:
        """Nothing to release."""
