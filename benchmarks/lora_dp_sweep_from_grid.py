"""Write ``scenarios/lora/dp_sweep.yaml`` from the finished grids: each bundle's DP setting is the
(lr, clip) of the shared grid with the best accuracy on the selection seed (``dp_grid.yaml``;
FedRand takes FedAvg-LoRA's, FedSVD FFA-LoRA's: same client algorithms), its no-DP learning rate
the best of ``nodp_grid.yaml``.  Also writes run-order subsets ``<out>/dp_sweep_{a..e}.yaml``.

    python benchmarks/lora_dp_sweep_from_grid.py DP_GRID_DIR NODP_GRID_DIR SUBSETS_DIR
"""
from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def best(results: Path, *params: str) -> dict[str, tuple[float, ...]]:
    """bundle -> (accuracy, *params) of its most accurate row."""
    out: dict[str, tuple[float, ...]] = {}
    for r in csv.DictReader(open(results)):
        acc = float(r["utility.accuracy"])
        name = r["param:algorithm.name"]
        if name not in out or acc > out[name][0]:
            out[name] = (acc, *(float(r[f"param:{p}"]) for p in params))
    return out


def main(dp_grid: Path, nodp_grid: Path, subsets: Path) -> None:
    dp = best(dp_grid / "results.csv", "algorithm.lr", "defenses.0.max_grad_norm")
    nodp = best(nodp_grid / "results.csv", "algorithm.lr")
    choice = {"fedavg_lora": dp["fedavg_lora"][1:], "fedrand": dp["fedavg_lora"][1:],
              "ffa_lora": dp["ffa_lora"][1:], "fedsvd_lora": dp["ffa_lora"][1:]}
    base = yaml.safe_load(open(ROOT / "scenarios/lora/dp_grid.yaml"))
    base.pop("sweep")
    base["name"] = "lora_dp_sweep"

    def case(bundle: str, eps: int | None) -> dict:
        if eps is None:
            return {"algorithm.name": bundle, "algorithm.lr": nodp[bundle][1], "defenses": []}
        lr, clip = choice[bundle]
        return {"algorithm.name": bundle, "algorithm.lr": lr, "defenses.0.max_grad_norm": clip, "defenses.0.target_epsilon": eps}

    bundles = ("fedavg_lora", "ffa_lora", "fedsvd_lora", "fedrand")
    order = [("ffa_lora", 1), ("fedavg_lora", 1), ("fedsvd_lora", 3), ("ffa_lora", 3)] + [(b, None) for b in bundles]
    order += [("fedrand", 1), ("fedsvd_lora", 1), ("fedavg_lora", 3), ("fedrand", 3)] + [(b, 6) for b in bundles]
    cases = {f"{b}/{'none' if e is None else f'eps{e}'}": case(b, e) for b, e in order}
    base["description"] = (
        "{fedavg_lora, ffa_lora, fedsvd_lora, fedrand} x {no DP, target epsilon 6, 3, 1} x 5 seeds on the federation "
        "of dp_grid.yaml.  DP settings from the shared lr x clip grid (dp_grid.yaml, seed 100): FedAvg-LoRA's "
        f"(lr {choice['fedavg_lora'][0]}, C {choice['fedavg_lora'][1]}) also for FedRand, FFA-LoRA's (lr "
        f"{choice['ffa_lora'][0]}, C {choice['ffa_lora'][1]}) also for FedSVD; no-DP learning rates from "
        "nodp_grid.yaml.  Cases are in priority order (the comparisons the papers make first).")
    base["sweep"] = {"seeds": [0, 1, 2, 3, 4], "cases": {"setting": cases}}
    yaml.safe_dump(base, open(ROOT / "scenarios/lora/dp_sweep.yaml", "w"), sort_keys=False, width=110)
    labels = list(cases)
    for name, part in zip("abcde", (labels[0:2], labels[2:4], labels[4:8], labels[8:12], labels[12:])):
        sub = copy.deepcopy(base)
        sub["sweep"]["cases"]["setting"] = {label: cases[label] for label in part}
        yaml.safe_dump(sub, open(subsets / f"dp_sweep_{name}.yaml", "w"), sort_keys=False, width=110)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
