"""Generative-prior gradient inversion (``gifd``) against prior-free Inverting Gradients on
Fashion-MNIST batches.

The attacker's prior is a small DDPM trained on the Fashion-MNIST *test* split (cached; see
:mod:`fllab.attacks.inversion.prior`).  The victims are ``--targets`` clients, each holding
``--batch`` images drawn (seeded) from the *train* split, who upload the FedSGD gradient of the mean
cross-entropy of a randomly initialised registered model.  Both attacks recover the labels from
the gradient (:mod:`fllab.attacks.inversion.labels`) and reconstruct all targets as one batched
run; scores are mean PSNR and SSIM after optimal matching of each batch
(:func:`fllab.metrics.image.score_reconstructions`, no LPIPS).

Reference points printed alongside, all with the recovered labels:

* ``class mean`` - each image replaced by the mean auxiliary image of its recovered class (what
  the labels alone give an attacker with public data);
* ``prior sample`` - a random class-conditional DDIM sample for each image, no optimisation;
* ``inverting_gradients`` with as many iterations as ``gifd`` takes in all, and with ``--ig-long``.

Example (the recorded run; the other rows of the results file add the flags they name)::

    python benchmarks/bench_generative_prior.py --targets 2 --batch 32 --json /tmp/gp.json

Recorded figures: benchmarks/results/generative_prior.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fllab.attacks.inversion import DDIMSampler, GenerativeInversion, InvertingGradients
from fllab.attacks.inversion.prior import auxiliary_data
from fllab.io import atomic_write_bytes, atomic_write_json
from fllab.metrics.image import score_reconstructions
from fllab.models.flat import flatten_params
from fllab.registry import DATASETS, MODELS
from fllab.seeding import numpy_gen
from fllab.types import ModelHandle, PublicHyperParams, UpdateKind, UpdateObservation


def victims(args: argparse.Namespace):
    """The clients' batches (train split), the public model handle and the uploads."""
    bundle = DATASETS.build({"name": "fashion_mnist"}).load()
    pick = numpy_gen(args.seed, "bench", "targets").choice(len(bundle.train), args.targets * args.batch, replace=False)
    x = bundle.train.x[torch.as_tensor(pick)].view(args.targets, args.batch, *bundle.input_shape)
    y = bundle.train.y[torch.as_tensor(pick)].view(args.targets, args.batch)
    cls = MODELS[args.model]
    builder = cls(cls.Params(**json.loads(args.model_params)))
    shape = tuple(bundle.input_shape)
    handle = ModelHandle(build=lambda: builder.build(shape, bundle.num_classes), input_shape=shape, num_classes=bundle.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = handle.build()
    observations = []
    for k in range(args.targets):
        model.zero_grad()
        F.cross_entropy(model(x[k]), y[k]).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
        hyper = PublicHyperParams(algorithm="fedsgd", lr=0.1, batch_size=args.batch, local_steps=1, local_epochs=None,
                                  num_examples=args.batch)
        observations.append(UpdateObservation(round=0, client_id=k, model=handle, global_params=flatten_params(model),
                                              update=grad, kind=UpdateKind.GRADIENT, hyper=hyper))
    return x, y, observations


def score(recs: list[torch.Tensor], labels: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    rows = [score_reconstructions(r, t, lp, lt, lpips=False) for r, t, lp, lt in zip(recs, x, labels, y)]
    psnr = [v for r in rows for v in r["per_image"]["psnr"]]
    return {
        "per_image_psnr": psnr,
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "psnr_min": float(np.min(psnr)),
        "psnr_max": float(np.max(psnr)),
        "label_accuracy": float(np.mean([r["label_accuracy"] for r in rows])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--model-params", default='{"width": 32}', help="the model's parameters, as JSON")
    ap.add_argument("--ddim-steps", type=int, default=GenerativeInversion.Params().ddim_steps)
    ap.add_argument("--candidates", type=int, default=GenerativeInversion.Params().candidates)
    ap.add_argument("--latent-iters", type=int, default=GenerativeInversion.Params().latent_iterations)
    ap.add_argument("--feature-stages", type=int, default=GenerativeInversion.Params().feature_stages)
    ap.add_argument("--feature-iters", type=int, default=GenerativeInversion.Params().feature_iterations)
    ap.add_argument("--radius", type=float, default=GenerativeInversion.Params().radius)
    ap.add_argument("--ig-long", type=int, default=1000, help="iterations of a longer IG run (0: skip)")
    ap.add_argument("--seed", type=int, default=0, help="target draw and model initialisation")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--png", type=Path, help="write a grid: truth, gifd, IG (same budget) for the first target")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x, y, observations = victims(args)
    seeds = list(range(args.targets))
    gifd = GenerativeInversion(GenerativeInversion.Params(
        ddim_steps=args.ddim_steps, candidates=args.candidates, latent_iterations=args.latent_iters,
        feature_stages=args.feature_stages, feature_iterations=args.feature_iters, radius=args.radius, lpips=False,
    ))
    t0 = time.perf_counter()
    prior = gifd.prior()
    prior_load = time.perf_counter() - t0
    losses = np.asarray(prior.losses)
    out: dict = {
        "settings": vars(args) | {"json": str(args.json), "png": str(args.png)},
        "prior": {
            "train_seconds": prior.seconds, "steps": len(losses), "from_cache": prior.from_cache,
            "loss_first_100": float(losses[:100].mean()), "loss_last_100": float(losses[-100:].mean()),
            "load_or_train_seconds": prior_load, "parameters": sum(p.numel() for p in prior.unet.parameters()),
            "config": gifd.params.prior.model_dump(mode="json"),
        },
    }
    total_iters = args.latent_iters + args.feature_stages * args.feature_iters

    t0 = time.perf_counter()
    rec = gifd.reconstruct_many(observations, args.batch, None, seeds)
    out["gifd"] = score([r.x for r in rec], [r.y for r in rec], x, y) | {
        "seconds": time.perf_counter() - t0, "iterations": total_iters,
        "chosen_stage": [int(r.history["stage"][0]) for r in rec],
        "match_start": float(np.mean([r.history["match"][0] for r in rec])),
        "match_end": float(np.mean([min(r.history["stage_match"]) for r in rec])),
    }
    labels = [r.y for r in rec]

    aux, _, _ = auxiliary_data(gifd.params.prior)
    class_mean = torch.stack([aux.x[aux.y == c].mean(0) for c in range(prior.num_classes)])
    out["class_mean"] = score([class_mean[lab] for lab in labels], labels, x, y)
    sampler = DDIMSampler(prior, args.ddim_steps)
    out["prior_sample"] = score([sampler.sample(args.batch, lab, 1000 + k) for k, lab in enumerate(labels)], labels, x, y)

    ig_runs = {"inverting_gradients": total_iters}
    if args.ig_long:
        ig_runs["inverting_gradients_long"] = args.ig_long
    ig_first = None
    for name, iters in ig_runs.items():
        ig = InvertingGradients(InvertingGradients.Params(iterations=iters, lpips=False))
        t0 = time.perf_counter()
        rec_ig = ig.reconstruct_many(observations, args.batch, None, seeds)
        out[name] = score([r.x for r in rec_ig], [r.y for r in rec_ig], x, y) | {
            "seconds": time.perf_counter() - t0, "iterations": iters,
        }
        ig_first = ig_first or rec_ig
    out["margin_psnr_db"] = out["gifd"]["psnr"] - out["inverting_gradients"]["psnr"]
    out["gifd_wins"] = float(np.mean(np.greater(out["gifd"]["per_image_psnr"], out["inverting_gradients"]["per_image_psnr"])))

    print(f"targets {args.targets} x batch {args.batch}, model {args.model} {args.model_params}, threads {args.threads}")
    pr = out["prior"]
    print(f"prior: {pr['parameters']} parameters, {pr['steps']} steps, trained in {pr['train_seconds']:.0f} s "
          f"({'cached' if pr['from_cache'] else 'this run'}), loss {pr['loss_first_100']:.4f} (first 100) -> "
          f"{pr['loss_last_100']:.4f} (last 100)")
    print("| method | iterations | PSNR (dB) | min / max | SSIM | label acc. | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in ["gifd", *ig_runs, "prior_sample", "class_mean"]:
        r = out[name]
        print(f"| {name} | {r.get('iterations', '-')} | {r['psnr']:.2f} | {r['psnr_min']:.1f} / {r['psnr_max']:.1f} | "
              f"{r['ssim']:.3f} | {r['label_accuracy']:.2f} | {r.get('seconds', 0):.0f} |")
    print(f"margin gifd - IG (same iterations): {out['margin_psnr_db']:+.2f} dB; gifd better on "
          f"{100 * out['gifd_wins']:.0f}% of the images; gifd chose stage "
          f"{out['gifd']['chosen_stage']}; matching loss {out['gifd']['match_start']:.3f} -> {out['gifd']['match_end']:.3f}")
    if args.json:
        atomic_write_json(args.json, out)
    if args.png:
        from fllab.report.images import image_grid_png

        perm = [torch.as_tensor(score_reconstructions(r.x, t, lpips=False)["permutation"]) for r, t in ((rec[0], x[0]), (ig_first[0], x[0]))]
        atomic_write_bytes(args.png, image_grid_png(
            [x[0], rec[0].x[perm[0]], ig_first[0].x[perm[1]]], ["truth", "gifd", "inverting_gradients"]
        ))


if __name__ == "__main__":
    main()
