"""HyperFL's network (Guo et al., AAAI 2025): a shared hypernetwork generates the feature extractor
of each client's model from that client's private embedding; the classifier head stays private.

Any registered model whose last parameterised layer is an ``nn.Linear`` can be the *target*: that
layer is the head, every other parameter tensor is generated.  For the reference CNN
(:class:`FedPACCNN`, ``conv1 -> conv2 -> fc1`` + head ``fc2``) this is exactly the reference code's
``Hypernetwork_CNN_FMNIST``: ``Linear(embed, hidden) -> ReLU``, then one linear map from the hidden
vector to every generated tensor.  The reference writes one ``nn.Linear(hidden, numel)`` per
tensor; here they are stacked into one ``nn.Linear(hidden, sum of numels)`` (the same function
class and, every head having fan-in ``hidden``, the same initial distribution) so that generation
is one matrix-vector product.

The module the engine sees (:class:`HyperFLNet`) has the hypernetwork as its only trainable
parameters, so the flat global vector -- what is broadcast, uploaded and averaged -- is the
hypernetwork alone.  The target network's own parameters are frozen placeholders: its extractor
entries are always overridden by generated tensors, its head entries (and the ``embedding``
buffer) hold whichever client state was last loaded with :meth:`HyperFLNet.load_client_`; a fresh
module holds :data:`REFERENCE_STATE_SEED`'s draw of the initial-state distribution, so that what a
fresh module computes never depends on the global RNG (a server that inverts an upload through the
public model without knowing the client's state uses this one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from pydantic import Field, PositiveInt
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, grad

from ..errors import ConfigError
from ..models.flat import param_shapes, unflatten
from ..models.layers import Activation, activation, conv_out, image_shape
from ..registry import MODELS, Params


@MODELS.register("fedpac_cnn")
class FedPACCNN:
    """The small CNN of FedPAC (Xu, Tong & Huang 2023) that HyperFL's experiments use on
    Fashion-MNIST/EMNIST: conv 5x5 (``width``, no padding) -> activation -> 2x2 max pool ->
    conv 5x5 (``2 * width``, padding 1) -> activation -> 2x2 max pool -> linear (``hidden``) ->
    activation -> linear to the logits.  Defaults (16/32 channels, 128 hidden, leaky ReLU) give
    the reference ``CNN_FMNIST``: 800 features on 1x28x28 inputs, 117,066 parameters."""

    summary = "FedPAC/HyperFL CNN: conv5x5(16), conv5x5(32, pad 1), FC 128, leaky ReLU"
    references = (
        "Xu, Tong & Huang 2023, Personalized Federated Learning with Feature Alignment and Classifier "
        "Collaboration (ICLR)",
        "Guo, Zeng, Chen, Zhang, Ren, Zhou & Qu 2025, A New Federated Learning Framework Against "
        "Gradient Inversion Attacks (AAAI); reference code github.com/Pengxin-Guo/HyperFL",
    )

    class Params(Params):
        width: PositiveInt = Field(16, description="channels of the first convolution (the second has twice as many)")
        hidden: PositiveInt = Field(128, description="units of the fully connected feature layer")
        activation: Activation = "leaky_relu"

    def __init__(self, params: "FedPACCNN.Params"):
        self.params = params

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        p = self.params
        c, h, w = image_shape("fedpac_cnn", input_shape, min_side=12)
        for kernel, pad in ((5, 0), (5, 1)):
            h, w = conv_out(h, kernel, 1, pad) // 2, conv_out(w, kernel, 1, pad) // 2
        return nn.Sequential(
            nn.Conv2d(c, p.width, kernel_size=5),
            activation(p.activation),
            nn.MaxPool2d(2),
            nn.Conv2d(p.width, 2 * p.width, kernel_size=5, padding=1),
            activation(p.activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * p.width * h * w, p.hidden),
            activation(p.activation),
            nn.Linear(p.hidden, num_classes),
        )


REFERENCE_STATE_SEED = 0  # the public stand-in client state a fresh HyperFLNet holds

# Names (in HyperFLNet) of the hypernetwork's first layer, the one the client embedding enters, and of
# its output bias, whose gradient is the gradient with respect to the generated extractor.
EMBEDDING_LAYER = ("hypernetwork.mlp.0.weight", "hypernetwork.mlp.0.bias")
OUTPUT_BIAS = "hypernetwork.out.bias"


@dataclass(frozen=True)
class HyperFLState:
    """What a HyperFL client keeps private between rounds: its embedding and its classifier head
    (parameter name in the target network -> tensor)."""

    embedding: torch.Tensor
    head: Mapping[str, torch.Tensor]


def split_target(target: nn.Module) -> tuple[tuple[str, ...], list[tuple[str, torch.Size]]]:
    """(head parameter names, [(name, shape) of every generated parameter]) of a target network.

    The head is the last module that owns parameters and it must be an ``nn.Linear``; a network
    with buffers (batch-norm statistics) is refused, since the hypernetwork cannot generate them.
    """
    owners = [(name, m) for name, m in target.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners or not isinstance(owners[-1][1], nn.Linear):
        raise ConfigError("hyperfl needs a model whose last layer is a linear classifier", "task.model")
    if any(True for _ in target.buffers()):
        raise ConfigError("hyperfl cannot generate buffers (batch-norm statistics); use a model without batch norm", "task.model")
    prefix = f"{owners[-1][0]}." if owners[-1][0] else ""
    head = tuple(f"{prefix}{n}" for n, _ in owners[-1][1].named_parameters(recurse=False))
    generated = [(n, p.shape) for n, p in target.named_parameters() if n not in head]
    if not generated:
        raise ConfigError("hyperfl needs a model with at least one layer before its linear classifier", "task.model")
    return head, generated


class HyperNetwork(nn.Module):
    """``embedding -> ReLU(Linear(embed_dim, hidden_dim)) -> Linear(hidden_dim, total)``, the output
    cut into the generated tensors (name -> tensor of its shape)."""

    def __init__(self, targets: list[tuple[str, torch.Size]], embed_dim: int, hidden_dim: int):
        super().__init__()
        self.names = tuple(n for n, _ in targets)
        self.shapes = tuple(torch.Size(s) for _, s in targets)
        self.sizes = tuple(s.numel() for s in self.shapes)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU())
        self.out = nn.Linear(hidden_dim, sum(self.sizes))

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.out(self.mlp(embedding))
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}


class HyperFLNet(nn.Module):
    """A target network whose feature extractor is generated by :attr:`hypernetwork` (the only
    trainable parameters) from a client embedding; the head comes from the client's state."""

    def __init__(self, target: nn.Module, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.head_names, generated = split_target(target)
        for p in target.parameters():
            p.requires_grad_(False)
        self.target = target
        self.hypernetwork = HyperNetwork(generated, embed_dim, hidden_dim)
        self.register_buffer("embedding", torch.zeros(embed_dim))
        self.embed_dim = embed_dim
        self.load_client_(self.initial_state(torch.Generator().manual_seed(REFERENCE_STATE_SEED)))

    def logits(self, x: torch.Tensor, extractor: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The target network on ``x`` with the given extractor and head tensors."""
        return functional_call(self.target, {**extractor, **head}, (x,))

    def personalised(self, x: torch.Tensor, state: HyperFLState) -> torch.Tensor:
        """A client's model on ``x``: its embedding through the current hypernetwork, its head."""
        return self.logits(x, self.hypernetwork(state.embedding), state.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model of the client state last loaded with :meth:`load_client_`."""
        head = {n: p for n, p in self.target.named_parameters() if n in self.head_names}
        return self.logits(x, self.hypernetwork(self.embedding), head)

    def state_tensors(self, embedding: torch.Tensor, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A client state as this module's own tensor names (``embedding``, ``target.<head>``), for
        :func:`torch.func.functional_call` on :meth:`forward` (e.g. an attacker's guessed state)."""
        return {"embedding": embedding, **{f"target.{n}": head[n] for n in self.head_names}}

    @torch.no_grad()
    def load_client_(self, state: HyperFLState) -> "HyperFLNet":
        """Copy a client's embedding and head into this module (for ``forward``)."""
        own = dict(self.named_buffers()) | dict(self.named_parameters())
        for name, value in self.state_tensors(state.embedding, state.head).items():
            own[name].copy_(value)
        return self

    def gradient_cosine_distance(
        self, params: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], target_norm: torch.Tensor,
        x: torch.Tensor, y: torch.Tensor,
    ) -> torch.Tensor:
        """Inverting Gradients' ``1 - cos`` between the hypernetwork gradient of the batch ``x``
        (labels ``y``) at hypernetwork weights ``params`` (this module's trainable parameter name
        -> tensor), through this module's loaded client state, and an observed hypernetwork
        gradient ``target`` (same names) of L2 norm ``target_norm``; the same number as the cosine over the gradient itself
        (:meth:`fllab.models.victim.VictimModel.cosine_distance`), without forming that gradient.

        With ``z = W1 v + b1``, ``a = ReLU(z)``, ``theta = W2 a + b2`` and ``delta = dL/dtheta`` the
        gradient is ``dL/dW2 = delta a^T``, ``dL/db2 = delta``, ``dL/dW1 = u v^T``, ``dL/db1 = u`` with
        ``u = (W2^T delta) * [z > 0]``, so its inner product with the target ``T`` is ``delta . (T_W2 a
        + T_b2) + u . (T_W1 v + T_b1)`` and its squared norm ``|delta|^2 (|a|^2 + 1) + |u|^2 (|v|^2 +
        1)``.  Only the extractor-sized ``delta`` is differentiated; the generic path materialises
        ``dL/dW2`` (extractor size x hidden size: 1.85M numbers for the scenario's hidden 16) and
        differentiates through it again at every step of the search.
        """
        hyper = self.hypernetwork
        w_name, b_name = EMBEDDING_LAYER
        out_w, out_b = OUTPUT_BIAS.rsplit(".", 1)[0] + ".weight", OUTPUT_BIAS
        p, t, v = params, target, self.embedding
        head = {n: self.target.get_parameter(n) for n in self.head_names}
        z = p[w_name] @ v + p[b_name]
        a = F.relu(z)
        theta = p[out_w] @ a + p[out_b]
        extractor = {n: c.view(s) for n, c, s in zip(hyper.names, theta.split(hyper.sizes), hyper.shapes)}
        g = grad(lambda e: F.cross_entropy(self.logits(x, e, head), y))(extractor)
        delta = torch.cat([g[n].reshape(-1) for n in hyper.names])
        u = (p[out_w].T @ delta) * (z > 0).to(delta.dtype)
        dot = delta @ (t[out_w] @ a + t[out_b]) + u @ (t[w_name] @ v + t[b_name])
        g_norm = (delta.pow(2).sum() * (a.pow(2).sum() + 1) + u.pow(2).sum() * (v.pow(2).sum() + 1)).sqrt()
        return 1.0 - dot / (g_norm * target_norm).clamp_min(torch.finfo(dot.dtype).tiny)

    def initial_state(self, gen: torch.Generator) -> HyperFLState:
        """A fresh client state drawn from ``gen`` the way the reference initialises it: embedding
        ~ N(0, 1) (``nn.Embedding``), head weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        (``nn.Linear``)."""
        device = self.embedding.device
        embedding = torch.randn(self.embed_dim, generator=gen)
        params = dict(self.target.named_parameters())
        fan_in = params[self.head_names[0]].shape[1]
        bound = 1.0 / math.sqrt(fan_in)
        head = {n: (torch.rand(params[n].shape, generator=gen) * 2 - 1) * bound for n in self.head_names}
        return HyperFLState(embedding.to(device), {n: t.to(device) for n, t in head.items()})


def extractor_gradient(model: HyperFLNet, hyper_gradient: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The gradient with respect to the generated extractor tensors (in generation order) inside a
    gradient with respect to the hypernetwork (name in ``model`` -> tensor): the output is
    ``theta = W2 a + b2``, so ``dL/db2 = dL/dtheta`` -- whatever the embedding, a hypernetwork
    gradient carries the client's extractor gradient verbatim."""
    hyper = model.hypernetwork
    return [t.view(shape) for t, shape in zip(hyper_gradient[OUTPUT_BIAS].split(hyper.sizes), hyper.shapes)]


def generate_extractor(model: HyperFLNet, hyper_params: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature-extractor weights (target parameter name -> tensor) that the hypernetwork with
    flat parameters ``hyper_params`` (the engine's global vector, or any upload added to it)
    generates from ``embedding``.  Differentiable in both arguments, e.g. for an adaptive attack
    that also searches the client's unknown embedding."""
    params = unflatten(hyper_params, param_shapes(model.hypernetwork))
    return functional_call(model.hypernetwork, params, (embedding,))


@dataclass(frozen=True)
class HyperFLBuilder:
    """Picklable model factory: the scenario's target network wrapped in :class:`HyperFLNet`."""

    build: Callable[[], nn.Module]
    embed_dim: int
    hidden_dim: int

    def __call__(self) -> HyperFLNet:
        return HyperFLNet(self.build(), self.embed_dim, self.hidden_dim)
