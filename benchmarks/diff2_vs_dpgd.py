"""DIFF2 vs DP-GD at the same (epsilon, delta): pick the tuned configurations, then compare them.

    python benchmarks/diff2_vs_dpgd.py pick TUNING_SWEEP_DIR [TUNING_SWEEP_DIR ...]
        best configuration per algorithm of scenarios/dp/diff2_vs_dpgd_tuning.yaml's sweep (its
        seeds may be split over several sweep directories): the lowest mean final training loss
        over the tuning seeds (cases are named dpgd_* / diff2_*)

    python benchmarks/diff2_vs_dpgd.py compare SWEEP_DIR [SWEEP_DIR ...] [--out benchmarks/results/diff2_vs_dpgd]
        scenarios/dp/diff2_vs_dpgd.yaml's sweep (the picked configurations on fresh seeds, which may
        be split over several sweep directories): final
        training loss, test accuracy, test loss and accounted epsilon side by side (mean, std and
        every seed), and the training-loss / test-accuracy curves (mean +- std over seeds), written
        as OUT.md, OUT.json and OUT.png

"Final training loss" is the full-batch training objective of the last round's iterate: every
client takes part in every round, and a client's ``train_loss`` in ``rounds.jsonl`` is its mean
cross-entropy over all its records at the weights it received (the engine averages the clients).
Everything is read from the sweep directories (``cells.json``, each cell's ``rounds.jsonl`` and
``summary.json``); nothing is re-trained.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def cells(sweeps: list[Path]) -> dict[str, list[dict]]:
    """Finished cells of the sweep directories by case label: each with its seed, rounds and
    summary metrics."""
    out: dict[str, list[dict]] = defaultdict(list)
    for sweep, cell in ((s, c) for s in sweeps for c in json.loads((s / "cells.json").read_text())):
        run = sweep / "cells" / cell["cell"]
        if not (run / "summary.json").exists():
            continue
        rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
        metrics = json.loads((run / "summary.json").read_text())["metrics"]
        label = next(iter(cell["values"].values()))
        out[label].append({"seed": cell["seed"], "rounds": rounds, "metrics": metrics, "train_loss": rounds[-1]["train_loss"]})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pick(sweeps: list[Path]) -> dict[str, str]:
    """Per algorithm prefix, the case with the lowest mean final training loss (diverged: inf)."""
    best: dict[str, tuple[float, str]] = {}
    for label, runs in sorted(cells(sweeps).items()):
        algo = label.split("_", 1)[0]
        losses = [r["train_loss"] if r["train_loss"] == r["train_loss"] else float("inf") for r in runs]
        score = statistics.fmean(losses)
        print(f"{label:24s} seeds={len(runs)} final train loss {score:.4f}  test acc "
              f"{statistics.fmean(r['metrics']['utility.accuracy'] for r in runs):.4f}")
        if algo not in best or score < best[algo][0]:
            best[algo] = (score, label)
    return {algo: label for algo, (_, label) in best.items()}


def compare(sweeps: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_case = cells(sweeps)
    table, data = [], {}
    for label, runs in sorted(by_case.items()):
        runs.sort(key=lambda r: r["seed"])
        row = {"case": label, "seeds": [r["seed"] for r in runs]}
        for key, get in (
            ("train_loss", lambda r: r["train_loss"]),
            ("test_accuracy", lambda r: r["metrics"]["utility.accuracy"]),
            ("test_loss", lambda r: r["metrics"]["utility.loss"]),
            ("epsilon", lambda r: r["metrics"]["privacy.epsilon"]),
        ):
            values = [get(r) for r in runs]
            row[key] = {"mean": mean_std(values)[0], "std": mean_std(values)[1], "per_seed": values}
        table.append(row)
        data[label] = row
    lines = [
        f"Sweep directories: {', '.join(f'`{s}`' for s in sweeps)}",
        "",
        "| case | seeds | final training loss | test accuracy | test loss | accounted epsilon |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        cols = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in ("train_loss", "test_accuracy", "test_loss")]
        lines.append(f"| {row['case']} | {len(row['seeds'])} | {' | '.join(cols)} | {row['epsilon']['mean']:.4f} |")
    lines += ["", "Per seed (seed: final training loss / test accuracy):", ""]
    for row in table:
        per = ", ".join(f"{s}: {l:.4f} / {a:.4f}" for s, l, a in zip(row["seeds"], row["train_loss"]["per_seed"], row["test_accuracy"]["per_seed"]))
        lines.append(f"- {row['case']}: {per}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, runs in sorted(by_case.items()):
        for ax, key in zip(axes, ("train_loss", "test_accuracy")):
            rounds = [rec["round"] for rec in runs[0]["rounds"] if key in rec]
            series = [[rec[key] for rec in r["rounds"] if key in rec] for r in runs]
            mean = [statistics.fmean(v) for v in zip(*series)]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*series)]
            ax.plot(rounds, mean, label=label)
            ax.fill_between(rounds, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    axes[0].set(xlabel="round", ylabel="training loss (full batch)", title="training loss")
    axes[1].set(xlabel="round", ylabel="test accuracy", title="test accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pick")
    p.add_argument("sweeps", type=Path, nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("sweeps", type=Path, nargs="+")
    c.add_argument("--out", type=Path, default=Path("benchmarks/results/diff2_vs_dpgd"))
    args = parser.parse_args()
    if args.cmd == "pick":
        print(json.dumps(pick(args.sweeps)))
    else:
        compare(args.sweeps, args.out)


if __name__ == "__main__":
    main()
