"""The executor seam (DESIGN.md principle 8): client work is a pure function of a ``ClientTask``
(client id, round, global weights, data, derived seed), so any executor that maps it over the
round's tasks gives the same results.  The protocol (:mod:`fllab.hooks`): ``start(fit, clients)``
once before round 0 (the fit function and every client's data), ``map(tasks) -> results`` in
task order each round, ``close()`` after the last (also on failure); optional ``check(setup,
model)`` refuses, before anything runs, a scenario the executor cannot run.  ``used`` names the
executor that actually runs (``auto`` resolves to one of the others; env.json records it).

* ``serial`` -- one client after another in this process (the reference).
* ``process`` -- worker processes on this machine; every client's data reaches a worker once, at
  start; each round ships only the tasks (global weights, seed, state).  Identical results.
* ``vectorized`` -- the round's FedAvg clients trained as one stacked computation
  (:func:`fllab.training.stacked.run_sgd`), each client on its own batches from its own
  generator: the serial trajectory up to float rounding (the stacked kernels sum in another
  order than autograd on one model); ``dp_sgd`` runs as stacked DP-SGD
  (:mod:`fllab.training.dp_stacked`) with the same epsilon.
* ``ray`` -- Ray actors (``fllab[ray]``): a local Ray started for the run, or an existing
  cluster (``address``); the data goes into the object store once, the global weights once per
  round.  Identical results.
* ``auto`` (the scenario default) -- ``vectorized`` where it applies and pays (any model on a
  GPU, MLPs on a CPU), else ``serial``.
"""
from __future__ import annotations

import importlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from typing import Any, Literal, Sequence

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from ..errors import ConfigError
from ..hooks import has_hook
from ..models.victim import VictimModel
from ..registry import EXECUTORS, NoParams, Params
from ..seeding import derive_seed
from ..types import ClientResult, ClientTask, FitFn, ModelHandle, TensorData
from .local import TrainReport
from .dp_stacked import poisson_plan, run_dp_sgd
from .stacked import StackedMLP, run_sgd, schedule


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@EXECUTORS.register("serial")
class SerialExecutor:
    """Runs the clients one after another in this process (the reference executor)."""

    summary = "one client after another in this process"
    Params = NoParams
    used = "serial"

    def __init__(self, params: NoParams):
        self.params = params
        self.fit: FitFn | None = None

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        self.fit = fit

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        return [self.fit(task) for task in tasks]

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------------------------- process
class ProcessParams(Params):
    workers: PositiveInt | None = Field(None, description="worker processes; null = the number of CPU cores")
    threads: PositiveInt | None = Field(None, description="torch threads per worker; null = cores // workers (at least 1)")
    start_method: Literal["auto", "fork", "forkserver", "spawn"] = Field(
        "auto",
        description="how workers start: auto = fork where safe (Linux, CPU, one torch thread per worker, CUDA not "
        "initialized), else forkserver with torch and fllab preloaded once per process; a forked worker with several "
        "threads can deadlock in OpenMP",
    )

    @model_validator(mode="after")
    def _fits_the_cores(self) -> "ProcessParams":
        cores = cpu_cores()
        if self.workers and self.threads and self.workers * self.threads > cores:
            raise ValueError(f"workers x threads = {self.workers * self.threads} exceeds the {cores} CPU cores")
        if self.start_method == "fork" and self.sizes()[1] > 1:
            raise ValueError("start_method fork needs threads 1 (a forked worker on several OpenMP threads can deadlock); use auto or forkserver")
        return self

    def sizes(self) -> tuple[int, int]:
        """(workers, torch threads per worker), with workers x threads <= cores."""
        cores = cpu_cores()
        workers = self.workers or cores
        return workers, self.threads or max(1, cores // workers)


#: Modules every worker needs, imported once before workers start: torch.optim imports
#: torch._dynamo lazily at the first optimizer (about 2 s, a first-task cost in every worker).
PRELOAD = ("torch", "torch._dynamo", "fllab.components", "fllab.training.executors")


def start_context(method: str, device: str, threads: int) -> BaseContext:
    """The multiprocessing context for the workers, with :data:`PRELOAD` imported before they start.
    ``auto`` forks where that is safe -- on Linux, on the CPU, with one torch thread per worker
    (set by the worker's initializer before any torch op: a forked child that enters OpenMP on
    several threads after its parent ran an OpenMP team deadlocks in libgomp) and CUDA not
    initialized -- so workers start in milliseconds with this process's modules and share its
    memory; otherwise a forkserver (one per process, reused by every later pool, e.g. a sweep's
    cells) imports the modules once and forks the workers."""
    if method == "auto":
        safe = sys.platform.startswith("linux") and device == "cpu" and threads == 1 and not torch.cuda.is_initialized()
        method = "fork" if safe and "fork" in get_all_start_methods() else "forkserver"
    if method == "forkserver":
        context = get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))
        return context
    if method == "fork":
        for module in PRELOAD:
            importlib.import_module(module)
    return get_context(method)


_WORKER: dict[str, Any] = {}  # the fit function and the clients' data, set once per worker process


def _worker_start(fit: FitFn, clients: Sequence[TensorData], device: str, threads: int) -> None:
    torch.set_num_threads(threads)  # first, before any torch op (see start_context)
    _WORKER["fit"] = fit
    _WORKER["clients"] = [c.to(device) for c in clients]


def _worker_ready(_: int) -> int:
    """A no-op that occupies one worker for a moment (so that start() spawns every worker)."""
    import time

    time.sleep(0.05)
    return os.getpid()


def _worker_fit(task: ClientTask) -> ClientResult:
    result = _WORKER["fit"](replace(task, data=_WORKER["clients"][task.client_id]))
    return replace(result, update=result.update.cpu())


def _worker_fit_many(global_params: torch.Tensor, tasks: Sequence[ClientTask]) -> list[ClientResult]:
    """A share of the round's tasks, which carry neither data nor weights: the global weights
    come once per share."""
    device = _WORKER["clients"][tasks[0].client_id].x.device if tasks else "cpu"
    weights = global_params.to(device)
    return [_worker_fit(replace(t, global_params=weights)) for t in tasks]


@EXECUTORS.register("process")
class ProcessExecutor:
    """Clients on worker processes of this machine, started by :func:`start_context` (forked where
    safe, else from a forkserver with torch and fllab preloaded).  The clients' data reaches every
    worker once, when the run starts (inherited by a forked worker; shared-memory tensors from a
    forkserver); a round sends each worker a share of the tasks without their data and the global
    weights once.  Client work is a pure function of the task, so the results equal the serial
    executor's (with the same torch thread count per client)."""

    used = "process"
    summary = "worker processes on this machine; client data shipped once"
    Params = ProcessParams

    def __init__(self, params: ProcessParams):
        self.pool: ProcessPoolExecutor | None = None
        self.device = "cpu"
        self.params = params

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        workers, threads = self.params.sizes()
        self.device = str(clients[0].x.device) if clients else "cpu"
        cpu = [c.to("cpu") for c in clients]
        context = start_context(self.params.start_method, self.device, threads)
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(fit, cpu, self.device, threads))
        list(self.pool.map(_worker_ready, range(workers)))  # workers spawn on demand: start them all now

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        """One share of consecutive tasks per worker, the global weights sent once per share."""
        workers = self.params.sizes()[0]
        light = [replace(t, data=None, global_params=None) for t in tasks]
        bounds = [round(i * len(light) / workers) for i in range(workers + 1)]
        shares = [light[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        weights = tasks[0].global_params.cpu()
        futures = [self.pool.submit(_worker_fit_many, weights, share) for share in shares]
        return [replace(r, update=r.update.to(self.device)) for f in futures for r in f.result()]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# ------------------------------------------------------------------------------------------ ray
class RayParams(Params):
    address: str | None = Field(None, description="an existing Ray cluster (e.g. ray://host:10001 or auto); null = start a local Ray for this run")
    actors: PositiveInt | None = Field(None, description="client actors; null = the cluster's CPUs / num_cpus")
    num_cpus: PositiveFloat = Field(1.0, description="CPUs per client actor")
    num_gpus: NonNegativeFloat = Field(0.0, description="GPUs per client actor")
    threads: PositiveInt = Field(1, description="torch threads per client actor")


#: Seconds an existing cluster's address has to answer before the run is refused.
ADDRESS_TIMEOUT = 30.0


def probe_address(address: str, timeout: float) -> None:
    """Refuse (config error on ``executor.address``) an address ``[ray://]host:port`` at which
    nothing accepts a connection within ``timeout`` seconds."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{address!r} is not host:port, ray://host:port or auto", "executor.address")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at {address} ({err})", "executor.address") from None


class RayWorker:
    """One Ray actor: the fit function and every client's data, received once (object store)."""

    def __init__(self, fit: FitFn, clients: Sequence[TensorData], device: str, threads: int):
        _worker_start(fit, clients, device, threads)

    def fit(self, task: ClientTask, global_params: torch.Tensor) -> ClientResult:
        return _worker_fit(replace(task, global_params=global_params.to(_WORKER["clients"][task.client_id].x.device)))


@EXECUTORS.register("ray")
class RayExecutor:
    """Clients on Ray actors: a local Ray started for the run (``ray.init``) or an existing
    cluster (``address``).  Every client's data goes into the object store once, the global
    weights once per round; each actor holds ``num_cpus``/``num_gpus``.  Ray is shut down (or,
    for a cluster fllab did not start, disconnected from) on success, failure and Ctrl-C; fllab
    never stops a cluster it did not start.  Identical results to serial (same threads per client)."""

    used = "ray"
    summary = "Ray actors: a local Ray for the run, or an existing cluster (address)"
    Params = RayParams

    def __init__(self, params: RayParams):
        self.params = params
        self.actors: list[Any] = []
        self.initialized = False

    def check(self, setup: Any, model: ModelHandle) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("executor ray needs Ray: pip install 'fllab[ray]'", "executor") from None
        address = self.params.address
        if address and address != "auto":
            probe_address(address, ADDRESS_TIMEOUT)

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        import ray
        from ray.util import ActorPool

        p = self.params
        if not ray.is_initialized():
            if p.address is None:
                ray.init(num_cpus=cpu_cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=p.address, log_to_driver=False, configure_logging=False)
            self.initialized = True
        self.device = str(clients[0].x.device) if clients else "cpu"
        actor = ray.remote(num_cpus=p.num_cpus, num_gpus=p.num_gpus)(RayWorker)
        count = p.actors or max(1, int(ray.cluster_resources().get("CPU", 1) // p.num_cpus))
        fit_ref, data_ref = ray.put(fit), ray.put([c.to("cpu") for c in clients])
        self.actors = [actor.remote(fit_ref, data_ref, self.device, p.threads) for _ in range(count)]
        self.pool = ActorPool(self.actors)

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        import ray

        weights = ray.put(tasks[0].global_params.cpu())
        light = [replace(t, data=None, global_params=None) for t in tasks]
        results = list(self.pool.map(lambda a, t: a.fit.remote(t, weights), light))
        return [replace(r, update=r.update.to(self.device)) for r in results]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.initialized:  # a local Ray we started stops; a cluster we joined is only left
            ray.shutdown()
            self.initialized = False


# ---------------------------------------------------------------------------------- vectorized
def vectorized_refusal(setup: Any, model: ModelHandle) -> str | None:
    """Why the vectorized executor cannot run ``setup`` (None when it can)."""
    algorithm = setup.algorithm.registry_name
    if algorithm != "fedavg":
        return f"executor vectorized batches fedavg clients only; algorithm {algorithm} needs serial or process"
    for defense in setup.defenses:
        if defense.registry_name == "dp_sgd":
            if defense.params.clipping != "flat":
                return "executor vectorized runs dp_sgd with clipping flat only; per_layer needs serial or process"
        elif has_hook(defense, "wrap_trainer") or has_hook(defense, "wrap_fit"):
            return f"executor vectorized cannot batch defense {defense.registry_name} (it changes local training); use serial or process"
    with torch.device("meta"):
        net = model.build()
    if any(True for _ in net.buffers()):
        return "executor vectorized needs a model without buffers (batch-norm statistics); use serial or process"
    return None


@EXECUTORS.register("vectorized")
class VectorizedExecutor:
    """The round's clients trained as one stacked computation (the shadow ensemble's approach,
    :mod:`fllab.training.stacked`): stacked weights, batched matrix products (a hand-written
    backward for MLPs, ``torch.func.vmap`` otherwise), per-client mini-batches from each client's
    own generator seeded by its task, per-client step counts.  Runs FedAvg (momentum and weight
    decay included) with client-side update transforms (clipping, noise, quantization, ...) applied
    per client afterwards with the serial executor's generators, and ``dp_sgd`` (flat clipping)
    as stacked DP-SGD over clients x samples (:mod:`fllab.training.dp_stacked`: the serial
    trainer's Poisson batches and noise draws, the same accountant segments, so the same
    epsilon); refuses, before anything runs, algorithms other than FedAvg, other defenses that
    change local training, ``dp_sgd`` with per-layer clipping and models with buffers.  Follows
    the serial trajectory up to float rounding (another summation order)."""

    summary = "a round's FedAvg clients as one stacked computation (batched matmuls / vmap)"
    Params = NoParams
    used = "vectorized"

    def __init__(self, params: NoParams):
        self.params = params

    def check(self, setup: Any, model: ModelHandle) -> None:
        reason = vectorized_refusal(setup, model)
        if reason:
            raise ConfigError(reason, "executor")

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        self.algorithm = fit.algorithm
        self.transforms = [d for d in fit.defenses if has_hook(d, "transform")]
        self.dp = next((d for d in fit.defenses if d.registry_name == "dp_sgd"), None)
        self.x = torch.cat([c.x for c in clients])
        self.y = torch.cat([c.y for c in clients])
        sizes = torch.tensor([len(c) for c in clients])
        self.offsets = (torch.cumsum(sizes, 0) - sizes).tolist()
        self.sizes = sizes.tolist()
        self.victim = VictimModel(fit.model_handle.build, self.x.device, self.x.dtype)

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        p = self.algorithm.params
        ids = [t.client_id for t in tasks]
        members = [torch.arange(self.offsets[c], self.offsets[c] + self.sizes[c]) for c in ids]
        steps = [self.algorithm.local_steps(self.sizes[c]) for c in ids]
        gens = [torch.Generator(device="cpu").manual_seed(t.seed) for t in tasks]
        start = tasks[0].global_params
        flat = start.to(self.x.dtype).expand(len(tasks), -1).clone()
        privacy: list[tuple] = [()] * len(tasks)
        if self.dp is None:
            plan = schedule(members, p.batch_size, steps, gens)
            params, losses = run_sgd(
                self.victim, self.x, self.y, flat, plan, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, track_loss=True
            )
        else:
            params, losses, privacy = self._dp_sgd(members, steps, gens, flat)
        deltas = params - start
        results = []
        for k, task in enumerate(tasks):
            n, loss = self.sizes[task.client_id], float(losses[k])
            update = deltas[k]
            for defense in self.transforms:  # client-side transforms, in the serial executor's order and seeds
                gen = torch.Generator(device="cpu").manual_seed(derive_seed(task.seed, "defense", defense.registry_name))
                update = defense.transform(update, gen)
            used = torch.arange(n, device=self.x.device)
            result = ClientResult(task.client_id, update, n, {"train_loss": loss}, {"used_index": used},
                                  training=TrainReport(loss, steps[k], privacy[k]))
            if self.dp is not None:  # the dp_sgd fit's bookkeeping: the client's accountant history
                result = self.dp.settle(task.state, result)
            results.append(result)
        return results

    def _dp_sgd(self, members: list[torch.Tensor], steps: list[int], gens: list[torch.Generator], flat: torch.Tensor) -> tuple:
        """The round's DP-SGD (:mod:`fllab.training.dp_stacked`) with the dp_sgd defense's sample
        rate ``min(batch_size, n) / n`` and noise multiplier per client; returns the weights, the
        losses and each client's ``(sigma, q, steps)`` segment."""
        p, dp = self.algorithm.params, self.dp.params
        rates = [min(p.batch_size, m.numel()) / m.numel() for m in members]
        sigmas = [self.dp.noise_multiplier_for(q, s) for q, s in zip(rates, steps)]
        plan = poisson_plan(members, rates, steps, gens)
        params, losses = run_dp_sgd(
            self.victim, self.x, self.y, flat, plan, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
            noise_multipliers=sigmas, max_grad_norm=dp.max_grad_norm,
        )
        return params, losses, [((sigma, q, s),) for sigma, q, s in zip(sigmas, rates, steps)]

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------- auto
@EXECUTORS.register("auto")
class AutoExecutor:
    """The default executor (a scenario without ``executor``): ``vectorized`` where it applies and
    pays -- any model on a GPU, MLPs (models the stacked kernel covers) on a CPU -- else
    ``serial``.  ``used`` names the one chosen (env.json records it)."""

    summary = "the default: vectorized where it applies and pays (GPU; MLPs on CPU), else serial"
    Params = NoParams

    def __init__(self, params: NoParams):
        self.params = params
        self.inner: Any = SerialExecutor(NoParams())

    @property
    def used(self) -> str:
        return self.inner.used

    def check(self, setup: Any, model: ModelHandle) -> None:
        from .wiring import pick_device

        self.inner = SerialExecutor(NoParams())
        if vectorized_refusal(setup, model) is not None:
            return
        on_gpu = pick_device(setup.scenario.device) == "cuda"
        if on_gpu or StackedMLP.layers_of(VictimModel(model.build, torch.device("cpu"), torch.float32)) is not None:
            self.inner = VectorizedExecutor(NoParams())

    def start(self, fit: FitFn, clients: Sequence[TensorData]) -> None:
        self.inner.start(fit, clients)

    def map(self, tasks: Sequence[ClientTask]) -> list[ClientResult]:
        return self.inner.map(tasks)

    def close(self) -> None:
        self.inner.close()
