"""The round loop: wire the federation, then call the server's round once per round, clients
trained by the scenario's executor -- or, for an executor that owns the loop (``drive``: Flower's
simulation, whose Strategy calls :meth:`Server.tasks` / :meth:`Server.receive`), hand it the
server and the rounds.  The engine returns data (:class:`EngineResult`);
writing it is the runner's job."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..hooks import has_hook
from ..scenario.build import Setup
from .server import EngineResult, Server
from .wiring import Federation, wire


@dataclass
class Snapshot:
    """A run after ``round`` rounds: their records and the server's state (:meth:`Server.state_dict`)."""

    round: int
    rounds: list[dict[str, Any]]
    state: dict[str, Any]


class Engine:
    """Simulates the federation described by a :class:`Setup`: :meth:`prepare` wires it (every
    config error surfaces there), :meth:`run` trains it."""

    def __init__(
        self,
        setup: Setup,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[int], None] | None = None,
        save: Callable[[Snapshot], None] | None = None,
    ):
        """``save``: called with a snapshot every ``checkpoint.every`` rounds (not after the last)."""
        self.setup = setup
        self.on_round = on_round
        self.progress = progress
        self.save = save
        self.start: Snapshot | None = None
        self.federation: Federation | None = None
        self.server: Server | None = None

    def prepare(self) -> None:
        self.federation = wire(self.setup)
        self.server = Server(self.federation)

    def resume(self, snap: Snapshot) -> None:
        """Continue from ``snap`` instead of round 0: its state goes into the (wired) server now."""
        if self.server is None:
            self.prepare()
        self.server.load_state_dict(snap.state)
        self.start = snap

    def run(self) -> EngineResult:
        if self.server is None:
            self.prepare()
        fed, server, executor = self.federation, self.server, self.setup.executor
        rounds: list[dict[str, Any]] = []
        start, total, every = 0, self.setup.scenario.federation.rounds, self.setup.scenario.checkpoint.every
        if self.start is not None:
            start, rounds = self.start.round, list(self.start.rounds)
            if self.progress:
                self.progress(start)

        def finish(record: dict[str, Any]) -> None:
            """After the server's half of round ``record["round"]``: keep, report, checkpoint."""
            rounds.append(record)
            if self.on_round:
                self.on_round(record)
            if self.progress:
                self.progress(1)
            done = record["round"] + 1
            if self.save and every and done % every == 0 and done < total:
                self.save(Snapshot(done, list(rounds), server.state_dict()))

        executor.start(fed.fit, fed.client_data)
        try:
            if has_hook(executor, "drive"):  # the executor owns the loop (Flower's simulation) and calls the server
                executor.drive(server, range(start, total), finish)
            else:
                for rnd in range(start, total):
                    finish(server.round(rnd, executor.map))
        finally:
            executor.close()
        return server.result(rounds)
