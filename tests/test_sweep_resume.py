"""A sweep killed mid-way loses no finished cell, re-runs none, and continues an interrupted cell
from its last checkpoint (``checkpoint: {every: k}``), with ``--jobs 1`` and ``--jobs N`` (Ray:
tests/test_sweep_ray.py)."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

import fllab.runner
from fllab.rundir import CHECKPOINT, CHECKPOINT_STATE, partial_of
from fllab.runner import run_sweep

from conftest import TINY

#: what the interrupted cell's first round record says took it, planted in its checkpoint: the
#: finished cell carries it only when it continued from that checkpoint
PLANTED = 12345.0


class Interrupted(Exception):
    pass


def sweep_data() -> dict:
    data = copy.deepcopy(TINY)
    data["federation"]["rounds"] = 5
    data["checkpoint"] = {"every": 2}
    data["sweep"] = {"grid": {"algorithm.lr": [0.05, 0.2]}, "seeds": [0]}
    return data


def rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as fh:
        return [{k: v for k, v in r.items() if k != "run.seconds"} for r in csv.DictReader(fh)]


def cell_dirs(sweep_dir: Path) -> list[Path]:
    return [sweep_dir / "cells" / c["cell"] for c in json.loads((sweep_dir / "cells.json").read_text())]


def interrupt_sweep(monkeypatch, data: dict, out: Path, cell: int = 1, stop: int = 3) -> Path:
    """Run the sweep at ``out`` serially until cell ``cell`` has written round ``stop`` (after its
    checkpoint of round 2), raising there as a kill would; plant :data:`PLANTED` in that
    checkpoint; return the interrupted cell's run directory."""
    with pytest.raises(Interrupted):
        original = fllab.runner.append_jsonl

        def append(path, record):
            original(path, record)
            if Path(path).parent.name == f"{target.name}.partial" and record["round"] == stop:
                raise Interrupted

        ids = [c[0] for c in fllab.runner.resolve_cells(data)]
        target = out / "cells" / ids[cell]
        monkeypatch.setattr(fllab.runner, "append_jsonl", append)
        run_sweep(data, out)
    monkeypatch.undo()
    state_path = partial_of(target) / CHECKPOINT / CHECKPOINT_STATE
    state = json.loads(state_path.read_text())
    assert state["round"] == 2
    assert "seconds" in dict(map(tuple, state["rounds"][0]["__dict__"]))
    state["rounds"][0]["__dict__"] = [[k, PLANTED if k == "seconds" else v] for k, v in state["rounds"][0]["__dict__"]]
    state_path.write_text(json.dumps(state))
    return target


def check_resumed(reference: Path, out: Path, target: Path, before: dict[Path, float]) -> None:
    """``out`` finished with ``reference``'s results; the cells finished before the interruption
    were not touched; ``target`` continued from its checkpoint and carries none."""
    assert rows(out) == rows(reference)
    for cell, mtime in before.items():
        assert (cell / "summary.json").stat().st_mtime_ns == mtime, f"{cell.name} ran again"
    first = json.loads((target / "rounds.jsonl").read_text().splitlines()[0])
    assert first["seconds"] == PLANTED, "the interrupted cell started over instead of resuming"
    assert not (target / CHECKPOINT).exists() and not partial_of(target).exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return run_sweep(sweep_data(), tmp_path_factory.mktemp("ref") / "sw")[0]


@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupted_sweep_resumes_its_cells(monkeypatch, tmp_path, reference, jobs):
    data = sweep_data()
    out = tmp_path / "sw"
    target = interrupt_sweep(monkeypatch, data, out)
    done = [d for d in cell_dirs(out) if (d / "summary.json").is_file()]
    assert len(done) == 1  # the cell before the interrupted one
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in done}
    _, ran, total = run_sweep(data, out, jobs=jobs)
    assert (ran, total) == (1, 2)
    check_resumed(reference, out, target, before)
