"""Round-to-round state of components, as safe data (the checkpoint protocol).

A component that carries state from one round to the next (an accountant's history, a
detector's memory, a driver's collected uploads) implements the optional hooks ``state_dict()``
and ``load_state_dict(state)`` (:mod:`fllab.hooks`); :meth:`fllab.training.server.Server.state_dict`
collects them.  A state is plain data: tensors, numpy arrays, bytes, numbers, strings, None,
lists, tuples, sets, dicts (any hashable plain keys) and frozen fllab dataclasses of those.

:func:`encode` splits such a state into a JSON-able structure and a list of tensors, so that a
checkpoint is JSON plus one ``torch.save`` file of tensors, read back with
``torch.load(weights_only=True)``: nothing is ever unpickled.  :func:`decode` rebuilds it; the only
classes it constructs are dataclasses defined in fllab's own modules.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import numpy as np
import torch


class StateError(ValueError):
    """A state that cannot be encoded, or an encoded state that does not decode."""


def encode(obj: Any, tensors: list[torch.Tensor], path: str = "state") -> Any:
    """``obj`` as JSON-able data; its tensors are appended to ``tensors`` and referenced by index."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach().cpu().clone())
        return {"__tensor__": len(tensors) - 1}
    if isinstance(obj, np.ndarray):
        tensors.append(torch.from_numpy(np.ascontiguousarray(obj)).clone())
        return {"__ndarray__": len(tensors) - 1}
    if isinstance(obj, (bytes, bytearray)):
        tensors.append(torch.frombuffer(bytearray(obj), dtype=torch.uint8).clone() if obj else torch.zeros(0, dtype=torch.uint8))
        return {"__bytes__": len(tensors) - 1}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, (set, frozenset)):
        return {"__set__": [encode(v, tensors, path) for v in sorted(obj, key=repr)]}
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k, tensors, path), encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and type(obj).__module__.startswith("fllab."):
        cls = type(obj)
        fields = {f.name: encode(getattr(obj, f.name), tensors, f"{path}.{f.name}") for f in dataclasses.fields(obj)}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise StateError(f"{path}: cannot checkpoint a {type(obj).__name__} (give tensors, numbers, strings or containers of them)")


def decode(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = next(iter(obj), None)
    if tag == "__float__":
        return float(obj[tag])
    if tag in ("__tensor__", "__ndarray__", "__bytes__"):
        index = obj[tag]
        if not isinstance(index, int) or not 0 <= index < len(tensors):
            raise StateError(f"tensor reference {index!r} out of range")
        t = tensors[index]
        return t if tag == "__tensor__" else t.numpy() if tag == "__ndarray__" else t.numpy().tobytes()
    if tag == "__tuple__":
        return tuple(decode(v, tensors) for v in obj[tag])
    if tag == "__set__":
        return {decode(v, tensors) for v in obj[tag]}
    if tag == "__dict__":
        return {_key(decode(k, tensors)): decode(v, tensors) for k, v in obj[tag]}
    if tag == "__dataclass__":
        return _dataclass(obj[tag])(**{k: decode(v, tensors) for k, v in obj["fields"].items()})
    raise StateError(f"unknown entry {tag!r}")


def _key(key: Any) -> Any:
    return frozenset(key) if isinstance(key, set) else key


def _dataclass(name: str) -> type:
    """The fllab dataclass ``module:qualname`` (nothing outside fllab is ever constructed)."""
    module, _, qualname = str(name).partition(":")
    if not module.startswith("fllab.") or not qualname:
        raise StateError(f"refusing to build {name!r}: only fllab dataclasses are restored")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise StateError(f"unknown class {name!r}") from None
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise StateError(f"{name!r} is not a dataclass")
    return obj


class AttrState:
    """Mixin for components whose round-to-round state is a few attributes: list their names in
    ``state_attrs``; ``state_dict`` returns them, ``load_state_dict`` sets them back."""

    state_attrs: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.state_attrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [name for name in self.state_attrs if name not in state]
        if missing:
            raise StateError(f"{type(self).__name__}: state lacks {', '.join(missing)}")
        for name in self.state_attrs:
            setattr(self, name, state[name])
