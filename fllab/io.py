"""Atomic file writes: a reader (or an interrupted run) never sees a half-written file."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def cache_dir() -> Path:
    """fllab's cache folder: ``$FLLAB_CACHE`` if set, else ``~/.cache/fllab``."""
    env = os.environ.get("FLLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fllab"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of a written file: what ``open()`` would give (0644 under the usual umask 022);
#: :func:`tempfile.mkstemp` alone would leave 0600
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _plain(obj: Any, *, json_floats: bool) -> Any:
    """Plain Python containers and scalars (numpy/torch scalars unwrapped, paths as strings).
    ``json_floats``: non-finite floats become ``null`` / ``"inf"`` / ``"-inf"`` (JSON has none);
    YAML keeps them (``.inf``), so a YAML file reads back equal to what was written."""
    if json_floats and isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _plain(v, json_floats=json_floats) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, json_floats=json_floats) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _plain(obj.item(), json_floats=json_floats)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _jsonable(obj: Any) -> Any:
    return _plain(obj, json_floats=True)


def dumps_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(_plain(obj, json_floats=False), sort_keys=False))


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync: each line is whole or absent after a crash."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_jsonable(record)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` by these records, one JSON line each (as :func:`append_jsonl` writes them)."""
    atomic_write_text(path, "".join(json.dumps(_jsonable(r)) + "\n" for r in records))


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents; a file that is not UTF-8 is a FllabError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        from .errors import FllabError

        raise FllabError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in read_text(p).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line after a crash
            break
    return out
