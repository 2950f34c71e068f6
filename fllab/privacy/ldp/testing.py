"""Deliberately broken randomizers: fixtures that an auditor must catch.

:class:`NeverClearedSUE` reproduces the bug LDP-Auditor found in the pure-ldp package (Arcolezi &
Gambs, PoPETs 2024, Sec. 5.5): the unary encoding draws *every* bit, the true one included, as
Bernoulli(q) noise, then sets the true bit with probability ``p`` -- but never clears it.  The
true bit is therefore 1 with probability ``p + (1 - p) q`` instead of ``p``, and the likelihood
ratio of the region "bit v1 set, bit v2 clear" becomes ``(p + (1-p) q) (1-q) / (q (1-p) (1-q))``,
above the nominal ``e^eps`` (for SUE, ``p/q^2 + 1 > p^2/q^2``).  Not registered: it is not a
mechanism anyone should use.
"""
from __future__ import annotations

import numpy as np

from .oracles import SUE


class NeverClearedSUE(SUE):
    """SUE whose true bit is set w.p. p on top of Bernoulli(q) noise, never cleared (broken)."""

    registry_name = "sue_never_cleared"

    def _randomize(self, values, rng):
        bits = rng.random((values.size, self.k), dtype=np.float32) < np.float32(self.q)
        rows = np.arange(values.size)
        bits[rows, values] |= rng.random(values.size) < self.p
        return bits

    def true_ratio(self) -> float:
        """The likelihood ratio of the optimal region under the bug (module docstring)."""
        p_true = self.p + (1 - self.p) * self.q
        return p_true * (1 - self.q) / (self.q * (1 - p_true))
