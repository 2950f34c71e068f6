"""fllab inside Flower (``pip install 'fllab[flower]'``, flwr 1.42, Message API).

* defend -- :class:`FllabStrategy`, a Flower ``FedAvg`` whose aggregation is any registered fllab
  aggregator plus the server-side defenses (DP-FedAvg noise and its accountant, the
  secure-aggregation view), validated like a scenario; :func:`defense_mod`, fllab's client-side
  update defenses as Flower client mods; :class:`FllabClient`, fllab's local training (DP-SGD
  through Opacus included, with per-client accounting in the reply's metrics) inside a ClientApp.
* attack -- :class:`RecordingStrategy` stores what the server received each round in a versioned
  capture file (:mod:`.capture`); :func:`attack_capture` runs server-position attacks on it.

Importing this package without flwr raises :class:`FlowerMissing` (a ConfigError: exit code 2).
"""
from __future__ import annotations

from ...errors import ConfigError


class FlowerMissing(ConfigError):
    """flwr is not installed."""


try:
    import flwr  # noqa: F401
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    raise FlowerMissing("flwr is not installed: pip install 'fllab[flower]'", "flower") from None

from .arrays import UPLOADS, Upload, flat_to_record, record_to_flat  # noqa: E402
from .attack import attack_capture  # noqa: E402
from .capture import CAPTURE_VERSION, Capture, CaptureError, RecordingStrategy, read_capture  # noqa: E402
from .client import FllabClient  # noqa: E402
from .mods import defense_mod  # noqa: E402
from .strategy import FllabStrategy  # noqa: E402

__all__ = [
    "CAPTURE_VERSION", "Capture", "CaptureError", "FllabStrategy", "FlowerMissing", "RecordingStrategy", "UPLOADS",
    "Upload", "FllabClient", "attack_capture", "defense_mod", "flat_to_record", "read_capture", "record_to_flat",
]
