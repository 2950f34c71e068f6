"""A sweep's cells as Ray tasks (``fllab sweep --executor ray [--ray-address ADDR]``).

Each cell runs as one Ray task (one CPU, one torch thread) in a temporary directory of the
worker; the task streams back each checkpoint it writes and, at the end, the whole run
directory, and this process writes them into the sweep exactly as the ``--jobs`` path does: the
checkpoint into ``<cell>.partial/checkpoint/`` (so a sweep killed mid-way continues the cell from
it), the finished run atomically as ``<cell>``.  Nothing needs a file system shared with the
workers.  A local Ray is started for the sweep unless an address is given; a Ray this module
started is shut down on success, failure and Ctrl-C, and a cluster it joined is only
disconnected from, never stopped.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, FllabError
from .parallel_sweep import FixedTwin
from .rundir import Claim, checkpoint_files, make_dirs, pack_run, partial_of, put_checkpoint_files, unpack_run
from .runner import THREADS_CAP, run_cell
from .scenario.build import Setup
from .training.executors import cpu_cores, probe_address

#: seconds a --ray-address has to accept a connection before the sweep or run is refused
PROBE_TIMEOUT = 15.0


def check_ray(address: str | None, field: str = "--ray-address") -> None:
    """Refuse, before anything is written, a sweep or run on Ray when Ray is not installed or
    ``address`` (other than ``auto``) does not answer within :data:`PROBE_TIMEOUT` seconds."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'fllab[ray]'", field) from None
    if address and address != "auto":
        try:
            probe_address(address, PROBE_TIMEOUT)
        except ConfigError as err:
            raise ConfigError(str(err).removeprefix(f"{err.path}: ") if err.path else str(err), field) from None


def _cell_task(setup: Setup, name: str, checkpoint: dict[str, bytes], twin: tuple[dict[str, Any], str] | None) -> Iterator[tuple[str, Any]]:
    """One cell on a Ray worker: ``("checkpoint", files)`` after each checkpoint, then
    ``("done", files of the run directory)``; resumes from ``checkpoint`` when it is not empty."""
    os.environ[THREADS_CAP] = "1"
    with tempfile.TemporaryDirectory(prefix="fllab-cell-") as tmp:
        out = Path(tmp) / name
        if checkpoint:
            put_checkpoint_files(partial_of(out), checkpoint)
        events: queue.Queue = queue.Queue()

        def body() -> None:
            try:
                run_cell(setup, out, quiet=True, baseline=None if twin is None else FixedTwin(twin),
                         on_checkpoint=lambda partial: events.put(("checkpoint", checkpoint_files(partial))))
                events.put(("done", pack_run(out)))
            except BaseException as err:  # handed to the driver, which raises it
                events.put(("error", err))

        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        while True:
            kind, payload = events.get()
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                break
        worker.join()


class RayCells:
    """Cells on Ray (a :class:`fllab.parallel_sweep.Pool`): a local Ray with ``jobs`` CPUs (the
    core count when ``jobs`` is 1) or the cluster at ``address``; as many cells at once as the
    cluster has CPUs."""

    def __init__(self, address: str | None, jobs: int):
        import ray

        self.started = not ray.is_initialized()
        self.before = _children()
        if self.started:
            with warnings.catch_warnings():  # Ray's notes on its future defaults are no news to a sweep's user
                warnings.simplefilter("ignore", FutureWarning)
                if address is None:
                    ray.init(num_cpus=jobs if jobs > 1 else cpu_cores(), include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.task = ray.remote(num_cpus=1, num_returns="streaming", max_retries=0)(_cell_task)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.runs: dict[Any, tuple[Path, Claim]] = {}

    def submit(self, setup: Setup, out: Path, twin: tuple[dict[str, Any], str] | None) -> Any:
        """Start ``setup``'s cell, shipping the checkpoint an interrupted run left in ``out.partial``."""
        partial = partial_of(out)
        make_dirs(partial)
        claim = Claim(partial, "run")  # this process writes the cell's checkpoints while the task runs
        handle = self.task.remote(setup, out.name, checkpoint_files(partial), twin)
        self.runs[handle] = (out, claim)
        return handle

    def wait(self, handles: list[Any]) -> list[Any]:
        """Write what the tasks stream back until at least one cell is whole."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        finished: list[Any] = []
        while not finished:
            ready, _ = ray.wait(handles, num_returns=1)
            for handle in ready:
                out, claim = self.runs[handle]
                try:
                    kind, files = ray.get(next(handle))
                except RayTaskError as err:  # the cell's own error, as the --jobs path raises it
                    cause = getattr(err, "cause", None)
                    raise (cause if isinstance(cause, Exception) else err) from None
                except RayError as err:  # the worker died (out of memory, node lost): the cell resumes on a re-run
                    first = (str(err).strip().splitlines() or [""])[0]
                    raise FllabError(f"{out.name}: its Ray task failed ({type(err).__name__}: {first})") from None
                if kind == "checkpoint":
                    if files:
                        put_checkpoint_files(partial_of(out), files)
                    continue
                claim.release()
                unpack_run(out, files)
                del self.runs[handle]
                finished.append(handle)
        return finished

    def close(self) -> None:
        """Cancel unfinished cells (their checkpoints stay), release them, and shut down a Ray
        this process started (a cluster it joined is only disconnected from)."""
        import ray

        for handle, (_, claim) in self.runs.items():
            try:
                ray.cancel(handle, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass
            claim.release()
        self.runs = {}
        if self.started:
            ray.shutdown()
            _reap(_children() - self.before)


def _reap(pids: set[int], patience: float = 5.0) -> None:
    """Collect the exit of ``pids`` (the processes Ray's shutdown killed, which it does not wait
    for), waiting up to ``patience`` seconds, so that none is left as a zombie."""
    deadline = time.monotonic() + patience
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pids.discard(pid)
            except ChildProcessError:  # reaped already
                pids.discard(pid)
        time.sleep(0.05)


def _children() -> set[int]:
    """This process's direct children (from /proc; empty where there is none)."""
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(int(entry.parent.name))
    return found
