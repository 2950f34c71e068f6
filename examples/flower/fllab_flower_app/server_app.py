"""ServerApp: fllab's aggregator (Krum by default) or DP-FedAvg in a Flower strategy, central
evaluation on the digits test split, optional capture of the traffic."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fllab.interop.flower import FllabStrategy, RecordingStrategy, record_to_flat
from fllab.interop.flower.arrays import model_record
from fllab.models.flat import load_flat_
from fllab.seeding import derive_seed
from fllab.training.local import evaluate

from .client_app import ALGORITHM
from .task import bundle, config, model


def strategy_for(cfg: dict[str, Any]) -> Any:
    """FllabStrategy from the run config (wrapped by a recorder when ``capture`` is set)."""
    aggregator: dict[str, Any] = {"name": cfg["aggregator"]}
    if cfg["aggregator"] != "mean" and "f" in _params(cfg["aggregator"]):
        aggregator["f"] = int(cfg["f"])
    defenses = [{"name": "dp_fedavg", "noise_multiplier": cfg["noise-multiplier"], "clip": cfg["clip"], "seed": cfg["seed"]}] if cfg["dp-fedavg"] else []
    n = int(cfg["num-partitions"])
    strategy = FllabStrategy(aggregator, defenses, upload="delta", seed=int(cfg["seed"]), min_train_nodes=n,
                             min_available_nodes=n, fraction_evaluate=0.0)
    if cfg["capture"]:
        b = bundle()
        meta = {"model": {"name": "mlp", "hidden": [64]}, "input_shape": list(b.input_shape), "num_classes": b.num_classes,
                "algorithm": ALGORITHM}
        return RecordingStrategy(strategy, cfg["capture"], upload="delta", meta=meta)
    return strategy


def _params(name: str) -> dict:
    from fllab.registry import AGGREGATORS

    return AGGREGATORS[name].Params.model_fields


def central_evaluation(round_: int, arrays: ArrayRecord) -> MetricRecord:
    net = load_flat_(model().build(), record_to_flat(arrays))
    return MetricRecord(evaluate(net, bundle().test))


def make_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config(context.run_config, overrides)
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(int(cfg["seed"]), "init"))
            net = model().build()
        strategy = strategy_for(cfg)
        result = strategy.start(grid=grid, initial_arrays=model_record(net), num_rounds=int(cfg["num-server-rounds"]),
                                evaluate_fn=central_evaluation)
        if cfg["results"]:
            rounds = int(cfg["num-server-rounds"])
            final = dict(result.evaluate_metrics_serverapp[rounds])
            train = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
            Path(cfg["results"]).write_text(json.dumps({"accuracy": final["accuracy"], "train_metrics": train}))

    return app


app = make_server_app()
