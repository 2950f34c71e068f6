"""Argument checks shared by the LDP mechanisms and auditors.

:class:`LDPArgumentError` is both a :class:`fllab.errors.ConfigError` (the CLI maps it to exit
code 2 with one line) and a :class:`ValueError` (what a Python caller of the API expects); its
message starts with the name of the offending argument.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

from ...errors import ConfigError


class LDPArgumentError(ConfigError, ValueError):
    """A bad argument to an LDP mechanism or auditor (message names the argument)."""


def positive_real(value: object, name: str) -> float:
    """``value`` as a finite float > 0 (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or float(value) <= 0:
        raise LDPArgumentError(f"must be a finite number > 0 (got {value!r})", name)
    return float(value)


def domain_size(value: object, name: str = "k") -> int:
    """``value`` as an integer >= 2."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 2:
        raise LDPArgumentError(f"must be an integer >= 2 (got {value!r})", name)
    return int(value)


def probability(value: object, name: str, *, allow_zero: bool) -> float:
    """``value`` in [0, 1) (or (0, 1) without ``allow_zero``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    p = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not ok or not ((0.0 <= p < 1.0) if allow_zero else (0.0 < p < 1.0)):
        raise LDPArgumentError(f"must be in {'[0, 1)' if allow_zero else '(0, 1)'} (got {value!r})", name)
    return p


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
        raise LDPArgumentError(f"must be an integer >= 1 (got {value!r})", name)
    return int(value)
