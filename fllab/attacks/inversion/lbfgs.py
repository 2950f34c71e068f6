"""L-BFGS over N independent problems at once.

The update rule is that of :class:`torch.optim.LBFGS` without line search (fixed step ``lr``,
the first step scaled by ``min(1, 1/|g|_1)``, curvature pairs kept only when ``y.s > 1e-10``,
the same stopping tests), run as one long ``step`` of ``iterations`` updates.  Each row keeps its
own history and stops on its own; a row whose loss or gradient turns non-finite keeps its last
finite iterate and stops.  For N = 1 the iterates equal torch's (see tests).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]  # z (N, D) -> (loss (N,), grad (N, D))


def _direction(g: Tensor, S: Tensor, Y: Tensor, rho: Tensor, h_diag: Tensor, used: int) -> Tensor:
    """Two-loop recursion, batched over rows; empty history slots have ``rho = 0`` and do nothing."""
    m = S.shape[1]
    q = -g
    alphas = []
    for i in range(m - 1, m - 1 - used, -1):
        a = rho[:, i] * (S[:, i] * q).sum(-1)
        q = q - a[:, None] * Y[:, i]
        alphas.append(a)
    r = q * h_diag[:, None]
    for i, a in zip(range(m - used, m), reversed(alphas)):
        b = rho[:, i] * (Y[:, i] * r).sum(-1)
        r = r + S[:, i] * (a - b)[:, None]
    return r


def lbfgs(
    fun: Objective,
    z0: Tensor,
    iterations: int,
    lr: float = 1.0,
    history_size: int = 100,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
) -> tuple[Tensor, Tensor]:
    """Minimise ``fun`` from ``z0`` (N, D); returns the final iterates and the losses at every
    evaluation (a (T, N) tensor, row 0 at ``z0``; preallocated, as in
    :class:`~.common.CurveRecorder`)."""
    z = z0.clone()
    n, d = z.shape
    loss, g = fun(z)
    losses = loss.new_empty((iterations + 1, n))
    losses[0] = loss.detach()
    count = 1
    active = g.abs().amax(-1) > tolerance_grad
    S = z.new_zeros(n, history_size, d)
    Y = z.new_zeros(n, history_size, d)
    rho = z.new_zeros(n, history_size)
    h_diag = z.new_ones(n)
    direction = -g
    step = (1.0 / g.abs().sum(-1)).clamp(max=1.0) * lr
    prev_g = g
    used = 0
    for it in range(iterations):
        if it > 0:
            y = g - prev_g
            s = direction * step[:, None]
            ys = (y * s).sum(-1)
            add = active & (ys > 1e-10)
            shift = add[:, None, None]
            S = torch.where(shift, torch.cat([S[:, 1:], s[:, None]], 1), S)
            Y = torch.where(shift, torch.cat([Y[:, 1:], y[:, None]], 1), Y)
            rho = torch.where(add[:, None], torch.cat([rho[:, 1:], (1.0 / ys)[:, None]], 1), rho)
            h_diag = torch.where(add, ys / (y * y).sum(-1), h_diag)
            used = min(history_size, used + 1)
            direction = _direction(g, S, Y, rho, h_diag, used)
            step = torch.full_like(step, lr)
        prev_g, prev_loss = g, loss
        active = active & ((g * direction).sum(-1) <= -tolerance_change)
        move = torch.where(active, step, torch.zeros_like(step))[:, None] * direction
        z = z + move
        if it == iterations - 1:
            break
        new_loss, new_g = fun(z)
        finite = torch.isfinite(new_loss) & torch.isfinite(new_g).all(-1)
        z = torch.where((active & ~finite)[:, None], z - move, z)
        active = active & finite
        loss = torch.where(active, new_loss, loss)
        g = torch.where(active[:, None], new_g, g)
        losses[count] = loss.detach()
        count += 1
        active = active & (g.abs().amax(-1) > tolerance_grad)
        active = active & (move.abs().amax(-1) > tolerance_change)
        active = active & ((loss - prev_loss).abs() >= tolerance_change)
        if not bool(active.any()):
            break
    return z, losses[:count]
