"""``task.model.lora`` and ``task.model.pretrained``: any registered model, optionally started from
an offline pretrained base (:mod:`.pretrain`) and adapted with LoRA (:mod:`.layers`).

    task:
      dataset: {name: class_subset, base: {name: fashion_mnist}, classes: [5, 6, 7, 8, 9]}
      model:
        name: mlp
        hidden: [256, 128]
        pretrained: {classes: [0, 1, 2, 3, 4], epochs: 2}   # public split, no client holds it
        lora: {rank: 4, alpha: 8, targets: [linear]}

With ``lora`` the base is frozen and the only trainable parameters are the LoRA factors, so the
flat vector every algorithm moves (:func:`fllab.models.flat.flatten_params`) is ``[A_1, B_1, ...]``.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS, Params, format_validation_error
from .layers import inject_lora
from .pretrain import PretrainParams, pretrained_state

PATH = "task.model"


class LoRAParams(Params):
    rank: PositiveInt = Field(4, description="rank r of every adapter")
    alpha: PositiveFloat = Field(8.0, description="scaling numerator: the update is (alpha / r) B A")
    targets: list[str] = Field(
        default_factory=lambda: ["linear", "conv"], min_length=1,
        description="layers to adapt: linear / conv (every layer of the kind) or fnmatch patterns on module names",
    )


class AdaptedModel:
    """A registered model's builder, with the pretrained base loaded and LoRA injected."""

    def __init__(self, base: Any, spec: dict[str, Any], lora: LoRAParams | None, pretrained: PretrainParams | None):
        self.base = base
        self.spec = spec  # the base model's own resolved spec (cache key of the pretrained weights)
        self.lora = lora
        self.pretrained = pretrained
        self.params = base.params
        self.registry_name = getattr(base, "registry_name", spec["name"])

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        net = self.base.build(input_shape, num_classes)
        meta = any(p.is_meta for p in net.parameters())  # a shape-only build (torch.device("meta")) loads nothing
        if self.pretrained is not None and not meta:
            net.load_state_dict(pretrained_state(self.base, self.spec, tuple(input_shape), num_classes, self.pretrained))
        if self.pretrained is not None and self.pretrained.freeze and self.lora is None:
            for p in net.parameters():
                p.requires_grad_(False)
        if self.lora is not None:
            inject_lora(net, self.lora.targets, self.lora.rank, self.lora.alpha, f"{PATH}.lora")
        return net


def _parse(cls: type[Params], raw: Any, path: str) -> Params:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, path, cls)) from None


def build_model(spec: dict[str, Any], path: str = PATH) -> tuple[Any, dict[str, Any]]:
    """The model component for ``task.model`` and its resolved spec.  ``lora`` and ``pretrained``
    are taken out before the registered model validates the rest of the keys."""
    spec = dict(spec)
    raw_lora, raw_pre = spec.pop("lora", None), spec.pop("pretrained", None)
    base = MODELS.build(spec, path)
    resolved = {"name": spec["name"], **base.params.model_dump(mode="json")}
    if raw_lora is None and raw_pre is None:
        return base, resolved
    lora = None if raw_lora is None else _parse(LoRAParams, raw_lora, f"{path}.lora")
    pre = None if raw_pre is None else _parse(PretrainParams, raw_pre, f"{path}.pretrained")
    if pre is not None and pre.freeze and lora is None:
        raise ConfigError("a frozen base without task.model.lora leaves no trainable parameter to train (or privatise "
                          "with dp_sgd); add lora or set freeze: false", f"{path}.pretrained.freeze")
    out = dict(resolved)
    if lora is not None:
        out["lora"] = lora.model_dump(mode="json")
    if pre is not None:
        out["pretrained"] = pre.model_dump(mode="json")
    return AdaptedModel(base, resolved, lora, pre), out


def check_public_split(model: Any, dataset_spec: dict[str, Any]) -> None:
    """Refuse a task whose clients would hold the pretrained base's public classes."""
    pre = getattr(model, "pretrained", None)
    if pre is None:
        return
    public = pre.dataset.get("name")  # the same source, whatever limits either side applies
    if dataset_spec.get("name") == "class_subset":
        same_base = (dataset_spec.get("base") or {"name": "fashion_mnist"}).get("name") == public
        shared = sorted(set(dataset_spec.get("classes") or []) & set(pre.classes)) if same_base else []
    else:
        shared = sorted(pre.classes) if dataset_spec.get("name") == public else []
    if shared:
        raise ConfigError(
            f"the clients would hold the pretraining classes {shared}; use class_subset with classes disjoint from "
            f"task.model.pretrained.classes {list(pre.classes)}", "task.dataset",
        )
