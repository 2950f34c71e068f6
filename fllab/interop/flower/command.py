"""``fllab attack CAPTURE --attack NAME``: a server-position attack on captured Flower traffic,
from the command line (the CLI's ``attack`` command calls :func:`attack_command`).

``--data FILE.npz`` (read with ``allow_pickle=False``) holds the attacker's inputs and any ground
truth, by key: ``client<ID>.x`` / ``client<ID>.y`` the batch node ``ID`` used (inversion truth);
``candidates.x`` / ``candidates.y`` the records to score and ``is_member`` their truth
(membership); ``malicious`` the malicious node ids (detection truth).  The outcome goes to
``--out``: ``attack.json`` (attack, family, metrics, table) and the artefacts (reconstruction
PNG/NPZ, membership scores), written only after the attack succeeded.

Exit codes: 0 done; 2 usage or input error, one line on stderr: flwr missing, a capture that is
truncated, foreign or of another version, an unknown attack or parameter, missing inputs;
1 a runtime failure.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from ...errors import ConfigError
from ...types import TensorData
from . import require_flwr

require_flwr()  # one line and exit code 2 without flwr, before the modules that import it

from .attack import attack_capture  # noqa: E402

CANDIDATES = "candidates"


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["iterations=50", "labels=known"]`` -> ``{"iterations": 50, "labels": "known"}`` (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}", "--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_inputs(path: Path | None) -> dict[str, Any]:
    """The ``--data`` file as keyword arguments of :func:`attack_capture`."""
    if path is None:
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(f"cannot read {path} as an .npz of arrays ({type(err).__name__})", "--data") from None
    kwargs: dict[str, Any] = {}
    truth = {}
    for key in arrays:
        if key.startswith("client") and key.endswith(".x"):
            cid = key[len("client") : -2]
            if f"client{cid}.y" not in arrays or not cid.isdigit():
                raise ConfigError(f"{key} needs a matching client{cid}.y (ID a node id)", "--data")
            truth[int(cid)] = TensorData(torch.from_numpy(arrays[key]).float(), torch.from_numpy(arrays[f"client{cid}.y"]).long())
    if truth:
        kwargs["truth"] = truth
    if f"{CANDIDATES}.x" in arrays:
        kwargs["candidates"] = TensorData(torch.from_numpy(arrays[f"{CANDIDATES}.x"]).float(), torch.from_numpy(arrays[f"{CANDIDATES}.y"]).long())
    if "is_member" in arrays:
        kwargs["is_member"] = torch.from_numpy(arrays["is_member"]).bool()
    if "malicious" in arrays:
        kwargs["malicious"] = [int(m) for m in arrays["malicious"].tolist()]
    return kwargs


def attack_command(capture: Path, attack: str, params: Sequence[str], data: Path | None, out: Path, seed: int = 0) -> dict[str, Any]:
    """Run the attack, write ``out``, return the ``attack.json`` content."""
    inputs = read_inputs(data)
    family_inputs = {"inversion": ("truth",), "membership": ("candidates", "is_member"), "detection": ("malicious",)}
    spec = {"name": attack, **parse_params(params)}
    outcome = attack_capture(capture, spec, seed=seed, **_accepted(spec, inputs, family_inputs))
    summary = {"attack": attack, "capture": str(capture), "family": outcome.family, "metrics": outcome.metrics, "table": outcome.table}
    out.mkdir(parents=True, exist_ok=True)
    for rel, blob in outcome.files.items():
        (out / rel).write_bytes(blob)
    (out / "attack.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _accepted(spec: dict[str, Any], inputs: dict[str, Any], family_inputs: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Only the inputs the attack's family takes (a --data file may hold more)."""
    from ...registry import AGGREGATORS, ATTACKS, load_plugins

    load_plugins()
    name = spec["name"]
    if name in AGGREGATORS:
        family = "detection"
    elif name in ATTACKS:
        family = ATTACKS[name].family
    else:
        ATTACKS.get_class(name, "--attack")  # did-you-mean error
        family = ""
    return {k: v for k, v in inputs.items() if k in family_inputs.get(family, ())}
