"""Cost of checkpoints: the quickstart (30 rounds, one thread) with ``checkpoint.every`` None / 5
/ 1, two repetitions each; prints ``run.seconds`` per run, the minimum per setting and the largest
checkpoint in bytes.  Run from the repository root: ``python benchmarks/bench_checkpoint.py``."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

import fllab
import fllab.checkpoint as checkpoint


def main() -> None:
    base = yaml.safe_load(Path("scenarios/baselines/digits_fedavg.yaml").read_text())
    base["threads"] = 1
    sizes: list[int] = []
    save = checkpoint.save

    def measured_save(partial, setup, snap):
        save(partial, setup, snap)
        sizes.append(sum(f.stat().st_size for f in (partial / "checkpoint").iterdir()))

    checkpoint.save = measured_save
    seconds: dict[int | None, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):
            for every in (None, 5, 1):
                _, summary = fllab.run({**base, "checkpoint": {"every": every}}, Path(tmp) / f"r{rep}-{every}")
                m = summary["metrics"]
                seconds.setdefault(every, []).append(m["run.seconds"])
                print(f"every={every} rep={rep} seconds={m['run.seconds']:.2f} accuracy={m['utility.accuracy']:.4f}", flush=True)
    print({k: round(min(v), 2) for k, v in seconds.items()}, "largest checkpoint bytes", max(sizes))


if __name__ == "__main__":
    main()
