"""Flower messages and a grid built by hand, to drive strategies and mods without a SuperLink."""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity


@contextmanager
def task_identity(run_id: int = 1, node_id: int = 0, task_id: int = 0):
    """Flower sets who is sending in its runtimes; outside them a test must (then restores)."""
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class FakeGrid:
    """The two Grid calls a strategy's configure_* makes."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def message(src: int, dst: int, content: RecordDict, message_type: str = "train") -> Message:
    md = Metadata(run_id=1, message_id=f"m{src}-{dst}", src_node_id=src, dst_node_id=dst, reply_to_message_id="",
                  group_id="", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=md)


def record(flat: torch.Tensor, shapes=((5, 4), (4,), (2,))) -> ArrayRecord:
    values, out, off = flat.numpy().astype(np.float32), {}, 0
    for i, s in enumerate(shapes):
        n = int(np.prod(s))
        out[f"p{i}"] = Array(values[off : off + n].reshape(s).copy())
        off += n
    return ArrayRecord(array_dict=out)


def reply(node: int, flat: torch.Tensor, num_examples: int, **metrics) -> Message:
    return message(node, 0, RecordDict({"arrays": record(flat), "metrics": MetricRecord({"num-examples": num_examples, **metrics})}))


def train_message(node: int, flat: torch.Tensor, server_round: int = 1) -> Message:
    return message(0, node, RecordDict({"arrays": record(flat), "config": ConfigRecord({"server-round": server_round})}))


def context(node_id: int, partition_id: int | None = None, run_config=None) -> Context:
    cfg = {} if partition_id is None else {"partition-id": partition_id, "num-partitions": 2}
    return Context(run_id=1, node_id=node_id, node_config=cfg, state=RecordDict(), run_config=dict(run_config or {}))


def flower_round(strategy, clients, sent_record, rnd: int):
    """One training round through Flower's messages without a runtime: the strategy samples and
    configures, each sampled node's ``answer(msg, context)`` replies, the strategy aggregates.
    ``clients``: {node_id: (answer, Context)}.  Returns the strategy's (arrays, metrics)."""
    from flwr.app import ConfigRecord

    with task_identity():
        msgs = list(strategy.configure_train(rnd, sent_record, ConfigRecord(), FakeGrid(clients)))
    with task_identity(node_id=1):
        replies = [clients[m.metadata.dst_node_id][0](m, clients[m.metadata.dst_node_id][1]) for m in msgs]
    return strategy.aggregate_train(rnd, replies)
