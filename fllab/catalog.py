"""The component catalog (kind -> name -> one-line summary) that ``fllab list`` prints, without
importing the components when nothing changed.

Importing every component pulls in torch, torchvision and Opacus (seconds); listing names should
not.  The catalog is cached in ``<cache_dir>/catalog/<key>.json`` under a key that changes with
anything that could change the answer: fllab's version, the size and modification time of every
module of the installed package, and the ``fllab.plugins`` entry points (name, target and
distribution version).  A miss imports the components once and writes the cache atomically; an
unreadable cache is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from . import __version__
from .io import atomic_write_json, cache_dir
from .registry import ALL_REGISTRIES, PLUGIN_GROUP, load_plugins

Catalog = dict[str, dict[str, str]]


def catalog_key() -> str:
    package = Path(__file__).resolve().parent
    h = hashlib.sha1(__version__.encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for ep in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        where = getattr(dist, "_path", "")  # which installation provides it (PathDistribution)
        h.update(f"plugin:{ep.name}={ep.value}@{getattr(dist, 'version', '')}:{where}\n".encode())
    return h.hexdigest()[:16]


def build_catalog() -> Catalog:
    """Import every component (built-in and plugins) and read its summary."""
    load_plugins()
    return {kind: {name: str(getattr(reg[name], "summary", "")) for name in reg} for kind, reg in ALL_REGISTRIES.items()}


def catalog() -> Catalog:
    """The catalog, from the cache when its key matches, else built (and cached when possible)."""
    path = cache_dir() / "catalog" / f"{catalog_key()}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and set(cached) == set(ALL_REGISTRIES):
            return cached
    except (OSError, ValueError):
        pass
    table = build_catalog()
    try:
        atomic_write_json(path, table)
    except OSError:  # a read-only cache only costs speed
        pass
    return table
