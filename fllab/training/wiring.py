"""Wiring: everything that is decided before round 0, from a resolved :class:`Setup` to a
:class:`Federation` -- load and partition the data, build the model, plan the defenses, wrap the
aggregator, draw the malicious clients and build the attack drivers.  Every failure here is a
config error: nothing has trained yet."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..hooks import has_hook
from ..scenario.build import Setup, malicious_count, model_handle, plan_defenses
from ..seeding import derive_seed, numpy_gen
from ..types import Aggregator, DatasetBundle, ModelHandle, TensorData
from .client import ClientRunner
from .drivers import DRIVERS, DriverContext, PoisoningDriver, Truth


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("cuda requested but torch sees no CUDA device; use cpu or auto", "device")
    return requested


@dataclass
class Federation:
    """A wired federation: the truth (client data, malicious set, test split), the public model
    handle and initial weights, the client fit function, the (wrapped) aggregator, the drivers."""

    setup: Setup
    device: str
    root: int
    bundle: DatasetBundle
    parts: list[Any]  # each client's indices into the training split
    truth: Truth
    model_handle: ModelHandle
    server_model: torch.nn.Module  # the server's copy of the network, holding the initial weights
    fit: ClientRunner
    aggregator: Aggregator
    drivers: list[Any]

    @property
    def client_data(self) -> list[TensorData]:
        return self.truth.client_data

    @property
    def test(self) -> TensorData:
        return self.truth.test

    @property
    def poisoners(self) -> list[PoisoningDriver]:
        return [d for d in self.drivers if isinstance(d, PoisoningDriver)]

    def acting(self, rnd: int, cid: int) -> bool:
        """Whether client ``cid``'s upload of round ``rnd`` is malicious (see :meth:`PoisoningDriver.acting`)."""
        return any(d.acting(rnd, cid) for d in self.poisoners)


def protected_clients(attacks: list[Any]) -> set[int]:
    """Clients that attacks observe as honest victims: server-position membership targets and
    the audited client.  Malicious clients are drawn among the others."""
    out: set[int] = set()
    for attack in attacks:
        p = attack.params
        if attack.family == "membership" and p.position == "server":
            out.update(p.target_clients)
        elif attack.family == "audit":
            out.add(p.client)
    return out


def assign_malicious(attacks: list[Any], num_clients: int, root: int) -> dict[str, list[int]]:
    """Each poisoning attack's malicious clients: consecutive slices, in scenario order, of one
    seeded permutation of the clients (``"malicious"``) without the protected ones."""
    protected = protected_clients(attacks)
    order = [int(c) for c in numpy_gen(root, "malicious").permutation(num_clients) if int(c) not in protected]
    out, taken = {}, 0
    for attack in attacks:
        if attack.family == "poisoning":
            k = malicious_count(attack.params.fraction, num_clients)
            if taken + k > len(order):
                raise ConfigError(
                    f"{k} malicious clients for {attack.registry_name} leave too few among the {len(order)} clients "
                    "that no membership or audit attack targets", "attacks",
                )
            out[attack.registry_name] = order[taken : taken + k]
            taken += k
    return out


def wrap_aggregator(setup: Setup) -> Aggregator:
    """The algorithm bundle's own aggregation (FRL's vote) or the scenario's, wrapped by the
    server-side defenses in order."""
    aggregator = setup.algorithm.aggregate if has_hook(setup.algorithm, "aggregate") else setup.aggregator
    for defense in setup.defenses:
        if has_hook(defense, "wrap_aggregator"):
            aggregator = defense.wrap_aggregator(aggregator)
    return aggregator


def wire(setup: Setup) -> Federation:
    """Wire the federation of ``setup`` (see the module docstring)."""
    sc = setup.scenario
    fed, root = sc.federation, sc.seed
    device = pick_device(sc.device)
    bundle = setup.dataset.load()
    if fed.num_clients > len(bundle.train):
        raise ConfigError(f"{fed.num_clients} clients but the training set has {len(bundle.train)} examples", "federation.num_clients")
    try:
        parts = setup.partition.split(bundle.train.y.numpy(), fed.num_clients, numpy_gen(root, "partition"))
    except ValueError as err:
        raise ConfigError(str(err), "federation.partition") from None
    train = bundle.train.to(device)
    client_data = [train.subset(torch.as_tensor(p, device=device)) for p in parts]
    model = model_handle(setup, bundle.input_shape, bundle.num_classes)
    if has_hook(setup.executor, "check"):  # an executor refuses what it cannot run, before anything runs
        setup.executor.check(setup, model)
    plan_defenses(setup, model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(root, "init"))
        server_model = model.build().to(device)
    aggregator = wrap_aggregator(setup)
    malicious = assign_malicious(setup.attacks, fed.num_clients, root)
    truth = Truth(client_data, frozenset(c for ids in malicious.values() for c in ids), bundle.test.to(device), bundle.num_classes)
    drivers = []
    for i, attack in enumerate(setup.attacks):
        ctx = DriverContext(root, f"attacks.{i}", model, setup.algorithm, sc.evaluation, fed, tuple(setup.defenses))
        if attack.family == "poisoning":
            drivers.append(PoisoningDriver(attack, truth, ctx, malicious[attack.registry_name]))
        else:
            drivers.append(DRIVERS[attack.family](attack, truth, ctx))
    fit = ClientRunner(model, setup.algorithm, setup.defenses)
    return Federation(setup, device, root, bundle, parts, truth, model, server_model, fit, aggregator, drivers)
