"""What a driver checks of an attack's answer before scoring it: the shape its family's contract
promises (docs/plugins.md).  A registered attack that breaks it -- typically a plugin -- is a
one-line :class:`~fllab.errors.ConfigError` naming the attack, the hook and the expected shape,
instead of a traceback from deep inside the metrics."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ConfigError
from ...types import TensorData


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def checked_scores(attack: Any, hook: str, scores: Any, n: int, path: str) -> torch.Tensor:
    """``scores`` as a float64 CPU tensor when it is one real score per candidate (shape ``(n,)``),
    else a ConfigError naming the attack and the expected shape."""
    if not isinstance(scores, torch.Tensor) or scores.shape != (n,) or scores.is_complex() or scores.dtype == torch.bool:
        raise ConfigError(
            f"attack {attack.registry_name}: {hook} returned {_shape(scores)}; expected a real tensor of shape ({n},), "
            "one score per candidate, higher = more likely a member", path,
        )
    return scores.detach().to(device="cpu", dtype=torch.float64)


def checked_reconstructions(attack: Any, hook: str, recs: Any, expected: Sequence[tuple[int, ...]], path: str) -> list[TensorData]:
    """``recs`` when it is one :class:`TensorData` per target whose ``x`` has the shape in
    ``expected`` (images, *input shape) and whose ``y`` holds one label per image, else a
    ConfigError naming the attack and the expected shape."""
    want = f"a list of {len(expected)} TensorData(x, y), x of shape {tuple(expected[0])} and y of shape ({expected[0][0]},)"
    if not isinstance(recs, (list, tuple)) or len(recs) != len(expected):
        raise ConfigError(f"attack {attack.registry_name}: {hook} returned {_shape(recs)}; expected {want}", path)
    for rec, shape in zip(recs, expected):
        x, y = getattr(rec, "x", None), getattr(rec, "y", None)
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or tuple(x.shape) != tuple(shape) or tuple(y.shape) != (shape[0],):
            got = f"x {_shape(x)} and y {_shape(y)}" if isinstance(rec, TensorData) else _shape(rec)
            raise ConfigError(f"attack {attack.registry_name}: {hook} returned {got}; expected {want}", path)
    return list(recs)
