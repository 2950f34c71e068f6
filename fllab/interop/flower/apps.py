"""Flower apps made of fllab pieces, and Flower's simulation engine started with bounded resources.

* :func:`client_app` -- a ``ClientApp`` whose training is :class:`.FllabClient` on the data of the
  node's ``partition-id`` (``data_for(partition_id) -> TensorData``), optionally behind mods.
* :func:`server_app` -- a ``ServerApp`` running ``make_strategy()`` (any Message-API strategy,
  e.g. :class:`.FllabStrategy`, wrapped or not by :class:`.RecordingStrategy`) for ``num_rounds``
  from ``initial_arrays``; the final arrays and per-round metrics go to ``on_result``.
* :func:`simulate` -- ``flwr.simulation.run_simulation`` on Ray with ``num_cpus`` CPUs in all and
  ``cpus_per_client`` per ClientApp, no dashboard.  Flower starts and shuts down its own local Ray
  (this never stops a Ray it did not start).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ...types import TensorData
from .client import FllabClient


def client_app(client: FllabClient, data_for: Callable[[int], TensorData], mods: Sequence[Any] = ()) -> ClientApp:
    """A ClientApp training with ``client`` on ``data_for(partition-id)``."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client.train(msg, context, data_for(int(context.node_config["partition-id"])))

    return app


def server_app(make_strategy: Callable[[Context], Any], initial_arrays: ArrayRecord, num_rounds: int,
               on_result: Callable[[Any, Any], None] | None = None) -> ServerApp:
    """A ServerApp running ``make_strategy(context)`` for ``num_rounds`` rounds."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = make_strategy(context)
        result = strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds)
        if on_result is not None:
            on_result(strategy, result)

    return app


def simulate(server: ServerApp, client: ClientApp, num_supernodes: int, *, num_cpus: int | None = None, cpus_per_client: float = 1.0) -> None:
    """Flower's simulation engine (Ray backend) with bounded resources."""
    from flwr.simulation import run_simulation

    cpus = int(num_cpus or os.cpu_count() or 1)
    run_simulation(
        server_app=server, client_app=client, num_supernodes=num_supernodes,
        backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "error"}},
    )
