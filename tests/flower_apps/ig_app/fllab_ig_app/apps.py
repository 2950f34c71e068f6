"""FedSGD at batch 1: SuperNode ``partition-id`` i holds CIFAR-10 sample image i.  The server runs
fllab's DP-FedAvg (clip, noise on the mean, accountant) and records what it receives; every
client clips its gradient with fllab's dp_fedavg mod.  Central DP protects the released model,
not the uploads: the captured traffic is what Inverting Gradients attacks."""
from __future__ import annotations

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fllab.interop.flower import FllabClient, FllabStrategy, RecordingStrategy, defense_mod
from fllab.interop.flower.arrays import model_record
from fllab.registry import DATASETS, MODELS, load_plugins
from fllab.types import ModelHandle

ALGORITHM = {"name": "fedsgd", "batch_size": 1, "lr": 0.1}


def task(width: int):
    load_plugins()
    bundle = DATASETS.build("cifar10_samples").load()
    builder = MODELS.build({"name": "convnet", "width": width})
    handle = ModelHandle(lambda: builder.build(bundle.input_shape, bundle.num_classes), bundle.input_shape, bundle.num_classes)
    return bundle, handle


def _mod(msg: Message, context: Context, call_next):
    clip = float(context.run_config["clip"])
    return defense_mod({"name": "dp_fedavg", "clip": clip}, upload="gradient")(msg, context, call_next)


client = ClientApp(mods=[_mod])


@client.train()
def train(msg: Message, context: Context) -> Message:
    bundle, handle = task(int(context.run_config["width"]))
    pid = int(context.node_config["partition-id"])
    reply = FllabClient(handle, ALGORITHM).train(msg, context, bundle.train.subset(torch.tensor([pid])))
    reply.content.metric_records["metrics"]["partition-id"] = pid  # lets the test pair node ids with its ground truth
    return reply


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    bundle, handle = task(int(cfg["width"]))
    torch.manual_seed(0)
    net = handle.build()
    strategy = FllabStrategy("mean", [{"name": "dp_fedavg", "clip": float(cfg["clip"]), "noise_multiplier": float(cfg["noise-multiplier"])}],
                             upload="gradient", server_lr=ALGORITHM["lr"], min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)
    meta = {"model": {"name": "convnet", "width": int(cfg["width"])}, "input_shape": list(bundle.input_shape),
            "num_classes": bundle.num_classes, "algorithm": ALGORITHM}
    RecordingStrategy(strategy, str(cfg["capture"]), upload="gradient", meta=meta).start(
        grid=grid, initial_arrays=model_record(net), num_rounds=int(cfg["num-server-rounds"]))
