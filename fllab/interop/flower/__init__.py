"""fllab inside Flower (``pip install 'fllab[flower]'``, flwr 1.42, Message API).

* defend -- :class:`FllabStrategy`, a Flower ``FedAvg`` whose aggregation is any registered fllab
  aggregator plus the server-side defenses (DP-FedAvg noise and its accountant, the
  secure-aggregation view), validated like a scenario; :func:`defense_mod`, fllab's client-side
  update defenses as Flower client mods; :class:`FllabClient`, fllab's local training (DP-SGD
  through Opacus included, with per-client accounting in the reply's metrics) inside a ClientApp.
* attack -- :class:`RecordingStrategy` stores what the server received each round in a versioned
  capture file (:mod:`.capture`); :func:`attack_capture` runs server-position attacks on it.
* simulate -- ``executor: flower`` (:mod:`.executor`, :mod:`.simulation`): a scenario run as a
  Flower simulation, fllab's clients as the ClientApp and its server round as the Strategy.

The names above are imported on first use, so that registering the ``flower`` executor (which
``import fllab``'s component table does) needs no flwr; using any of them without flwr raises
:class:`FlowerMissing` (a ConfigError: exit code 2).  Flower's telemetry is off unless the
environment turns it on (``FLWR_TELEMETRY_ENABLED=1``): a lab run does not phone home.
"""
from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError


class FlowerMissing(ConfigError):
    """flwr is not installed."""


def require_flwr() -> None:
    """Raise :class:`FlowerMissing` (one line, exit code 2) when flwr cannot be imported."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FlowerMissing("flwr is not installed: pip install 'fllab[flower]'", "flower") from None


#: public name -> the submodule defining it (imported on first access, after :func:`require_flwr`)
_EXPORTS = {
    "UPLOADS": "arrays", "Upload": "arrays", "flat_to_record": "arrays", "record_to_flat": "arrays",
    "attack_capture": "attack",
    "CAPTURE_VERSION": "capture", "Capture": "capture", "CaptureError": "capture", "RecordingStrategy": "capture",
    "read_capture": "capture",
    "FllabClient": "client",
    "defense_mod": "mods",
    "FllabStrategy": "strategy",
}

__all__ = ["FlowerMissing", "require_flwr", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_flwr()
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .arrays import UPLOADS, Upload, flat_to_record, record_to_flat  # noqa: F401
    from .attack import attack_capture  # noqa: F401
    from .capture import CAPTURE_VERSION, Capture, CaptureError, RecordingStrategy, read_capture  # noqa: F401
    from .client import FllabClient  # noqa: F401
    from .mods import defense_mod  # noqa: F401
    from .strategy import FllabStrategy  # noqa: F401
