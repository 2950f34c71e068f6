"""Label recovery from the gradient of the last (fully connected) layer.

For logits ``z_i = W h_i + b`` and the mean cross-entropy over a batch of B examples with
softmax outputs ``p_i`` and one-hot labels ``y_i``, the last layer's gradients are

    dL/db = (1/B) sum_i (p_i - y_i)          dL/dW = (1/B) sum_i (p_i - y_i) h_i^T

so a class's entry is negative only if the class occurs in the batch (for ``dW`` this needs
non-negative features ``h``, e.g. after a ReLU), and its size counts the occurrences.

* :func:`idlg_labels` - batch of one: the label is the row of ``dW`` whose sum is negative
  (Zhao, Mopuri & Bilen 2020, "iDLG: Improved Deep Leakage from Gradients").
* :func:`label_counts` - any batch size, from the bias: ``dL/db_c = pbar_c - n_c / B`` exactly,
  where ``pbar_c`` is the batch-mean probability of class c, so ``n_c = B (pbar_c - dL/db_c)``
  (the identity behind the count estimates of Geng et al. 2021, "Towards General Deep Leakage
  in Federated Learning", and Wainakh et al. 2022, "User-Level Label Leakage from Gradients in
  Federated Learning").  ``pbar`` is
  estimated at the mean penultimate feature, which the rows of the absent classes reveal
  (:func:`mean_feature_softmax`).  This refines the counting of LLG (Wainakh et al. 2022) and
  breaching's ``bias-corrected`` strategy, which assume every present class draws the same
  probability and miss present classes whose bias gradient is positive (a model already
  favouring them); on random-init CIFAR-10 models it recovers batches of 8 and 16 exactly
  (benchmarks/results/inversion.md).

All kernels take a leading target dimension K and are vectorised over it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError


def last_layer_slices(shapes: list[tuple[str, torch.Size]], num_classes: int) -> tuple[slice, slice | None, int]:
    """Where the last linear layer's weight (C, F) and bias (C,) sit in the flat vector.

    Returns ``(weight_slice, bias_slice_or_None, num_features)``.  Raises ConfigError if the
    model does not end in a linear layer with ``num_classes`` outputs.
    """
    total = sum(int(math.prod(s)) for _, s in shapes)
    last_name, last_shape = shapes[-1]
    if len(last_shape) == 1 and len(shapes) >= 2 and int(last_shape[0]) == num_classes:
        w_name, w_shape = shapes[-2]
        if len(w_shape) == 2 and int(w_shape[0]) == num_classes:
            nw = int(w_shape.numel())
            return slice(total - num_classes - nw, total - num_classes), slice(total - num_classes, total), int(w_shape[1])
    if len(last_shape) == 2 and int(last_shape[0]) == num_classes:
        nw = int(last_shape.numel())
        return slice(total - nw, total), None, int(last_shape[1])
    raise ConfigError(
        f"label recovery needs a model ending in a linear layer with {num_classes} outputs; "
        f"its last parameter is {last_name} {tuple(last_shape)}"
    )


def idlg_labels(weight_grad: Tensor) -> Tensor:
    """iDLG: ``argmin_c sum_j dL/dW_cj`` for each of K targets; weight_grad (K, C, F) -> (K,)."""
    return weight_grad.sum(dim=-1).argmin(dim=-1)


def mean_feature_softmax(weight_grad: Tensor, bias_grad: Tensor, absent: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Estimate of the batch-mean softmax output ``pbar`` (K, C).

    For a class c absent from the batch, ``dL/dW_c = (1/B) sum_i p_ic h_i`` and ``dL/db_c =
    (1/B) sum_i p_ic``, so their ratio is a probability-weighted mean of the penultimate features;
    pooling the rows of the classes marked ``absent`` (K, C) gives an estimate of the mean
    feature ``hbar`` and ``pbar ~= softmax(W hbar + b)``.  ``weight`` (C, F) or (K, C, F) and
    ``bias`` (C,) or (K, C) are the last layer's current values.
    """
    mass = (bias_grad * absent).sum(-1, keepdim=True)
    hbar = (weight_grad * absent[..., None]).sum(-2) / mass.clamp_min(torch.finfo(mass.dtype).tiny)
    logits = torch.matmul(weight, hbar[..., None]).squeeze(-1) + bias
    return logits.softmax(dim=-1)


def round_counts(estimate: Tensor, minimum: Tensor, total: int) -> Tensor:
    """Integer counts (K, C) summing to ``total``, at least ``minimum`` (K, C) each, closest to the
    real ``estimate``: floors, then one unit at a time to the largest (or from the smallest
    removable) remainder."""
    counts = torch.maximum(estimate.clamp_min(0).floor().long(), minimum)
    rows = torch.arange(counts.shape[0], device=counts.device)
    for _ in range(counts.shape[-1] + total):
        left = total - counts.sum(-1)
        residual = estimate - counts
        up = residual.argmax(dim=-1)
        down = torch.where(counts > minimum, residual, torch.full_like(residual, math.inf)).argmin(dim=-1)
        counts[rows, up] += (left > 0).long()
        counts[rows, down] -= (left < 0).long()
    return counts


def label_counts(weight_grad: Tensor, bias_grad: Tensor, weight: Tensor, bias: Tensor, num_images: int) -> Tensor:
    """Estimated number of examples of every class, (K, C) integers summing to ``num_images``.

    ``n_c = B (pbar_c - dL/db_c)`` with ``pbar`` from
    :func:`mean_feature_softmax`: a first pass pools the classes with a positive bias gradient
    (some present classes among them when the model already favours them), a second pass pools
    the classes the first pass counted zero times.  Classes with a negative bias gradient are
    certainly present and get at least one example (the ``B`` most negative ones, if more).
    """
    b = int(num_images)
    rank = bias_grad.argsort(dim=-1).argsort(dim=-1)
    minimum = ((bias_grad < 0) & (rank < b)).long()
    absent = bias_grad > 0
    for _ in range(2):
        pbar = mean_feature_softmax(weight_grad, bias_grad, absent, weight, bias)
        counts = round_counts(b * (pbar - bias_grad), minimum, b)
        absent = counts == 0
    return counts


def counts_to_labels(counts: Tensor) -> Tensor:
    """(K, C) class counts (each row summing to B) -> (K, B) sorted label vectors."""
    k, _ = counts.shape
    b = int(counts[0].sum())
    ends = counts.cumsum(dim=-1)
    slots = torch.arange(b, device=counts.device).expand(k, b).contiguous()
    return torch.searchsorted(ends, slots, right=True)


def recover_labels(
    gradients: Tensor, params: Tensor, shapes: list[tuple[str, torch.Size]], num_classes: int, num_images: int
) -> Tensor:
    """Labels (K, B), sorted, for K flat observed gradients (K, d) at flat weights ``params``
    ((d,) shared or (K, d)): iDLG for one image, counting (which needs a last-layer bias) for more."""
    w_slice, b_slice, n_feat = last_layer_slices(shapes, num_classes)
    k = gradients.shape[0]
    w_grad = gradients[:, w_slice].reshape(k, num_classes, n_feat)
    if num_images == 1:
        return idlg_labels(w_grad)[:, None]
    if b_slice is None:
        raise ConfigError("recovering the labels of more than one image needs a bias in the model's last layer")
    weight = params[..., w_slice].reshape(*params.shape[:-1], num_classes, n_feat)
    counts = label_counts(w_grad, gradients[:, b_slice], weight, params[..., b_slice], num_images)
    return counts_to_labels(counts)
