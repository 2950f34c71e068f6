"""Cost of checkpoints: the quickstart (30 rounds, one thread) with checkpoint.every None / 5 / 1,
two repetitions each; prints run.seconds per run, the minimum per setting and the largest
checkpoint in bytes.  Run from the repository root: `python benchmarks/bench_checkpoint.py`."""
import tempfile, time, yaml, fllab, json
from pathlib import Path
import fllab.checkpoint as ck
base = yaml.safe_load(open("scenarios/quickstart.yaml"))
base["threads"] = 1
sizes = []
orig = ck.save
def save(partial, setup, snap):
    orig(partial, setup, snap)
    sizes.append(sum(f.stat().st_size for f in (partial / "checkpoint").iterdir()))
ck.save = save
res = {}
with tempfile.TemporaryDirectory() as d:
    for rep in range(2):
        for every in (None, 5, 1):
            data = {**base, "checkpoint": {"every": every}}
            _, s = fllab.run(data, Path(d) / f"r{rep}-{every}")
            res.setdefault(every, []).append(s["metrics"]["run.seconds"])
            acc = s["metrics"]["utility.accuracy"]
            print(every, rep, round(s["metrics"]["run.seconds"], 2), acc, flush=True)
print({k: round(min(v), 2) for k, v in res.items()}, "largest checkpoint bytes", max(sizes))
