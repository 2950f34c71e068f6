"""Recording Flower traffic: what the server received each round, in a versioned capture file.

:class:`RecordingStrategy` wraps any Flower (Message API) strategy.  Each training round it
stores the weights the server sent, every reply's record as received (before any aggregation or
server-side defense: what a curious server holds), each client's node id, ``num-examples`` and
metrics, then lets the wrapped strategy aggregate.  The file is rewritten atomically after every
round, so an interrupted run leaves the rounds completed so far.

Format (no pickle): one ``.npz`` (numpy's zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding

* ``header`` -- a uint8 array of UTF-8 JSON: ``{"format": "fllab-flower-capture", "version": 1,
  "upload": "weights"|"delta"|"gradient", "layout": [[key, shape], ...], "meta": {...},
  "rounds": [{"round": r, "clients": [{"node_id", "num_examples", "metrics"}]}]}`` where ``r`` is
  the 0-based round (Flower's ``server-round - 1``, fllab's numbering) and ``meta`` is what the
  caller attached (what an attacker needs: the model spec, input shape, number of classes and the
  fllab algorithm spec that fixes the public hyper-parameters);
* ``round{r}.sent`` -- the (d,) float32 flat weights sent in round r;
* ``round{r}.replies`` -- the (n, d) float32 flat records received, in ``clients`` order.

:func:`read_capture` refuses a truncated file, another format or another version with a
:class:`CaptureError` (a ConfigError: exit code 2 at the CLI), one line naming the file.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ...errors import ConfigError
from .arrays import as_update, check_upload, record_to_flat

CAPTURE_FORMAT = "fllab-flower-capture"
CAPTURE_VERSION = 1


class CaptureError(ConfigError):
    """A capture file that cannot be read: missing, truncated, another format or version."""


@dataclass(frozen=True)
class CapturedRound:
    """One training round as the server received it."""

    round: int  # 0-based
    sent: torch.Tensor  # (d,) flat weights the server sent
    replies: torch.Tensor  # (n, d) flat records received
    client_ids: tuple[int, ...]
    num_examples: tuple[int, ...]
    metrics: tuple[Mapping[str, Any], ...]
    upload: str

    @property
    def updates(self) -> torch.Tensor:
        """fllab's updates (``reply - sent`` for weights replies)."""
        return as_update(self.replies, self.sent, self.upload)


@dataclass(frozen=True)
class Capture:
    upload: str
    layout: list[tuple[str, tuple[int, ...]]]
    meta: dict[str, Any]
    rounds: list[CapturedRound]

    def round(self, r: int) -> CapturedRound:
        for cr in self.rounds:
            if cr.round == r:
                return cr
        raise ConfigError(f"round {r} is not in the capture (rounds {[c.round for c in self.rounds]})", "round")


def _jsonable(metrics: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(metrics).items()}


class CaptureWriter:
    """Accumulates rounds and rewrites the capture file atomically after each."""

    def __init__(self, path: str | os.PathLike, upload: str, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.upload = check_upload(upload)
        self.meta = dict(meta or {})
        self.layout: list[list[Any]] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, rnd: int, sent: ArrayRecord, replies: list[tuple[int, ArrayRecord, Mapping[str, Any]]], weight_key: str) -> None:
        if self.layout is None:
            self.layout = [[k, list(sent[k].shape)] for k in sent.keys()]
        self.arrays[f"round{rnd}.sent"] = record_to_flat(sent).numpy()
        self.arrays[f"round{rnd}.replies"] = (
            torch.stack([record_to_flat(rec) for _, rec, _ in replies]).numpy() if replies else np.zeros((0, 0), np.float32)
        )
        self.rounds.append({
            "round": rnd,
            "clients": [{"node_id": int(nid), "num_examples": int(m.get(weight_key, 0)), "metrics": _jsonable(m)} for nid, _, m in replies],
        })
        self.flush()

    def flush(self) -> None:
        header = {"format": CAPTURE_FORMAT, "version": CAPTURE_VERSION, "upload": self.upload, "layout": self.layout or [],
                  "meta": self.meta, "rounds": self.rounds}
        blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, header=blob, **self.arrays)
        os.replace(tmp, self.path)


def read_capture(path: str | os.PathLike) -> Capture:
    """Load a capture file; CaptureError (one line) when it is missing, truncated or foreign."""
    p = Path(path)
    if not p.is_file():
        raise CaptureError(f"capture file {p} does not exist", "capture")
    try:
        with np.load(p, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if not isinstance(header, dict) or header.get("format") != CAPTURE_FORMAT:
                raise CaptureError(f"{p} is not a fllab Flower capture (format {header.get('format') if isinstance(header, dict) else None!r})", "capture")
            if header.get("version") != CAPTURE_VERSION:
                raise CaptureError(f"{p} is capture version {header.get('version')!r}; this fllab reads version {CAPTURE_VERSION}", "capture")
            rounds = []
            for r in header["rounds"]:
                clients = r["clients"]
                rounds.append(CapturedRound(
                    round=int(r["round"]), sent=torch.from_numpy(z[f"round{r['round']}.sent"].copy()),
                    replies=torch.from_numpy(z[f"round{r['round']}.replies"].copy()),
                    client_ids=tuple(int(c["node_id"]) for c in clients), num_examples=tuple(int(c["num_examples"]) for c in clients),
                    metrics=tuple(c["metrics"] for c in clients), upload=header["upload"],
                ))
    except CaptureError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise CaptureError(f"{p} is truncated or not a capture file ({type(err).__name__})", "capture") from None
    layout = [(str(k), tuple(int(s) for s in shape)) for k, shape in header["layout"]]
    return Capture(header["upload"], layout, dict(header.get("meta", {})), rounds)


class RecordingStrategy(Strategy):
    """Wraps a Flower strategy and records what the server receives (module docstring).

    ``inner``: the strategy that decides (sampling, aggregation); ``path``: the capture file;
    ``upload``: what the clients' records hold; ``meta``: JSON-able facts for the attacker (e.g.
    ``{"model": {"name": "convnet_ig"}, "input_shape": [3, 32, 32], "num_classes": 10,
    "algorithm": {"name": "fedsgd", "lr": 0.1, "batch_size": 1}}``).
    """

    def __init__(self, inner: Strategy, path: str | os.PathLike, *, upload: str = "weights", meta: Mapping[str, Any] | None = None):
        try:
            self.writer = CaptureWriter(path, upload, meta)
        except ValueError as err:
            raise ConfigError(str(err), "upload") from None
        self.inner = inner
        self._sent: dict[int, ArrayRecord] = {}

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **kwargs: Any):
        prepare = getattr(self.inner, "prepare", None)
        if prepare is not None:
            prepare(num_rounds)
        return super().start(grid, initial_arrays, num_rounds, **kwargs)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        self._sent = {server_round: arrays}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        key = getattr(self.inner, "weighted_by_key", "num-examples")
        got = []
        for m in replies:
            if m.has_error():
                continue
            metrics = next(iter(m.content.metric_records.values()), MetricRecord())
            got.append((m.metadata.src_node_id, next(iter(m.content.array_records.values())), dict(metrics)))
        self.writer.add(server_round - 1, self._sent[server_round], got, key)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
