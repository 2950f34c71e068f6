"""Inverting Gradients on a captured Flower upload vs on fllab's own upload of the same image.

For each of the first ``--images`` CIFAR-10 sample images: client 0 of a FedSGD batch-1 round
holds it.  (a) fllab: the engine's client (ClientRunner) computes the upload and Inverting
Gradients attacks it seeded as the engine's inversion driver seeds it (root seed, client id).
(b) Flower: the same client answers a Flower training message (FllabClient), the server's
RecordingStrategy around a FllabStrategy writes the capture file, and ``attack_capture`` attacks
the upload read back from the file, seeded from the client id the reply reports (as the engine
seeds it); (c) fllab's upload attacked with another seed (the node id's): Inverting Gradients' own
seed-to-seed spread, the yardstick for any difference between (a) and (b).  All are scored by
PSNR against the image.

    python benchmarks/bench_flower_capture.py --images 4 --iterations 300 --width 16 --write
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from flower_helpers import context, flower_round  # noqa: E402
from fllab.interop.flower import FllabClient, FllabStrategy, RecordingStrategy, attack_capture, read_capture  # noqa: E402
from fllab.interop.flower.arrays import model_record  # noqa: E402
from fllab.metrics.image import psnr  # noqa: E402
from fllab.registry import ATTACKS, DATASETS, MODELS, load_plugins  # noqa: E402
from fllab.seeding import derive_seed  # noqa: E402
from fllab.training.client import ClientRunner  # noqa: E402
from fllab.types import ClientTask, ModelHandle, UpdateKind, UpdateObservation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="append the result to benchmarks/results/flower_capture.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_plugins()
    bundle = DATASETS.build("cifar10_samples").load()
    builder = MODELS.build({"name": "convnet", "width": args.width})
    handle = ModelHandle(lambda: builder.build(bundle.input_shape, bundle.num_classes), bundle.input_shape, bundle.num_classes)
    spec = {"name": "inverting_gradients", "iterations": args.iterations, "lr": 0.1, "lpips": False}
    attack = ATTACKS.build(spec)
    rows = []
    t0 = time.perf_counter()
    for i in range(args.images):
        image = bundle.train.subset(torch.tensor([i]))
        torch.manual_seed(i)
        net = handle.build()
        weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        client = FllabClient(handle, {"name": "fedsgd", "batch_size": 1, "lr": 0.1}, seed=0)
        own = ClientRunner(handle, client.algorithm)(ClientTask(0, 0, weights, image, derive_seed(0, "client", 0, 0)))
        obs = UpdateObservation(0, 0, handle, weights, own.update, UpdateKind.GRADIENT, client.algorithm.public_hyper(1))
        rec = attack.reconstruct(obs, 1, None, derive_seed(0, "attack", "inverting_gradients", 0))
        own_psnr = float(psnr(rec.x.cpu(), image.x).mean())
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "capture.npz"
            meta = {"model": {"name": "convnet", "width": args.width}, "input_shape": list(bundle.input_shape),
                    "num_classes": bundle.num_classes, "algorithm": {"name": "fedsgd", "lr": 0.1, "batch_size": 1}}
            strategy = RecordingStrategy(FllabStrategy("mean", upload="gradient", server_lr=0.1, min_train_nodes=1, min_available_nodes=1),
                                         path, upload="gradient", meta=meta)
            node = 4000 + i
            flower_round(strategy, {node: (lambda m, c: client.train(m, c, image), context(node, partition_id=0))}, model_record(net), 1)
            captured = read_capture(path).rounds[0].updates[0]
            out = attack_capture(path, spec, truth={node: image})
        other = attack.reconstruct(obs, 1, None, derive_seed(0, "attack", "inverting_gradients", node))
        rows.append({"image": i, "fllab_psnr": own_psnr, "flower_capture_psnr": out.metrics["inversion.psnr"],
                     "fllab_psnr_other_seed": float(psnr(other.x.cpu(), image.x).mean()),
                     "identical_upload": bool(torch.equal(captured, own.update))})
        print(rows[-1], flush=True)
    mean_own = sum(r["fllab_psnr"] for r in rows) / len(rows)
    mean_flower = sum(r["flower_capture_psnr"] for r in rows) / len(rows)
    summary = {"images": args.images, "iterations": args.iterations, "width": args.width, "fllab_psnr_mean": mean_own,
               "flower_capture_psnr_mean": mean_flower, "difference_db": mean_flower - mean_own, "seconds": time.perf_counter() - t0, "rows": rows}
    print(json.dumps(summary, indent=1))
    if args.write:
        out_md = ROOT / "benchmarks" / "results" / "flower_capture.md"
        lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.images} images, ConvNet width {args.width}, "
                 f"{args.iterations} IG iterations (CPU, 1 thread)\n",
                 f"`python benchmarks/bench_flower_capture.py --images {args.images} --iterations {args.iterations} --width {args.width} --write`\n",
                 "| image | captured upload == fllab's upload | PSNR on fllab's upload (dB) | PSNR on the captured Flower upload (dB) | PSNR on fllab's upload, another IG seed (dB) |", "|---|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['identical_upload']} | {r['fllab_psnr']:.2f} | {r['flower_capture_psnr']:.2f} | {r['fllab_psnr_other_seed']:.2f} |" for r in rows]
        spread = sum(r["fllab_psnr_other_seed"] for r in rows) / len(rows)
        lines.append(f"| **mean** | | **{mean_own:.2f}** | **{mean_flower:.2f}** (difference {mean_flower - mean_own:+.2f} dB) | **{spread:.2f}** |\n")
        if not out_md.exists():
            out_md.write_text("# Inverting Gradients on captured Flower traffic vs fllab's own uploads\n")
        with open(out_md, "a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
