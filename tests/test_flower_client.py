"""fllab's client side in Flower: update defenses as client mods (the engine's transform, seeded
as the engine seeds it), refusals, and FllabClient (fllab's local training, DP-SGD with
per-client accounting in the reply metrics)."""
from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from flower_helpers import context, message, record, reply, train_message  # noqa: E402
from fllab.errors import CapabilityError, ConfigError  # noqa: E402
from fllab.interop.flower import FllabClient, defense_mod, record_to_flat  # noqa: E402
from fllab.registry import DATASETS, DEFENSES, MODELS, load_plugins  # noqa: E402
from fllab.seeding import derive_seed  # noqa: E402
from fllab.types import ModelHandle  # noqa: E402

load_plugins()
D = 26
UPDATE_DEFENSES = ["clip_noise", {"name": "topk", "fraction": 0.2}, "quantize", "sign", {"name": "sketch", "compression": 2.0}, "rqm", "dp_fedavg"]


def trained(sent_flat: torch.Tensor, new_flat: torch.Tensor):
    """A ClientApp stand-in answering any message with ``new_flat`` as its weights."""
    def call_next(msg: Message, ctx) -> Message:
        return reply(ctx.node_id, new_flat, 40)
    return call_next


@pytest.mark.parametrize("spec", UPDATE_DEFENSES, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_mod_applies_the_defense_as_the_engine_would(spec):
    gen = torch.Generator().manual_seed(0)
    sent, new = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    mod = defense_mod(spec, upload="weights", seed=11)
    out = mod(train_message(5, sent, server_round=3), context(5, partition_id=1), trained(sent, new))
    defense = DEFENSES.build(spec)
    name = defense.registry_name
    g = torch.Generator().manual_seed(derive_seed(derive_seed(11, "client", 1, 2), "defense", name))  # the engine's seed
    want = sent + defense.transform(new - sent, g)
    torch.testing.assert_close(record_to_flat(out.content.array_records["arrays"]), want, rtol=0, atol=1e-6)
    assert out.content.metric_records["metrics"]["num-examples"] == 40


def test_mod_on_gradient_uploads_and_passthrough():
    gen = torch.Generator().manual_seed(1)
    sent, grad = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    out = defense_mod({"name": "topk", "fraction": 0.5}, upload="gradient")(train_message(5, sent), context(5), trained(sent, grad))
    got = record_to_flat(out.content.array_records["arrays"])
    assert int((got != 0).sum()) == D // 2 and torch.equal(got[got != 0], grad[got != 0])
    evaluate = train_message(5, sent)
    evaluate.metadata.message_type = "evaluate"
    untouched = defense_mod("sign")(evaluate, context(5), trained(sent, grad))
    torch.testing.assert_close(record_to_flat(untouched.content.array_records["arrays"]), grad)


def test_mod_refusals():
    with pytest.raises(ConfigError, match="^mod: dp_sgd does not transform a client's upload; use fllab.interop.flower.FllabClient$"):
        defense_mod("dp_sgd")
    with pytest.raises(ConfigError, match="^mod: secure_aggregation does not transform"):
        defense_mod("secure_aggregation")
    with pytest.raises(CapabilityError, match="^mod: topk works on delta or gradient updates; this upload is a ranking$"):
        defense_mod("topk", upload="ranking")
    with pytest.raises(ConfigError, match="^upload: upload must be one of"):
        defense_mod("topk", upload="logits")


def test_mod_on_a_rank_learning_upload_is_an_error_reply():
    """FRL clients send integer rankings: the mod answers with Flower's MOD_FAILED_PRECONDITION
    error, one line naming the defense, instead of corrupting the upload."""
    sent = torch.randn(D)
    ranking = {"p0": Array(torch.randperm(D).numpy().astype("int64"))}

    def call_next(msg, ctx):
        return message(5, 0, RecordDict({"arrays": ArrayRecord(array_dict=ranking), "metrics": MetricRecord({"num-examples": 10})}))
    out = defense_mod("topk")(train_message(5, sent), context(5), call_next)
    assert out.has_error()
    assert out.error.reason == "fllab mod topk: array 'p0' holds int64 values (a ranking?); fllab update defenses need real-valued updates"


def digits_client(n: int = 64):
    bundle = DATASETS.build("digits").load()
    data = bundle.train.subset(torch.arange(n))
    builder = MODELS.build({"name": "mlp", "hidden": [16]})
    handle = ModelHandle(lambda: builder.build(bundle.input_shape, bundle.num_classes), bundle.input_shape, bundle.num_classes)
    return handle, data


def test_fllab_client_dp_sgd_reports_per_client_epsilon():
    """Two rounds of DP-SGD in one node: the reply's epsilon is the PrivacyLedger epsilon of the
    client's whole history (kept in the node's context.state), and grows with the rounds; the
    upload is the one fllab's ClientRunner computes for that client, round and seed."""
    from fllab.privacy import PrivacyLedger
    from fllab.training.client import ClientRunner
    from fllab.types import ClientTask

    handle, data = digits_client()
    spec = {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp"}
    algo = {"name": "fedavg", "local_steps": 3, "batch_size": 16, "lr": 0.1}
    client = FllabClient(handle, algo, [spec], seed=5)
    torch.manual_seed(0)
    net = handle.build()
    sent = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = tuple(tuple(p.shape) for p in net.parameters())
    ctx = context(9, partition_id=3, run_config={"num-server-rounds": 2})

    eps = []
    for rnd in (1, 2):
        msg = message(0, 9, RecordDict({"arrays": record(sent, shapes), "config": ConfigRecord({"server-round": rnd})}))
        out = client.train(msg, ctx, data)
        m = out.content.metric_records["metrics"]
        eps.append(m["privacy.epsilon"])
        assert m["num-examples"] == 64 and m["privacy.delta"] == 1e-5
    ledger = PrivacyLedger("rdp")
    ledger.step(1.0, 16 / 64, 3)
    ledger.step(1.0, 16 / 64, 3)
    assert eps[1] == pytest.approx(ledger.epsilon(1e-5), rel=1e-12) and eps[1] > eps[0]
    # the round-2 upload equals fllab's own client for the same task
    ref = ClientRunner(handle, client.algorithm, [DEFENSES.build(spec)])
    ref.defenses[0].plan(rounds=2, num_clients=2, clients_per_round=2, model=handle)
    first = ref(ClientTask(3, 0, sent, data, derive_seed(5, "client", 3, 0)))
    second = ref(ClientTask(3, 1, sent, data, derive_seed(5, "client", 3, 1), state=first.state))
    torch.testing.assert_close(record_to_flat(out.content.array_records["arrays"]), second.update, rtol=0, atol=0)


def test_fllab_client_refusals():
    handle, _ = digits_client(8)
    with pytest.raises(ConfigError, match="^algorithm: FllabClient runs algorithms that send a gradient or a delta; frl sends a ranking$"):
        FllabClient(handle, "frl")
    with pytest.raises(ConfigError, match="^defenses.0: secure_aggregation acts on the server"):
        FllabClient(handle, "fedavg", ["secure_aggregation"])
