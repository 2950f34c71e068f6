"""Reading scenario files: YAML (safe loader only) -> ``--set`` overrides -> schema validation, and
sweep expansion into one plain scenario per grid cell and seed."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, article, shorten
from ..limits import check_sweep_size, max_scenario_bytes, max_scenario_depth, max_scenario_nodes
from ..registry import format_validation_error
from .schema import Scenario


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) with the bounds of :mod:`fllab.limits`: nesting depth
    while composing, nodes after alias expansion and recursive aliases before constructing, and
    duplicate keys refused (YAML 1.2 requires unique keys; PyYAML silently keeps the last)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth, self._max_depth = 0, max_scenario_depth()

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"nesting deeper than {self._max_depth} levels at line {mark.line + 1}; raise FLLAB_MAX_SCENARIO_DEPTH if it is meant"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(
                        f"duplicate key {shorten(key)} at lines {seen[key] + 1} and {key_node.start_mark.line + 1}; keep one"
                    )
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :func:`max_scenario_nodes` nodes or
    :func:`max_scenario_depth` levels ("billion laughs"), or refer to themselves.  Iterative
    post-order over the node graph, each shared node measured once."""
    max_nodes, max_depth = max_scenario_nodes(), max_scenario_depth()
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[key] > max_nodes:
                raise ConfigError(
                    f"the document expands to more than {max_nodes:,} nodes (aliases included); "
                    "raise FLLAB_MAX_SCENARIO_NODES if it is meant"
                )
            if depth[key] > max_depth:
                raise ConfigError(f"aliases nest the document deeper than {max_depth} levels; raise FLLAB_MAX_SCENARIO_DEPTH if it is meant")
            continue
        if key in size:
            continue
        if key in depth:  # on the current path: the node contains itself
            raise ConfigError(f"recursive alias at line {node.start_mark.line + 1}; an anchor cannot contain itself")
        depth[key] = -1
        stack.append((node, True))
        for child in _children(node):
            if id(child) in depth and id(child) not in size:
                raise ConfigError(f"recursive alias at line {child.start_mark.line + 1}; an anchor cannot contain itself")
            if id(child) not in size:
                stack.append((child, False))


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document within the limits; any failure is one ConfigError line."""
    loader = None
    try:
        loader = BoundedLoader(text)  # the reader refuses control characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or "invalid YAML"
        if isinstance(err, yaml.reader.ReaderError):
            at = f" at character {err.position}"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer of more than 4,300 digits
        raise ConfigError(f"{where}: unreadable value: {shorten(str(err))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_bounded(path: str | Path) -> str:
    """A regular file's text, at most :func:`max_scenario_bytes` bytes (never a device or FIFO,
    which could block or never end)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ConfigError(f"scenario file {str(p)!r} does not exist") from None
    except OSError as err:
        raise ConfigError(f"scenario file {str(p)!r}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"scenario path {str(p)!r} is a directory; give a .yaml file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"scenario path {str(p)!r} is not a regular file; give a .yaml file")
    limit = max_scenario_bytes()
    try:
        with open(p, "rb") as fh:
            blob = fh.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"scenario file {str(p)!r}: {err.strerror}") from None
    if len(blob) > limit:
        raise ConfigError(f"{p}: larger than {limit:,} bytes; raise FLLAB_MAX_SCENARIO_BYTES if it is meant")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    data = parse_yaml(read_text_bounded(p), str(p))
    if data is None:
        raise ConfigError(f"{p}: the file is empty; a scenario is a mapping with name, task, federation, algorithm")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a scenario must be a YAML mapping, got {article(type(data).__name__)}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"federation.rounds=5"`` -> ``("federation.rounds", 5)``; the value is read as YAML
    (within the same limits as a file), or taken as a string when it is not YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {shorten(text)}: expected PATH=VALUE, e.g. federation.rounds=5")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path or any(not part for part in path.split(".")):
        raise ConfigError(f"--set {shorten(text)}: empty path segment; use dotted keys like aggregator.f")
    if not raw.strip():
        return path, ""
    try:
        return path, parse_yaml(raw, f"--set {path}")
    except ConfigError as err:
        if "not valid YAML" in str(err):
            return path, raw
        raise


def set_path(data: dict[str, Any], path: str, value: Any, *, origin: str = "--set") -> None:
    """Set ``a.b.0.c`` inside nested dicts/lists; a component given as a bare name becomes a mapping."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        walked = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _index(part, node, walked, origin)
            if isinstance(node[idx], str):  # component shorthand -> mapping
                node[idx] = {"name": node[idx]}
            node = node[idx]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            elif isinstance(node[part], str):  # component shorthand -> mapping
                node[part] = {"name": node[part]}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{origin} {path}: {walked} is a value, not a mapping or list")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, path, origin)] = value
    else:
        node[last] = value


def _index(part: str, node: list, walked: str, origin: str) -> int:
    allowed = f"use 0..{len(node) - 1}" if node else "the list is empty; set the whole list instead"
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"{origin} {walked}: {shorten(part)} indexes a list; {allowed}") from None
    if not 0 <= idx < len(node):
        raise ConfigError(f"{origin} {walked}: index {idx} out of range; {allowed}" if not node else
                          f"{origin} {walked}: index {idx} out of range; the list has {len(node)} entries")
    return idx


def validate_schema(data: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", Scenario)) from None


def load_raw(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    data = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
    return data


def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Read, override and validate the file's schema (component params are checked by ``resolve``)."""
    return validate_schema(load_raw(path, overrides))


def cell_id(values: dict[str, Any], seed: int) -> str:
    """A stable, readable-ish id for a sweep cell."""
    blob = json.dumps({"values": values, "seed": seed}, sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
    return f"seed{seed}-{digest}"


def expand_sweep(data: dict[str, Any]) -> list[tuple[str, dict[str, Any], int, dict[str, Any]]]:
    """One ``(cell_id, swept values, seed, plain scenario dict)`` per grid cell, case and seed.

    Swept values are keyed by dotted path (grid) or axis name (cases; the value is the case
    label).  Cells are validated against the schema here; component checks come later."""
    scenario = validate_schema(data)
    sweep = scenario.sweep
    base = copy.deepcopy(data)
    base.pop("sweep", None)
    grid = sweep.grid if sweep else {}
    cases = sweep.cases if sweep else {}
    axes: list[tuple[str, list[tuple[Any, dict[str, Any]]]]] = [
        (key, [(v, {key: v}) for v in values]) for key, values in grid.items()
    ] + [(axis, list(options.items())) for axis, options in cases.items()]
    seeds = sweep.seeds if sweep and sweep.seeds else [scenario.seed]
    check_sweep_size(math.prod(len(options) for _, options in axes) * len(seeds))  # before materialising any
    cells = []
    for combo in itertools.product(*(options for _, options in axes)):
        values = {name: label for (name, _), (label, _) in zip(axes, combo)}
        for seed in seeds:
            cell = copy.deepcopy(base)
            for _, overrides in combo:
                for path, value in overrides.items():
                    set_path(cell, path, copy.deepcopy(value), origin="sweep")
            cell["seed"] = seed
            validate_schema(cell)
            cells.append((cell_id(values, seed), values, seed, cell))
    return cells
