"""Robust aggregation speed: fllab's aggregators against ByzFL's torch and NumPy backends, timed
in the same run on the same updates, plus the peak extra memory of NNM.

Setting (issue "Poisoning", part 2): n = 50 updates of d = 1,000,000 float32 values, f = 10 of
them Byzantine (shifted and scaled), 2 threads.  Repetitions of all implementations are
interleaved (one call of each per pass, in rotating order) and the median per implementation is
reported; every implementation is called once before timing.  The ratio is ByzFL's faster backend
over fllab (> 1: fllab is faster).  Peak extra memory is the growth of the process's VmHWM
(/proc/self/status) during one NNM call, in a fresh subprocess per implementation.

    python benchmarks/bench_aggregators.py [--reps 7] [--only krum,nnm] [--write]

Needs ``byzfl`` (``pip install byzfl``); its package ``__init__`` imports its benchmark suite
(pandas, seaborn), so when those are missing only ``byzfl.aggregators`` is loaded.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fllab.registry import AGGREGATORS  # noqa: E402

N, D, F, THREADS = 50, 1_000_000, 10, 2
RESULTS = Path(__file__).resolve().parent / "results" / "aggregators.md"


def load_byzfl() -> Any:
    """``byzfl.aggregators``, without running byzfl's package ``__init__`` when its optional
    plotting dependencies are missing."""
    try:  # not `import byzfl.aggregators`: byzfl's star imports rebind that name to a submodule
        return importlib.import_module("byzfl.aggregators")
    except ImportError:
        for name in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("byzfl")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("byzfl is not installed: pip install byzfl")
    shell = types.ModuleType("byzfl")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = shell
    return importlib.import_module("byzfl.aggregators")


def make_updates(seed: int = 0) -> torch.Tensor:
    """n - f honest updates around a common direction, f Byzantine ones shifted and scaled."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=gen)
    x = common + torch.randn(N, D, generator=gen)
    x[:F] = -3.0 * common + 0.5 * torch.randn(F, D, generator=gen)
    return x


# fllab spec, ByzFL rule (a callable on one input) or None, and whether ByzFL writes into its input
def cases(byzfl: Any) -> dict[str, tuple[dict, Callable[[], Callable] | None, bool]]:
    def then_mean(pre: Callable[[], Any]) -> Callable[[], Callable]:
        def build() -> Callable:
            p, avg = pre(), byzfl.Average()
            return lambda v: avg(p(v))

        return build

    return {
        "mean": ({"name": "mean"}, lambda: byzfl.Average(), False),
        "median": ({"name": "median"}, lambda: byzfl.Median(), False),
        "trimmed_mean": ({"name": "trimmed_mean", "f": F}, lambda: byzfl.TrMean(F), False),
        "krum": ({"name": "krum", "f": F}, lambda: byzfl.Krum(F), False),
        "multi_krum": ({"name": "multi_krum", "f": F}, lambda: byzfl.MultiKrum(F), False),
        "geometric_median": ({"name": "geometric_median"}, lambda: byzfl.GeometricMedian(), False),
        "centered_clipping": ({"name": "centered_clipping"}, lambda: byzfl.CenteredClipping(), False),
        "norm_clipping": ({"name": "norm_clipping", "max_norm": 1000.0}, then_mean(lambda: byzfl.Clipping(1000.0)), True),
        "monna": ({"name": "monna", "f": F}, lambda: byzfl.MoNNA(F, 0), False),
        "nnm": ({"name": "nnm", "f": F, "then": "mean"}, then_mean(lambda: byzfl.NNM(F)), False),
        "bucketing": ({"name": "bucketing", "s": 2, "then": "mean"}, then_mean(lambda: byzfl.Bucketing(2)), False),
        "arc": ({"name": "arc", "f": F, "then": "mean"}, then_mean(lambda: byzfl.ARC(F)), True),
        "bulyan": ({"name": "bulyan", "f": F}, None, False),
        "flag": ({"name": "flag"}, None, False),
        "mudhog": ({"name": "mudhog", "warmup": 0}, None, False),
    }


def time_interleaved(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Median seconds per function; one call of each per pass, the order rotating between passes."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_timing(names: list[str], reps: int) -> list[dict[str, Any]]:
    byzfl = load_byzfl()
    table = cases(byzfl)
    x = make_updates()
    xn = x.numpy()
    ids = list(range(N))
    rows = []
    for name in names:
        spec, byz, mutates = table[name]
        agg = AGGREGATORS.build(spec)
        agg.check(N)
        fns: dict[str, Callable[[], None]] = {"fllab": lambda agg=agg: agg(x, None, client_ids=ids)}
        if byz is not None:
            rule_t, rule_n = byz(), byz()
            fns["byzfl_torch"] = _byzfl_call(rule_t, x, mutates)
            fns["byzfl_numpy"] = _byzfl_call(rule_n, xn, mutates)
        reps_here = min(reps, 3) if name == "nnm" else reps  # ByzFL's NNM takes seconds per call
        med = time_interleaved(fns, reps_here)
        row = {"aggregator": name, "reps": reps_here, **med}
        if byz is not None:
            best = min(med["byzfl_torch"], med["byzfl_numpy"])
            row["baseline"] = "torch" if med["byzfl_torch"] <= med["byzfl_numpy"] else "numpy"
            row["ratio"] = best / med["fllab"]
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _byzfl_call(rule: Callable, data: Any, mutates: bool) -> Callable[[], None]:
    """Calls ``rule`` on ``data``; a rule that writes into its input gets a fresh copy, whose
    making is included (it is a small part of these rules' time and the copy is what a caller
    would have to pay to keep its updates)."""
    if not mutates:
        return lambda: rule(data)
    return lambda: rule(data.copy() if isinstance(data, np.ndarray) else data.clone())


# ------------------------------------------------------------------------------------ memory
def peak_extra_memory(impl: str) -> float:
    """Peak RSS growth (MiB) of one NNM pre-aggregation, measured in a fresh subprocess: the
    peak (VmHWM) is reset to the current RSS through /proc/self/clear_refs after the set-up,
    and the growth is the peak after the call minus the RSS before it."""
    code = f"""
import sys, json, torch, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import bench_aggregators as b
torch.set_num_threads({THREADS})
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024
x = b.make_updates()
impl = {impl!r}
if impl == 'fllab':
    from fllab.defenses.aggregators import kernels
    run = lambda: kernels.nnm(x, b.F)
else:
    rule = b.load_byzfl().NNM(b.F)
    data = x.numpy() if impl == 'byzfl_numpy' else x
    run = lambda: rule(data)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
before = status('VmRSS')
out = run()
print(json.dumps(status('VmHWM') - before))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------------- report
def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _format_row(row: dict[str, Any]) -> str:
    ratio = f"{row['ratio']:.1f}x" if "ratio" in row else "n/a"
    return (
        f"| {row['aggregator']} | {_fmt(row['fllab'])} | {_fmt(row.get('byzfl_torch'))} | "
        f"{_fmt(row.get('byzfl_numpy'))} | {ratio} ({row.get('baseline', '-')}) |"
    )


TARGETS = {"krum": 5.0, "multi_krum": 5.0, "nnm": 5.0}


def verdicts(rows: list[dict[str, Any]], memory: dict[str, float]) -> list[str]:
    lines = []
    for row in rows:
        if "ratio" not in row:
            continue
        need = TARGETS.get(row["aggregator"], 1.0)
        ok = row["ratio"] >= need
        lines.append(f"- {row['aggregator']}: {row['ratio']:.1f}x vs target >= {need:g}x: {'met' if ok else 'MISSED'}")
    if "fllab" in memory:
        lines.append(f"- nnm peak extra memory: {memory['fllab']:.0f} MiB vs target < 1024 MiB: {'met' if memory['fllab'] < 1024 else 'MISSED'}")
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


HEADER = [
    "# Robust aggregation: fllab vs ByzFL",
    "",
    f"n = {N} updates, d = {D:,} float32, f = {F}, {THREADS} threads, median of interleaved repetitions",
    "(seconds per call). Ratio = ByzFL's faster backend / fllab (> 1: fllab faster); the baseline backend is",
    "in brackets. Targets: Krum, Multi-Krum and NNM at least 5x faster than ByzFL's faster backend, no",
    "aggregator slower than it, NNM < 1 GiB extra memory. One section per machine (`--label`); a new run",
    "replaces its machine's section.",
    "",
]


def write_markdown(rows: list[dict[str, Any]], memory: dict[str, float], command: str, label: str) -> None:
    section = [
        f"## Run: {label}",
        "",
        f"Recorded {datetime.date.today().isoformat()} with `{command}` on {cpu_model()} ({os.cpu_count()} CPUs); "
        f"torch {torch.__version__}, numpy {np.__version__}, byzfl {metadata.version('byzfl')}.",
        "",
        "| aggregator | fllab (s) | ByzFL torch (s) | ByzFL numpy (s) | ratio (baseline) |",
        "|---|---|---|---|---|",
        *[_format_row(r) for r in rows],
        "",
        *(
            ["NNM peak extra memory (peak RSS growth during one call, fresh process): "
             + ", ".join(f"{impl} {mib:,.0f} MiB" for impl, mib in memory.items()), ""]
            if memory
            else []
        ),
        *verdicts(rows, memory),
        "",
    ]
    sections: dict[str, str] = {}
    if RESULTS.exists():
        text = RESULTS.read_text()
        for block in text.split("\n## Run: ")[1:]:
            name = block.split("\n", 1)[0]
            sections[name] = "## Run: " + block.split("\n## What is compared", 1)[0].rstrip() + "\n"
    sections[label] = "\n".join(section)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(HEADER) + "\n" + "\n".join(sections.values()) + "\n" + "\n".join(NOTES) + "\n")


NOTES = [
    "## What is compared",
    "",
    "- Same inputs for every implementation: 40 honest updates around a common direction, 10 Byzantine",
    "  ones at -3x that direction. ByzFL rules that write into their input (Clipping, ARC) get a fresh copy",
    "  per call, included in their time.",
    "- `krum`, `multi_krum`: fllab scores with n - f - 2 neighbours (Blanchard et al.), ByzFL with",
    "  n - f - 1; the work is the same. `multi_krum` averages n - f updates on both sides.",
    "- `geometric_median`: fllab runs its defaults (up to 100 smoothed-Weiszfeld iterations, tol 1e-6, from",
    "  the mean); ByzFL its defaults (3 iterations from zero).",
    "- `centered_clipping`: tau 100, 1 iteration on both sides; the center moves every call on both sides.",
    "- `norm_clipping`, `nnm`, `bucketing`, `arc` are compared as pre-aggregation + mean (ByzFL: `Clipping`,",
    "  `NNM`, `Bucketing`, `ARC` then `Average`). fllab's pre-aggregators are linear maps and so is the mean:",
    "  fllab folds the map into the mean's coefficients and reads the updates once more (ARC: one pass for the",
    "  norms, one weighted sum; NNM: the Gram matrix, one weighted sum); ByzFL materialises the transformed",
    "  updates. Another inner rule (e.g. `nnm` then `krum`) gets materialised updates in fllab too.",
    "- Krum-family distances: fllab centres each column block of the Gram matrix on a medoid update (no pass",
    "  for a column mean; see `fllab/defenses/aggregators/kernels.py`). Sections recorded before that change centred on",
    "  the block mean (one more read of the updates) and computed row norms with `torch.linalg.vecdot`, which",
    "  materialises the (n, d) product on CPU (0.4 s vs 0.02 s for `vector_norm` at n=50, d=1e6); every rule",
    "  that checks for non-finite rows up front (median, trimmed mean, norm clipping, MoNNA, ...) paid it.",
    "- `bulyan`, `flag`, `mudhog` have no ByzFL counterpart (timed for reference; `mudhog` with warmup 0, so",
    "  every timed call runs its detection).",
    "",
    "## Reading the numbers",
    "",
    "- Oversubscription: the 2-core VMs are shared with other jobs (load average 7 to 12 during the run",
    "  above). fllab's kernels are PyTorch ops with 2 OpenMP threads, and every parallel region waits for",
    "  both threads; when the cores are oversubscribed each wait can cost a scheduler time slice, so they",
    "  slow down far more than ByzFL's single-threaded NumPy paths. Measured under that load, the blocked",
    "  Gram matrix took 4.4 s with 2 threads and 2^20-value blocks, 1.6 s with the 2^22-value blocks now",
    "  used, and 0.30 s with 1 thread, against 0.05 s on an idle VM. Compare ratios within one section only.",
    "- The idle-host section is the clean comparison; its CPU (Intel Xeon, MKL) multiplies one uncentred",
    "  x @ x.T faster than the AMD VMs do, which helps ByzFL's torch Krum (`cdist` uses that product).",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated aggregator names")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(RESULTS.parents[2])}")
    ap.add_argument("--label", default=platform.node(), help="machine label of the results section")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    names = [n for n in args.only.split(",") if n] or list(cases(None))
    print("| aggregator | fllab (s) | ByzFL torch (s) | ByzFL numpy (s) | ratio (baseline) |\n|---|---|---|---|---|")
    rows = run_timing(names, args.reps)
    memory = {} if args.no_memory else {impl: peak_extra_memory(impl) for impl in ("fllab", "byzfl_torch", "byzfl_numpy")}
    for impl, mib in memory.items():
        print(f"nnm peak extra memory, {impl}: {mib:,.0f} MiB")
    print("\n".join(verdicts(rows, memory)))
    if args.write:
        write_markdown(rows, memory, "python " + " ".join(["benchmarks/bench_aggregators.py", *sys.argv[1:]]), args.label)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
