"""The serial round loop: wire the federation, then call the server's round once per round,
clients trained by the scenario's executor.  The engine returns data (:class:`EngineResult`);
writing it is the runner's job."""
from __future__ import annotations

from typing import Any, Callable

from ..scenario.build import Setup
from .server import EngineResult, Server
from .wiring import Federation, wire


class Engine:
    """Simulates the federation described by a :class:`Setup`: :meth:`prepare` wires it (every
    config error surfaces there), :meth:`run` trains it."""

    def __init__(
        self,
        setup: Setup,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self.setup = setup
        self.on_round = on_round
        self.progress = progress
        self.federation: Federation | None = None
        self.server: Server | None = None

    def prepare(self) -> None:
        self.federation = wire(self.setup)
        self.server = Server(self.federation)

    def run(self) -> EngineResult:
        if self.server is None:
            self.prepare()
        fed, server, executor = self.federation, self.server, self.setup.executor
        rounds: list[dict[str, Any]] = []
        executor.start(fed.fit, fed.client_data)
        try:
            for rnd in range(self.setup.scenario.federation.rounds):
                record = server.round(rnd, executor.map)
                rounds.append(record)
                if self.on_round:
                    self.on_round(record)
                if self.progress:
                    self.progress(1)
        finally:
            executor.close()
        return server.result(rounds)
