"""ClientApp: fllab's FedAvg client, behind a fllab update defense used as a Flower mod."""
from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fllab.interop.flower import FllabClient, defense_mod

from .task import config, model, partition

ALGORITHM = {"name": "fedavg", "local_epochs": 2, "batch_size": 32, "lr": 0.3}


def mod_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg["client-mod"]
    if name == "clip_noise":
        return {"name": name, "clip": cfg["clip"], "sigma": cfg["mod-sigma"]}
    if name == "dp_fedavg":  # the client half of DP-FedAvg: clip to C (the server adds the noise)
        return {"name": name, "clip": cfg["clip"]}
    return {"name": name}


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` take precedence over the run config (tests)."""
    cache: dict[str, Any] = {}

    def configured_mod(msg: Message, context: Context, call_next):
        cfg = config(context.run_config, overrides)
        if "mod" not in cache:  # the run config is known only once a message arrives
            cache["mod"] = defense_mod(mod_spec(cfg), upload="delta", seed=int(cfg["seed"]))
        return cache["mod"](msg, context, call_next)

    app = ClientApp(mods=[configured_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config(context.run_config, overrides)
        if "client" not in cache:
            cache["client"] = FllabClient(model(), ALGORITHM, seed=int(cfg["seed"]))
        pid = int(context.node_config["partition-id"])
        return cache["client"].train(msg, context, partition(pid, int(cfg["num-partitions"]), int(cfg["seed"])))

    return app


app = make_client_app()
