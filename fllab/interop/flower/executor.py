"""``executor: flower``: a scenario's rounds run as a Flower simulation (Flower's simulation engine,
fllab's clients as the ClientApp, fllab's server round as the Strategy; :mod:`.simulation`).

This module registers the executor without importing flwr (``import fllab`` and the component
table need none); flwr is imported when the run starts.  Refused before anything runs, each
with one line (exit code 2): flwr or Ray missing, ``cpus_per_client`` above the simulation's CPUs
(no ClientApp could start), ``device: cuda`` without ``gpus_per_client`` (Flower's ClientApps
would see no GPU), and a process already connected to a Ray (Flower's simulation shuts down the
Ray it runs on).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from ...errors import ConfigError
from ...registry import EXECUTORS, Params
from ...training.executors import cpu_cores
from ...types import FitFn, ModelHandle, TensorData


class FlowerParams(Params):
    threads: PositiveInt | None = Field(
        None, description="torch threads per ClientApp; null = the run's own count (the serial executor's: identical metrics)")
    cpus_per_client: PositiveFloat | None = Field(
        None, description="CPUs each ClientApp holds (Flower's client_resources.num_cpus); null = threads")
    gpus_per_client: NonNegativeFloat = Field(0.0, description="GPUs each ClientApp holds (client_resources.num_gpus); device cuda needs > 0")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of the local Ray the simulation runs on; null = this machine's cores")

    @model_validator(mode="after")
    def _a_client_fits(self) -> "FlowerParams":
        cpus = self.num_cpus or cpu_cores()
        if self.cpus_per_client is not None and self.cpus_per_client > cpus:
            raise ValueError(f"cpus_per_client {self.cpus_per_client:g} exceeds the simulation's {cpus} CPUs: no ClientApp could start")
        return self

    def sizes(self) -> tuple[int, float, int]:
        """(torch threads per ClientApp, CPUs per ClientApp, CPUs of the simulation)."""
        threads = self.threads or torch.get_num_threads()
        return threads, self.cpus_per_client or float(threads), self.num_cpus or cpu_cores()


@EXECUTORS.register("flower")
class FlowerExecutor:
    """The scenario as a Flower simulation (``fllab[flower]``): ``flwr.simulation.run_simulation``
    with one SuperNode per client (``partition-id`` = fllab client id) running fllab's client fit
    function, and a Strategy whose ``configure_train`` sends fllab's sampled tasks and whose
    ``aggregate_train`` is :meth:`fllab.training.server.Server.receive`.  The clients' data goes
    into Ray's object store once.  Same metrics as the serial executor (the same fit on the same
    tasks, at the same torch thread count per client); Ray is shut down on success, failure and
    Ctrl-C."""

    used = "flower"
    Params = FlowerParams
    summary = "a Flower simulation: fllab's clients as the ClientApp, its server round as the Strategy"
    fit: FitFn | None = None  # the client fit function and every client's data, from start() to close()
    clients: Sequence[TensorData] = ()

    def __init__(self, params: FlowerParams):
        self.params = params

    def check(self, setup: Any, model: ModelHandle) -> None:
        from ...training.wiring import pick_device
        from . import FlowerMissing, require_flwr

        try:
            require_flwr()
            import ray  # noqa: F401  (Flower's simulation engine)
        except (FlowerMissing, ImportError):
            raise ConfigError("executor flower needs flwr and its simulation engine: pip install 'fllab[flower]'", "executor") from None
        threads, cpus, total = self.params.sizes()
        if cpus > total:
            raise ConfigError(f"cpus_per_client {cpus:g} (= threads) exceeds the simulation's {total} CPUs: no ClientApp could start",
                              "executor.cpus_per_client")
        if pick_device(setup.scenario.device) == "cuda" and not self.params.gpus_per_client:
            raise ConfigError("device cuda needs gpus_per_client > 0: Flower's ClientApps see no GPU without one", "executor.gpus_per_client")
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            raise ConfigError("this process is already connected to Ray; Flower's simulation starts its own and shuts it down "
                              "when done, so run it in a process without Ray", "executor")

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        self.fit, self.clients = fit, clients

    def drive(self, server: Any, rounds: range, finish: Callable[[dict[str, Any]], None]) -> None:
        from .simulation import simulate_rounds

        threads, cpus, total = self.params.sizes()
        simulate_rounds(server, rounds, finish, self.fit, self.clients, threads=threads, cpus_per_client=cpus,
                        gpus_per_client=self.params.gpus_per_client, num_cpus=total)

    def close(self) -> None:
        """Nothing held between runs: the simulation's Ray ends with :meth:`drive`."""
        self.fit, self.clients = None, ()
