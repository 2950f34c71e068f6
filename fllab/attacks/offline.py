"""Attacks on what a finished run left behind: ``fllab attack RUN_DIR --attack NAME``.

A run directory holds the run's resolved config (``config.resolved.yaml``), its summary and its
final global model (``model.pt``: the server model's ``state_dict``, read with
``torch.load(weights_only=True)``).  That is exactly an outsider's position after training: query
access to the released model, the public architecture, and same-distribution population data.
:func:`attack_run_dir` rebuilds the run's federation from the config and the root seed (data,
partition, malicious clients, planted canaries: :func:`fllab.training.wiring.wire`, no training),
loads the final weights and runs one outsider membership attack (``loss``, ``population``,
``shadow``, ``lira``, ``rmia`` or a plugin with a ``score`` hook) through the same driver as a run
does (:class:`fllab.training.drivers.MembershipDriver`).  The candidates and the attack's seed
derive from the root seed as in the run, so an attack the scenario already ran scores the same
records to the same figures, and attacks added afterwards compare with it.

Attacks that need more than the final model are refused with one line: inversion and
server-position membership (a client's uploads), poisoning (a client that trained), the canary
audit (canaries planted before training), LoRA membership (the uploads and the clients' models).
:func:`attack_path` picks by what the path is: a directory is a run, a file a Flower capture
(:func:`fllab.interop.flower.command.attack_command`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..rundir import MODEL_FILE

#: what ``attack_run_dir`` writes into ``out`` beside the attack's artefacts
ATTACK_FILE = "attack.json"

#: why a family cannot attack a finished run (what it needs that a run directory does not hold)
NEEDS_MORE = {
    "inversion": "a client's upload, which a run directory does not keep (attack a Flower capture, or add the attack to the scenario)",
    "poisoning": "malicious clients taking part in training (add it to the scenario)",
    "audit": "canaries planted before training (add it to the scenario)",
    "lora_membership": "the clients' uploads and local models (add it to the scenario)",
}
SERVER_POSITION = "the clients' uploads, which a run directory does not keep (attack a Flower capture, or add the attack to the scenario)"


def _run_files(run_dir: Path) -> None:
    """Refuse a path that is not a finished run directory with its final model, naming what is
    missing."""
    from ..rundir import CELLS_DIR, CONFIG, SUMMARY, SWEEP_FILE

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; give a run directory (fllab run --out DIR)", "RUN_DIR")
    if (run_dir / SWEEP_FILE).is_file():
        raise ConfigError(f"{run_dir} is a sweep directory; attack one of its cells, e.g. {run_dir / CELLS_DIR}/<cell>", "RUN_DIR")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG})", "RUN_DIR")
    if not (run_dir / SUMMARY).is_file():
        raise ConfigError(f"{run_dir} is not a finished run (no {SUMMARY}); finish it first, e.g. fllab run --resume", "RUN_DIR")
    if not (run_dir / MODEL_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {MODEL_FILE} (runs of older fllab versions did not save the final model); re-run it", "RUN_DIR")


def _attack(name: str, params: Mapping[str, Any]) -> Any:
    """The attack built from ``--attack`` and ``--set``, refused unless it can work from the
    final model alone."""
    from ..registry import ATTACKS, load_plugins

    load_plugins()
    built = ATTACKS.build({"name": name, **params}, "--attack")
    why = NEEDS_MORE.get(built.family)
    if built.family == "membership" and built.params.position == "server":
        why = SERVER_POSITION
    if why is None and built.family != "membership":
        why = f"a driver for the {built.family} family"
    if why is not None:
        position = f"{built.params.position}-position " if built.family == "membership" else ""
        raise ConfigError(f"{name} is a {position}{built.family} attack: it needs {why}", "--attack")
    return built


def _load_weights(model: Any, run_dir: Path) -> None:
    """Load the run's final weights (:func:`fllab.rundir.load_model`: weights only, SHA-256
    checked) into ``model``; one line when they do not fit it."""
    from ..rundir import load_model

    try:
        model.load_state_dict(load_model(run_dir))
    except RuntimeError as err:
        raise ConfigError(f"{run_dir / MODEL_FILE} does not fit the run's model: {' '.join(str(err).split())}", "RUN_DIR") from None


def attack_run_dir(run_dir: str | Path, attack: str, params: Mapping[str, Any] | None = None, out: str | Path | None = None,
                   *, overwrite: bool = False) -> dict[str, Any]:
    """Run the outsider attack ``attack`` (with ``params``) on the finished run in ``run_dir``
    (module docstring) and return ``{"attack", "run_dir", "family", "params", "metrics",
    "table"}``.  With ``out``, also write ``attack.json`` (that dict) and the artefacts (per-record
    scores) there, atomically (``out`` exists only when whole; an existing one is replaced only
    with ``overwrite`` and only if fllab wrote it).  Everything that cannot work is a one-line
    :class:`ConfigError` before any computation."""
    import yaml

    from ..io import atomic_write_bytes, atomic_write_json
    from ..models.flat import flatten_params
    from ..rundir import CONFIG, check_out, read_summary, writing_run
    from ..runner import torch_threads
    from ..scenario.build import resolve
    from ..scenario.loader import validate_schema
    from ..training.drivers import DriverContext, FinalState, MembershipDriver
    from ..training.wiring import wire

    run_dir = Path(run_dir)
    _run_files(run_dir)
    built = _attack(attack, dict(params or {}))
    if out is not None:
        check_out(Path(out), overwrite=overwrite)
    try:
        config = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {run_dir / CONFIG} ({type(err).__name__})", "RUN_DIR") from None
    try:
        setup = resolve(validate_schema(config))
    except ConfigError as err:
        raise ConfigError(f"{run_dir / CONFIG} no longer resolves: {err}", "RUN_DIR") from None
    summary = read_summary(run_dir) or {}
    privacy = {k: float(v) for k, v in summary.get("metrics", {}).items() if k.startswith("privacy.") and isinstance(v, (int, float))}
    sc = setup.scenario
    with torch_threads(sc.threads):
        fed = wire(setup)  # data, partition, malicious clients, planted canaries: as the run had them
        _load_weights(fed.server_model, run_dir)
        ctx = DriverContext(fed.root, "--attack", fed.model_handle, setup.algorithm, sc.evaluation, sc.federation, tuple(setup.defenses))
        driver = MembershipDriver(built, fed.truth, ctx)
        outcome = driver.finish(FinalState(flatten_params(fed.server_model), fed.server_model, privacy))
    result = {"attack": built.registry_name, "run_dir": str(run_dir), "family": outcome.family,
              "params": built.params.model_dump(mode="json"), "metrics": outcome.metrics, "table": outcome.table}
    if out is not None:
        with writing_run(Path(out), overwrite=overwrite) as partial:
            for rel, blob in outcome.files.items():
                atomic_write_bytes(partial / rel, blob)
            atomic_write_json(partial / ATTACK_FILE, json.loads(json.dumps(result, default=float)))
    return result


def attack_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set`` pairs of attack parameters as a mapping: ``["num_models=8", "attack.name=rmia"]``
    -> ``{"num_models": 8, "attack": {"name": "rmia"}}`` (values read as YAML, as in scenarios)."""
    from ..scenario.loader import parse_override, set_path

    out: dict[str, Any] = {}
    for text in pairs:
        set_path(out, *parse_override(text))
    return out


def attack_path(path: str | Path, attack: str, params: Sequence[str] = (), data: str | Path | None = None,
                out: str | Path | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """``fllab attack PATH``: a directory is a finished run (:func:`attack_run_dir`), a file a
    capture of Flower traffic (:func:`fllab.interop.flower.command.attack_command`).  ``params``
    are ``KEY=VALUE`` strings (YAML values).  Returns what was written to ``attack.json``."""
    path = Path(path)
    if path.is_dir():
        if data is not None:
            raise ConfigError("--data is for captures; a run directory rebuilds its data from its config", "--data")
        return attack_run_dir(path, attack, attack_params(params), out, overwrite=overwrite)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a run directory or a capture file", "RUN_DIR|CAPTURE")
    if out is None:
        raise ConfigError("give --out for the attack's results", "--out")
    from ..interop.flower.command import attack_command

    return attack_command(path, attack, params, None if data is None else Path(data), Path(out))
