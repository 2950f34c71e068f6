"""Shared fixtures: tiny real scenarios that train in about a second."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

TINY = {
    "name": "tiny",
    "seed": 0,
    "threads": 1,
    "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "hidden": [32]}},
    "federation": {"num_clients": 4, "rounds": 2, "partition": {"name": "iid"}},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.1},
    "aggregator": "mean",
}


@pytest.fixture
def tiny() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def write_yaml(tmp_path: Path):
    def _write(data, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return _write


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run faster (and steadier) on one thread."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gradients_at_start(scenario: dict):
    """A prepared Engine for ``scenario``, its initial global weights, and each client's
    full-batch cross-entropy gradient at those weights (flat), for hand-computed FedSGD rounds."""
    import torch

    from fllab.models.flat import load_flat_
    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema
    from fllab.training.engine import Engine

    engine = Engine(resolve(validate_schema(scenario)))
    engine.prepare()
    start = engine.server.global_params.clone()
    model = engine.federation.model_handle.build()
    load_flat_(model, start)
    grads = []
    for data in engine.federation.client_data:
        loss = torch.nn.functional.cross_entropy(model(data.x), data.y)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return engine, start, grads


@pytest.fixture
def register_attack():
    """``register_attack(name, cls)`` registers a test attack (its hooks checked as a plugin's
    are) and removes it again after the test."""
    from fllab.registry import ATTACKS

    names: list[str] = []

    def _register(name: str, cls: type) -> str:
        ATTACKS.register(name)(cls)
        names.append(name)
        return name

    yield _register
    for name in names:
        ATTACKS._items.pop(name, None)
