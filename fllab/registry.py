"""Component registries: one per component kind, with a duplicate guard, did-you-mean
suggestions and third-party plugins through the ``fllab.plugins`` entry-point group.

A component is a class with a nested pydantic ``Params`` model (unknown keys forbidden) and a
constructor taking an instance of it.  Optional class attributes describe it for ``fllab
describe``: ``summary`` (one line), ``references`` (papers), ``threat_model`` (attacks),
``needs`` / ``provides`` (capabilities, see :mod:`fllab.types`).  Registering checks the class's
hooks against its kind's protocols (:mod:`fllab.hooks`) and records them in ``cls.hooks``.

    from fllab.registry import ATTACKS

    @ATTACKS.register("my_attack")
    class MyAttack:
        class Params(fllab.Params):
            steps: int = 100
        def __init__(self, params): ...
"""
from __future__ import annotations

import difflib
import math
import warnings
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError, article, shorten

T = TypeVar("T")

PLUGIN_GROUP = "fllab.plugins"


class PluginWarning(UserWarning):
    """A ``fllab.plugins`` entry point could not be loaded."""


#: integers a scenario may hold: what a 64-bit signed integer can (torch, numpy and the OS take no more)
INT_BOUND = 2**63


#: largest float magnitude a scenario may hold: float32's (every tensor fllab trains is float32)
FLOAT_BOUND = 3.4028234663852886e38


def _check_range(value: Any) -> None:
    """Refuse integers beyond 64 bits and floats beyond float32's range, in a value or a list of
    them (a mapping is a nested model or a component's options: checked where it is validated,
    so the message names the nested key)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_BOUND <= value < INT_BOUND:
        raise ValueError("integer out of range (at most 2**63 - 1)")
    if isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT_BOUND:
        raise ValueError("out of the float32 range (magnitude at most 3.4e38)")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_range(v)


class StrictModel(BaseModel):
    """Base of every model a scenario is validated against (component ``Params`` and the scenario
    schema), one mechanism for every field (issue 10):

    * types are strict: ``true`` is no number, ``1.5`` and ``1e308`` are no integer, ``!!binary``
      bytes are no name (pydantic's lax mode would turn ``rounds: true`` into 1 round);
    * floats are finite: NaN and infinities are refused (a field where infinity means something
      says so with ``Field(allow_inf_nan=True)``);
    * integers fit in 64 bits (:data:`INT_BOUND`), floats in float32 (:data:`FLOAT_BOUND`);
    * a YAML list is accepted where the field is a tuple (YAML has no tuples).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        _check_range(value)
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, list) and field is not None and _is_tuple(field.annotation):
            return tuple(value)
        return value


def _is_tuple(annotation: Any) -> bool:
    import typing

    candidates = [annotation, *typing.get_args(annotation)]
    return any(c is tuple or typing.get_origin(c) is tuple for c in candidates)


class Params(StrictModel):
    """Base class of every component's typed parameters: unknown keys are an error, and the
    values are checked as :class:`StrictModel` says."""

    model_config = ConfigDict(frozen=True)


class NoParams(Params):
    """Parameters of a component that takes none."""


def _allowed_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the (nested) pydantic model found at ``loc`` (best effort)."""
    import typing

    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [a for c in candidates for a in typing.get_args(c)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def format_validation_error(err: ValidationError, path: str, model: type[BaseModel] | None = None) -> str:
    """Turn pydantic's errors into one line with the dotted YAML path of the field.

    An unknown key is reported first (it is the likely root cause of other errors), with a
    did-you-mean suggestion and the allowed keys."""
    errors = err.errors()
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc_t = tuple(p for p in first.get("loc", ()) if p != "__root__")
    loc = ".".join(str(p) for p in loc_t)
    where = ".".join(p for p in (path, loc) if p)
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        allowed = _allowed_keys(model, loc_t[:-1])
        msg = "unknown key"
        if allowed:
            msg += f"{did_you_mean(str(loc_t[-1]), allowed)} allowed: {', '.join(allowed)}"
    elif first.get("type") == "missing":
        msg = "required key is missing"
    else:
        got = first.get("input")
        if not isinstance(got, (dict, list)):
            msg = f"{msg} (got {shorten(repr(got))})"
    extra = len(errors) - 1
    tail = f" [+{extra} more error{'s' if extra > 1 else ''}]" if extra else ""
    return f"{where}: {msg}{tail}" if where else f"{msg}{tail}"


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry(Mapping[str, type]):
    """A name -> component-class table for one component kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__").lower()
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered by {self._items[key].__module__}")
            params = getattr(obj, "Params", None)
            if params is None or not (isinstance(params, type) and issubclass(params, BaseModel)):
                raise TypeError(f"{self.kind} {key!r} needs a nested pydantic `Params` model")
            from .hooks import check_hooks

            setattr(obj, "hooks", check_hooks(self.kind, key, obj))  # refuses hooks that do not fit
            setattr(obj, "registry_name", key)
            self._items[key] = obj
            return obj

        return deco

    # -- lookup ---------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> type:
        load_plugins()
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        load_plugins()
        return len(self._items)

    def get_class(self, name: Any, path: str | None = None) -> type:
        load_plugins()
        if not isinstance(name, str):
            raise ConfigError(f"expected a {self.kind} name, got {article(type(name).__name__)}", path)
        if name not in self._items:
            allowed = ", ".join(sorted(self._items)) or "(none registered)"
            raise ConfigError(
                f"unknown {self.kind} {shorten(repr(name))}{did_you_mean(name, list(self._items))} allowed: {allowed}", path
            )
        return self._items[name]

    def parse_params(self, name: str, raw: Mapping[str, Any] | None, path: str | None = None) -> Params:
        cls = self.get_class(name, path)
        try:
            return cls.Params.model_validate(dict(raw or {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, path or "", cls.Params)) from None

    def build(self, spec: "ComponentSpecLike", path: str | None = None, **context: Any) -> Any:
        """Instantiate a component from ``{"name": ..., **params}`` (or a bare name)."""
        name, raw = split_spec(spec, path)
        params = self.parse_params(name, raw, path)
        cls = self._items[name]
        try:
            return cls(params, **context) if context else cls(params)
        except ValueError as err:  # impossible settings found by the component itself
            raise ConfigError(str(err), path) from None


ComponentSpecLike = Any


def split_spec(spec: ComponentSpecLike, path: str | None = None) -> tuple[str, dict[str, Any]]:
    """``"krum"`` or ``{"name": "krum", "f": 2}`` -> ``("krum", {"f": 2})``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError("expected a component name or a mapping with a 'name' key", path)
    raw = dict(spec)
    name = raw.pop("name")
    return name, raw


DATASETS = Registry("dataset")
PARTITIONS = Registry("partition")
MODELS = Registry("model")
ALGORITHMS = Registry("algorithm")
AGGREGATORS = Registry("aggregator")
DEFENSES = Registry("defense")
ATTACKS = Registry("attack")
EXECUTORS = Registry("executor")

ALL_REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (DATASETS, PARTITIONS, MODELS, ALGORITHMS, AGGREGATORS, DEFENSES, ATTACKS, EXECUTORS)
}

_plugins_loaded = False


def load_plugins() -> None:
    """Import fllab's own components, then every ``fllab.plugins`` entry point (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from . import components  # noqa: F401  (registers the built-in components)

    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        # A broken third-party package (uninstalled, moved, failing import, even one calling
        # sys.exit() or raising KeyboardInterrupt at import) must not take every command down
        # with it: name it on stderr and go on without it.
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - anything foreign code raises, exit() included
            warnings.warn(
                f"fllab plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                f"{type(exc).__name__}: {shorten(str(exc))}",
                PluginWarning,
                stacklevel=2,
            )
