"""Attacking Flower traffic: the capture file (round trip, refusals), Inverting Gradients on a
captured FedSGD batch-1 upload against the same attack on fllab's own upload, update-based
membership inference and MUD-HoG detection on captures, and the ``fllab attack`` command."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from flower_helpers import context, flower_round, record, reply, task_identity, FakeGrid  # noqa: E402
from fllab.cli import main  # noqa: E402
from fllab.errors import ConfigError  # noqa: E402
from fllab.interop.flower import (  # noqa: E402
    CaptureError, FllabClient, FllabStrategy, RecordingStrategy, attack_capture, read_capture, record_to_flat,
)
from fllab.interop.flower.arrays import model_record  # noqa: E402
from fllab.registry import ATTACKS, DATASETS, MODELS, load_plugins  # noqa: E402
from fllab.seeding import derive_seed  # noqa: E402
from fllab.training.client import ClientRunner  # noqa: E402
from fllab.types import ClientTask, ModelHandle, UpdateKind, UpdateObservation  # noqa: E402
from flwr.app import ConfigRecord  # noqa: E402

load_plugins()
D = 26


def small_capture(path, rounds=2, upload="weights"):
    gen = torch.Generator().manual_seed(0)
    strategy = RecordingStrategy(FllabStrategy("mean", upload=upload, min_train_nodes=3, min_available_nodes=3), path,
                                 upload=upload, meta={"note": "test"})
    sent = torch.randn(D, generator=gen)
    sent_all, replies_all = [], []
    for rnd in range(1, rounds + 1):
        with task_identity():
            list(strategy.configure_train(rnd, record(sent), ConfigRecord(), FakeGrid([11, 12, 13])))
        replies = torch.randn(3, D, generator=gen)
        arrays, _ = strategy.aggregate_train(rnd, [reply(n, r, 10 * n) for n, r in zip([11, 12, 13], replies)])
        sent_all.append(sent)
        replies_all.append(replies)
        sent = record_to_flat(arrays)
    return sent_all, replies_all


def test_capture_round_trip(tmp_path):
    path = tmp_path / "cap.npz"
    sent, replies = small_capture(path)
    cap = read_capture(path)
    assert cap.upload == "weights" and cap.meta == {"note": "test"} and cap.layout == [("p0", (5, 4)), ("p1", (4,)), ("p2", (2,))]
    assert [r.round for r in cap.rounds] == [0, 1]
    for r, s, rep in zip(cap.rounds, sent, replies):
        assert torch.equal(r.sent, s) and torch.equal(r.replies, rep)
        assert r.client_ids == (11, 12, 13) and r.num_examples == (110, 120, 130)
        torch.testing.assert_close(r.updates, rep - s)
    assert not path.with_name("cap.npz.tmp").exists()


def test_truncated_foreign_or_other_version_capture_is_one_line(tmp_path):
    path = tmp_path / "cap.npz"
    small_capture(path)
    blob = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CaptureError, match=r"^capture: .*cut\.npz is truncated or not a capture file \(BadZipFile\)$"):
        read_capture(tmp_path / "cut.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["header"]).decode())
    header["version"] = 2
    np.savez(tmp_path / "v2.npz", **{**arrays, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)})
    with pytest.raises(CaptureError, match=r"^capture: .*v2\.npz is capture version 2; this fllab reads version 1$"):
        read_capture(tmp_path / "v2.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CaptureError, match="truncated or not a capture file"):
        read_capture(tmp_path / "other.npz")
    with pytest.raises(CaptureError, match="does not exist"):
        read_capture(tmp_path / "missing.npz")
    result = CliRunner().invoke(main, ["attack", str(tmp_path / "cut.npz"), "--attack", "inverting_gradients", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "truncated" in result.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- inversion
def cifar_task(width: int = 16):
    bundle = DATASETS.build("cifar10_samples").load()
    builder = MODELS.build({"name": "convnet", "width": width})
    handle = ModelHandle(lambda: builder.build(bundle.input_shape, bundle.num_classes), bundle.input_shape, bundle.num_classes)
    return bundle, handle


def test_inverting_gradients_on_a_captured_flower_upload_matches_fllab_upload(tmp_path):
    """Client 0 holds one CIFAR-10 image and runs FedSGD at batch 1 through Flower messages; the
    recorded upload is bit-identical to fllab's own upload of that image, and Inverting Gradients
    (60 iterations; seeded from the client id the reply reports, as the engine seeds client 0)
    reaches the same PSNR on both (within 1 dB), well above the no-information guess."""
    bundle, handle = cifar_task()
    image = bundle.train.subset(torch.tensor([0]))
    other = bundle.train.subset(torch.tensor([1]))
    torch.manual_seed(0)
    net = handle.build()
    client = FllabClient(handle, {"name": "fedsgd", "batch_size": 1, "lr": 0.1}, seed=3)
    meta = {"model": {"name": "convnet", "width": 16}, "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes,
            "algorithm": {"name": "fedsgd", "lr": 0.1, "batch_size": 1}}
    path = tmp_path / "flower.npz"
    strategy = RecordingStrategy(FllabStrategy("mean", upload="gradient", server_lr=0.1, min_train_nodes=2, min_available_nodes=2),
                                 path, upload="gradient", meta=meta)
    nodes = {501: (lambda m, c: client.train(m, c, image), context(501, partition_id=0)),
             502: (lambda m, c: client.train(m, c, other), context(502, partition_id=1))}
    flower_round(strategy, nodes, model_record(net), 1)
    cap = read_capture(path)
    captured = cap.rounds[0].updates[cap.rounds[0].client_ids.index(501)]

    own = ClientRunner(handle, client.algorithm)(ClientTask(0, 0, torch.cat([p.detach().reshape(-1) for p in net.parameters()]), image,
                                                           derive_seed(3, "client", 0, 0)))
    assert torch.equal(captured, own.update)

    spec = {"name": "inverting_gradients", "iterations": 60, "lpips": False, "lr": 0.1}
    on_capture = attack_capture(path, spec, clients=[501], truth={501: image}, seed=7)
    attack = ATTACKS.build(spec)
    obs = UpdateObservation(0, 0, handle, torch.cat([p.detach().reshape(-1) for p in net.parameters()]), own.update,
                            UpdateKind.GRADIENT, client.algorithm.public_hyper(1))
    rec = attack.reconstruct(obs, 1, None, derive_seed(7, "attack", "inverting_gradients", 0))  # as the engine seeds client 0
    from fllab.metrics.image import psnr

    own_psnr = float(psnr(rec.x.cpu(), image.x).mean())
    flower_psnr = on_capture.metrics["inversion.psnr"]
    assert abs(flower_psnr - own_psnr) <= 1.0
    assert flower_psnr > on_capture.metrics["inversion.psnr_random_guess"] + 3.0
    assert on_capture.metrics["inversion.label_accuracy"] == 1.0


def test_inversion_without_truth_and_the_cli(tmp_path):
    """No ground truth: the reconstruction alone (PNG + NPZ), no scores.  The CLI writes
    attack.json and the artefacts; with a --data file of the victim's image it scores them."""
    bundle, handle = cifar_task(width=8)
    torch.manual_seed(0)
    net = handle.build()
    client = FllabClient(handle, {"name": "fedsgd", "batch_size": 1}, seed=0)
    image = bundle.train.subset(torch.tensor([2]))
    meta = {"model": {"name": "convnet", "width": 8}, "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes}
    path = tmp_path / "cap.npz"
    strategy = RecordingStrategy(FllabStrategy("mean", upload="gradient", min_train_nodes=1, min_available_nodes=1), path,
                                 upload="gradient", meta=meta)
    flower_round(strategy, {77: (lambda m, c: client.train(m, c, image), context(77, partition_id=0))}, model_record(net), 1)
    out = attack_capture(path, {"name": "inverting_gradients", "iterations": 5, "lpips": False})
    assert out.metrics == {} and set(out.files) == {"client77_reconstruction.png", "client77_reconstruction.npz"}
    np.savez(tmp_path / "truth.npz", **{"client77.x": image.x.numpy(), "client77.y": image.y.numpy()})
    result = CliRunner().invoke(main, ["attack", str(path), "--attack", "inverting_gradients", "--set", "iterations=5",
                                       "--set", "lpips=false", "--data", str(tmp_path / "truth.npz"), "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "attack.json").read_text())
    assert summary["family"] == "inversion" and "inversion.psnr" in summary["metrics"]
    assert (tmp_path / "o" / "client77_reconstruction.png").exists()
    bad = CliRunner().invoke(main, ["attack", str(path), "--attack", "inverting_gradientz", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "did you mean" in bad.output.lower()


# --------------------------------------------------------------------- membership, detection
def digits_handle():
    bundle = DATASETS.build("digits").load()
    builder = MODELS.build({"name": "mlp", "hidden": [32]})
    return bundle, ModelHandle(lambda: builder.build(bundle.input_shape, bundle.num_classes), bundle.input_shape, bundle.num_classes)


def test_update_membership_on_a_capture(tmp_path):
    """One client's full-batch FedSGD gradients over 3 captured rounds: the server-position
    membership attack separates its 10 records from 10 held-out ones (AUC 0.85; 0.5 is chance); without
    the membership truth it returns the scores alone."""
    bundle, handle = digits_handle()
    members = bundle.train.subset(torch.arange(10))
    outside = bundle.test.subset(torch.arange(10))
    torch.manual_seed(0)
    net = handle.build()
    client = FllabClient(handle, {"name": "fedsgd", "lr": 0.5}, seed=0)
    path = tmp_path / "cap.npz"
    strategy = RecordingStrategy(FllabStrategy("mean", upload="gradient", server_lr=0.5, min_train_nodes=1, min_available_nodes=1),
                                 path, upload="gradient", meta={"algorithm": {"name": "fedsgd", "lr": 0.5}})
    arrays = model_record(net)
    for rnd in (1, 2, 3):
        arrays, _ = flower_round(strategy, {9: (lambda m, c: client.train(m, c, members), context(9, partition_id=0))}, arrays, rnd)
    from fllab.types import TensorData

    candidates = TensorData(torch.cat([members.x, outside.x]), torch.cat([members.y, outside.y]))
    is_member = torch.cat([torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool)])
    spec = {"name": "update_cosine", "position": "server", "target_clients": [9]}
    scored = attack_capture(path, spec, model=handle, candidates=candidates, is_member=is_member)
    assert scored.metrics["membership.auc"] > 0.75
    blind = attack_capture(path, spec, model=handle, candidates=candidates)
    assert blind.metrics == {} and "scores.csv" in "".join(blind.files)
    with pytest.raises(ConfigError, match="^candidates: update_cosine needs the candidate records"):
        attack_capture(path, spec, model=handle)


def test_mudhog_detection_on_a_capture(tmp_path):
    """Eight honest clients and two sign-flipping ones over 6 captured rounds: MUD-HoG flags the
    two (precision and recall 1 with the truth; the flagged ids alone without it)."""
    path = tmp_path / "cap.npz"
    nodes = list(range(100, 110))
    strategy = RecordingStrategy(FllabStrategy("mean", upload="delta", min_train_nodes=10, min_available_nodes=10), path, upload="delta")
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(D, generator=gen)
    for rnd in range(1, 7):
        ups = direction + 0.3 * torch.randn(10, D, generator=gen)
        ups[:2] = -3 * ups[:2]
        with task_identity():
            list(strategy.configure_train(rnd, record(torch.zeros(D)), ConfigRecord(), FakeGrid(nodes)))
        strategy.aggregate_train(rnd, [reply(n, u, 20) for n, u in zip(nodes, ups)])
    scored = attack_capture(path, "mudhog", malicious=[100, 101])
    assert scored.metrics == {"poisoning.detection_precision": 1.0, "poisoning.detection_recall": 1.0}
    flagged = [r["flagged"] for r in attack_capture(path, "mudhog").table if r["flagged"] is not None]
    assert flagged and all(set(f) == {100, 101} for f in flagged)


def test_flwr_missing_is_one_line_exit_2(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "flwr" or m.startswith("flwr.") or m.startswith("fllab.interop.flower")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flwr", None)
    (tmp_path / "x.npz").write_bytes(b"")  # a capture file (a missing path is refused first, naming it)
    result = CliRunner().invoke(main, ["attack", str(tmp_path / "x.npz"), "--attack", "dlg", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output == "error: flower: flwr is not installed: pip install 'fllab[flower]'\n"
