"""fllab's client half of a round inside a Flower ClientApp: local training (DP-SGD through
Opacus included) and the client-side defenses, with per-client privacy accounting in the reply.

    client = FllabClient(model_handle, {"name": "fedavg", "lr": 0.05}, [{"name": "dp_sgd", ...}], seed=0)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        return client.train(msg, context, my_data)

:meth:`FllabClient.train` builds fllab's :class:`fllab.types.ClientTask` from the message (the
client id is the node's ``partition-id`` when its node config has one, the round is
``server-round - 1``, the seed ``derive_seed(seed, "client", id, round)`` as in the engine) and runs
:class:`fllab.training.client.ClientRunner`, so the upload equals what the serial engine computes
for that client, round and seed.  The reply's record holds the algorithm's upload (``delta`` for
FedAvg, ``gradient`` for FedSGD) or, with ``upload="weights"``, the new weights a stock Flower
strategy expects; its metrics hold ``num-examples``, ``train_loss`` and ``fllab.client-id``.

DP-SGD: the client's accountant history (``(sigma, q, steps)`` segments of every round it took
part in) lives in the node's ``context.state`` (a ConfigRecord, kept by Flower between rounds),
and the reply's metrics carry ``privacy.epsilon`` and ``privacy.delta`` of this client, computed
by :class:`fllab.privacy.PrivacyLedger` with the defense's accountant -- the figure
``dp_sgd.account`` reports for the same client in a scenario.  :class:`.FllabStrategy` reports the
largest over the round's clients (the worst-off client, as the scenario does).
"""
from __future__ import annotations

from typing import Any, Sequence

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from ...errors import ConfigError
from ...privacy import PrivacyLedger
from ...registry import ALGORITHMS, DEFENSES, load_plugins
from ...seeding import derive_seed
from ...training.client import ClientRunner
from ...types import ClientTask, ModelHandle, TensorData
from .arrays import as_reply, flat_to_record, record_to_flat
from .mods import client_round

STATE_KEY = "fllab"
#: reply metric holding fllab's client id (the node's partition-id): attacks on a capture seed
#: their randomness with it, as the engine's drivers do, so that they reproduce a scenario's attack
CLIENT_ID_KEY = "fllab.client-id"
HISTORY_KEY = "dp_sgd.history"


def history_from_state(context: Context) -> tuple[tuple[float, float, int], ...]:
    """The DP-SGD segments stored in the node's state (flat ``[sigma, q, steps, ...]``)."""
    record = context.state.config_records.get(STATE_KEY)
    flat = list(record[HISTORY_KEY]) if record is not None and HISTORY_KEY in record else []
    return tuple((float(flat[i]), float(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3))


class FllabClient:
    """fllab's client (algorithm + defenses) answering Flower training messages (module docstring).

    ``model``: the task's :class:`ModelHandle`; ``algorithm``: a ``fedsgd`` / ``fedavg`` spec;
    ``defenses``: client-side defense specs (``dp_sgd``, ``clip_noise``, ``topk``, ...);
    ``upload``: ``native`` (the algorithm's own upload) or ``weights``; ``seed``: the root seed.
    """

    def __init__(self, model: ModelHandle, algorithm: Any, defenses: Sequence[Any] = (), *, upload: str = "native", seed: int = 0, device: str = "cpu"):
        load_plugins()
        self.algorithm = ALGORITHMS.build(algorithm, "algorithm")
        sends = self.algorithm.sends.value
        if sends not in ("gradient", "delta"):
            raise ConfigError(f"FllabClient runs algorithms that send a gradient or a delta; {self.algorithm.registry_name} sends a {sends}", "algorithm")
        self.defenses = [DEFENSES.build(d, f"defenses.{i}") for i, d in enumerate(defenses)]
        for i, d in enumerate(self.defenses):
            if hasattr(d, "server_view") or (hasattr(d, "wrap_aggregator") and not hasattr(d, "transform")):
                raise ConfigError(f"{d.registry_name} acts on the server; use fllab.interop.flower.FllabStrategy", f"defenses.{i}")
            needs = getattr(d, "needs", None)
            if needs is not None and sends not in needs:
                raise ConfigError(f"{d.registry_name} works on {' or '.join(sorted(needs))} updates; algorithm {self.algorithm.registry_name} sends a {sends}", f"defenses.{i}")
        if upload not in ("native", "weights"):
            raise ConfigError(f"upload must be native or weights; got {upload!r}", "upload")
        self.upload = sends if upload == "native" else "weights"
        self.model = model
        self.seed = int(seed)
        self.device = device
        self.dp = next((d for d in self.defenses if d.registry_name == "dp_sgd"), None)
        self._planned = False
        self.runner = ClientRunner(model, self.algorithm, self.defenses)

    def plan(self, rounds: int, num_clients: int) -> None:
        """Let defenses that calibrate to the federation plan (DP-SGD's ``target_epsilon``)."""
        for i, d in enumerate(self.defenses):
            if hasattr(d, "plan"):
                try:
                    d.plan(rounds=rounds, num_clients=num_clients, clients_per_round=num_clients, model=self.model)
                except ValueError as err:
                    raise ConfigError(str(err), f"defenses.{i}") from None
        self._planned = True

    def train(self, msg: Message, context: Context, data: TensorData) -> Message:
        """Answer one training message with fllab's upload for this client and round."""
        if not self._planned:
            rounds = int(context.run_config.get("num-server-rounds", 1))
            self.plan(rounds, int(context.node_config.get("num-partitions", 1)))
        received = next(iter(msg.content.array_records.values()))
        sent = record_to_flat(received)
        cid, rnd = client_round(msg, context)
        state = None
        if self.dp is not None:
            from ...defenses.dp import DPSGDState

            state = DPSGDState(history_from_state(context))
        task = ClientTask(cid, rnd, sent.to(self.device), data.to(self.device), derive_seed(self.seed, "client", cid, rnd), self.device, state)
        result = self.runner(task)
        metrics: dict[str, Any] = {"num-examples": int(result.num_examples), CLIENT_ID_KEY: cid}
        metrics.update({k: float(v) for k, v in result.metrics.items()})
        if self.dp is not None:
            history = result.extras["dp_sgd.history"]
            context.state.config_records[STATE_KEY] = ConfigRecord({HISTORY_KEY: [float(v) for seg in history for v in seg]})
            ledger = PrivacyLedger(self.dp.params.accountant)
            for segment in history:
                ledger.step(*segment)
            metrics["privacy.epsilon"] = float(ledger.epsilon(self.dp.params.delta))
            metrics["privacy.delta"] = float(self.dp.params.delta)
        reply = as_reply(result.update.detach().cpu(), sent, self.upload)
        content = RecordDict({"arrays": flat_to_record(reply, received), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)
