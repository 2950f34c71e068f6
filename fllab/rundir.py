"""The run directory: its file names, how it is claimed, written and replaced, and its summary.

One module owns the layout so that the runner, the CLI and the reports agree (issue 14): the
names, the writer (claiming, replacing, checkpoints, the final model) and the reader
(:func:`load_run` into :class:`RunData`, which reports are rebuilt from; every file but the
summary or the rounds is optional, a file that exists but does not parse is an error naming it).
The guarantees (issue 10):

* **Whole or absent.**  A run is written into ``<out>.partial`` and renamed to ``<out>`` when
  complete; files inside are written atomically (:mod:`fllab.io`).
* **Only fllab's own directories are replaced.**  Every run and sweep directory holds the marker
  file :data:`MARKER`.  ``--overwrite`` replaces a directory only when it carries that marker, and
  never the working directory, ``$HOME``, ``/`` or a directory holding a protected path (the
  scenario file): one line, exit 2, nothing touched.
* **One writer at a time.**  The marker doubles as an exclusive advisory lock
  (:func:`fcntl.flock`), held while a run (or sweep, or sweep cell) writes; a second writer gets
  one line naming the holder's pid and host.  The kernel drops the lock when the holder dies, so a
  killed run never leaves a stale lock.
* **Checkpoints.**  A run with ``checkpoint.every`` keeps its last checkpoint in
  ``<out>.partial/checkpoint/`` (:func:`write_checkpoint`): a ``torch.save`` file of plain tensors
  (read back with ``weights_only=True``) and ``state.json``, written last, that names it with its
  SHA-256 -- the commit point, so a checkpoint is whole or the previous one.  ``--resume`` keeps
  the directory (:func:`writing_run`'s ``keep``); a finished run drops it (:func:`drop_checkpoint`).
* **The final model.**  A finished run holds :data:`MODEL_FILE`, the final global model's
  ``state_dict`` (plain tensors, loadable with ``torch.load(weights_only=True)``), written by
  :func:`write_model`; ``summary.json`` records its SHA-256 under ``"model"`` and
  :func:`load_model` checks it, so an attack can be run on a finished run without retraining.
* **OS errors are one line.**  A directory that cannot be created (read-only, under a file,
  name too long, ``/proc``) is a :class:`ConfigError` naming the path and the cause; any parent
  created on the way is removed again.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import yaml

from .errors import ConfigError, FllabError
from .io import atomic_write_bytes, read_jsonl, read_text

# ----------------------------------------------------------------------------------- names
MARKER = ".fllab"  # marker + lock file of every directory fllab writes
PARTIAL_SUFFIX = ".partial"
SUMMARY = "summary.json"
CONFIG = "config.resolved.yaml"
ENV = "env.json"
ROUNDS = "rounds.jsonl"
PARTITION = "partition.json"
ATTACKS = "attacks.json"
ARTEFACTS = "artefacts"
REPORT_HTML = "report.html"  # written by fllab.report (and report.md beside it)
MODEL_FILE = "model.pt"  # the final global model's state_dict (torch.save of plain tensors)
BASELINE_DIR = "baseline"  # a single run's no-attack twin, inside its run directory
CHECKPOINT = "checkpoint"  # an unfinished run's last checkpoint, inside <out>.partial
CHECKPOINT_STATE = "state.json"  # the checkpoint's commit record (JSON state + tensor file name + SHA-256)
# sweep directories
SWEEP_FILE = "sweep.yaml"
CELLS_FILE = "cells.json"
CELLS_DIR = "cells"
RESULTS = "results.csv"
SWEEP_BASELINES = "baselines"  # a sweep's twins that no cell provides, by key


def os_error_line(err: OSError, path: str | os.PathLike | None = None) -> str:
    """``'<path>: <cause>'`` for an OS error (the path it names, else ``path``)."""
    where = err.filename if err.filename is not None else path
    cause = err.strerror or str(err)
    return f"{where}: {cause}" if where is not None else cause


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def absolute(out: str | os.PathLike) -> Path:
    """``out`` made absolute without resolving symlinks (``--out ""`` and ``.`` become the cwd, so
    the protection rules see what they would touch)."""
    return Path(os.path.abspath(os.fspath(out) or "."))


# ----------------------------------------------------------------------------------- lock
class Claim:
    """An exclusive lock on a directory fllab writes, held through its :data:`MARKER` file."""

    def __init__(self, directory: Path, kind: str):
        self.directory, self.kind = directory, kind
        marker = directory / MARKER
        try:
            fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise ConfigError(f"cannot write {os_error_line(err, marker)}", "--out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"cannot lock {os_error_line(err, marker)}", "--out") from None
            raise ConfigError(f"{directory} is being written by {holder(directory)}; wait for it or choose another --out", "--out") from None
        self.fd = fd
        stamp = {"fllab": kind, "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(stamp) + "\n").encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder(directory: Path) -> str:
    """Who holds ``directory``'s lock, as recorded in its marker (best effort)."""
    try:
        stamp = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        return f"fllab pid {stamp['pid']} on {stamp['host']} (since {stamp['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another fllab process"


def is_fllab_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


# ----------------------------------------------------------------------------------- creating
def make_dirs(path: Path) -> None:
    """``mkdir -p path``; on failure remove the parents it created and raise a ConfigError naming
    the path and the cause."""
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    except OSError as err:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        raise ConfigError(f"cannot create {os_error_line(err, path)}", "--out") from None


def _check_target(out: Path) -> None:
    """Refuse an output path that is not (or cannot become) a plain directory."""
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link; give a plain directory", "--out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory", "--out")


def protected(out: Path, protect: Sequence[str | os.PathLike] = ()) -> str | None:
    """Why ``out`` must never be replaced (None when it may be): it is ``/``, ``$HOME``, or holds
    the working directory or one of ``protect`` (e.g. the scenario file)."""
    real = out.resolve()
    if real == real.parent:
        return "it is the file-system root"
    if real == Path.home().resolve():
        return "it is your home directory"
    for name, p in [("the working directory", Path.cwd()), *(("the scenario file", Path(q)) for q in protect)]:
        r = Path(p).resolve()
        if r == real or real in r.parents:
            return f"it holds {name} ({p})"
    return None


def replaceable(out: Path, protect: Sequence[str | os.PathLike] = ()) -> None:
    """Raise a ConfigError unless ``out`` is a directory fllab wrote that may be replaced."""
    why = protected(out, protect)
    if why is None and not is_fllab_dir(out):
        why = f"it was not written by fllab (no {MARKER} marker)"
    if why is not None:
        raise ConfigError(f"refusing to replace {out}: {why}; choose another --out", "--out")


def remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as err:
        raise ConfigError(f"cannot remove {os_error_line(err, path)}", "--out") from None


def check_out(out: Path, *, overwrite: bool, protect: Sequence[str | os.PathLike] = ()) -> Path:
    """The checks of :func:`writing_run` that need no writing: ``out`` (made absolute) is a plain
    directory or absent; an existing one is refused unless ``overwrite`` and :func:`replaceable`."""
    out = absolute(out)
    _check_target(out)
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} already exists; pass --overwrite or choose another --out", "--out")
        replaceable(out, protect)
    _check_target(partial_of(out))
    return out


def check_resumable(out: Path) -> Path:
    """``out`` (made absolute) when it names an interrupted run (its ``.partial`` directory
    exists, the run itself does not); otherwise a ConfigError saying why there is nothing to resume."""
    out = absolute(out)
    if out.exists():
        raise ConfigError(f"{out} is a finished run; nothing to resume", "--resume")
    if not partial_of(out).is_dir():
        raise ConfigError(f"nothing to resume: {partial_of(out)} does not exist (an interrupted run leaves it)", "--resume")
    return out


def latest_partial(parent: Path, name: str) -> Path:
    """The run directory of the newest interrupted run ``<parent>/<name>-*.partial`` (``--resume``
    without ``--out``)."""
    found = sorted(parent.glob(f"{name}-*{PARTIAL_SUFFIX}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no interrupted run of {name} under {parent}/; give its --out", "--resume")
    return found[-1].with_name(found[-1].name[: -len(PARTIAL_SUFFIX)])


@contextmanager
def writing_run(out: Path, *, overwrite: bool, protect: Sequence[str | os.PathLike] = (), keep: Sequence[str] = ()) -> Iterator[Path]:
    """Claim ``out`` for a run and yield its locked ``.partial`` directory (cleared except for
    ``keep``); on normal exit the partial directory replaces ``out``.

    ``out`` that exists is refused unless ``overwrite`` and :func:`replaceable`.  On an exception
    the partial directory stays (a finished no-attack twin inside it is reused by the re-run)."""
    out = check_out(out, overwrite=overwrite, protect=protect)
    partial = partial_of(out)
    fresh = not partial.exists()
    make_dirs(partial)
    try:
        claim = Claim(partial, "run")
    except ConfigError:
        if fresh:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    with claim:
        for child in partial.iterdir():
            if child.name == MARKER or child.name in keep:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        yield partial
        if out.exists():  # replaced only now, when the new run is whole
            replaceable(out, protect)
            with Claim(out, "run"):
                remove_tree(out)
        os.replace(partial, out)


@contextmanager
def writing_sweep(sweep_dir: Path) -> Iterator[Path]:
    """Claim a sweep directory (created when missing) for the duration of a sweep.  A directory
    that exists, is not empty and is no sweep fllab wrote (marker, or a ``sweep.yaml`` from before
    markers existed) is refused: a sweep only adds to its own directory."""
    sweep_dir = absolute(sweep_dir)
    _check_target(sweep_dir)
    ours = is_fllab_dir(sweep_dir) or (sweep_dir / SWEEP_FILE).is_file()
    if sweep_dir.exists() and not ours and any(sweep_dir.iterdir()):
        raise ConfigError(f"{sweep_dir} is not empty and not a directory fllab wrote (no {MARKER} marker); choose another --out", "--out")
    make_dirs(sweep_dir)
    with Claim(sweep_dir, "sweep"):
        yield sweep_dir


# ----------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FllabError(f"{path}: cannot read JSON ({exc})") from exc


def _optional_json(path: Path, kind: type) -> Any:
    """``path``'s JSON (None when the file is absent); one of another type is an error naming it."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, kind):
        raise FllabError(f"{path}: expected a JSON {kind.__name__}, found {type(data).__name__}")
    return data


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` (None when the run has not finished)."""
    return _optional_json(run_dir / SUMMARY, dict)


FIGURES_MANIFEST = "figures.json"
RECONSTRUCTION = "reconstruction.png"
SCORES = "scores.csv"  # artefacts/<attack>/scores.csv: per-record membership scores
_SCORES_HEADER = "index,is_member,score"


@dataclass(frozen=True)
class Scores:
    """Per-record scores of a membership attack or audit (higher = member) and the truth."""

    score: np.ndarray  # float64 (n,)
    is_member: np.ndarray  # bool (n,)


def scores_csv(score: Any, is_member: Any) -> bytes:
    """The :data:`SCORES` file of per-record scores and their membership truth (what the engine
    writes for every membership attack and audit)."""
    lines = [_SCORES_HEADER] + [f"{i},{int(m)},{float(s)!r}" for i, (m, s) in enumerate(zip(is_member, score))]
    return ("\n".join(lines) + "\n").encode()


def read_scores(path: Path) -> Scores:
    """Parse a :data:`SCORES` file; a malformed one is an error naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or lines[0].strip() != _SCORES_HEADER:
            raise ValueError(f"the header is not {_SCORES_HEADER!r}")
        rows = [line.split(",") for line in lines[1:] if line.strip()]
        return Scores(np.array([float(r[2]) for r in rows]), np.array([r[1].strip() == "1" for r in rows], dtype=bool))
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise FllabError(f"{path}: cannot read membership scores ({exc})") from exc


def attack_scores(run_dir: Path) -> dict[str, Scores]:
    """``artefacts/<attack>/scores.csv`` of every attack that wrote one, by attack name."""
    artefacts = run_dir / ARTEFACTS
    if not artefacts.is_dir():
        return {}
    return {d.name: read_scores(d / SCORES) for d in sorted(artefacts.iterdir()) if (d / SCORES).is_file()}


def defense_names(run_dir: Path) -> list[str] | None:
    """Names of the defenses in ``config.resolved.yaml`` (None when the file is absent or unreadable)."""
    path = run_dir / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    defenses = config.get("defenses") or []
    return [str(d.get("name") if isinstance(d, dict) else d) for d in defenses]


@dataclass
class ArtefactFigure:
    """An image some attack asked to show: ``path`` is absolute, ``rel`` relative to the run dir."""

    title: str
    path: Path
    rel: str
    caption: str = ""


@dataclass
class RunData:
    """Everything a run report shows, as loaded from disk."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    partition: dict[str, Any] | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[ArtefactFigure] = field(default_factory=list)
    artefact_files: list[str] = field(default_factory=list)
    scores: dict[str, Scores] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.summary.get("metrics")
        return metrics if isinstance(metrics, dict) else {}


def _inside(base: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def _figure_path(run_dir: Path, raw: str) -> Path | None:
    """Resolve a manifest path against ``artefacts/`` then the run dir, refusing paths outside it."""
    for base in (run_dir / ARTEFACTS, run_dir):
        candidate = base / raw
        if candidate.is_file() and _inside(run_dir, candidate):
            return candidate
    return None


def _artefact_figures(run_dir: Path) -> list[ArtefactFigure]:
    from .report.output import IMAGE_SUFFIXES as image_suffixes  # the report's media types (jinja2 loads only here)

    manifest = _optional_json(run_dir / ARTEFACTS / FIGURES_MANIFEST, list) or []
    figures = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise FllabError(f"{run_dir / ARTEFACTS / FIGURES_MANIFEST}: each entry needs a 'path' string")
        path = _figure_path(run_dir, entry["path"])
        if path is None or path.suffix.lower() not in image_suffixes:
            continue  # a figure that was never written, or is no image: show the rest
        rel = path.relative_to(run_dir).as_posix()
        figures.append(ArtefactFigure(str(entry.get("title") or path.stem), path, rel, str(entry.get("caption") or "")))
    return figures


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``; raises :class:`FllabError` when it holds neither a summary nor rounds."""
    path = Path(run_dir)
    summary = _optional_json(path / SUMMARY, dict)
    rounds = read_jsonl(path / ROUNDS)
    if summary is None and not rounds:
        raise FllabError(f"{path}: not a run directory (no {SUMMARY} or {ROUNDS})")
    artefacts = path / ARTEFACTS
    artefact_files = sorted(
        p.relative_to(path).as_posix() for p in artefacts.rglob("*") if p.is_file()
    ) if artefacts.is_dir() else []
    config = path / CONFIG
    return RunData(
        path=path,
        summary=summary or {},
        config_text=read_text(config) if config.is_file() else None,
        env=_optional_json(path / ENV, dict) or {},
        rounds=[r for r in rounds if isinstance(r.get("round"), int)],
        partition=_optional_json(path / PARTITION, dict),
        attacks=_optional_json(path / ATTACKS, dict) or {},
        figures=_artefact_figures(path),
        artefact_files=artefact_files,
        scores=attack_scores(path),
    )


# ----------------------------------------------------------------------------------- final model
def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_model(run_dir: Path, state_dict: dict[str, Any]) -> dict[str, str]:
    """Write ``state_dict`` (copied to the CPU, plain tensors) as ``run_dir``'s :data:`MODEL_FILE`
    atomically; return the record ``summary.json`` keeps under ``"model"``: file name and SHA-256."""
    blob = _torch_bytes({name: t.detach().cpu().clone() for name, t in state_dict.items()})
    atomic_write_bytes(run_dir / MODEL_FILE, blob)
    return {"file": MODEL_FILE, "sha256": hashlib.sha256(blob).hexdigest()}


def load_model(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The final global model's ``state_dict`` of the finished run ``run_dir`` (on the CPU), read
    with ``torch.load(weights_only=True)`` and checked against the SHA-256 in its summary.  A run
    without one (unfinished, or written before fllab saved models) or a file that does not match
    is a ConfigError naming the file.  Load it with ``model.load_state_dict(load_model(run_dir))``
    into the model the run's ``config.resolved.yaml`` describes."""
    import torch

    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    summary = read_summary(run_dir)
    if summary is None or not path.is_file():
        raise ConfigError(f"{path} does not exist: {run_dir} is not a finished run that saved its model", "run_dir")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {os_error_line(err, path)}", "run_dir") from None
    expected = (summary.get("model") or {}).get("sha256") if isinstance(summary.get("model"), dict) else None
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
        raise ConfigError(f"{path} does not match the SHA-256 recorded in {run_dir / SUMMARY}", "run_dir")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or not plain tensors (pickle.UnpicklingError, RuntimeError)
        raise ConfigError(f"{path}: not a saved state_dict ({type(err).__name__})", "run_dir") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConfigError(f"{path}: not a state_dict of tensors", "run_dir")
    return state


# ----------------------------------------------------------------------------------- checkpoints
def write_checkpoint(partial: Path, record: dict[str, Any], tensors: list[Any]) -> None:
    """Replace ``partial``'s checkpoint: the tensors go to ``tensors-<round>.pt`` first, then
    ``state.json`` (``record`` plus that file's name and SHA-256) is renamed into place, then
    older tensor files are removed.  A crash at any point leaves this or the previous checkpoint."""
    name = f"tensors-{int(record['round'])}.pt"
    blob = _torch_bytes(list(tensors))
    state = json.dumps({**record, "tensors": name, "sha256": hashlib.sha256(blob).hexdigest()}).encode()
    put_checkpoint_files(partial, {name: blob, CHECKPOINT_STATE: state})


def put_checkpoint_files(partial: Path, files: dict[str, bytes]) -> None:
    """Replace ``partial``'s checkpoint by ``files`` (:func:`checkpoint_files` of another run
    directory, e.g. a Ray worker's): the tensor file first, ``state.json`` last (the commit),
    then older tensor files are removed."""
    folder = partial / CHECKPOINT
    for name, blob in files.items():
        if name != CHECKPOINT_STATE:
            atomic_write_bytes(folder / Path(name).name, blob)
    atomic_write_bytes(folder / CHECKPOINT_STATE, files[CHECKPOINT_STATE])
    for old in folder.glob("tensors-*.pt"):
        if old.name not in files:
            old.unlink(missing_ok=True)


def checkpoint_files(partial: Path) -> dict[str, bytes]:
    """``partial``'s last committed checkpoint as ``{file name: bytes}`` (``state.json`` and the
    tensor file it names; empty when there is none), for :func:`put_checkpoint_files` elsewhere."""
    folder = partial / CHECKPOINT
    try:
        state = (folder / CHECKPOINT_STATE).read_bytes()
        name = Path(str(json.loads(state)["tensors"])).name
        return {name: (folder / name).read_bytes(), CHECKPOINT_STATE: state}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none, or not whole: read_checkpoint names what is wrong when the run resumes


def pack_run(run_dir: Path) -> dict[str, bytes]:
    """Every file of the finished run ``run_dir`` but its marker, as ``{relative path: bytes}``."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != MARKER}


def unpack_run(out: Path, files: dict[str, bytes]) -> None:
    """Write a :func:`pack_run` of a run made elsewhere as the run directory ``out``: whole or
    absent (:func:`writing_run`; an older ``out`` is replaced), each file atomically."""
    with writing_run(out, overwrite=True) as partial:
        for rel, blob in files.items():
            target = partial / rel
            if not _inside(partial, target):
                raise FllabError(f"refusing to write {rel!r} outside {out}")
            atomic_write_bytes(target, blob)


def read_checkpoint(partial: Path) -> tuple[dict[str, Any], list[Any]] | None:
    """``(record, tensors)`` of ``partial``'s checkpoint, None when it has none.  A checkpoint
    that does not read back whole (bad JSON, missing or altered tensor file, not plain tensors) is
    a ConfigError naming it."""
    import torch

    folder = partial / CHECKPOINT
    state = folder / CHECKPOINT_STATE
    if not state.exists():
        return None

    def corrupt(why: str) -> ConfigError:
        return ConfigError(f"corrupt checkpoint {state}: {why}; delete {folder} to start over", "--resume")

    try:
        record = json.loads(state.read_text(encoding="utf-8"))
        name = record["tensors"]
        if not isinstance(name, str) or Path(name).name != name:
            raise corrupt(f"bad tensor file name {name!r}")
        blob = (folder / name).read_bytes()
        if hashlib.sha256(blob).hexdigest() != record["sha256"]:
            raise corrupt(f"{name} does not match its SHA-256")
        tensors = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise corrupt(os_error_line(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}") from None
    except Exception as err:  # torch.load refusing a non-tensor payload (pickle.UnpicklingError, RuntimeError)
        raise corrupt(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(record, dict) or not isinstance(tensors, list) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise corrupt("unexpected contents")
    return record, tensors


def drop_checkpoint(partial: Path) -> None:
    """Remove the checkpoint of a run that has finished."""
    shutil.rmtree(partial / CHECKPOINT, ignore_errors=True)
