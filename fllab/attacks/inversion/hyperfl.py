"""An adaptive gradient inversion attack on HyperFL (Guo et al., AAAI 2025).

A HyperFL client generates its feature extractor ``theta = h(v; phi)`` from a private embedding
``v`` with the shared hypernetwork ``h(.; phi) = W2 ReLU(W1 v + b1) + b2``, classifies with a
private head, and uploads only the change of ``phi`` over its local steps
(:mod:`fllab.algorithms.hyperfl`).  The paper argues that an attacker who sees only hypernetwork
gradients cannot invert them, since ``v`` and the head are unknown.

This attack knows what the server knows: the hypernetwork ``phi`` it sent, the public
architecture (hypernetwork and target network) and local-training recipe.  It reads the upload
as an averaged gradient (:func:`~.common.averaged_gradient`) and uses the hypernetwork's
structure three times:

1. **The extractor gradient is in the upload.**  ``theta = W2 a + b2``, so ``dL/db2 = dL/dtheta``:
   the output bias's gradient is the client's feature-extractor gradient, verbatim
   (:func:`~fllab.algorithms.hyperfl_net.extractor_gradient`).  Matching the whole hypernetwork
   gradient instead is dominated by the first layer's ``dL/dW1 = u v^T``, which depends on the
   images only through the hidden-size vector ``u``.
2. **The embedding is in the upload.**  ``v`` is the input of the first linear layer, whose
   gradients are ``dL/dW1 = u v^T`` and ``dL/db1 = u``, so ``v = (dL/dW1)^T (dL/db1) / |dL/db1|^2``
   -- the input-recovery identity of a fully connected layer with a bias (Phong, Aono, Hayashi,
   Wang & Moriai 2018; Geiping et al. 2020, Prop. 1): exact for one local step, a weighted mean of
   the embeddings along the way for more (:func:`recover_embedding`).  With it the attacker knows
   the client's generated extractor ``h(v; phi)``.
3. **Joint search.**  Inverting Gradients' objective at the client's own network, ``1 - cos``
   between the candidate's extractor gradient and the observed one plus a TV prior, minimised
   over the images (Inverting Gradients' optimiser: signed Adam, boxed, step decay) together with
   the embedding (from step 2, or a draw of the public initial-state distribution) and the head
   (a draw of the public initial-head distribution, plain Adam).

Labels must be known: the head, whose gradient labels are read from, is never uploaded.

``embedding: prior`` drops step 2 and ``learn_state: false`` keeps the state at its start, for
measuring what each step adds; Inverting Gradients itself, run on the upload through the public
model (``inverting_gradients``), is the attack that ignores the structure.

K targets (and R restarts each) are one ``vmap``-ed computation.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat
from torch import Tensor
from torch.func import grad, vmap

from ...algorithms.hyperfl_net import EMBEDDING_LAYER, HyperFLNet, HyperFLState, extractor_gradient, generate_extractor
from ...errors import CapabilityError
from ...models.flat import unflatten
from ...registry import ATTACKS
from ...seeding import torch_gen
from ...types import UpdateObservation
from ..base import AdamInversionParams
from .common import AdamInversion, InversionResult, Problem, cosine_distance, labels_for, total_variation


def recover_embedding(problem: Problem) -> Tensor:
    """The client embedding (K, E) read off the first hypernetwork layer's observed gradients
    ``(dL/dW1)^T (dL/db1) / |dL/db1|^2`` (zero where that layer's gradient vanishes)."""
    weight_name, bias_name = EMBEDDING_LAYER

    def one(gradient: Tensor) -> Tensor:
        g = problem.victim.named(gradient)
        gw, gb = g[weight_name], g[bias_name]
        return gw.T @ gb / gb.pow(2).sum().clamp_min(torch.finfo(gb.dtype).tiny)

    return vmap(one)(problem.gradients)


def prior_states(net: HyperFLNet, seed: int, count: int) -> list[HyperFLState]:
    """``count`` draws of HyperFL's initial client state (embedding and head), from ``seed`` alone."""
    gen = torch_gen(seed, "inversion", "hyperfl", "state")
    return [net.initial_state(gen) for _ in range(count)]


@ATTACKS.register("hyperfl_inversion")
class HyperFLInversion(AdamInversion):
    """Adaptive inversion of a HyperFL hypernetwork upload: the client's extractor gradient and
    private embedding read off the upload, then the images searched with the embedding and the
    private head."""

    summary = (
        "adaptive attack on HyperFL: extractor gradient and embedding read off the hypernetwork update, then "
        "images, embedding and head searched jointly (cosine + TV)"
    )
    references = (
        "Guo, Zeng, Chen, Zhang, Ren, Zhou & Qu 2025, A New Federated Learning Framework Against Gradient "
        "Inversion Attacks (AAAI)",
        "Geiping, Bauermeister, Droege & Moeller 2020, Inverting Gradients - How easy is it to break privacy "
        "in federated learning? (NeurIPS)",
        "Phong, Aono, Hayashi, Wang & Moriai 2018, Privacy-Preserving Deep Learning via Additively "
        "Homomorphic Encryption (IEEE TIFS)",
    )
    threat_model = (
        "honest-but-curious server against HyperFL: one client's hypernetwork update, the hypernetwork it "
        "sent, the public hypernetwork and target architectures and local-training hyper-parameters, the "
        "client's labels; not the client's private embedding or classifier head (recovered or searched)"
    )
    family = "inversion"
    needs = frozenset({"hypernetwork"})

    class Params(AdamInversionParams):
        labels: Literal["known"] = Field("known", description="labels known to the attacker (a hypernetwork "
                                         "upload does not reveal them)")
        embedding: Literal["recovered", "prior"] = Field(
            "recovered", description="starting embedding: read off the first hypernetwork layer, or a draw of "
            "the public initial-state distribution"
        )
        learn_state: bool = Field(True, description="search the embedding and the head jointly with the images")
        embedding_lr: PositiveFloat = Field(0.01, description="Adam step size of the embedding")
        head_lr: PositiveFloat = Field(0.01, description="Adam step size of the head")

    def invert(
        self, problem: Problem, labels: list[Tensor | None], observations: Sequence[UpdateObservation], num_images: int,
        seeds: Sequence[int],
    ) -> list[InversionResult]:
        p = self.params
        net = problem.victim.module
        if not isinstance(net, HyperFLNet):
            raise CapabilityError(f"{self.registry_name} attacks HyperFL uploads; the model is a {type(net).__name__}")
        y = labels_for(problem, labels, num_images)
        r, ref = p.restarts, problem.gradients
        target_params = dict(net.target.named_parameters())
        head_shapes = [(n, target_params[n].shape) for n in net.head_names]

        # the unknown state of every row (target-major, R restarts each): prior draws from the seed
        draws = [state for s in seeds for state in prior_states(net, s, r)]
        embedding = torch.stack([d.embedding for d in draws]).to(ref)
        if p.embedding == "recovered":
            embedding = recover_embedding(problem).repeat_interleave(r, dim=0)
        head = torch.stack([torch.cat([d.head[n].reshape(-1) for n, _ in head_shapes]) for d in draws]).to(ref)

        victim, names, tv_weight = problem.victim, net.hypernetwork.names, p.tv_weight

        def objective(x: Tensor, v: Tensor, h: Tensor, target: Tensor, labels_: Tensor, params: Tensor):
            """Cosine distance between the candidate's and the observed extractor gradient, + TV."""
            head = unflatten(h, head_shapes)
            g = grad(lambda t: F.cross_entropy(net.logits(x, t, head), labels_))(generate_extractor(net, params, v))
            match = cosine_distance([g[n] for n in names], extractor_gradient(net, victim.named(target)))
            tv = total_variation(x)
            return match + tv_weight * tv, (match, {"match": match, "tv": tv})

        fixed, dims = (ref, y, problem.params), (0, 0, problem.params_in_dim)
        if p.learn_state:
            free = (-math.inf, math.inf)
            unknowns = [(embedding, p.embedding_lr, False, free), (head, p.head_lr, False, free)]
            return self.search(problem, y, seeds, objective, fixed, dims, unknowns)
        # state fixed at its starting value: one per target (restarts differ in their images only)
        return self.search(problem, y, seeds, objective, (embedding[::r], head[::r], *fixed), (0, 0, *dims))
