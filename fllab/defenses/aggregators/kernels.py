"""Pure tensor kernels of the robust aggregation rules.

Every kernel takes the round's updates stacked as ``x`` of shape (n, d) (one flattened update per
row) and returns new tensors; no kernel writes into its inputs.  The registered classes in
:mod:`.robust`, :mod:`.preaggregators` and :mod:`.mudhog` are thin wrappers around these.

Three implementation choices carry the speed (see ``benchmarks/results/aggregators.md``; n=50,
d=1e6 float32 on 2 CPU threads) and are shared by most kernels:

* **Distances from one Gram matrix.**  Krum, Multi-Krum, Bulyan, NNM, the geometric median,
  centered clipping and the Flag Aggregator only need inner products between the n updates, so
  they use ``||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y`` on one (n, n) Gram matrix instead of
  n^2 d-dimensional differences.  :func:`gram` builds it over column blocks of 2^22 values: each
  block is centred (distances do not change under translation, and centring removes the
  cancellation that makes Gram distances lose float32 precision when the updates share a large
  common component), multiplied in the input dtype, and the block products are summed in
  float64.  The centre of a block is one of the updates, the *medoid* of the blocks before it
  (:func:`gram`): unlike the column mean it costs no pass over the data, and unlike the mean,
  which f far-away Byzantine updates drag along, it stays among the honest updates.  Cost, n=50,
  d=1e6, mean-centred blocks: 0.05 s against 0.10 s for one uncentred ``x @ x.T`` on the 2-core
  AMD VMs; on an idle Intel Xeon host the single product is faster (0.03 s against 0.06 s), and we
  keep the blocks for their precision.  Blocks of 2^22 rather than cache-sized 2^20 values: as
  fast on an idle machine, and about 3x faster when other jobs oversubscribe the cores (each
  block costs a few OpenMP barriers).  Distances are clamped at zero (rounding can make them
  slightly negative).
* **Iterative rules in coefficient space.**  The smoothed Weiszfeld iterates of the geometric
  median, the centered-clipping iterates and the Flag Aggregator's subspace are all linear
  combinations of the rows of ``x``, so they iterate on an n-vector of coefficients with the
  Gram matrix and touch the d-dimensional data only once more, to form the result.
* **Sorting and large buffers through NumPy on CPU.**  ``torch.sort`` along dim 0 of a (50, 1e6)
  CPU tensor takes 1.45 s; NumPy's SIMD sort 0.12 s, and 0.07 s split over two threads; the
  median, the trimmed mean and Bulyan reduce each sorted block at once
  (:func:`sorted_column_reduce`).  PyTorch's CPU allocator does not request transparent huge pages
  (unless ``THP_MEM_ALLOC_ENABLE=1`` is set), so first-touching a fresh 200 MB tensor costs about
  0.25 s of page faults on our VMs, against 0.05 s for a NumPy allocation, which asks for huge
  pages; :func:`empty_rows` therefore allocates large CPU outputs through NumPy.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
_BLOCK_ELEMENTS = 1 << 22  # elements per column block of :func:`gram` (16 MiB of float32)
_PILOT = 1 << 12  # leading columns whose distances choose the first block's centre in :func:`gram`

Center = Literal["medoid"] | torch.Tensor | None


class NonFiniteError(ValueError):
    """The updates hold NaN, infinite or overflowing values (the Gram matrix is not finite)."""


# ------------------------------------------------------------------------------------ buffers
def empty_rows(rows: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (rows, d) tensor with ``like``'s dtype and device (NumPy-backed on CPU,
    so that the kernel can ask for transparent huge pages; see the module docstring)."""
    return _empty((rows, like.shape[-1]), like)


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if like.device.type == "cpu" and like.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[like.dtype]))
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _block_width(n: int) -> int:
    return max(1024, _BLOCK_ELEMENTS // max(n, 1))


# --------------------------------------------------------------------------------- distances
def gram(x: torch.Tensor, center: Center = "medoid") -> torch.Tensor:
    """The (n, n) float64 Gram matrix of the rows of ``x``, each column block centred.

    ``center``: ``"medoid"`` (for distances), ``None`` (raw inner products) or a (d,) tensor
    subtracted from every row.  With ``"medoid"`` every block is centred on one of the rows, the
    one with the smallest sum of squared distances to the others (with an honest majority, an
    honest update): over the first :data:`_PILOT` columns (centred on row 0; these distances only
    pick the row) for the first block, over the blocks so far for the later ones.  Subtracting a
    row costs no pass over the data (a column mean costs one more read of x), removes a shared
    component as well as the mean does (float32 distance errors stay of the order of the inputs'
    own rounding: centred honest rows are about sqrt(2) times longer than mean-centred ones), and,
    unlike the mean, which f far-away Byzantine updates drag along, stays among the honest
    updates.  A different centre per block is valid for whatever is computed from this matrix:
    distances, and distances to affine combinations of the rows (coefficients summing to 1), do
    not change when a block is translated.

    Accumulated over column blocks in float64 (module docstring); the centred block is written
    into one reused buffer.  Raises :class:`NonFiniteError` when the result is not finite: a row
    holds NaN or infinite values (they reach at least that row's entries, through the row itself
    or through the centre) or values whose products overflow.
    """
    n, d = x.shape
    out = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    step = max(1, min(_block_width(n), d))
    buf = None if center is None else _empty((n, step), x)
    medoid = _medoid(_pilot_gram(x)) if isinstance(center, str) else 0
    for start in range(0, d, step):
        blk = x[:, start : start + step]
        if buf is not None:
            ref = center[start : start + step] if isinstance(center, torch.Tensor) else blk[medoid]
            blk = torch.sub(blk, ref, out=buf[:, : blk.shape[1]])
        out += (blk @ blk.T).to(torch.float64)
        if isinstance(center, str) and start + step < d:
            medoid = _medoid(out)
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteError("the updates hold NaN, infinite or overflowing values")
    return (out + out.T) / 2  # exactly symmetric, so that d(i, j) == d(j, i) bit for bit


def _pilot_gram(x: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the first :data:`_PILOT` columns centred on row 0 (it only picks a centre)."""
    pilot = x[:, :_PILOT]
    pilot = pilot - pilot[0]
    return (pilot @ pilot.T).to(torch.float64)


def _medoid(g: torch.Tensor) -> int:
    """The row with the smallest sum of squared distances to the others (from a Gram matrix)."""
    return int(sq_dists_from_gram(g).sum(dim=1).argmin())


def _centred_blocks(x: torch.Tensor, center: torch.Tensor):
    """Yield the column blocks of ``x`` minus the matching slice of ``center`` (one reused buffer)."""
    n, d = x.shape
    step = max(1, min(_block_width(n), d))
    buf = _empty((n, step), x)
    for start in range(0, d, step):  # cache-sized column blocks, not coordinates
        blk = x[:, start : start + step]
        yield torch.sub(blk, center[start : start + step], out=buf[:, : blk.shape[1]])


def sq_dists_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``g_ii + g_jj - 2 g_ij``, clamped at 0, with an exact zero diagonal."""
    diag = g.diagonal()
    d = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min_(0.0)
    d.fill_diagonal_(0.0)
    return d


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared Euclidean distances between the rows of ``x`` (centred Gram matrix)."""
    return sq_dists_from_gram(gram(x, "medoid"))


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row, in ``x``'s dtype: infinite exactly when the row's sum of squares is
    (a NaN, an infinity, or an overflow), so it also tells which rows are non-finite.  One read of
    ``x``: ``torch.linalg.vecdot(x, x)`` materialises the (n, d) product on CPU (about 15x slower
    at n=50, d=1e6)."""
    return torch.linalg.vector_norm(x, dim=1)


def sq_dists_to(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) float64 squared distances from each row of ``x`` to the vector ``y``, computed from
    the differences block by block (no cancellation, no (n, d) temporary)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for diff in _centred_blocks(x, y):
        out += torch.linalg.vecdot(diff, diff, dim=1).to(torch.float64)
    return out


# ------------------------------------------------------------------------------------ sorting
SortedReduction = Callable[[Any], Any]  # sorted (m, b) block -> (b,) values; NumPy or torch arrays


def sorted_column_reduce(x: torch.Tensor, reduce: SortedReduction, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``reduce`` to the columns of ``x`` (or of its rows ``rows``) sorted in increasing
    order (NaN last): ``reduce`` maps a sorted (m, b) block to its (b,) per-column result.

    On CPU the columns go through NumPy's SIMD sort in cache-sized blocks, each copied into a
    small per-thread scratch array, sorted in place and reduced at once; the blocks are shared
    among ``torch.get_num_threads()`` Python threads (NumPy releases the GIL), so no (m, d)
    sorted copy is ever made.  Elsewhere it is ``reduce(torch.sort(x, dim=0).values)``.
    ``reduce`` must therefore work on NumPy arrays and torch tensors alike.
    """
    if x.device.type != "cpu" or x.dtype not in _NUMPY_DTYPES or x.requires_grad:
        return reduce(torch.sort(x if rows is None else x[rows], dim=0).values)
    src = x.detach().numpy()
    take = None if rows is None else rows.cpu().numpy()
    m, d = (x.shape[0] if take is None else len(take)), x.shape[1]
    out = np.empty(d, dtype=src.dtype)
    width = max(256, (1 << 18) // max(m, 1))  # about 1 MiB of float32 per block
    starts = list(range(0, d, width))
    threads = max(1, min(torch.get_num_threads(), len(starts)))

    def work(part: int) -> None:
        scratch = np.empty((m, width), dtype=src.dtype)
        for a in starts[part::threads]:
            b = min(a + width, d)
            block = scratch[:, : b - a]
            if take is None:
                block[...] = src[:, a:b]
            else:
                np.take(src[:, a:b], take, axis=0, out=block)
            block.sort(axis=0)
            out[a:b] = reduce(block)

    if threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(threads)))
    return torch.from_numpy(out)


def median_of_sorted(s: Any) -> Any:
    """The coordinate-wise median of already-sorted columns: the middle row, or the mean of the
    two middle rows when n is even (the NumPy / ``torch.quantile(q=0.5)`` convention)."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def closest_to_center_mean(s: Any, center: Any, beta: int) -> Any:
    """Per coordinate, the mean of the ``beta`` values of the sorted columns ``s`` that are
    closest to ``center`` (NumPy arrays or torch tensors).

    Those values are a contiguous window of the sorted column; the window start minimising its
    largest distance to ``center`` is found for all coordinates at once, and ties go to the lower
    window.
    """
    theta = s.shape[0]
    below, above = center - s[: theta - beta + 1], s[beta - 1 :] - center  # window start, end
    if isinstance(s, np.ndarray):
        start = np.maximum(below, above).argmin(0)
        return np.take_along_axis(s, start[None, :] + np.arange(beta)[:, None], 0).mean(0)
    start = torch.maximum(below, above).argmin(0)
    return s.gather(0, start[None, :] + torch.arange(beta, device=s.device)[:, None]).mean(0)


# ------------------------------------------------------------------------ coordinate-wise rules
def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin et al., ICML 2018)."""
    return sorted_column_reduce(x, median_of_sorted)


def trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the ``f``
    largest and ``f`` smallest values and average the other n - 2f.  ``f = 0`` is the mean."""
    n = x.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"trimmed mean needs n > 2f (f={f}, n={n})")
    if f == 0:
        return x.mean(dim=0)
    return sorted_column_reduce(x, lambda s: s[f : n - f].mean(0))


# ---------------------------------------------------------------------------- Krum family
def krum_scores(sq_dists: torch.Tensor, num_neighbours: int) -> torch.Tensor:
    """Krum score of each vector: the sum of its squared distances to its ``num_neighbours``
    nearest *other* vectors (Blanchard et al., NeurIPS 2017, use n - f - 2 neighbours)."""
    d = sq_dists.clone()
    d.fill_diagonal_(math.inf)
    return d.topk(num_neighbours, dim=1, largest=False).values.sum(dim=1)


def _ranked(scores: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Indices sorted by ``scores``, equal scores ordered by ``tiebreak`` (then by index)."""
    by_tiebreak = torch.sort(tiebreak, stable=True).indices
    return by_tiebreak[torch.sort(scores[by_tiebreak], stable=True).indices]


def krum_selection(sq_dists: torch.Tensor, f: int, m: int, iterative: bool = False) -> torch.Tensor:
    """Indices of the ``m`` vectors Multi-Krum averages, best first.

    One-shot (``iterative=False``, Blanchard et al. 2017 and ByzFL): score every vector once with
    n - f - 2 neighbours and keep the m lowest scores.  Iterative (El Mhamdi et al., ICML 2018,
    Bulyan's selection): pick the Krum winner of the remaining set, remove it, and re-score the
    rest with |remaining| - f - 2 neighbours (at least 1, at most |remaining| - 1) until m are
    picked.  Equal scores, which always occur with one neighbour (two mutual nearest neighbours
    score the same), are ordered by the total squared distance to all vectors, so that the
    selection does not depend on the order of the updates.
    """
    n = sq_dists.shape[0]
    tiebreak = sq_dists.sum(dim=1)
    if not iterative:
        return _ranked(krum_scores(sq_dists, n - f - 2), tiebreak)[:m]
    d = sq_dists.clone()
    d.fill_diagonal_(math.inf)
    remaining = torch.ones(n, dtype=torch.bool, device=d.device)
    picked = []
    for step in range(m):  # sequential by definition: each pick changes the next scores
        left = n - step
        k = min(max(left - f - 2, 1), left - 1)
        masked = d.masked_fill(~remaining[None, :], math.inf)
        scores = masked.topk(k, dim=1, largest=False).values.sum(dim=1).masked_fill(~remaining, math.inf)
        best = int(_ranked(scores, tiebreak)[0])
        picked.append(best)
        remaining[best] = False
    return torch.tensor(picked, dtype=torch.long, device=d.device)


def krum(x: torch.Tensor, f: int) -> torch.Tensor:
    """Krum (Blanchard et al., NeurIPS 2017): the update whose n - f - 2 nearest neighbours are
    closest (smallest sum of squared distances)."""
    idx = krum_selection(pairwise_sq_dists(x), f, 1)
    return x[int(idx[0])].clone()


def mean_of_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Average of the rows ``idx`` of ``x`` as one matrix-vector product (no gathered copy)."""
    w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    w[idx] = 1.0 / len(idx)
    return w @ x


def multi_krum(x: torch.Tensor, f: int, m: int, iterative: bool = False) -> torch.Tensor:
    """Multi-Krum: the average of the ``m`` vectors :func:`krum_selection` picks."""
    return mean_of_rows(x, krum_selection(pairwise_sq_dists(x), f, m, iterative))


def bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan (El Mhamdi et al., ICML 2018) over Krum: select theta = n - 2f vectors by iterated
    Krum, then per coordinate average the beta = theta - 2f selected values closest to the
    selected values' median."""
    n = x.shape[0]
    theta = n - 2 * f
    beta = theta - 2 * f
    if beta < 1:
        raise ValueError(f"bulyan needs n >= 4f + 1 to keep a value (f={f}, n={n})")
    idx = krum_selection(pairwise_sq_dists(x), f, theta, iterative=True)
    return sorted_column_reduce(x, lambda s: closest_to_center_mean(s, median_of_sorted(s), beta), rows=idx)


# ----------------------------------------------------------------------- geometric median
def _sq_dists_to_combination(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``||x_i - w^T x||^2`` for all i from the Gram matrix (valid when sum(w) = 1 and ``g`` is
    centred, or for any w when ``g`` is the raw Gram matrix)."""
    gw = g @ w
    return (g.diagonal() - 2.0 * gw + w @ gw).clamp_min(0.0)


def geometric_median(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    nu: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Approximate weighted geometric median ``argmin_z sum_i a_i ||z - x_i||`` by the smoothed
    Weiszfeld algorithm of RFA (Pillutla, Kakade and Harchaoui, IEEE TSP 2022, Algorithm 2).

    Each iteration sets ``b_i = a_i / max(nu, ||z - x_i||)`` and ``z = sum_i b_i x_i / sum_i b_i``;
    it stops after ``max_iter`` iterations or when the objective changes by at most ``tol`` times
    its value.  ``z`` starts at the weighted mean (RFA) or at ``start`` (ByzFL starts at zero).
    Every iterate is an affine combination of the rows, so the loop runs on an n-vector of
    coefficients and a centred Gram matrix (module docstring).
    """
    n = x.shape[0]
    alpha = (
        torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
        if weights is None
        else (weights.to(torch.float64) / weights.to(torch.float64).sum())
    )
    if start is not None and max_iter == 0:
        return start.clone()
    g = gram(x, "medoid")
    w = alpha.clone()
    dist = (_sq_dists_to_combination(g, w) if start is None else sq_dists_to(x, start)).sqrt()
    objective = float(alpha @ dist)
    for _ in range(max_iter):
        beta = alpha / dist.clamp_min(nu)
        w = beta / beta.sum()
        dist = _sq_dists_to_combination(g, w).sqrt()
        new_objective = float(alpha @ dist)
        converged = abs(objective - new_objective) <= tol * new_objective
        objective = new_objective
        if converged:
            break
    return w.to(x.dtype) @ x


# ------------------------------------------------------------------------------- clipping
def centered_clipping(x: torch.Tensor, center: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021, Eq. 2), ``iterations`` times:
    ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)`` starting from ``v = center``.

    With ``y_i = x_i - center`` every iterate is ``center + sum_j b_j y_j``; the loop updates
    ``b <- b (1 - sum(c)/n) + c/n`` on the Gram matrix of the ``y_i``.
    """
    n = x.shape[0]
    g = gram(x, center)
    b = torch.zeros(n, dtype=torch.float64, device=x.device)
    for _ in range(iterations):
        dist = _sq_dists_to_combination(g, b).sqrt()
        clip = torch.where(dist > tau, tau / dist, torch.ones_like(dist))
        b = b * (1.0 - clip.sum() / n) + clip / n
    return b.to(x.dtype) @ x + (1.0 - float(b.sum())) * center


def clip_scales(norms: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """``min(1, bound / norm)`` per row, 1 where the norm is within the bound (also for norm 0)."""
    return torch.where(norms > bound, bound / norms, torch.ones_like(norms))


def norm_clipped_mean(x: torch.Tensor, max_norm: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Norm clipping (Sun et al., 2019): scale each update to norm at most ``max_norm``, then take
    the (weighted) mean, computed as one matrix-vector product with the scales folded into the
    weights."""
    n = x.shape[0]
    scales = clip_scales(torch.linalg.vector_norm(x, dim=1), max_norm)
    w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype) / weights.to(x.dtype).sum()
    return (w * scales) @ x


def arc_scales(norms: torch.Tensor, f: int) -> torch.Tensor:
    """Adaptive Robust Clipping's per-row scales (Allouah et al., 2024): with
    k = floor(2 f (n - f) / n), the k largest ``norms`` are clipped to the largest remaining one,
    ``min(1, threshold / norm)``; all ones when k = 0."""
    n = norms.shape[0]
    k = (2 * f * (n - f)) // n
    if k == 0:
        return torch.ones_like(norms)
    return clip_scales(norms, torch.sort(norms).values[n - k - 1])


def arc_clip(x: torch.Tensor, f: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """ARC applied to the rows of ``x`` (:func:`arc_scales` of their norms): the clipped updates,
    ``x`` itself when k = 0, written into ``out`` when given."""
    n = x.shape[0]
    if (2 * f * (n - f)) // n == 0:
        return x
    return apply_map(arc_scales(row_norms(x), f), x, out)


def apply_map(transform: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A pre-aggregator's linear map applied to the updates: ``transform @ x`` for a (rows, n)
    mixing matrix, ``transform[:, None] * x`` for (n,) row scales; computed in ``x``'s dtype and
    written into ``out`` when given (else a fresh NumPy-backed buffer, see :func:`empty_rows`)."""
    t = transform.to(x.dtype)
    if t.ndim == 1:
        return torch.mul(x, t[:, None], out=empty_rows(x.shape[0], x) if out is None else out)
    return torch.matmul(t, x, out=empty_rows(t.shape[0], x) if out is None else out)


# --------------------------------------------------------------------------- mixing rules
def nnm_weights(sq_dists: torch.Tensor, f: int) -> torch.Tensor:
    """The (n, n) row-stochastic mixing matrix of NNM: row i puts weight 1/(n - f) on the n - f
    vectors nearest to x_i (x_i itself included)."""
    n = sq_dists.shape[0]
    k = n - f
    idx = sq_dists.topk(k, dim=1, largest=False).indices
    w = torch.zeros(n, n, dtype=torch.float64, device=sq_dists.device)
    return w.scatter_(1, idx, 1.0 / k)


def nnm(x: torch.Tensor, f: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): each update is replaced by the mean
    of its n - f nearest neighbours, as one product ``W @ x`` with the (n, n) mixing matrix
    (written into ``out`` when given)."""
    return apply_map(nnm_weights(pairwise_sq_dists(x), f), x, out)


def bucket_matrix(n: int, s: int, perm: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bucketing's (ceil(n/s), n) float64 averaging matrix: after permuting the rows with ``perm``,
    consecutive groups of ``s`` (the last, smaller group too, as ByzFL does) are averaged."""
    buckets = -(-n // s)
    bucket_of = torch.empty(n, dtype=torch.long, device=device)
    bucket_of[perm.to(device)] = torch.arange(n, device=device) // s
    counts = torch.bincount(bucket_of, minlength=buckets).to(torch.float64)
    w = torch.zeros(buckets, n, dtype=torch.float64, device=device)
    w[bucket_of, torch.arange(n, device=device)] = 1.0 / counts[bucket_of]
    return w


def bucket_means(x: torch.Tensor, s: int, perm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): the bucket means, as one product with
    :func:`bucket_matrix` (written into ``out`` when given)."""
    return apply_map(bucket_matrix(x.shape[0], s, perm, x.device), x, out)


def monna(x: torch.Tensor, f: int, reference: int) -> torch.Tensor:
    """MoNNA (Farhadkhani et al., ICML 2023): the mean of the n - f updates nearest to the
    trusted update ``x[reference]`` (itself included)."""
    n = x.shape[0]
    near = sq_dists_to(x, x[reference]).topk(n - f, largest=False).indices
    return mean_of_rows(x, near)


# ------------------------------------------------------------------------- Flag Aggregator
def flag_aggregate(x: torch.Tensor, dim: int = 1, lam: float = 0.0, iterations: int = 4, eps: float = 1e-7) -> torch.Tensor:
    """Flag Aggregator (Almasi, Mishra, Vamanan and Ravi, ICLR 2024).

    The updates are normalised to unit length, x_i <- x_i / ||x_i||.  A ``dim``-dimensional
    subspace Y is fitted by FlagIRLS to the flag-median objective
    ``sum_i sqrt(1 - ||Y^T x_i||^2)`` plus, when ``lam > 0``, the pairwise terms on the
    differences ``x_i - x_j``: each IRLS step weights x_i by ``(|1 - ||Y^T x_i||^2| + eps)^(-1/4)``
    and x_i - x_j by ``lam / (n (n - 1))`` times the same expression, and takes the top ``dim``
    left singular vectors of the weighted columns (the authors' ``flag_mean_iteration``).  The
    iteration stops after ``iterations`` steps or as soon as the objective stops decreasing,
    keeping the better subspace.  The result is ``sum_i Y Y^T x_i / dim``, as in the authors'
    ``aggregators/flag.py`` (so it is scale-free: its norm is at most n / dim).

    The authors start from a random subspace; in high dimension a random Y is nearly orthogonal to
    every update, so their first step weights all updates equally.  We start from that
    equal-weight step (the flag mean), which makes the rule deterministic.

    Everything lives in the span of the updates: with the Gram matrix K of the unit vectors,
    ``K = U L U^T``, the columns of ``Z = L^(1/2) U^T`` are the updates' coordinates in an
    orthonormal basis of that span, so the IRLS runs on (r, n) matrices (r <= n) and the result
    is mapped back with one matrix-vector product.
    """
    n = x.shape[0]
    g = gram(x, None)
    norms = g.diagonal().sqrt().clamp_min(1e-12)
    evals, evecs = torch.linalg.eigh(g / (norms[:, None] * norms[None, :]))
    keep = evals > evals.max().clamp_min(0.0) * n * torch.finfo(x.dtype).eps
    u, spectrum = evecs[:, keep], evals[keep]
    z = (u * spectrum.sqrt()).T  # (r, n) coordinates of the unit updates
    m = min(dim, z.shape[0])
    pair_scale = lam / (n * (n - 1)) if n > 1 else 0.0

    def objective(y: torch.Tensor) -> float:
        proj = (y.T @ z).square().sum(dim=0)
        return float((1.0 - proj).clamp_min(0.0).sqrt().sum())

    def irls_step(y: torch.Tensor) -> torch.Tensor:
        proj = (y.T @ z).square().sum(dim=0)
        wsq = ((1.0 - proj).abs() + eps).pow(-0.5)  # squared column weights
        scatter = (z * wsq) @ z.T
        if pair_scale > 0:
            yz = y.T @ z  # (m, n)
            pair_proj = (yz[:, :, None] - yz[:, None, :]).square().sum(dim=0)
            c = ((1.0 - pair_proj).abs() + eps).pow(-0.5) * pair_scale**2
            c.fill_diagonal_(0.0)
            laplacian = torch.diag(c.sum(dim=1)) - c
            scatter = scatter + 2.0 * (z @ laplacian @ z.T)
        return torch.linalg.eigh(scatter)[1][:, -m:]

    y = torch.linalg.eigh(z @ z.T)[1][:, -m:]  # flag mean: equal weights
    err = objective(y)
    for _ in range(iterations):
        if err <= 1e-10:
            break
        candidate = irls_step(y)
        new_err = objective(candidate)
        if new_err >= err:
            break
        y, decrease, err = candidate, err - new_err, new_err
        if decrease <= 1e-10:
            break
    coords = y @ (y.T @ z.sum(dim=1)) / dim  # (r,) in the orthonormal basis
    a = u @ (coords / spectrum.sqrt())  # coefficients on the unit updates
    return (a / norms).to(x.dtype) @ x


# ---------------------------------------------------------------------- detection helpers
def largest_gap_split(values: torch.Tensor) -> float:
    """The midpoint of the largest gap between consecutive sorted values (MUD-HoG's
    ``find_separate_point``); 0 for fewer than two values."""
    if values.numel() < 2:
        return 0.0
    v = torch.sort(values.flatten().to(torch.float64)).values
    gaps = v[1:] - v[:-1]
    i = int(torch.argmax(gaps))
    return float(v[i] + gaps[i] / 2)


def cosine_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(n,) cosine similarity of each row of ``x`` with ``ref`` (0 where a norm is 0)."""
    dots = (x @ ref).to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=1).to(torch.float64) * float(torch.linalg.vector_norm(ref))
    return torch.where(norms > 0, dots / norms, torch.zeros_like(dots))
