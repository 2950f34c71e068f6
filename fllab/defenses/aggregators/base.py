"""What every robust aggregator shares: the call protocol, the handling of non-finite updates,
the ``check(n)`` messages, and the ``then`` parameter of the pre-aggregators.

Non-finite updates.  A Byzantine client may send NaN or infinite values (ByzFL's ``Inf``
attack), or values so large that their squares overflow; one such row turns every Gram-matrix
distance into NaN.  An update counts as non-finite when its squared L2 norm is not finite in its
dtype, and :meth:`Rule.__call__` drops those rows before the rule runs.  Such a row is certainly
faulty, so a rule that tolerates ``f`` Byzantine updates then tolerates ``f - dropped`` among the
remaining ones (:meth:`Rule.effective_f`); for Krum, n - f - 2 is unchanged, so the rule keeps its
guarantee.  When fewer rows are left than the rule needs, the call raises ValueError.  Rules whose
first pass over the data already tells (``checks_finite``) skip the up-front pass: the Gram
matrix of the rules built on it is finite exactly when no row is non-finite, and so are ARC's
squared norms, so :func:`.kernels.gram` (or ARC) raises :class:`.kernels.NonFiniteError` and the
rule drops the rows and runs again.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ...errors import ConfigError
from ...registry import AGGREGATORS, split_spec
from . import kernels
from .kernels import NonFiniteError

ClientIds = Sequence[int] | None


def drop_nonfinite(
    updates: torch.Tensor, weights: torch.Tensor | None, client_ids: ClientIds
) -> tuple[torch.Tensor, torch.Tensor | None, list[int] | None, int]:
    """Remove the rows of ``updates`` (and their weights and ids) whose squared L2 norm is not
    finite (a NaN, an infinity, or an overflow), in one pass over the data.

    Returns ``(updates, weights, client_ids, number_dropped)``.
    """
    ids = None if client_ids is None else [int(c) for c in client_ids]
    keep = torch.isfinite(kernels.row_norms(updates))
    if bool(keep.all()):
        return updates, weights, ids, 0
    kept = keep.nonzero().flatten()
    return (
        updates.index_select(0, kept),
        None if weights is None else weights[keep.to(weights.device)],
        None if ids is None else [ids[i] for i in kept.tolist()],
        int((~keep).sum()),
    )


@dataclass(frozen=True)
class Feasibility:
    """A rule's condition on the number n of updates per round and the number f of Byzantine
    ones it tolerates, e.g. Krum's ``n > 2f + 2``: its text (``condition``, shown by ``fllab
    describe`` and in errors) and the largest f it allows with n updates (``max_f``)."""

    condition: str
    max_f: Callable[[int], int]

    def check(self, rule: str, n: int, f: int) -> None:
        """Raise ``ValueError("krum needs n > 2f + 2 (f=10, n=20): lower f to at most 8")`` when
        ``f`` exceeds :attr:`max_f` of ``n``."""
        most = self.max_f(n)
        if f <= most:
            return
        hint = f"lower f to at most {most}" if most >= 0 else "sample more clients per round"
        raise ValueError(f"{rule} needs {self.condition} (f={f}, n={n}): {hint}")


#: an honest majority of the updates (trimmed mean, MoNNA, NNM, ARC)
HONEST_MAJORITY = Feasibility("n > 2f", lambda n: (n - 1) // 2)
#: Krum and Multi-Krum: each update's n - f - 2 nearest neighbours are honest ones
KRUM = Feasibility("n > 2f + 2", lambda n: (n - 3) // 2)
#: Bulyan: Krum's condition on the n - 2f updates left after selection
BULYAN = Feasibility("n >= 4f + 3", lambda n: (n - 3) // 4)


class Rule(ABC):
    """Base of the robust aggregators.

    ``rule(updates, weights=None, client_ids=None) -> (d,)`` drops non-finite rows and calls
    :meth:`aggregate`; ``check(n)`` raises ValueError when the rule cannot work with n updates per
    round.  Subclasses set ``Params`` and implement :meth:`aggregate` and, when n is constrained,
    :meth:`require`; ``checks_finite = True`` marks rules whose kernels detect non-finite rows
    themselves (module docstring).
    """

    registry_name: str  # set by AGGREGATORS.register
    checks_finite = False
    #: the rule's condition on (n, f) for rules with an ``f`` parameter (``fllab describe`` shows it)
    feasibility: Feasibility | None = None

    def __init__(self, params: Any):
        self.params = params

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, client_ids: ClientIds = None) -> torch.Tensor:
        if updates.ndim != 2 or updates.shape[0] == 0:
            raise ValueError(f"{self.registry_name} expects a non-empty (n, d) tensor of updates, got shape {tuple(updates.shape)}")
        ids = None if client_ids is None else [int(c) for c in client_ids]
        if self.checks_finite:
            try:
                return self.aggregate(updates, weights, ids, 0)
            except NonFiniteError:
                pass  # drop the faulty rows below and run again
        x, w, ids, dropped = drop_nonfinite(updates, weights, ids)
        if x.shape[0] == 0:
            raise ValueError(f"{self.registry_name}: all {updates.shape[0]} updates of this round hold NaN, infinite or overflowing values")
        return self.aggregate(x, w, ids, dropped)

    @abstractmethod
    def aggregate(self, x: torch.Tensor, weights: torch.Tensor | None, client_ids: list[int] | None, dropped: int) -> torch.Tensor:
        """Aggregate the finite updates ``x`` after ``dropped`` non-finite ones were removed."""

    def check(self, n: int) -> None:
        """Raise ValueError when the rule cannot work with ``n`` updates per round."""
        self.require(n, int(getattr(self.params, "f", 0)))

    def require(self, n: int, f: int) -> None:
        """The rule's condition on (n, f): :attr:`feasibility`, or else one update."""
        if self.feasibility is not None:
            self.feasibility.check(self.registry_name, n, f)
        elif n < 1:
            raise ValueError(f"{self.registry_name} needs at least one update per round (n={n})")

    def effective_f(self, dropped: int) -> int:
        """``f`` less the non-finite updates already removed (each of them was faulty)."""
        return max(int(self.params.f) - dropped, 0)


# ------------------------------------------------------------------------- composition
def inner_spec(spec: Any) -> dict[str, Any]:
    """Validate a pre-aggregator's ``then`` (an aggregator name or ``{name: ..., **params}``) and
    return it as a mapping; an invalid spec is a ValueError, which pydantic reports under the
    ``then`` path."""
    try:
        name, raw = split_spec(spec)
        AGGREGATORS.parse_params(name, raw)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return {"name": name, **raw}


def call_inner(inner: Any, x: torch.Tensor, weights: torch.Tensor | None, client_ids: list[int] | None, dropped: int) -> torch.Tensor:
    """Run the inner aggregator of a pre-aggregator on its (already finite) output.

    A :class:`Rule` also learns how many faulty updates were dropped upstream; any other
    aggregator (``mean``, a plugin) is called with the public protocol, without ``client_ids``
    when its ``__call__`` does not take them (as the engine does).
    """
    if isinstance(inner, Rule):
        return inner.aggregate(x, weights, client_ids, dropped)
    if "client_ids" in inspect.signature(inner.__call__).parameters:
        return inner(x, weights, client_ids=client_ids)
    return inner(x, weights)
