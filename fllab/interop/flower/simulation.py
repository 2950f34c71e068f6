"""A scenario's rounds as a Flower simulation (``executor: flower``, :mod:`.executor`): Flower's
simulation engine (``flwr.simulation.run_simulation``, Ray backend) runs

* the ClientApp -- fllab's client fit function (:class:`fllab.training.client.ClientRunner`:
  algorithm and client-side defenses) on the data of fllab client ``partition-id``: a training
  message carries the global weights (an ``ArrayRecord`` of the model's named parameters) and the
  task's round, seed and private state; the reply carries the upload (an ``ArrayRecord``), Flower's
  ``num-examples`` and train loss (a ``MetricRecord``), and the rest of fllab's ``ClientResult``
  (state, extras, trainer report) as bytes;
* the ServerApp -- a Strategy whose round is fllab's :class:`fllab.training.server.Server`:
  ``configure_train`` sends :meth:`Server.tasks` (fllab's sampling) to exactly the nodes of the
  sampled clients, ``aggregate_train`` hands the replies, in task order, to
  :meth:`Server.receive` (poisoning, server view, drivers, aggregation, server step, accounting,
  detection, evaluation).

Node ids are Flower's; before round 1 the ServerApp asks every node for its ``partition-id``
(one ``query`` message each), which is the fllab client id.  The clients' data and the fit
function go into Ray's object store once; each ClientApp process loads them on its first message
(:func:`_loaded`).  A task is a pure function of its fields, so with the serial executor's torch
thread count the metrics are identical to a serial run.

Lifetime: this module starts a local Ray for the simulation (Flower's backend shuts it down when
the simulation ends) and shuts it down itself on every other way out (an error, Ctrl-C).  The
ServerApp thread polls a stop event while it waits for replies, so nothing outlives the call.
The bytes in the messages are pickles exchanged between this process and the Ray workers it
started; nothing else is unpickled.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ...types import ClientResult, ClientTask, FitFn, TensorData
from .arrays import flat_to_record, record_to_flat
from .client import CLIENT_ID_KEY

PARTITION_ID = "partition-id"  # Flower's node-config key of a simulated node's partition
ROUND_KEY, SEED_KEY, STATE_KEY, RESULT_KEY = "fllab.round", "fllab.seed", "fllab.state", "fllab.result"
#: seconds between two looks for replies (Flower's in-memory grid waits 0.1 s)
POLL = 0.01


class Stopped(RuntimeError):
    """The simulation was stopped (an error elsewhere, Ctrl-C) while the ServerApp waited."""


def pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(blob: bytes, device: str) -> Any:
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=False)  # our own workers' bytes


# ------------------------------------------------------------------------------------ client side
@dataclass
class Payload:
    """What every ClientApp process needs once: the fit function and every client's data (CPU)."""

    fit: FitFn
    clients: list[TensorData]
    device: str


_LOADED: dict[str, tuple[FitFn, list[TensorData]]] = {}  # object-store key -> (fit, data on device), per process


def _loaded(ref: Any) -> tuple[FitFn, list[TensorData]]:
    """The payload behind ``ref``, fetched from Ray's object store on this process's first message."""
    key = ref.hex()
    if key not in _LOADED:
        import ray

        payload: Payload = ray.get(ref)
        _LOADED.clear()
        _LOADED[key] = (payload.fit, [c.to(payload.device) for c in payload.clients])
    return _LOADED[key]


def client_app(ref: Any, threads: int, device: str) -> ClientApp:
    """The ClientApp: answers the partition query and trains fllab client ``partition-id``."""
    app = ClientApp()

    @app.query()
    def partition(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({PARTITION_ID: int(context.node_config[PARTITION_ID])})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        fit, clients = _loaded(ref)
        cid = int(context.node_config[PARTITION_ID])
        config = msg.content.config_records["config"]
        if int(config[CLIENT_ID_KEY]) != cid:
            raise RuntimeError(f"node of client {cid} received the task of client {int(config[CLIENT_ID_KEY])}")
        state = unpack(config[STATE_KEY], device) if STATE_KEY in config else None
        weights = record_to_flat(msg.content.array_records["arrays"]).to(device)
        result = fit(ClientTask(cid, int(config[ROUND_KEY]), weights, clients[cid], int(config[SEED_KEY]), device, state))
        update = result.update.detach().cpu().numpy()
        metrics = {"num-examples": int(result.num_examples), CLIENT_ID_KEY: cid,
                   **{k: float(v) for k, v in result.metrics.items()}}
        rest = pack(replace(result, update=torch.empty(0)))
        return Message(RecordDict({"arrays": ArrayRecord({"update": Array(update)}), "metrics": MetricRecord(metrics),
                                   "fllab": ConfigRecord({RESULT_KEY: rest})}), reply_to=msg)

    return app


# ------------------------------------------------------------------------------------ server side
class StoppableGrid(Grid):
    """The simulation's grid, whose ``send_and_receive`` waits for every reply (no timeout: a
    failing ClientApp replies with an error) but gives up when ``stop`` is set."""

    def __init__(self, inner: Grid, stop: threading.Event):
        self.inner, self.stop = inner, stop

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        replies: list[Message] = []
        while waiting:
            if self.stop.is_set():
                raise Stopped("the Flower simulation was stopped")
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(POLL)
        return replies


def check_replies(replies: Sequence[Message], what: str) -> None:
    """Raise the first ClientApp failure among ``replies`` (one line with Flower's reason)."""
    for m in replies:
        if m.has_error():
            raise RuntimeError(f"{what}: a Flower ClientApp failed: {m.error.reason}")


def locate_clients(grid: Grid, num_clients: int, stop: threading.Event) -> dict[int, int]:
    """fllab client id (the node's ``partition-id``) -> Flower node id, by asking every node."""
    while len(nodes := list(grid.get_node_ids())) < num_clients:  # nodes register while the ServerApp starts
        if stop.is_set():
            raise Stopped("the Flower simulation was stopped")
        time.sleep(POLL)
    replies = list(grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]))
    check_replies(replies, "partition query")
    out = {int(m.content.metric_records["metrics"][PARTITION_ID]): int(m.metadata.src_node_id) for m in replies}
    if sorted(out) != list(range(num_clients)):
        raise RuntimeError(f"the simulation's partition ids are not 0..{num_clients - 1}: {sorted(out)}")
    return out


class ServerRoundStrategy(Strategy):
    """A Flower Strategy whose round is fllab's server round (module docstring): Flower round
    ``k`` (from 1) is fllab round ``rounds[k - 1]``; ``finish(record)`` gets each round's record."""

    def __init__(self, server: Any, rounds: range, finish: Callable[[dict[str, Any]], None], nodes: dict[int, int]):
        self.server, self.rounds, self.finish, self.nodes = server, rounds, finish, nodes
        self.layout = [(name, tuple(p.shape)) for name, p in server.fed.server_model.named_parameters() if p.requires_grad]
        self.pending: tuple[int, list[ClientTask], float] | None = None

    def arrays(self) -> ArrayRecord:
        """The server's global weights as the model's named arrays."""
        return flat_to_record(self.server.global_params, self.layout)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """fllab's tasks of the round, each to the node of its client (``arrays`` -- what the last
        ``aggregate_train`` returned -- are the server's weights, which the tasks carry)."""
        t0 = time.perf_counter()
        rnd = self.rounds[server_round - 1]
        tasks = self.server.tasks(rnd)
        self.pending = (rnd, tasks, t0)
        weights = self.arrays()
        messages = []
        for task in tasks:
            cfg: dict[str, Any] = {"server-round": server_round, CLIENT_ID_KEY: task.client_id, ROUND_KEY: rnd, SEED_KEY: task.seed}
            if task.state is not None:
                cfg[STATE_KEY] = pack(task.state)
            content = RecordDict({"arrays": weights, "config": ConfigRecord(cfg)})
            messages.append(Message(content, dst_node_id=self.nodes[task.client_id], message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The replies, in task order, through :meth:`Server.receive`; the new global weights."""
        assert self.pending is not None and self.pending[0] == self.rounds[server_round - 1]
        rnd, tasks, t0 = self.pending
        replies = list(replies)
        check_replies(replies, f"round {rnd}")
        by_node = {int(m.metadata.src_node_id): m for m in replies}
        missing = [t.client_id for t in tasks if self.nodes[t.client_id] not in by_node]
        if missing:
            raise RuntimeError(f"round {rnd}: no reply from clients {missing}")
        device = self.server.fed.device
        results = [self.result(by_node[self.nodes[t.client_id]], device) for t in tasks]
        record = self.server.receive(rnd, tasks, results)
        record["seconds"] = time.perf_counter() - t0
        self.finish(record)
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return self.arrays(), MetricRecord(scalars)

    @staticmethod
    def result(reply: Message, device: str) -> ClientResult:
        """A reply as fllab's ClientResult (the update from the reply's arrays, exact)."""
        result: ClientResult = unpack(reply.content.config_records["fllab"][RESULT_KEY], device)
        update = torch.from_numpy(np.asarray(reply.content.array_records["arrays"]["update"].numpy())).to(device)
        return replace(result, update=update)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # the server evaluates on the test split in receive (centralised, as in every executor)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log(logging.INFO, "\t└──> fllab server round: rounds %s-%s", self.rounds.start, self.rounds.stop - 1)


def server_app(server: Any, rounds: range, finish: Callable[[dict[str, Any]], None], stop: threading.Event,
               threads: list[threading.Thread]) -> ServerApp:
    """The ServerApp (Flower runs it in a thread of its own, which it appends to ``threads``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        threads.append(threading.current_thread())
        grid = StoppableGrid(grid, stop)
        nodes = locate_clients(grid, len(server.fed.client_data), stop)
        strategy = ServerRoundStrategy(server, rounds, finish, nodes)
        strategy.start(grid=grid, initial_arrays=strategy.arrays(), num_rounds=len(rounds))

    return app


def simulate_rounds(server: Any, rounds: range, finish: Callable[[dict[str, Any]], None], fit: FitFn,
                    clients: Sequence[TensorData], *, threads: int, cpus_per_client: float, gpus_per_client: float,
                    num_cpus: int) -> None:
    """Run ``rounds`` of ``server`` as a Flower simulation (module docstring)."""
    from flwr.simulation import run_simulation
    import ray

    if len(rounds) == 0:
        return
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    stop = threading.Event()
    server_threads: list[threading.Thread] = []
    started = False
    try:
        flwr_log.setLevel(logging.CRITICAL)  # Flower's INFO round log and its deprecation notes; failures are raised
        if not ray.is_initialized():  # as Flower's backend would, plus the object store for the payload
            path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
            with warnings.catch_warnings():  # Ray's note on a future default for GPU visibility: not for fllab's users
                warnings.simplefilter("ignore", FutureWarning)
                ray.init(num_cpus=num_cpus, num_gpus=None if gpus_per_client else 0, include_dashboard=False,
                         log_to_driver=False, configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
            started = True
        device = server.fed.device
        ref = ray.put(Payload(fit, [c.to("cpu") for c in clients], device))
        run_simulation(
            server_app=server_app(server, rounds, finish, stop, server_threads), client_app=client_app(ref, threads, device),
            num_supernodes=len(clients),
            backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client}},
        )
    finally:
        stop.set()  # the ServerApp thread, if still waiting, gives up: it ends before this call does
        for thread in server_threads:
            thread.join()
        if started and ray.is_initialized():  # Flower's backend shuts Ray down when the simulation ends; not on every error
            ray.shutdown()
        flwr_log.setLevel(level)
