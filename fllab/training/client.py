"""The client side of a round: build (once per worker) the model, load the global weights, run the
honest algorithm, then let client-side defenses transform what is sent (Flower-"mods" style)."""
from __future__ import annotations

from functools import reduce
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..hooks import has_hook
from ..models.flat import load_flat_
from ..seeding import derive_seed
from ..types import ClientResult, ClientTask, FitFn, ModelHandle
from .local import TrainReport, sgd_train


def transform_mod(defense: Any, fit: FitFn) -> FitFn:
    """Wrap ``fit`` so that ``defense.transform(update, gen)`` rewrites what the client sends;
    ``gen`` is seeded from the task's seed and the defense's name (reproducible per client/round)."""
    name = defense.registry_name

    def fit_with_defense(task: ClientTask) -> ClientResult:
        result = fit(task)
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(task.seed, "defense", name))
        return result.with_update(defense.transform(result.update, gen))

    return fit_with_defense


class ClientRunner:
    """``fit(task) -> ClientResult`` for the honest protocol.  Picklable: it holds only the model
    factory, the algorithm and the defenses; the model is built lazily in whichever worker runs it."""

    def __init__(self, model: ModelHandle, algorithm: Any, defenses: Sequence[Any] = ()):
        self.model_handle = model
        self.algorithm = algorithm
        self.defenses = tuple(defenses)
        self._model: nn.Module | None = None
        self._device: str | None = None
        trainer = reduce(lambda t, d: d.wrap_trainer(t), [d for d in self.defenses if has_hook(d, "wrap_trainer")], sgd_train)
        self._trainer: Callable[..., TrainReport] = trainer
        fit: FitFn = self._honest_fit
        for d in self.defenses:
            if has_hook(d, "wrap_fit"):
                fit = d.wrap_fit(fit)
            elif has_hook(d, "transform"):
                fit = transform_mod(d, fit)
        self._fit = fit

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def model_on(self, device: str) -> nn.Module:
        if self._model is None or self._device != device:
            self._model = self.model_handle.build().to(device)
            self._device = device
        return self._model

    def _honest_fit(self, task: ClientTask) -> ClientResult:
        model = load_flat_(self.model_on(task.device), task.global_params)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(task.seed)
        return self.algorithm.client_update(model, task, gen, self._trainer)

    def __call__(self, task: ClientTask) -> ClientResult:
        return self._fit(task)
