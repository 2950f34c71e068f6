"""LoRA adapters: agreement with peft, the flat layout, the aggregation-error kernel."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fllab.errors import ConfigError
from fllab.lora.layers import LoRALayout, aggregation_error, inject_lora
from fllab.models.flat import flatten_params


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 5))


def test_forward_and_gradients_match_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    net = small_net()
    ours = inject_lora(copy.deepcopy(net), ["0", "3", "5"], rank=2, alpha=6.0)
    theirs = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(r=2, lora_alpha=6, target_modules=["0", "3", "5"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # same non-trivial factors on both sides (B is zero at init)
        for name in ("0", "3", "5"):
            mine = ours.get_submodule(name)
            peft_layer = theirs.base_model.model.get_submodule(name)
            for part in ("lora_A", "lora_B"):
                w = torch.randn(getattr(mine, part).weight.shape, generator=gen)
                getattr(mine, part).weight.copy_(w)
                getattr(peft_layer, part)["default"].weight.copy_(w)
    x = torch.rand(7, 1, 8, 8, generator=gen)
    y = torch.randint(0, 5, (7,), generator=gen)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-6)
    nn.functional.cross_entropy(out_ours, y).backward()
    nn.functional.cross_entropy(out_theirs, y).backward()
    mine = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    peft_grads = {n.replace("base_model.model.", "").replace(".default", ""): p.grad
                  for n, p in theirs.named_parameters() if p.requires_grad}
    assert set(mine) == set(peft_grads)
    for n in mine:
        torch.testing.assert_close(mine[n], peft_grads[n], rtol=1e-5, atol=1e-6)


def test_base_frozen_and_starts_equal_to_base():
    torch.manual_seed(0)
    net = small_net()
    x = torch.rand(3, 1, 8, 8)
    ref = net(x)
    adapted = inject_lora(copy.deepcopy(net), ["linear", "conv"], rank=2, alpha=4.0)
    torch.testing.assert_close(adapted(x), ref)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_targets_matching_nothing_and_rank_too_large_are_config_errors():
    with pytest.raises(ConfigError, match="targets.*match no Linear"):
        inject_lora(small_net(), ["fc9"], rank=2, alpha=1.0)
    with pytest.raises(ConfigError, match=r"lora.rank: rank 7 exceeds layer 5's width 5"):
        inject_lora(small_net(), ["5"], rank=7, alpha=1.0)


def test_layout_views_and_aggregation_error():
    torch.manual_seed(0)
    net = inject_lora(small_net(), ["linear", "conv"], rank=2, alpha=2.0)
    layout = LoRALayout(net)
    flat = flatten_params(net)
    assert layout.size == flat.numel()
    conv = net.get_submodule("0")
    s0 = layout.slots[0]
    torch.testing.assert_close(layout.A(flat, s0), conv.lora_A.weight.reshape(2, -1))
    torch.testing.assert_close(layout.B(flat, s0), conv.lora_B.weight.reshape(4, 2))
    assert int(layout.mask("A").sum() + layout.mask("B").sum()) == layout.size
    # shared A: separate averaging is exact; differing A and B: it is not
    gen = torch.Generator().manual_seed(3)
    local = flat.repeat(4, 1)
    local[:, layout.mask("B")] = torch.randn(4, int(layout.mask("B").sum()), generator=gen)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert aggregation_error(layout, local, w) < 1e-12
    local[:, layout.mask("A")] += torch.randn(4, int(layout.mask("A").sum()), generator=gen)
    err = aggregation_error(layout, local, w)
    # hand computation for the last layer alone is a lower bound of the total
    s = layout.slots[-1]
    a, b = layout.A(local.double(), s), layout.B(local.double(), s)
    wn = (w / w.sum()).double()
    exact = sum(wn[k] * b[k] @ a[k] for k in range(4))
    sep = sum(wn[k] * b[k] for k in range(4)) @ sum(wn[k] * a[k] for k in range(4))
    assert err >= float((exact - sep).norm()) > 1e-3
