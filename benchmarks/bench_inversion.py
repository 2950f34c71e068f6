"""Gradient inversion benchmarks on the real CIFAR-10 sample images (/work/shared/data/samples).

Modes (``--mode``):

* ``throughput`` - per-target reconstruction throughput of the batched implementation
  (``reconstruct_many`` over ``--targets`` uploads: one ``vmap``-ed computation) against a
  one-target-at-a-time loop of ``reconstruct`` in the same run; prints the ratio, both mean PSNRs
  and how far the batched objective gradient is from the one-target one.
* ``quality`` - Inverting Gradients on a random-init ReLU ConvNet, batch 1, one upload per sample
  image (all reconstructed as one batch): PSNR per image, mean, and no-information baselines.
* ``labels`` - iDLG on every sample image and batch label counting on random batch-8 and -16 sets.

Examples::

    python benchmarks/bench_inversion.py --mode throughput --device cuda --targets 16 --iters 200
    python benchmarks/bench_inversion.py --mode quality --device cuda --iters 2000 --width 64
    python benchmarks/bench_inversion.py --mode labels --model convnet_ig

Recorded figures: benchmarks/results/inversion.md.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import grad, vmap

from fllab.attacks.inversion import InvertingGradients, recover_labels
from fllab.attacks.inversion.common import build_problem, initial_images
from fllab.attacks.inversion.inverting_gradients import ig_objective
from fllab.metrics.image import psnr
from fllab.models.flat import flatten_params, param_shapes
from fllab.registry import MODELS
from fllab.types import ModelHandle, PublicHyperParams, UpdateKind, UpdateObservation

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"
NUM_CLASSES = 10


def load_samples(folder: Path, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 CIFAR-10 sample images in [0, 1] (resized to ``side`` if not 32) and their labels
    (the last number in each file name)."""
    files = sorted(Path(folder).glob("cifar10_*.png"))
    if not files:
        raise SystemExit(f"no CIFAR-10 samples under {folder}")
    images = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if im.size != (side, side):
            im = im.resize((side, side), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    labels = [int(re.findall(r"_(\d+)\.png$", f.name)[0]) for f in files]
    return torch.stack(images), torch.tensor(labels)


def make_model(args: argparse.Namespace) -> tuple[ModelHandle, torch.nn.Module]:
    """The registered model ``--model`` at ``--width`` (and ``--norm``), randomly initialised from ``--seed``."""
    cls = MODELS[args.model]
    builder = cls(cls.Params(width=args.width, **({"norm": args.norm} if args.norm else {})))
    side, seed = args.side, args.seed
    shape = (3, side, side)
    handle = ModelHandle(build=lambda: builder.build(shape, NUM_CLASSES), input_shape=shape, num_classes=NUM_CLASSES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = handle.build()
    return handle, model


def observe(handle: ModelHandle, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, client: int):
    """The FedSGD upload of one client holding the batch (x, y): the gradient of the mean loss."""
    model = model.to(device)
    model.zero_grad()
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
    hyper = PublicHyperParams(algorithm="fedsgd", lr=0.1, batch_size=len(y), local_steps=1, local_epochs=None, num_examples=len(y))
    return UpdateObservation(
        round=0, client_id=client, model=handle, global_params=flatten_params(model), update=grad,
        kind=UpdateKind.GRADIENT, hyper=hyper,
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def attack_from(args: argparse.Namespace) -> InvertingGradients:
    return InvertingGradients(
        InvertingGradients.Params(iterations=args.iters, tv_weight=args.tv, lr=args.lr, restarts=args.restarts)
    )


def gradient_agreement(attack: InvertingGradients, obs: list, labels: list, seeds: list) -> float:
    """Max difference, relative to the largest entry, between the image gradients of the IG objective
    computed for all targets in one ``vmap`` and for one target at a time, at the starting images.

    (Whole runs are compared by PSNR: a signed or Adam-normalised step turns a last-bit difference
    in a near-zero gradient entry into a whole-step pixel difference.)"""
    p = attack.params
    problem = build_problem("inverting_gradients", attack.needs, obs)
    shape = (1, *problem.input_shape)
    x = torch.stack([initial_images(s, shape, problem.data_range, p.init) for s in seeds]).to(problem.gradients)
    y = torch.stack(labels).to(problem.gradients.device)
    step = vmap(grad(ig_objective(problem, p.tv_weight), has_aux=True), in_dims=(0, 0, 0, problem.params_in_dim))
    batched = step(x, problem.gradients, y, problem.params)[0]
    single = torch.cat([step(x[k : k + 1], problem.gradients[k : k + 1], y[k : k + 1], problem.params)[0] for k in range(len(obs))])
    return float((batched - single).abs().max() / single.abs().max())


def run_throughput(args: argparse.Namespace) -> None:
    xs, ys = load_samples(args.samples, args.side)
    handle, model = make_model(args)
    idx = [k % len(ys) for k in range(args.targets)]
    obs = [observe(handle, model, xs[i : i + 1], ys[i : i + 1], args.device, k) for k, i in enumerate(idx)]
    labels = [ys[i : i + 1] for i in idx]
    seeds = list(range(args.targets))
    attack = attack_from(args)
    warm = InvertingGradients(InvertingGradients.Params(iterations=2, restarts=args.restarts))
    warm.reconstruct_many(obs, 1, labels, seeds)
    warm.reconstruct(obs[0], 1, labels[0], seeds[0])

    sync(args.device)
    t0 = time.perf_counter()
    batched = attack.reconstruct_many(obs, 1, labels, seeds)
    sync(args.device)
    t_batched = time.perf_counter() - t0

    n_loop = min(args.loop_targets or args.targets, args.targets)
    t0 = time.perf_counter()
    looped = [attack.reconstruct(obs[k], 1, labels[k], seeds[k]) for k in range(n_loop)]
    sync(args.device)
    t_loop = time.perf_counter() - t0

    per_batched = args.targets / t_batched
    per_loop = n_loop / t_loop
    truth = torch.cat([xs[i : i + 1] for i in idx[:n_loop]])
    psnr_batched = psnr(torch.cat([r.x.cpu() for r in batched[:n_loop]]), truth).mean()
    psnr_looped = psnr(torch.cat([r.x.cpu() for r in looped]), truth).mean()
    diff = gradient_agreement(attack, obs, labels, seeds)
    print(f"device={args.device} model={args.model} width={args.width} side={args.side} iters={args.iters} "
          f"restarts={args.restarts} threads={torch.get_num_threads()}")
    print(f"batched: {args.targets} targets in {t_batched:.2f} s = {per_batched:.3f} targets/s "
          f"({1000 * t_batched / args.iters:.2f} ms per iteration for all)")
    print(f"looped:  {n_loop} targets in {t_loop:.2f} s = {per_loop:.3f} targets/s "
          f"({1000 * t_loop / args.iters / n_loop:.2f} ms per iteration per target)")
    print(f"ratio batched/looped per-target throughput: {per_batched / per_loop:.2f}x")
    print(f"mean PSNR of the looped targets: batched {psnr_batched:.2f} dB, looped {psnr_looped:.2f} dB")
    print(f"objective gradient at the start, batched vs one target at a time: max relative difference {diff:.1e}")


def run_quality(args: argparse.Namespace) -> None:
    xs, ys = load_samples(args.samples, args.side)
    n = min(args.images, len(ys))
    xs, ys = xs[:n], ys[:n]
    handle, model = make_model(args)
    obs = [observe(handle, model, xs[i : i + 1], ys[i : i + 1], args.device, i) for i in range(n)]
    labels = None if args.recover_labels else [ys[i : i + 1] for i in range(n)]
    attack = attack_from(args)
    sync(args.device)
    t0 = time.perf_counter()
    results = attack.reconstruct_many(obs, 1, labels, list(range(n)))
    sync(args.device)
    seconds = time.perf_counter() - t0
    rec = torch.cat([r.x.cpu() for r in results])
    scores = psnr(rec, xs)
    gray = psnr(torch.full_like(xs, 0.5), xs)
    others_mean = torch.stack([torch.cat([xs[:i], xs[i + 1 :]]).mean(0) for i in range(n)])
    mean_img = psnr(others_mean, xs)
    label_acc = float(np.mean([int(r.y.item()) == int(y) for r, y in zip(results, ys)]))
    print(f"device={args.device} model={args.model} width={args.width} norm={args.norm or 'default'} side={args.side} iters={args.iters} "
          f"tv={args.tv} lr={args.lr} restarts={args.restarts} images={n} "
          f"labels={'recovered' if labels is None else 'known'}")
    print("PSNR per image:", " ".join(f"{v:.1f}" for v in scores.tolist()))
    print(f"mean PSNR {scores.mean():.2f} dB (min {scores.min():.2f}, median {scores.median():.2f}, max {scores.max():.2f})")
    print(f"baselines: mid-gray {gray.mean():.2f} dB, mean of the other images {mean_img.mean():.2f} dB")
    print(f"label accuracy {label_acc:.2f}; wall time {seconds:.1f} s ({1000 * seconds / args.iters:.1f} ms per iteration for all)")


def run_labels(args: argparse.Namespace) -> None:
    xs, ys = load_samples(args.samples, args.side)
    handle, model = make_model(args)
    obs = [observe(handle, model, xs[i : i + 1], ys[i : i + 1], args.device, i) for i in range(len(ys))]
    grads = torch.stack([o.update for o in obs])
    theta, shapes = obs[0].global_params, param_shapes(model)
    single = recover_labels(grads, theta, shapes, NUM_CLASSES, 1)[:, 0].cpu()
    print(f"model={args.model} width={args.width}: iDLG label accuracy {float((single == ys).float().mean()):.3f} on {len(ys)} images")
    g = torch.Generator().manual_seed(args.seed)
    for b in (8, 16):
        sets = [torch.randperm(len(ys), generator=g)[:b] for _ in range(args.label_sets)]
        batch_obs = [observe(handle, model, xs[s], ys[s], args.device, 0) for s in sets]
        rec = recover_labels(torch.stack([o.update for o in batch_obs]), theta, shapes, NUM_CLASSES, b).cpu()
        acc = [
            float(torch.minimum(torch.bincount(r, minlength=NUM_CLASSES), torch.bincount(ys[s], minlength=NUM_CLASSES)).sum()) / b
            for r, s in zip(rec, sets)
        ]
        prior = torch.bincount(ys, minlength=NUM_CLASSES).float() / len(ys)
        # no information: b labels of the most frequent class in the sample pool
        base = [float(torch.bincount(ys[s], minlength=NUM_CLASSES)[prior.argmax()]) / b for s in sets]
        print(f"batch {b}: {args.label_sets} sets, label accuracy {np.mean(acc):.3f}, exact sets {np.mean(np.equal(acc, 1.0)):.2f} "
              f"(no-information baseline {np.mean(base):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["throughput", "quality", "labels"], default="throughput")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--targets", type=int, default=16, help="uploads reconstructed at once (throughput)")
    ap.add_argument("--loop-targets", type=int, default=0, help="time the loop on this many targets (0: all)")
    ap.add_argument("--images", type=int, default=20, help="sample images to reconstruct (quality)")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--model", default="convnet", help="registered model (convnet: FedAvg CNN; convnet_ig)")
    ap.add_argument("--norm", choices=["none", "group", "batch"], default=None, help="model normalisation (model default)")
    ap.add_argument("--side", type=int, default=32, help="image side (the samples are 32x32)")
    ap.add_argument("--tv", type=float, default=InvertingGradients.Params().tv_weight)
    ap.add_argument("--lr", type=float, default=InvertingGradients.Params().lr)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--recover-labels", action="store_true", help="recover labels (iDLG) instead of passing them")
    ap.add_argument("--label-sets", type=int, default=30)
    ap.add_argument("--samples", type=Path, default=SAMPLES, help="folder of the sample PNGs")
    ap.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"throughput": run_throughput, "quality": run_quality, "labels": run_labels}[args.mode](args)


if __name__ == "__main__":
    main()
