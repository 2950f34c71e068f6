"""A history-based detector in the spirit of MUD-HoG (Gupta, Luo, Ngo and Das, ESORICS 2022).

The server keeps, per client id, the *short* history of gradients (HoG): the mean of the client's
last ``window`` updates.  After ``warmup`` rounds, each round:

1. **sign flipping**: a client whose short history has a negative cosine with the coordinate-wise
   median of the short histories of the clients not confirmed malicious is suspected;
2. **additive noise**: among the others, DBSCAN on the short histories (radius ``eps_scale`` times
   their median pairwise distance); the largest cluster is "normal"; a non-normal client that
   DBSCAN marks as noise *and* lies beyond the largest gap in the distances of the non-normal
   clients to the normal clients' median is suspected;
3. a client suspected ``delay`` rounds in a row is confirmed malicious (and un-confirmed after two
   clean rounds in a row); confirmed and currently suspected clients are excluded;
4. **unreliable** clients (benign but with low-quality data) are the remaining clients below the
   largest gap in the cosines of their short histories with the median; a client flagged more
   than ``delay`` times net of its clean rounds is reported unreliable.  Unreliable clients stay
   in the aggregate, as in the authors' code.

The aggregate is the weighted mean of the kept updates of this round.  After each call,
``last_flagged`` holds the ids excluded as malicious (non-finite updates included), or None during
the warm-up (no verdict yet: the engine scores detection precision and recall only on the rounds
with a verdict), ``last_unreliable`` the ids reported unreliable, and ``last_report`` all of them
by category.

Deviations from the paper and its code (``LabSAINT/MUD-HoG_Federated_Learning``), on purpose:
the targeted (label-flipping) step, a K-means split of the *long* histories (sums of all updates)
that always flags a minority, is left out, and with it the long histories; the DBSCAN radius is
relative (the authors hand-tuned an absolute radius per dataset: 0.5 on MNIST, 50 on CIFAR-10) so
one default works across models; and clients suspected
in the current round are excluded at once, not only after confirmation.  Without ``client_ids``
the row positions serve as ids.  Memory: window + 1 vectors of size d per client seen.
"""
from __future__ import annotations

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from ...registry import AGGREGATORS, Params
from ...state import AttrState
from . import kernels
from .base import ClientIds, Rule, drop_nonfinite

# codes of the confirmed-malicious categories kept per client
NONE, SIGN_FLIP, ADDITIVE_NOISE, NON_FINITE = 0, 1, 2, 3
CATEGORIES = {SIGN_FLIP: "sign_flip", ADDITIVE_NOISE: "additive_noise", NON_FINITE: "non_finite"}


class MudHogParams(Params):
    window: PositiveInt = Field(3, description="short history: mean of a client's last `window` updates")
    warmup: NonNegativeInt = Field(3, description="calls before detection starts (the authors' tau_0); plain weighted mean until then")
    delay: PositiveInt = Field(2, description="consecutive suspicious rounds before a client is confirmed malicious")
    eps_scale: PositiveFloat = Field(1.5, description="DBSCAN radius as a multiple of the median pairwise distance of the short histories")
    min_samples: PositiveInt = Field(5, description="DBSCAN min_samples (the point itself included)")


@AGGREGATORS.register("mudhog")
class MudHog(AttrState, Rule):
    """History-based detector (MUD-HoG style): excludes sign-flipping and additive-noise clients
    found from per-client gradient histories, reports unreliable clients, and averages
    the rest.  Exposes ``last_flagged`` (excluded ids; None during the warm-up),
    ``last_unreliable`` and ``last_report``."""

    summary = "MUD-HoG-style detector on per-client gradient histories; flags malicious ids"
    threat_model = (
        "Tolerates a minority of sign-flipping or additive-noise clients, found from their own update histories "
        "after the warm-up; no f to declare (Gupta et al., ESORICS 2022)"
    )
    references = (
        "Gupta, Luo, Ngo and Das, Long-Short History of Gradients is All You Need: Detecting Malicious and Unreliable Clients in Federated Learning, ESORICS 2022",
        "Ester, Kriegel, Sander and Xu, A Density-Based Algorithm for Discovering Clusters in Large Spatial Databases with Noise, KDD 1996",
    )
    Params = MudHogParams
    last_flagged: tuple[int, ...] | None = None  # the detector hook (fllab.hooks.Detector)
    state_attrs = (
        "rounds", "slot", "short_sum", "ring", "seen", "streak", "kind", "unreliable_count", "unreliable",
        "last_flagged", "last_unreliable", "last_report",
    )

    def __init__(self, params: MudHogParams):
        super().__init__(params)
        self.rounds = 0
        self.slot: dict[int, int] = {}
        self.short_sum: torch.Tensor | None = None  # (clients, d): sum of the last `window` updates
        self.ring: torch.Tensor | None = None  # (clients, window, d)
        self.seen = torch.zeros(0, dtype=torch.long)
        self.streak = torch.zeros(0, dtype=torch.long)  # consecutive suspicious rounds
        self.kind = torch.zeros(0, dtype=torch.long)  # confirmed category, NONE if not confirmed
        self.unreliable_count = torch.zeros(0, dtype=torch.long)
        self.unreliable = torch.zeros(0, dtype=torch.bool)
        self.last_flagged: tuple[int, ...] | None = None
        self.last_unreliable: tuple[int, ...] = ()
        self.last_report: dict[str, tuple[int, ...]] = {}

    # ---------------------------------------------------------------------------- protocol
    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, client_ids: ClientIds = None) -> torch.Tensor:
        if updates.ndim != 2 or updates.shape[0] == 0:
            raise ValueError(f"mudhog expects a non-empty (n, d) tensor of updates, got shape {tuple(updates.shape)}")
        ids = list(range(updates.shape[0])) if client_ids is None else [int(c) for c in client_ids]
        x, w, kept, _ = drop_nonfinite(updates, weights, ids)
        nonfinite = sorted(set(ids) - set(kept))
        if not kept:
            raise ValueError(f"mudhog: all {updates.shape[0]} updates of this round hold NaN, infinite or overflowing values")
        return self._round(x, w, kept, nonfinite)

    def aggregate(self, x, weights, client_ids, dropped):
        return self._round(x, weights, list(range(x.shape[0])) if client_ids is None else client_ids, [])

    # ------------------------------------------------------------------------------ state
    def _slots(self, ids: list[int], like: torch.Tensor) -> torch.Tensor:
        """Row of each client in the state tensors, growing them for new clients."""
        new = [c for c in dict.fromkeys(ids) if c not in self.slot]
        if new or self.ring is None:
            for c in new:
                self.slot[c] = len(self.slot)
            total, d, k = len(self.slot), like.shape[1], self.params.window

            def grow(t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
                pad = torch.zeros((total - (0 if t is None else t.shape[0]), *shape), dtype=dtype, device=like.device)
                return pad if t is None else torch.cat([t, pad])

            self.short_sum = grow(self.short_sum, (d,), like.dtype)
            self.ring = grow(self.ring, (k, d), like.dtype)
            self.seen, self.streak, self.kind, self.unreliable_count = (
                grow(t.to(like.device), (), torch.long) for t in (self.seen, self.streak, self.kind, self.unreliable_count)
            )
            self.unreliable = grow(self.unreliable.to(like.device), (), torch.bool)
        return torch.tensor([self.slot[c] for c in ids], dtype=torch.long, device=like.device)

    def _record(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Add this round's updates to the histories; return the clients' short histories."""
        k = self.params.window
        pos = self.seen[slots] % k
        self.short_sum[slots] += x - self.ring[slots, pos]  # ring slots start at zero
        self.ring[slots, pos] = x
        self.seen[slots] += 1
        return self.short_sum[slots] / self.seen[slots].clamp(max=k)[:, None].to(x.dtype)

    # ---------------------------------------------------------------------------- detection
    def _additive_noise(self, short: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Step 2: DBSCAN outliers beyond the largest distance gap (among ``candidates``)."""
        from sklearn.cluster import DBSCAN  # scikit-learn is imported only when detection runs

        found = torch.zeros_like(candidates)
        if int(candidates.sum()) < 2:
            return found
        sub = short[candidates]
        dist = kernels.pairwise_sq_dists(sub).sqrt()
        off = dist[~torch.eye(len(sub), dtype=torch.bool, device=dist.device)]
        eps = self.params.eps_scale * float(off.median())
        if eps <= 0:
            return found
        labels = torch.as_tensor(
            DBSCAN(eps=eps, min_samples=self.params.min_samples, metric="precomputed").fit(dist.cpu().numpy()).labels_,
            device=short.device,
        )
        clustered = labels[labels >= 0]
        if clustered.numel() == 0:
            return found
        normal = labels == torch.bincount(clustered).argmax()
        if bool(normal.all()):
            return found
        centre = kernels.coordinate_median(sub[normal])
        far = kernels.sq_dists_to(sub[~normal], centre).sqrt()
        flagged = torch.zeros_like(normal)
        flagged[~normal] = (far > kernels.largest_gap_split(far)) & (labels[~normal] == -1)
        found[candidates] = flagged
        return found

    def _round(self, x: torch.Tensor, weights: torch.Tensor | None, ids: list[int], nonfinite: list[int]) -> torch.Tensor:
        p = self.params
        self.rounds += 1
        if nonfinite:
            bad = self._slots(nonfinite, x)
            self.kind[bad] = NON_FINITE
            self.streak[bad] += 1
        slots = self._slots(ids, x)
        short = self._record(x, slots)
        n = len(ids)
        sign_flip = torch.zeros(n, dtype=torch.bool, device=x.device)
        additive = torch.zeros_like(sign_flip)
        if self.rounds > p.warmup:
            kind = self.kind[slots]
            confirmed = kind != NONE
            pool = ~confirmed if bool((~confirmed).any()) else torch.ones_like(confirmed)
            sign_flip = kernels.cosine_to(short, kernels.coordinate_median(short[pool])) < 0
            additive = self._additive_noise(short, ~(sign_flip | (kind == SIGN_FLIP)))
            suspects = sign_flip | additive
            streak = self.streak[slots]
            new_streak = torch.where(suspects, streak + 1, torch.zeros_like(streak))
            kind = torch.where(suspects & (new_streak >= p.delay), torch.where(sign_flip, SIGN_FLIP, ADDITIVE_NOISE), kind)
            kind = torch.where(~suspects & (streak == 0), torch.full_like(kind, NONE), kind)
            self.kind[slots], self.streak[slots] = kind, new_streak
            self._update_unreliable(short, slots, ~((kind != NONE) | suspects))
        excluded = (self.kind[slots] != NONE) | sign_flip | additive
        keep = ~excluded
        if bool(keep.any()):
            w = torch.ones(n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.device, x.dtype)
            w = w * keep
            out = (w / w.sum()) @ x
        else:
            out = kernels.coordinate_median(x)
        self._report(ids, nonfinite, sign_flip, additive, excluded, slots)
        if self.rounds <= p.warmup:
            self.last_flagged = None
        return out

    def _update_unreliable(self, short: torch.Tensor, slots: torch.Tensor, pool: torch.Tensor) -> None:
        """Step 4 with the authors' counting: +1 when below the cosine gap, -1 otherwise."""
        low = torch.zeros_like(pool)
        if int(pool.sum()) >= 2:
            cos = kernels.cosine_to(short[pool], kernels.coordinate_median(short[pool]))
            low[pool] = cos < kernels.largest_gap_split(cos)
        count = self.unreliable_count[slots] + low.long()
        marked = (self.unreliable[slots] | (low & (count > self.params.delay))) & ~(count == 0)
        self.unreliable_count[slots] = torch.where(~low & (count > 0), count - 1, count)
        self.unreliable[slots] = marked

    def _report(self, ids, nonfinite, sign_flip, additive, excluded, slots) -> None:
        def pick(mask: torch.Tensor) -> tuple[int, ...]:
            return tuple(sorted(ids[i] for i in mask.nonzero().flatten().tolist()))

        kind = self.kind[slots]
        self.last_flagged = tuple(sorted(set(nonfinite) | set(pick(excluded))))
        self.last_unreliable = pick(self.unreliable[slots] & ~excluded)
        self.last_report = {
            "sign_flip": pick(sign_flip | (kind == SIGN_FLIP)),
            "additive_noise": pick(additive | (kind == ADDITIVE_NOISE)),
            "non_finite": tuple(nonfinite),
            "unreliable": self.last_unreliable,
        }
