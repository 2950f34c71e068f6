"""Checkpoints of a long run and resuming from them (``checkpoint: {every: k}``, ``--resume``).

Every ``k`` rounds the engine hands the runner a :class:`~fllab.training.engine.Snapshot` (rounds
done, their records, :meth:`Server.state_dict`); :func:`save` encodes it as safe data
(:mod:`fllab.state`) and writes it into the unfinished run directory (:func:`fllab.rundir.write_checkpoint`)
together with the resolved config it belongs to.  :func:`load` reads it back for ``--resume``,
refusing a checkpoint of another config or one that does not read back whole.  Randomness needs
no saving: every draw derives its seed from the root seed and its (purpose, round).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .rundir import CHECKPOINT, read_checkpoint, write_checkpoint
from .scenario.build import Setup
from .state import StateError, decode, encode
from .training.engine import Engine, Snapshot

FORMAT = 1


def training_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides the training (all but the checkpoint settings)."""
    config = copy.deepcopy(resolved)
    config.pop("checkpoint", None)
    return config


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first dotted path at which ``a`` and ``b`` differ (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}.{i}" if path else str(i))
            if found:
                return found
        return None
    return None if a == b else (path or "the config")


def save(partial: Path, setup: Setup, snap: Snapshot) -> None:
    """Write ``snap`` as ``partial``'s checkpoint (atomically; replaces the previous one)."""
    tensors: list[Any] = []
    record = {
        "format": FORMAT, "round": snap.round, "config": training_config(setup.resolved),
        "rounds": encode(snap.rounds, tensors, "rounds"), "state": encode(snap.state, tensors, "state"),
    }
    write_checkpoint(partial, record, tensors)


def load(partial: Path, setup: Setup) -> Snapshot | None:
    """The snapshot checkpointed in ``partial`` (None when there is none).  A checkpoint of another
    config, of another format or that does not decode is a ConfigError (exit 2), one line."""
    found = read_checkpoint(partial)
    if found is None:
        return None
    record, tensors = found
    where = partial / CHECKPOINT
    if record.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {where} has format {record.get('format')!r}; this fllab reads format {FORMAT}", "--resume")
    diff = first_difference(record.get("config"), training_config(setup.resolved))
    if diff is not None:
        raise ConfigError(
            f"cannot resume {partial}: its checkpoint was written for another config (it differs at {diff}); "
            "resume with the same scenario and --set values, or run without --resume to start over", "--resume",
        )
    try:
        rounds, state, done = decode(record["rounds"], tensors), decode(record["state"], tensors), int(record["round"])
    except (StateError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"corrupt checkpoint {where}: {err}; delete it to start over", "--resume") from None
    total = setup.scenario.federation.rounds
    if not 0 < done < total or len(rounds) != done:
        raise ConfigError(f"corrupt checkpoint {where}: {done} rounds done of {total}, {len(rounds)} records", "--resume")
    return Snapshot(done, rounds, state)


def restore(engine: Engine, snap: Snapshot, where: Path) -> None:
    """Put ``snap`` into ``engine`` (wired); a state that does not fit its components is a
    ConfigError naming the checkpoint."""
    try:
        engine.resume(snap)
    except (StateError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"corrupt checkpoint {where / CHECKPOINT}: {type(err).__name__}: {err}; delete it to start over", "--resume") from None
