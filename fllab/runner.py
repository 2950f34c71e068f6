"""Running scenarios to run directories (the output contract of DESIGN.md).

A run is written into ``<out>.partial`` and renamed to ``<out>`` only when complete, so a run
directory that exists is whole.  A sweep writes one such run directory per cell under
``<sweep>/cells/`` and rebuilds ``results.csv`` from the finished cells after each one, so an
interrupted sweep loses no finished cell and a re-run skips them.

No-attack baselines (issue "Poisoning", Scoring: "accuracy drop against the same scenario without
attackers").  A poisoning run with ``evaluation.baseline: true`` also needs its *twin*: the same
resolved scenario and seed with ``attacks: []``.  The twin's identity is :func:`baseline_key`;
``poisoning.accuracy_drop`` is the twin's ``utility.accuracy`` minus the run's, and
``utility.baseline_accuracy`` the twin's.  A single run trains its twin first, into
``<run>/baseline/`` (a whole run directory; a killed run's finished twin is kept for the re-run).
A sweep takes the twin from a cell that trains exactly like it (no poisoning attack, same key:
the ``none`` case of an attack axis), running that cell first when needed, and otherwise trains it
once into ``<sweep>/baselines/<key>/``, shared by every cell with that key.  The run's
``summary.json`` names the twin's run directory relative to its own (``"baseline": "baseline"``,
``"../<cell>"`` or ``"../../baselines/<key>"``).  Cells with identical resolved configs run once:
the later ones are copies.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io as _io
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml

from . import __version__, tracking
from .errors import ConfigError, FllabError
from .io import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_jsonl, atomic_write_text, atomic_write_yaml
from .limits import allocation_error, check_memory, check_work
from .progress import Progress, shown
from .rundir import (
    ARTEFACTS, ATTACKS, BASELINE_DIR, CELLS_DIR, CELLS_FILE, CHECKPOINT, CONFIG, ENV, MARKER, PARTIAL_SUFFIX, PARTITION,
    RESULTS, ROUNDS, SUMMARY, SWEEP_BASELINES, SWEEP_FILE, check_out, check_resumable, drop_checkpoint, latest_partial,
    os_error_line, partial_of, read_summary, write_model, writing_run, writing_sweep,
)
from .scenario.build import Setup, resolve
from .scenario.loader import expand_sweep, validate_schema
from .seeding import derive_seed
from .training.engine import Engine
from .training.wiring import pick_device


#: environment variable holding a worker process's share of the cores (see :func:`torch_threads`)
THREADS_CAP = "FLLAB_THREADS_CAP"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (the default when None); more than the machine's cores only
    oversubscribe them, so they are cut to the core count with a warning.  A process that shares
    the cores with others (a ``fllab sweep --jobs N`` worker) gets its share as
    ``$FLLAB_THREADS_CAP``, and ``n`` is cut to it silently."""
    old = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if n and n > cores:
        warnings.warn(f"threads: {n} is more than the {cores} cores of this machine; using {cores}", RuntimeWarning, stacklevel=3)
        n = cores
    cap = int(os.environ.get(THREADS_CAP, "0") or 0)
    if cap:
        n = min(n or cap, cap)
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def env_info(setup: Setup, device: str) -> dict[str, Any]:
    seed = setup.scenario.seed
    return {
        "fllab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "executor": setup.executor.used,
        "seed": seed,
        "derived_seeds": {p: derive_seed(seed, p) for p in ("init", "partition", "sampling", "malicious")},
    }


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------- baselines
#: a run's twin: ``provider(setup) -> (twin summary, where the twin's run directory is)``
BaselineProvider = Callable[[Setup], tuple[dict[str, Any], str]]


def poisoned(setup: Setup) -> bool:
    """Whether malicious clients take part (inversion and membership attackers only observe)."""
    return any(a.family == "poisoning" for a in setup.attacks)


def needs_baseline(setup: Setup) -> bool:
    return setup.scenario.evaluation.baseline and poisoned(setup)


def baseline_key(resolved: dict[str, Any]) -> str:
    """Identity of a resolved scenario's no-attack twin: a digest of the config without its
    attacks, name, description and ``evaluation.baseline`` switch (none of which changes how the
    honest federation trains).  Equal keys, same training."""
    twin = copy.deepcopy(resolved)
    twin["attacks"] = []
    for key in ("name", "description", "checkpoint"):
        twin.pop(key, None)
    twin["evaluation"].pop("baseline", None)
    blob = json.dumps(twin, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def baseline_setup(setup: Setup) -> Setup:
    """The resolved twin of ``setup``: same config and seed, no attacks, named ``<name>.baseline``."""
    data = copy.deepcopy(setup.resolved)
    data.update(name=f"{setup.scenario.name}.baseline", attacks=[])
    data["evaluation"]["baseline"] = False
    return resolve(validate_schema(data))


def cached_run(setup: Setup, run_dir: Path, *, quiet: bool, resume: bool = False, **options: Any) -> dict[str, Any]:
    """The summary of ``run_dir`` when it holds a finished run of exactly ``setup``'s config;
    otherwise run ``setup`` there (atomically; with ``resume``, from its checkpoint when an
    interrupted run left one) and return its summary.  ``options`` go to :func:`execute`."""
    summary, config = read_summary(run_dir), run_dir / CONFIG
    if summary is not None and config.is_file() and yaml.safe_load(config.read_text()) == setup.resolved:
        return summary
    return run_cell(setup, run_dir, quiet=quiet, resume=resume, **options)


def run_cell(setup: Setup, out: Path, *, quiet: bool, resume: bool = True, **options: Any) -> dict[str, Any]:
    """Run ``setup`` into ``out`` as a sweep runs its cells: without a report, replacing an older
    ``out``, and (with ``resume``) continuing from the last checkpoint when an interrupted run
    left ``out.partial`` (from round 0 when it holds none).  ``options`` go to :func:`execute`."""
    resume = resume and not out.exists() and partial_of(out).is_dir()
    return execute(setup, out, quiet=quiet, overwrite=not resume, report=False, resume=resume, **options)


def baseline_metrics(accuracy: float, twin: dict[str, Any]) -> dict[str, float]:
    """``utility.baseline_accuracy`` (the twin's) and ``poisoning.accuracy_drop`` (twin minus run)."""
    base = float(twin["metrics"]["utility.accuracy"])
    return {"utility.baseline_accuracy": base, "poisoning.accuracy_drop": base - accuracy}


def preflight(setup: Setup) -> Engine:
    """Everything ``run`` can refuse before training, shared by ``validate`` so both refuse with the
    same line: the data, the partition and the model (:meth:`Engine.prepare`), the memory and work
    estimates (:mod:`fllab.limits`), each defense's ``preflight(client_sizes=, algorithm=)`` and the
    LPIPS weights an inversion attack is scored with.  Nothing is written."""
    engine = Engine(setup)
    try:
        engine.prepare()
    except (MemoryError, RuntimeError) as err:  # e.g. a model too large to allocate at all
        reason = allocation_error(err)
        if reason is None:
            raise
        raise ConfigError(reason) from None
    sizes = [len(d) for d in engine.federation.client_data]
    check_memory(setup, int(engine.server.global_params.numel()))
    check_work(setup, sizes)
    for i, comp in enumerate(setup.defenses):  # e.g. dp_sgd calibrates its target epsilon per client size
        hook = getattr(comp, "preflight", None)
        if hook is not None:
            try:
                hook(client_sizes=sizes, algorithm=setup.algorithm)
            except ValueError as err:
                raise ConfigError(str(err), f"defenses.{i}") from None
    if any(a.family == "inversion" and getattr(a.params, "lpips", True) for a in setup.attacks):
        from .metrics.image import lpips_model

        lpips_model("cpu")  # scored after training: missing or corrupt weights are refused now
    return engine


def diverged(result: Any) -> bool:
    """Whether training went non-finite: a non-finite global model or evaluated loss."""
    losses = [r["test_loss"] for r in result.rounds if "test_loss" in r]
    return not bool(torch.isfinite(result.final_params).all()) or not all(math.isfinite(x) for x in losses)


def execute(
    setup: Setup, out: Path, *, quiet: bool = True, overwrite: bool = False, report: bool = True,
    baseline: BaselineProvider | None = None, protect: Sequence[str | os.PathLike] = (), resume: bool = False,
    label: str | None = None, on_checkpoint: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run a resolved scenario and write its run directory (:func:`fllab.rundir.writing_run`);
    return the summary.  ``label`` names the progress bar (default: the scenario's name);
    ``on_checkpoint(partial)`` is called after each checkpoint is written.

    ``resume``: continue the interrupted run in ``<out>.partial`` from its last checkpoint
    (:mod:`fllab.checkpoint`; from round 0 when it has none), its no-attack twin likewise.

    When the scenario asks for a baseline (:func:`needs_baseline`), the twin comes from
    ``baseline`` (a sweep's provider) or is trained into ``<out>/baseline/``; its time is not
    part of ``run.seconds``.  Every check happens before the first file is written; an OS error
    while writing (disk full) is one line naming the path and the unfinished directory."""
    sc = setup.scenario
    twin_setup = baseline_setup(setup) if needs_baseline(setup) and baseline is None else None
    if resume:
        out = check_resumable(out)
    check_out(out, overwrite=overwrite, protect=protect)  # before the data loads
    keep = (BASELINE_DIR, BASELINE_DIR + PARTIAL_SUFFIX, CHECKPOINT) if resume else (BASELINE_DIR,)
    with torch_threads(sc.threads):
        device = pick_device(sc.device)
        t0 = time.perf_counter()
        engine = preflight(setup)  # config errors surface before anything is written
        with writing_run(out, overwrite=overwrite, protect=protect, keep=keep) as partial:
            try:
                summary = _train(setup, engine, partial, device, t0, quiet=quiet, report=report, baseline=baseline,
                                 twin_setup=twin_setup, resume=resume, label=label, on_checkpoint=on_checkpoint)
            except OSError as err:
                raise FllabError(f"{os_error_line(err)} (the unfinished run is left in {partial})") from None
            except ConfigError:  # e.g. a plugin breaking its contract: nothing half-written stays
                if not any((partial / kept).exists() for kept in (BASELINE_DIR, CHECKPOINT)):
                    shutil.rmtree(partial, ignore_errors=True)
                raise
    if summary["status"] == "diverged":
        warnings.warn(f"{sc.name}: training diverged (non-finite loss or weights); lower the learning rate", RuntimeWarning, stacklevel=2)
    return summary


def _train(
    setup: Setup, engine: Engine, partial: Path, device: str, t0: float, *, quiet: bool, report: bool,
    baseline: BaselineProvider | None, twin_setup: Setup | None, resume: bool = False, label: str | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Train ``setup`` into the claimed ``partial`` directory; return the summary."""
    from . import checkpoint

    sc = setup.scenario
    snap = checkpoint.load(partial, setup) if resume else None  # a checkpoint of another config is refused first
    if snap is not None:
        checkpoint.restore(engine, snap, partial)
    twin: tuple[dict[str, Any], str] | None = None
    if needs_baseline(setup):
        started = time.perf_counter()
        if twin_setup is not None:
            twin = cached_run(twin_setup, partial / BASELINE_DIR, quiet=quiet, resume=resume), BASELINE_DIR
        else:
            assert baseline is not None
            twin = baseline(setup)
        t0 += time.perf_counter() - started  # the twin's training is not this run's time
    tracker = tracking.from_config(sc.tracking, sc.name)
    atomic_write_yaml(partial / CONFIG, setup.resolved)
    atomic_write_json(partial / ENV, env_info(setup, device))
    bar = Progress(sc.federation.rounds, label or sc.name, quiet)
    rounds_path = partial / ROUNDS
    if snap is not None:  # the records up to the checkpoint; later ones are trained again
        atomic_write_jsonl(rounds_path, snap.rounds)
    if sc.checkpoint.every:
        def save(snap: Any) -> None:
            checkpoint.save(partial, setup, snap)
            if on_checkpoint is not None:
                on_checkpoint(partial)

        engine.save = save
    if tracker:
        tracker.on_start(partial, setup.resolved)

    def on_round(record: dict[str, Any]) -> None:
        append_jsonl(rounds_path, record)
        if tracker:
            tracker.on_round(record)
        if "test_accuracy" in record:
            bar.note(acc=record["test_accuracy"])

    engine.on_round, engine.progress = on_round, bar
    try:
        with shown(not quiet):  # bars inside the run, e.g. an attack's reference models
            result = engine.run()
    finally:
        bar.close()
    drop_checkpoint(partial)
    model = write_model(partial, engine.server.final_model().state_dict())
    metrics = {**result.metrics, "run.seconds": time.perf_counter() - t0}
    if twin is not None:
        metrics.update(baseline_metrics(result.metrics["utility.accuracy"], twin[0]))
    atomic_write_json(partial / PARTITION, result.partition)
    if result.attacks:
        atomic_write_json(
            partial / ATTACKS,
            {name: {"family": o.family, "metrics": o.metrics, "table": o.table} for name, o in result.attacks.items()},
        )
        for name, outcome in result.attacks.items():
            for rel, blob in outcome.files.items():
                atomic_write_bytes(partial / ARTEFACTS / name / rel, blob)
    summary = {"name": sc.name, "seed": sc.seed, "status": "diverged" if diverged(result) else "ok", "metrics": metrics}
    if twin is not None:
        summary["baseline"] = twin[1]
    summary["model"] = model
    atomic_write_json(partial / SUMMARY, summary)
    if report:
        from .report import build_report

        build_report(partial)
    if tracker:
        tracker.on_finish(partial, summary)
    return summary


def run_scenario(
    data: dict[str, Any], out: Path | None = None, *, quiet: bool = True, overwrite: bool = False,
    protect: Sequence[str | os.PathLike] = (), resume: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Validate a scenario mapping (no sweep), run it, return (run dir, summary).  ``protect``:
    paths ``--overwrite`` must never remove (the scenario file).  ``resume``: continue the
    interrupted run at ``out`` (default: the newest ``runs/NAME-*`` one) from its checkpoint."""
    scenario = validate_schema(data)
    setup = resolve(scenario)
    if out is None:
        out = latest_partial(default_out(scenario.name).parent, scenario.name) if resume else default_out(scenario.name)
    out = Path(out)
    return out, execute(setup, out, quiet=quiet, overwrite=overwrite, protect=protect, resume=resume)


# ----------------------------------------------------------------------------------- sweeps
def _flat_metric_columns(summaries: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for s in summaries:
        for k in s["metrics"]:
            if k not in cols:
                cols.append(k)
    return cols


def write_results_csv(sweep_dir: Path, cells: list[tuple[str, dict[str, Any], int, Any]]) -> int:
    """Rebuild results.csv from every finished cell (in grid order): one row per cell, no duplicates;
    a ``reason`` column says why a skipped cell was refused."""
    rows, summaries = [], []
    for cid, values, seed, _ in cells:
        summary = read_summary(sweep_dir / CELLS_DIR / cid)
        if summary is None:
            continue
        summaries.append(summary)
        rows.append((cid, values, seed, summary))
    param_cols = list(cells[0][1].keys()) if cells else []
    metric_cols = _flat_metric_columns(summaries)
    reasons = ["reason"] if any("reason" in s for s in summaries) else []
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell", *[f"param:{k}" for k in param_cols], "seed", "status", *reasons, *metric_cols])
    for cid, values, seed, summary in rows:
        writer.writerow(
            [cid, *[json.dumps(values[k]) if isinstance(values[k], (dict, list)) else values[k] for k in param_cols],
             seed, summary["status"], *[summary.get("reason", "") for _ in reasons],
             *[summary["metrics"].get(m, "") for m in metric_cols]]
        )
    atomic_write_text(sweep_dir / RESULTS, buf.getvalue())
    from .report.aggregate import write_aggregate

    write_aggregate(sweep_dir)  # aggregate.csv: mean, std and 95% CI per setting when seeds repeat
    return len(rows)


Cell = tuple[str, dict[str, Any], int, "Setup | str"]  # (cell id, swept values, seed, setup or refusal)


def resolve_cells(data: dict[str, Any]) -> list[Cell]:
    """Every cell of a sweep resolved and cross-checked, before any trains.  A refused cell (its
    components cannot work together, or its no-attack twin cannot) is a ConfigError naming the
    cell, or, with ``sweep.skip_invalid``, kept as the one-line reason in place of its setup."""
    scenario = validate_schema(data)
    skip_invalid = bool(scenario.sweep and scenario.sweep.skip_invalid)
    resolved: list[Cell] = []
    for cid, values, seed, cell in expand_sweep(data):
        try:
            setup = resolve(validate_schema(cell))
            if needs_baseline(setup):
                baseline_setup(setup)
        except ConfigError as err:
            if not skip_invalid:
                raise ConfigError(f"sweep cell {values}: {err}" if values else str(err)) from None
            resolved.append((cid, values, seed, str(err)))
            continue
        resolved.append((cid, values, seed, setup))
    return resolved


def copy_run(src: Path, dst: Path) -> None:
    """Copy a finished run directory to ``dst`` through ``dst.partial`` (atomic, like a run)."""
    with writing_run(dst, overwrite=True) as partial:
        shutil.copytree(src, partial, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))


class SweepRun:
    """One pass over a sweep's resolved cells: runs each unfinished cell once, provides poisoning
    cells with their no-attack twins (module docstring), and copies cells whose resolved configs
    are identical (e.g. the ``0`` fraction of several attacks: ``attacks: []`` each)."""

    def __init__(self, sweep_dir: Path, name: str, cells: list[Cell], *, quiet: bool):
        self.dir, self.name, self.cells, self.quiet = sweep_dir, name, cells, quiet
        self.ran = 0
        self.clean: dict[str, int] = {}  # baseline key -> first cell that trains without malicious clients
        self.first: dict[int, int] = {}  # cell -> first cell with the same resolved config
        seen: dict[str, int] = {}
        for i, (_, _, _, setup) in enumerate(cells):
            if isinstance(setup, Setup):
                self.first[i] = seen.setdefault(json.dumps(setup.resolved, sort_keys=True, default=str), i)
                if not poisoned(setup):
                    self.clean.setdefault(baseline_key(setup.resolved), i)

    def cell_dir(self, i: int) -> Path:
        return self.dir / CELLS_DIR / self.cells[i][0]

    def label(self, i: int) -> str:
        """Cell ``i`` as progress names it: its swept values (``k=v`` pairs) and seed."""
        _, values, seed, _ = self.cells[i]
        pairs = [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in values.items()]
        return " ".join(["cell", *pairs, f"seed={seed}"])

    def finished(self) -> int:
        """Cells whose run directory is whole."""
        return sum((self.cell_dir(i) / SUMMARY).is_file() for i in range(len(self.cells)))

    def summary(self, i: int) -> dict[str, Any]:
        """Cell ``i``'s summary, running the cell first when it has none."""
        summary = read_summary(self.cell_dir(i))
        if summary is None:
            self._run(i)
            summary = read_summary(self.cell_dir(i))
        assert summary is not None
        return summary

    def _run(self, i: int) -> None:
        cid, values, seed, setup = self.cells[i]
        out = self.cell_dir(i)
        if not self.quiet:
            print(f"[{self.finished()}/{len(self.cells)} cells done] running {self.label(i)}", file=sys.stderr)
        if isinstance(setup, str):  # refused combination: recorded, never trained
            with writing_run(out, overwrite=True) as partial:
                atomic_write_json(partial / SUMMARY, {"name": self.name, "seed": seed, "status": "skipped", "reason": setup, "metrics": {}})
        elif self.first[i] != i:  # the same run as an earlier cell: copy it
            self.summary(self.first[i])
            copy_run(self.cell_dir(self.first[i]), out)
        else:
            run_cell(setup, out, quiet=self.quiet, baseline=self.baseline, label=self.label(i))
        self.ran += 1
        write_results_csv(self.dir, self.cells)

    def baseline(self, setup: Setup) -> tuple[dict[str, Any], str]:
        """A poisoning cell's twin, as (summary, path relative to the cell's run directory): the
        matching cell without malicious clients, else ``baselines/<key>/`` (trained once)."""
        key = baseline_key(setup.resolved)
        if key in self.clean:
            j = self.clean[key]
            return self.summary(j), f"../{self.cells[j][0]}"
        twin = cached_run(baseline_setup(setup), self.dir / SWEEP_BASELINES / key, quiet=self.quiet, resume=True)
        return twin, f"../../{SWEEP_BASELINES}/{key}"

    def run(self) -> int:
        for i in range(len(self.cells)):
            self.summary(i)
        write_results_csv(self.dir, self.cells)
        return self.ran


def run_sweep(
    data: dict[str, Any], out: Path | None = None, *, quiet: bool = True, jobs: int = 1, executor: str | None = None,
    ray_address: str | None = None,
) -> tuple[Path, int, int]:
    """Run every cell not yet finished; return (sweep dir, cells run now, cells total).  Cells run
    here when ``jobs`` is 1, in ``jobs`` worker processes when more (:mod:`fllab.parallel_sweep`),
    or as Ray tasks with ``executor="ray"`` (default: the file's ``sweep.executor``; implied by
    ``ray_address``; :mod:`fllab.ray_sweep`).  An interrupted cell continues from its last
    checkpoint.  The sweep directory is claimed (locked) for the whole sweep, each cell's run
    directory while it runs."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number of at least 1, not {jobs!r}", "--jobs")
    scenario = validate_schema(data)
    where = executor or ("ray" if ray_address else scenario.sweep.executor if scenario.sweep else "processes")
    if where not in ("processes", "ray"):
        raise ConfigError(f"--executor must be processes or ray, not {where!r}", "--executor")
    if ray_address and where != "ray":
        raise ConfigError("--ray-address runs the cells on Ray; it cannot go with --executor processes", "--ray-address")
    cells = resolve_cells(data)
    if where == "ray":
        from .ray_sweep import check_ray

        check_ray(ray_address)  # before anything is written
    sweep_dir = Path(out) if out is not None else Path("runs") / f"{scenario.name}-sweep"
    previous = sweep_dir / SWEEP_FILE
    if previous.is_file() and not same_sweep(yaml.safe_load(previous.read_text(encoding="utf-8")), data):
        raise ConfigError(f"{sweep_dir} holds a different sweep; choose another --out or delete it", "--out")
    with writing_sweep(sweep_dir):
        atomic_write_yaml(previous, data)
        atomic_write_json(sweep_dir / CELLS_FILE, [{"cell": c, "values": v, "seed": s} for c, v, s, _ in cells])
        try:
            if where == "ray" or jobs > 1:
                from .parallel_sweep import ParallelSweep, ProcessCells

                if where == "ray":
                    from .ray_sweep import RayCells

                    pool: Any = RayCells(ray_address, jobs)
                else:
                    pool = ProcessCells(jobs)
                ran = ParallelSweep(sweep_dir, scenario.name, cells, quiet=quiet, pool=pool).run()
            else:
                ran = SweepRun(sweep_dir, scenario.name, cells, quiet=quiet).run()
            from .report import build_sweep_report

            build_sweep_report(sweep_dir)
        except OSError as err:
            raise FllabError(f"{os_error_line(err)} (the sweep resumes from its finished cells when re-run)") from None
    return sweep_dir, ran, len(cells)


def same_sweep(stored: Any, data: dict[str, Any]) -> bool:
    """Whether the ``sweep.yaml`` a sweep directory holds describes ``data`` (compared as written,
    so values YAML and JSON spell differently, like ``.inf``, still match; ``sweep.executor``
    aside)."""
    def identity(obj: Any) -> str:
        obj = copy.deepcopy(obj)
        if isinstance(obj, dict) and isinstance(obj.get("sweep"), dict):
            obj["sweep"].pop("executor", None)  # where the cells run does not change them
        return json.dumps(obj, sort_keys=True, default=str)

    return identity(stored) == identity(yaml.safe_load(dump_yaml(data)))


def has_sweep(data: dict[str, Any]) -> bool:
    return bool(data.get("sweep"))


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False)
