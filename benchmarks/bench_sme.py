"""SME vs the same attack with the surrogate coefficient fixed at 0, on multi-step FedAvg updates.

The setting follows the FEMNIST experiment of Zhu, Yao & Blaschko 2023 (authors' config
``femnist_*.json``: 50 images per client, local batch 10, SGD lr 0.004, 20 epochs = 100 local
steps, a two-convolution CNN with a 100-unit hidden layer at random initialisation, labels known
to the attacker, 1,000 attack iterations) on real Fashion-MNIST images (the full training split,
from Debian's ``dataset-fashion-mnist`` or any folder fllab's ``fashion_mnist`` loader finds).
Every knob is a flag so that a smaller setting fits a loaded CPU.

Each of ``--clients`` clients holds ``--images`` training images drawn without replacement
(seeded), runs fllab's own ``fedavg`` client update (seeded random batch order) from the same
random-init global model and uploads its weight delta.  Each attack reconstructs all the uploads
as one batch (``reconstruct_many``).  PSNR is the mean over a client's images after optimal
matching (:func:`fllab.metrics.image.score_reconstructions`), then the mean over the clients.

Attacks (``--attacks``, comma separated):

* ``sme`` - SME at its defaults (alpha starts at 0.5 and is learned).
* ``sme_fixed:A`` - the same attack with the coefficient fixed at A (``alpha_init=A,
  learn_alpha=False``).  ``sme_fixed:0``: the surrogate is the sent model W0, i.e. gradient
  inversion with the normalised delta as the gradient.
* ``fedavg_inversion`` - the unrolled simulation of the client's local training (expensive: every
  iteration differentiates through all local steps).

The defaults are the paper's setting (ConvNet width 32, 1,000 iterations: over an hour for 8
clients on 2 loaded CPU cores).  The recorded runs (benchmarks/results/sme.md)::

    python benchmarks/bench_sme.py --clients 8 --width 16 --iters 500
    python benchmarks/bench_sme.py --clients 2 --width 16 --iters 300 \
        --attacks sme,sme_fixed:0,sme_fixed:0.25,sme_fixed:0.5,sme_fixed:0.75,sme_fixed:1
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fllab.attacks.inversion import FedAvgInversion, SurrogateModelExtension
from fllab.metrics.image import psnr, score_reconstructions
from fllab.models.flat import flatten_params
from fllab.registry import ALGORITHMS, DATASETS, MODELS
from fllab.seeding import torch_gen
from fllab.algorithms.fedavg import start_from
from fllab.types import ClientTask, ModelHandle, TensorData, UpdateObservation


def build_attack(name: str, args: argparse.Namespace):
    if name == "sme":
        return SurrogateModelExtension(SurrogateModelExtension.Params(iterations=args.iters, lr=args.attack_lr, tv_weight=args.tv))
    if name.startswith("sme_fixed:"):
        alpha = float(name.split(":", 1)[1])
        return SurrogateModelExtension(
            SurrogateModelExtension.Params(
                iterations=args.iters, lr=args.attack_lr, tv_weight=args.tv, alpha_init=alpha, learn_alpha=False
            )
        )
    if name == "fedavg_inversion":
        return FedAvgInversion(FedAvgInversion.Params(iterations=args.iters))
    raise SystemExit(f"unknown attack {name!r}")


def make_uploads(args: argparse.Namespace):
    """The global model, the clients' data and the UpdateObservations of their FedAvg deltas."""
    data = DATASETS.build("fashion_mnist").load()
    x_all, y_all = data.train.x, data.train.y
    if args.side != x_all.shape[-1]:
        x_all = torch.nn.functional.interpolate(x_all, size=(args.side, args.side), mode="bilinear", antialias=True)
    shape = (1, args.side, args.side)
    cls = MODELS["convnet"]
    builder = cls(cls.Params(width=args.width, hidden=args.hidden))
    handle = ModelHandle(build=lambda: builder.build(shape, 10), input_shape=shape, num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = handle.build()
    global_params = flatten_params(model)
    algorithm = ALGORITHMS.build({"name": "fedavg", "local_steps": args.steps, "batch_size": args.batch, "lr": args.lr})
    pick = torch.randperm(len(y_all), generator=torch_gen(args.seed, "bench_sme", "clients"))
    observations, truths = [], []
    for k in range(args.clients):
        idx = pick[k * args.images : (k + 1) * args.images]
        local = TensorData(x_all[idx].clone(), y_all[idx].clone())
        task = ClientTask(client_id=k, round=0, global_params=global_params, data=local, seed=args.seed + k)
        result = algorithm.client_update(start_from(model, task), task, torch_gen(args.seed, "bench_sme", "client", k))
        observations.append(
            UpdateObservation(
                round=0, client_id=k, model=handle, global_params=global_params.clone(), update=result.update,
                kind=algorithm.sends, hyper=algorithm.public_hyper(len(local)),
            )
        )
        truths.append(local)
    return observations, truths, x_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--images", type=int, default=50, help="images per client (= the attacked batch)")
    ap.add_argument("--batch", type=int, default=10, help="local batch size")
    ap.add_argument("--steps", type=int, default=100, help="local SGD steps")
    ap.add_argument("--lr", type=float, default=0.004, help="local SGD step size")
    ap.add_argument("--side", type=int, default=28, help="image side (Fashion-MNIST is resized if not 28)")
    ap.add_argument("--width", type=int, default=32, help="ConvNet channels (first conv; the second has twice)")
    ap.add_argument("--hidden", type=int, default=100, help="ConvNet hidden units")
    ap.add_argument("--iters", type=int, default=1000, help="attack iterations")
    ap.add_argument("--attack-lr", type=float, default=SurrogateModelExtension.Params().lr, help="SME image step size")
    ap.add_argument("--tv", type=float, default=SurrogateModelExtension.Params().tv_weight, help="SME TV weight")
    ap.add_argument("--attacks", default="sme,sme_fixed:0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the per-client figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    observations, truths, pool = make_uploads(args)
    print(f"{args.clients} clients x {args.images} images, {args.side}x{args.side}; local: {args.steps} steps, batch "
          f"{args.batch}, lr {args.lr}; ConvNet width {args.width}, hidden {args.hidden} "
          f"({observations[0].global_params.numel()} params); {args.iters} attack iterations")
    mean_image = pool[:10000].mean(0)
    baseline = [
        float(torch.maximum(psnr(torch.full_like(t.x, 0.5), t.x), psnr(mean_image.expand_as(t.x), t.x)).mean())
        for t in truths
    ]
    print(f"no-information baseline (best of mid-gray and the mean image, per image): {np.mean(baseline):.2f} dB")
    report = {"args": vars(args), "baseline": baseline}
    for name in args.attacks.split(","):
        attack = build_attack(name, args)
        start = time.perf_counter()
        results = attack.reconstruct_many(observations, args.images, [t.y for t in truths], list(range(args.clients)))
        seconds = time.perf_counter() - start
        scores = [score_reconstructions(r.x, t.x, lpips=False)["psnr"] for r, t in zip(results, truths)]
        alphas = [r.history["alpha"][-1] for r in results] if "alpha" in results[0].history else []
        report[name] = {"psnr": scores, "seconds": seconds, "alpha": alphas,
                        "match": [r.history["match"][-1] for r in results]}
        line = f"{name:>16}: mean PSNR {np.mean(scores):6.2f} dB  per client {' '.join(f'{s:.2f}' for s in scores)}  ({seconds:.0f} s)"
        if alphas:
            line += f"  final alpha {np.mean(alphas):.3f} ({min(alphas):.3f}-{max(alphas):.3f})"
        print(line, flush=True)
    if "sme" in report and "sme_fixed:0" in report:
        gain = np.mean(report["sme"]["psnr"]) - np.mean(report["sme_fixed:0"]["psnr"])
        wins = sum(a > b for a, b in zip(report["sme"]["psnr"], report["sme_fixed:0"]["psnr"]))
        print(f"SME - alpha fixed at 0: {gain:+.2f} dB mean PSNR; SME better on {wins}/{args.clients} clients")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
