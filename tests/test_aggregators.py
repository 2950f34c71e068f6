"""Robust aggregators and detectors: hand-computed cases for every rule, composition, check()
messages, non-finite updates, the MUD-HoG-style detector, and a cross-check against ByzFL's
implementations when ``byzfl`` is importable."""
from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch

from fllab.errors import ConfigError
from fllab.registry import AGGREGATORS
from fllab.seeding import torch_gen
from fllab.defenses.aggregators import kernels as K


def col(*values: float) -> torch.Tensor:
    """Scalar updates as an (n, 1) tensor."""
    return torch.tensor(values, dtype=torch.float32)[:, None]


def build(name: str, **params):
    agg = AGGREGATORS.build({"name": name, **params})
    return agg


# ------------------------------------------------------------------------------ primitives
def test_gram_distances_match_direct_and_survive_a_large_common_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5000, generator=g, dtype=torch.float64)
    direct = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square()
    assert torch.allclose(K.pairwise_sq_dists(x), direct, rtol=1e-10, atol=1e-9)
    # float32 updates sharing a component 1000x their spread: an uncentred Gram matrix loses
    # the distances to cancellation, the centred one keeps them
    spread = torch.randn(6, 5000, generator=g)
    shifted = spread + 1000.0
    exact = torch.cdist(spread.double(), spread.double()).square()
    centred = K.pairwise_sq_dists(shifted)
    raw = K.sq_dists_from_gram(K.gram(shifted, None))
    assert torch.allclose(centred, exact, rtol=1e-4)
    assert not torch.allclose(raw, exact, rtol=1e-2)


def test_gram_distances_stay_precise_when_far_byzantine_rows_drag_the_mean():
    """A column-mean centre would sit 2/10 of the way to two updates 1e5 away: the honest updates,
    sharing a component 1000x their spread, would keep ~2e4 each and lose their distances to
    float32 cancellation.  The medoid centre (an honest row) keeps them."""
    g = torch.Generator().manual_seed(3)
    spread = torch.randn(10, 6000, generator=g)
    x = spread + 1000.0
    x[:2] = -1e5 + spread[:2]
    honest = torch.cdist(spread[2:].double(), spread[2:].double()).square()
    assert torch.allclose(K.pairwise_sq_dists(x)[2:, 2:], honest, rtol=1e-4, atol=1e-2)
    mean_centred = K.sq_dists_from_gram(K.gram(x, x.mean(dim=0)))
    assert not torch.allclose(mean_centred[2:, 2:], honest, rtol=1e-2)
    # the same across many column blocks (the centre is re-chosen after each block)
    wide = torch.randn(50, 300_000, generator=g) + 1000.0
    wide[:10] = -1e5 + torch.randn(10, 300_000, generator=g)
    exact = torch.cdist(wide[10:].double() - 1000.0, wide[10:].double() - 1000.0).square()
    assert torch.allclose(K.pairwise_sq_dists(wide)[10:, 10:], exact, rtol=1e-4)


def test_gram_with_explicit_center_and_sq_dists_to():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    c = torch.tensor([1.0, 1.0])
    # rows minus c: (0, 1), (2, 4) -> Gram [[1, 4], [4, 20]]
    assert torch.equal(K.gram(x, c), torch.tensor([[1.0, 4.0], [4.0, 20.0]], dtype=torch.float64))
    assert torch.equal(K.sq_dists_to(x, c), torch.tensor([1.0, 20.0], dtype=torch.float64))


def test_sorted_column_reduce_matches_torch_sort_on_threads_and_row_subsets():
    x = torch.randn(9, 3001, generator=torch.Generator().manual_seed(1))
    ref = torch.sort(x, dim=0).values
    rows = torch.tensor([7, 0, 3])
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for k in (0, 4, 8):
                assert torch.equal(K.sorted_column_reduce(x, lambda s: s[k]), ref[k])
            assert torch.equal(K.sorted_column_reduce(x, lambda s: s[1], rows=rows), torch.sort(x[rows], dim=0).values[1])
    finally:
        torch.set_num_threads(threads)


def test_dtypes_numpy_cannot_sort_go_through_torch_sort():
    x = torch.randn(7, 300, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    ref = torch.sort(x, dim=0).values
    assert torch.equal(K.sorted_column_reduce(x, lambda s: s[5]), ref[5])
    assert torch.equal(K.coordinate_median(x), ref[3])


# -------------------------------------------------------------------- coordinate-wise rules
def test_median_odd_and_even():
    x = torch.tensor([[1.0, 10.0], [3.0, -2.0], [2.0, 0.0], [100.0, 5.0]])
    # sorted columns: (1, 2, 3, 100) and (-2, 0, 5, 10): middle pairs average to 2.5 and 2.5
    assert torch.equal(build("median")(x), torch.tensor([2.5, 2.5]))
    # dropping the last row: (1, 2, 3) and (-2, 0, 10) -> 2 and 0
    assert torch.equal(build("median")(x[:3]), torch.tensor([2.0, 0.0]))


def test_trimmed_mean_by_hand_and_f0_is_the_mean():
    x = torch.tensor([[1.0, 50.0], [2.0, -50.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]])
    # column 0 without 1 and 100: (2 + 3 + 4) / 3 = 3; column 1 without -50 and 50: (0 + 1 + 2) / 3 = 1
    assert torch.allclose(build("trimmed_mean", f=1)(x), torch.tensor([3.0, 1.0]))
    assert torch.equal(build("trimmed_mean", f=0)(x), x.mean(dim=0))


# --------------------------------------------------------------------------- Krum family
KRUM_X = col(0.0, 1.0, 3.0, 4.5, 20.0)
# n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared distances to the others:
#   0 -> 1 + 9 = 10,  1 -> 1 + 4 = 5,  3 -> 4 + 2.25 = 6.25,  4.5 -> 2.25 + 12.25 = 14.5,
#   20 -> 240.25 + 289 = 529.25


def test_krum_scores_and_choice_by_hand():
    scores = K.krum_scores(K.pairwise_sq_dists(KRUM_X), 2)
    assert torch.allclose(scores, torch.tensor([10.0, 5.0, 6.25, 14.5, 529.25], dtype=torch.float64))
    assert torch.equal(build("krum", f=1)(KRUM_X), torch.tensor([1.0]))


def test_krum_ties_are_broken_by_the_data_not_the_order():
    # n = 3, f = 0: one neighbour, so 0 and 1 tie (score 1); their total squared distances are
    # 1 + 25 = 26 and 1 + 16 = 17: 1 wins in any order
    for order in ([0.0, 1.0, 5.0], [5.0, 1.0, 0.0], [1.0, 0.0, 5.0]):
        assert torch.equal(build("krum", f=0)(col(*order)), torch.tensor([1.0]))


def test_multi_krum_by_hand():
    # default m = n - f = 4: the four lowest scores are 1, 3, 0 and 4.5 -> mean 2.125
    assert torch.allclose(build("multi_krum", f=1)(KRUM_X), torch.tensor([2.125]))
    assert torch.allclose(build("multi_krum", f=1, m=2)(KRUM_X), torch.tensor([2.0]))


def test_iterative_selection_rescores_the_remaining_vectors():
    x = col(1.0, 6.0, 8.0, 13.0, 15.0, 16.0)
    # n = 6, f = 1, 3 neighbours: 1 -> 25 + 49 + 144 = 218, 6 -> 4 + 25 + 49 = 78,
    # 8 -> 4 + 25 + 49 = 78, 13 -> 4 + 9 + 25 = 38, 15 -> 1 + 4 + 49 = 54, 16 -> 1 + 9 + 64 = 74
    # one-shot m = 2 keeps 13 and 15 -> 14.  Iterative: 13 first, then on {1, 6, 8, 15, 16} with
    # 2 neighbours: 1 -> 74, 6 -> 4 + 25 = 29, 8 -> 4 + 49 = 53, 15 -> 1 + 49 = 50, 16 -> 65
    # -> 6, so the mean is (13 + 6) / 2 = 9.5
    assert torch.allclose(build("multi_krum", f=1, m=2)(x), torch.tensor([14.0]))
    assert torch.allclose(build("multi_krum", f=1, m=2, selection="iterative")(x), torch.tensor([9.5]))


def test_bulyan_by_hand():
    x = col(0.0, 1.0, 2.0, 3.5, 6.0, 50.0, -30.0)
    # n = 7, f = 1: theta = 5 picked by iterated Krum with |R| - 3 neighbours (at least 1):
    #   R = all (4 nbrs): 2 scores 1 + 2.25 + 4 + 16 = 23.25, the lowest -> pick 2
    #   R \ {2} (3 nbrs): 3.5 scores 6.25 + 6.25 + 12.25 = 24.75 -> pick 3.5
    #   (2 nbrs): 1 scores 1 + 25 = 26 -> pick 1
    #   (1 nbr) among {0, 6, 50, -30}: 0 and 6 tie at 36; ties go to the smaller total squared
    #   distance to all seven values: 6 (3315.25) before 0 (3453.25) -> pick 6
    #   (1 nbr) among {0, 50, -30}: 0 and -30 tie at 900 -> 0 (3453.25 against 11703.25)
    # selected (0, 1, 2, 3.5, 6), median 2; beta = 3 values closest to 2: 2, 1, 3.5 -> 6.5 / 3
    out = build("bulyan", f=1)(x)
    assert torch.allclose(out, torch.tensor([6.5 / 3]))


def test_closest_to_center_mean_per_coordinate_on_torch_and_numpy():
    s = torch.tensor([[0.0, -9.0], [1.0, 0.0], [2.0, 1.0], [3.5, 1.5], [6.0, 2.0]])
    center = torch.tensor([2.0, 1.0])
    # column 0: 2, 1, 3.5 (distances 0, 1, 1.5); column 1: 1, 0 / 1.5 / 2 -> 1, 1.5, 2 or 0, 1, 1.5
    # both windows reach 1: the lower one, (0, 1, 1.5), is kept
    expected = torch.tensor([6.5 / 3, 2.5 / 3])
    assert torch.allclose(K.closest_to_center_mean(s, center, 3), expected)
    assert torch.allclose(torch.from_numpy(K.closest_to_center_mean(s.numpy(), center.numpy(), 3)), expected)


def reference_bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    """Loop-based Bulyan: Krum re-run from scratch on each remaining set, then explicit sorting."""
    remaining = list(range(x.shape[0]))
    picked = []
    for _ in range(x.shape[0] - 2 * f):
        sub = x[remaining].double()
        dist = torch.cdist(sub, sub).square()
        k = min(max(len(remaining) - f - 2, 1), len(remaining) - 1)
        scores = [sorted(dist[i, j].item() for j in range(len(remaining)) if j != i)[:k] for i in range(len(remaining))]
        best = min(range(len(remaining)), key=lambda i: (sum(scores[i]), i))
        picked.append(remaining.pop(best))
    sel = x[picked]
    beta = len(picked) - 2 * f
    med = sel.median(dim=0).values if len(picked) % 2 else torch.quantile(sel, 0.5, dim=0)
    out = torch.empty(x.shape[1])
    for c in range(x.shape[1]):
        vals = sorted(sel[:, c].tolist(), key=lambda v: abs(v - med[c].item()))[:beta]
        out[c] = sum(vals) / beta
    return out


def test_bulyan_matches_a_loop_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 7, generator=g)
    x[:2] += 10.0
    assert torch.allclose(K.bulyan(x, 2), reference_bulyan(x, 2), atol=1e-6)


# ------------------------------------------------------------------------ geometric median
def test_geometric_median_of_collinear_points_is_the_middle_one():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    assert torch.allclose(build("geometric_median")(x), torch.tensor([1.0, 0.0]), atol=1e-4)


def test_geometric_median_of_an_equilateral_triangle_is_its_centre():
    h = math.sqrt(3) / 2
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, h]], dtype=torch.float64)
    out = K.geometric_median(x, tol=0.0, max_iter=200)
    assert torch.allclose(out, torch.tensor([0.5, h / 3], dtype=torch.float64), atol=1e-9)


def test_geometric_median_matches_byzfls_published_example():
    # ByzFL's GeometricMedian docstring: nu = 0.1, T = 3 from zero gives [3.78788764, ...]
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    out = K.geometric_median(x, nu=0.1, max_iter=3, tol=0.0, start=torch.zeros(3))
    assert torch.allclose(out, torch.tensor([3.78788764, 4.78788764, 5.78788764]), atol=1e-6)


def test_geometric_median_weights_pull_towards_heavy_clients():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    # weights 1, 1, 5: the weighted 1-D median is 2
    out = build("geometric_median")(x, torch.tensor([1.0, 1.0, 5.0]))
    assert torch.allclose(out, torch.tensor([2.0]), atol=1e-4)


# ------------------------------------------------------------------------------- clipping
def test_centered_clipping_two_rounds_by_hand():
    agg = build("centered_clipping", tau=1.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    # round 1, center 0: (3, 4) has norm 5 -> (0.6, 0.8); (0, 0.5) is kept -> mean (0.3, 0.65)
    assert torch.allclose(agg(x), torch.tensor([0.3, 0.65]))
    # round 2, center (0.3, 0.65): differences (2.7, 3.35) (norm 4.3028) and (-0.3, -0.15)
    d1 = torch.tensor([2.7, 3.35])
    expected = torch.tensor([0.3, 0.65]) + (d1 / d1.norm() + torch.tensor([-0.3, -0.15])) / 2
    assert torch.allclose(agg(x), expected)


def direct_centered_clipping(x, center, tau, iterations):
    v = center.double()
    for _ in range(iterations):
        diff = x.double() - v
        norms = diff.norm(dim=1, keepdim=True)
        v = v + (diff * torch.clamp(tau / norms, max=1.0)).mean(dim=0)
    return v


def test_centered_clipping_iterations_match_the_direct_loop():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 30, generator=g) * 3
    center = torch.randn(30, generator=g)
    out = K.centered_clipping(x, center, 2.0, 5)
    assert torch.allclose(out.double(), direct_centered_clipping(x, center, 2.0, 5), atol=1e-5)


def test_norm_clipping_by_hand_with_and_without_weights():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    agg = build("norm_clipping", max_norm=1.0)
    # (3, 4) -> (0.6, 0.8); (0, 1) unchanged
    assert torch.allclose(agg(x), torch.tensor([0.3, 0.9]))
    assert torch.allclose(agg(x, torch.tensor([1.0, 3.0])), torch.tensor([0.15, 0.95]))


def test_arc_clips_the_right_number_to_the_next_largest_norm():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -4.0], [6.0, 8.0]])
    # n = 5, f = 1: k = floor(2 * 1 * 4 / 5) = 1: the norm-10 update is clipped to norm 4
    out = K.arc_clip(x, 1)
    assert torch.allclose(out[4], torch.tensor([2.4, 3.2]))
    assert torch.equal(out[:4], x[:4])
    # f = 2: k = floor(2 * 2 * 3 / 5) = 2: norms 10 and 4 clipped to 3
    out2 = K.arc_clip(x, 2)
    assert torch.allclose(out2[3:], torch.tensor([[0.0, -3.0], [1.8, 2.4]]))
    assert K.arc_clip(x, 0) is x  # k = 0: nothing to clip


# -------------------------------------------------------------------------- mixing rules
def test_nnm_by_hand_and_composed_with_mean():
    x = col(0.0, 1.0, 3.0, 10.0)
    # f = 1: each value becomes the mean of its 3 nearest (itself included):
    # 0 -> {0, 1, 3}, 1 -> {1, 0, 3}, 3 -> {3, 1, 0}, 10 -> {10, 3, 1}
    assert torch.allclose(K.nnm(x, 1), col(4 / 3, 4 / 3, 4 / 3, 14 / 3))
    agg = build("nnm", f=1, then="mean")
    assert torch.allclose(agg(x), torch.tensor([(3 * 4 / 3 + 14 / 3) / 4]))
    rows = K.nnm_weights(K.pairwise_sq_dists(x), 1)
    assert torch.allclose(rows.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_preaggregators_reuse_one_scratch_buffer():
    agg = build("arc", f=2, then="median")
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    first = agg(x)
    buf = agg.scratch
    assert torch.equal(agg(x), first) and agg.scratch is buf
    agg(x[:7])
    assert agg.scratch.shape == (7, 5)


@pytest.mark.parametrize("name", ["nnm", "arc", "bucketing"])
def test_preaggregator_then_mean_is_one_weighted_sum_equal_to_the_two_steps(name):
    """With a linear inner rule the transform is folded into the mean's coefficients: no
    intermediate updates, the same result as transforming and then averaging."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 300, generator=g, dtype=torch.float64)
    x[:3] *= 10.0  # large updates for ARC to clip, far ones for NNM to mix away
    w = torch.rand(12, generator=g, dtype=torch.float64) + 0.5
    params = {"nnm": {"f": 3}, "arc": {"f": 3}, "bucketing": {"s": 5, "seed": 2}}[name]
    fused = build(name, then="mean", **params)
    out = fused(x, w)
    assert fused.scratch is None
    perm = torch.randperm(12, generator=torch_gen(2, "bucketing", 0))
    two_steps = {
        "nnm": lambda: (w / w.sum()) @ K.nnm(x, 3),
        "arc": lambda: (w / w.sum()) @ K.arc_clip(x, 3),
        "bucketing": lambda: K.bucket_means(x, 5, perm).mean(dim=0),  # bucket means carry no weight
    }[name]()
    assert torch.allclose(out, two_steps, rtol=1e-12, atol=1e-12)


def test_nnm_composes_with_krum():
    x = col(0.0, 1.0, 3.0, 10.0, 11.0, -20.0, 2.0)
    agg = build("nnm", f=1, then={"name": "krum", "f": 1})
    mixed = K.nnm(x, 1)
    assert torch.allclose(agg(x), K.krum(mixed, 1))


def test_bucket_means_by_hand():
    x = col(1.0, 2.0, 4.0, 8.0, 16.0)
    # permutation (4, 0, 3, 1, 2), s = 2: buckets (16, 1), (8, 2), (4) -> 8.5, 5, 4
    out = K.bucket_means(x, 2, torch.tensor([4, 0, 3, 1, 2]))
    assert torch.allclose(out, col(8.5, 5.0, 4.0))


def test_bucketing_is_seeded_and_changes_between_calls():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    a = build("bucketing", s=3, seed=7, then="median")
    b = build("bucketing", s=3, seed=7, then="median")
    first = a(x)
    assert torch.equal(first, b(x))  # same seed, same call index
    assert not torch.equal(a(x), first)  # the next call draws a new permutation
    c = build("bucketing", s=3, seed=8, then="median")
    assert not torch.equal(c(x), first)


def test_monna_by_hand():
    x = col(0.0, 1.0, 3.0, 10.0)
    # trusted value 0 -> mean of {0, 1, 3}; with ids 7..10 and trusted 10 (value 10) -> {10, 3, 1}
    assert torch.allclose(build("monna", f=1)(x), torch.tensor([4 / 3]))
    agg = build("monna", f=1, trusted_client=10)
    assert torch.allclose(agg(x, client_ids=[7, 8, 9, 10]), torch.tensor([14 / 3]))
    with pytest.raises(ValueError, match="trusted client 10 sent no finite update"):
        agg(x, client_ids=[1, 2, 3, 4])


# -------------------------------------------------------------------------- Flag Aggregator
def test_flag_by_hand():
    # collinear updates: the unit vectors are all e1, the subspace is e1, the sum is 3 e1
    x = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert torch.allclose(build("flag")(x), torch.tensor([3.0, 0.0, 0.0]), atol=1e-6)
    # three e1 and one e2: the flag mean is e1, re-weighting keeps it: 3 e1 / 1
    y = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 7.0, 0.0]])
    assert torch.allclose(build("flag")(y), torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)
    # a 2-D subspace holds both directions: (3 e1 + e2) / 2
    assert torch.allclose(build("flag", dim=2)(y), torch.tensor([1.5, 0.5, 0.0]), atol=1e-5)


def reference_flag(x: torch.Tensor, dim: int, lam: float, iterations: int, eps: float = 1e-7) -> torch.Tensor:
    """The authors' FlagIRLS written out in the d-dimensional space (center_algorithms_torch.py:
    flag_mean_iteration, irls_flag, calc_error_1_2 'sine'), started from the flag mean."""
    xs = [(v / v.norm())[:, None].double() for v in x]
    n = len(xs)

    def top(cols):
        return torch.linalg.svd(torch.hstack(cols), full_matrices=False)[0][:, :dim]

    def err(y):
        return sum(torch.sqrt(torch.clamp(1 - torch.trace(y.T @ v @ v.T @ y), min=0)) for v in xs)

    def step(y):
        cols = [((1 - torch.trace(y.T @ v @ v.T @ y)).abs() + eps) ** -0.25 * v for v in xs]
        for i in range(n):
            for j in range(n):
                if i != j:
                    dv = xs[i] - xs[j]
                    w = ((1 - torch.trace(y.T @ dv @ dv.T @ y)).abs() + eps) ** -0.25 * lam / (n * (n - 1))
                    cols.append(w * dv)
        return top(cols)

    y = top(xs)
    e = err(y)
    for _ in range(iterations):
        if e <= 1e-10:
            break
        cand = step(y)
        ce = err(cand)
        if ce >= e:
            break
        y, diff, e = cand, e - ce, ce
        if diff <= 1e-10:
            break
    return sum(y @ (y.T @ v) for v in xs).flatten() / dim


@pytest.mark.parametrize("dim,lam", [(1, 0.0), (2, 0.0), (2, 5.0)])
def test_flag_matches_the_authors_algorithm_in_full_dimension(dim, lam):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 12, generator=g, dtype=torch.float64) + 2.0
    x[0] = -3 * x[0]
    out = K.flag_aggregate(x, dim=dim, lam=lam, iterations=4)
    assert torch.allclose(out, reference_flag(x, dim, lam, 4), atol=1e-8)


# --------------------------------------------------------------------------- check() and config
@pytest.mark.parametrize(
    "spec,n,message",
    [
        ({"name": "krum", "f": 10}, 20, "krum needs n > 2f + 2 (f=10, n=20): lower f to at most 8"),
        ({"name": "multi_krum", "f": 3}, 8, "multi_krum needs n > 2f + 2 (f=3, n=8): lower f to at most 2"),
        ({"name": "multi_krum", "f": 2, "m": 9}, 10, "multi_krum needs m <= n - f (m=9, f=2, n=10): lower m to at most 8"),
        ({"name": "bulyan", "f": 3}, 14, "bulyan needs n >= 4f + 3 (f=3, n=14): lower f to at most 2"),
        ({"name": "trimmed_mean", "f": 5}, 10, "trimmed_mean needs n > 2f (f=5, n=10): lower f to at most 4"),
        ({"name": "krum", "f": 0}, 2, "krum needs n > 2f + 2 (f=0, n=2): sample more clients per round"),
        ({"name": "nnm", "f": 1, "then": {"name": "krum", "f": 4}}, 10, "krum needs n > 2f + 2 (f=4, n=10): lower f to at most 3"),
        ({"name": "bucketing", "s": 3, "then": {"name": "krum", "f": 1}}, 10, "krum needs n > 2f + 2 (f=1, n=4): lower f to at most 0"),
        ({"name": "arc", "f": 6}, 12, "arc needs n > 2f (f=6, n=12): lower f to at most 5"),
        ({"name": "monna", "f": 2}, 4, "monna needs n > 2f (f=2, n=4): lower f to at most 1"),
    ],
)
def test_check_refuses_impossible_settings_with_one_line(spec, n, message):
    with pytest.raises(ValueError) as err:
        AGGREGATORS.build(spec).check(n)
    assert str(err.value) == message


def test_check_accepts_the_boundary():
    build("krum", f=8).check(19)
    build("bulyan", f=3).check(15)
    build("nnm", f=4, then={"name": "bulyan", "f": 1}).check(9)


def test_nested_then_is_validated_with_its_path():
    with pytest.raises(ConfigError, match=r"aggregator\.then.*did you mean 'krum'"):
        AGGREGATORS.build({"name": "nnm", "then": {"name": "krun"}}, path="aggregator")
    with pytest.raises(ConfigError, match=r"aggregator\.then.*unknown key"):
        AGGREGATORS.build({"name": "arc", "then": {"name": "krum", "ff": 1}}, path="aggregator")
    with pytest.raises(ConfigError, match="unknown key"):
        AGGREGATORS.build({"name": "krum", "g": 1})
    nested = AGGREGATORS.build({"name": "bucketing", "then": {"name": "nnm", "f": 1, "then": {"name": "krum"}}})
    assert nested.params.then == {"name": "nnm", "f": 1, "then": {"name": "krum"}}


# ------------------------------------------------------------------------- non-finite updates
def test_non_finite_updates_are_dropped_and_f_shrinks():
    honest = torch.tensor([[0.0, 1.0], [0.1, 1.1], [0.2, 0.9], [-0.1, 1.0], [0.0, 0.8]])
    bad = torch.tensor([[math.nan, 0.0], [math.inf, 1.0]])
    x = torch.cat([bad, honest])
    out = build("krum", f=2)(x)  # n = 7, f = 2 -> 5 finite rows with f = 0
    assert any(torch.equal(out, row) for row in honest)
    assert torch.equal(build("median")(x), honest.median(dim=0).values)
    gm = build("geometric_median")(x, torch.ones(7))
    assert torch.isfinite(gm).all()
    huge = torch.full((1, 2), 1e30)  # finite, but its squared norm overflows float32
    assert torch.equal(build("krum", f=1)(torch.cat([huge, honest])), build("krum", f=0)(honest))
    assert torch.equal(build("trimmed_mean", f=1)(torch.cat([huge, honest])), honest.mean(dim=0))
    with pytest.raises(ValueError, match="all 2 updates of this round hold NaN"):
        build("median")(bad)
    with pytest.raises(ValueError, match="krum needs n > 2f \\+ 2 \\(f=0, n=2\\)"):
        build("krum", f=0)(torch.cat([bad, honest[:2]]))


# ------------------------------------------------------------------------------ MUD-HoG
def mudhog_round(gen, rnd, common, sign_flip=(0, 1, 2), noisy=(3, 4), unreliable=(5, 6), n=20, d=200):
    x = common + 0.3 * torch.randn(n, d, generator=gen)
    for i in sign_flip:
        x[i] = -common + 0.3 * torch.randn(d, generator=gen)
    for i in noisy:
        x[i] = common + 5.0 * torch.randn(d, generator=gen)
    for i in unreliable:
        x[i] = 0.2 * common + 0.3 * torch.randn(d, generator=gen)
    return x


def test_largest_gap_split_by_hand():
    assert K.largest_gap_split(torch.tensor([0.9, 0.1, 1.0, 0.2])) == pytest.approx(0.55)
    assert K.largest_gap_split(torch.tensor([0.3])) == 0.0


def test_mudhog_flags_sign_flippers_and_noise_and_reports_unreliable_clients():
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(200, generator=gen)
    ids = list(range(100, 120))
    agg = build("mudhog", warmup=2, delay=2)
    flags = []
    for rnd in range(7):
        x = mudhog_round(gen, rnd, common)
        out = agg(x, torch.ones(20), client_ids=ids)
        flags.append(agg.last_flagged)
    assert flags[0] is flags[1] is None  # warm-up: plain mean, no verdict
    assert flags[-1] == (100, 101, 102, 103, 104)
    assert agg.last_report["sign_flip"] == (100, 101, 102)
    assert agg.last_report["additive_noise"] == (103, 104)
    assert agg.last_unreliable == (105, 106)
    honest_mean = x[5:].mean(dim=0)
    assert torch.allclose(out, honest_mean, atol=1e-5)


def test_mudhog_flags_non_finite_updates_and_works_without_ids():
    agg = build("mudhog")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    x[2, 1] = math.nan
    out = agg(x)
    assert agg.last_flagged is None  # warm-up: no verdict, but the faulty row is dropped and reported
    assert agg.last_report["non_finite"] == (2,)
    assert torch.allclose(out, x[[0, 1, 3, 4, 5]].mean(dim=0))


def test_mudhog_keeps_per_client_history_across_partial_participation():
    agg = build("mudhog", window=2, warmup=10)
    a, b = torch.ones(1, 3), 3 * torch.ones(1, 3)
    agg(torch.cat([a, b]), client_ids=[5, 9])
    agg(5 * torch.ones(1, 3), client_ids=[9])
    agg(7 * torch.ones(1, 3), client_ids=[9])
    slot9 = agg.slot[9]
    # client 9's window of 2 holds its last two updates (5 and 7): short history 6
    assert torch.allclose(agg.short_sum[slot9] / 2, 6 * torch.ones(3))
    assert int(agg.seen[agg.slot[5]]) == 1


# --------------------------------------------------------------- registry-wide behaviour
ROBUST = ["median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median", "centered_clipping",
          "norm_clipping", "monna", "flag", "nnm", "bucketing", "arc", "mudhog"]


@pytest.mark.parametrize("name", ROBUST)
def test_every_rule_is_documented_builds_from_defaults_and_keeps_dtype(name):
    cls = AGGREGATORS[name]
    assert cls.summary and cls.references and cls.__doc__
    agg = AGGREGATORS.build(name)
    agg.check(12)
    x = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = agg(x, torch.ones(12, dtype=torch.float64), client_ids=list(range(12)))
    assert out.shape == (5,) and out.dtype == torch.float64 and torch.isfinite(out).all()


GPU_PARAMS = {"trimmed_mean": {"f": 3}, "krum": {"f": 3}, "multi_krum": {"f": 3}, "bulyan": {"f": 2}, "monna": {"f": 3},
              "nnm": {"f": 3, "then": {"name": "krum", "f": 3}}, "arc": {"f": 3, "then": "trimmed_mean"},
              "bucketing": {"then": "geometric_median"}, "flag": {"dim": 2, "lam": 1.0}, "mudhog": {"warmup": 1}}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ROBUST)
def test_rules_on_cuda_match_cpu(name):
    spec = {"name": name, **GPU_PARAMS.get(name, {})}
    g = torch.Generator().manual_seed(6)
    on_cpu, on_gpu = AGGREGATORS.build(spec), AGGREGATORS.build(spec)
    for rnd in range(3):
        x = torch.randn(20, 3000, generator=g, dtype=torch.float64)
        x[:3] *= -4.0
        w = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
        ids = list(range(20))
        cpu = on_cpu(x, w, client_ids=ids)
        gpu = on_gpu(x.cuda(), w.cuda(), client_ids=ids)
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-8), f"round {rnd}"


# ----------------------------------------------------------------------------- ByzFL cross-check
def load_byzfl():
    """``byzfl.aggregators``, or skip.  byzfl's package ``__init__`` imports its benchmark suite
    (pandas, seaborn); without them only the aggregators are loaded."""
    try:  # not `import byzfl.aggregators`: byzfl's star imports rebind that name to a submodule
        return importlib.import_module("byzfl.aggregators")
    except ImportError:
        for name in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("byzfl")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("byzfl is not installed")
    shell = types.ModuleType("byzfl")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = shell
    try:
        return importlib.import_module("byzfl.aggregators")
    except ImportError as err:
        pytest.skip(f"byzfl.aggregators cannot be imported: {err}")


@pytest.fixture(scope="module")
def byzfl():
    return load_byzfl()


@pytest.fixture
def random_updates():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(15, 40, generator=g)
    x[:3] = 4.0 - 2.0 * x[:3]
    return x


def close(a, b, atol=1e-5):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=atol)


def test_byzfl_coordinate_rules(byzfl, random_updates):
    x = random_updates
    assert close(build("median")(x), byzfl.Median()(x.clone()))
    assert close(build("trimmed_mean", f=3)(x), byzfl.TrMean(3)(x.clone()))


def test_byzfl_krum_family(byzfl, random_updates):
    # ByzFL scores with n - f - 1 neighbours, Blanchard et al. (and fllab) with n - f - 2: ByzFL's
    # rule with f equals fllab's with f - 1
    x, f = random_updates, 3
    assert close(build("krum", f=f - 1)(x), byzfl.Krum(f)(x.clone()))
    assert close(build("multi_krum", f=f - 1, m=15 - f)(x), byzfl.MultiKrum(f)(x.clone()))


def test_byzfl_geometric_median_and_centered_clipping(byzfl, random_updates):
    x = random_updates
    ours = K.geometric_median(x, nu=0.1, max_iter=3, tol=0.0, start=torch.zeros(x.shape[1]))
    assert close(ours, byzfl.GeometricMedian(0.1, 3)(x.clone()))
    for iterations in (1, 3):
        theirs = byzfl.CenteredClipping(tau=2.0, L=iterations)
        ours_cc = build("centered_clipping", tau=2.0, iterations=iterations)
        for rnd in range(3):
            xr = x + rnd
            assert close(ours_cc(xr), theirs(xr.clone()))


def test_byzfl_preaggregators(byzfl, random_updates):
    x, f = random_updates, 3
    assert close(K.nnm(x, f), byzfl.NNM(f)(x.clone()))
    assert close(K.arc_clip(x, f), byzfl.ARC(f)(x.clone()))
    torch.manual_seed(5)
    perm = torch.randperm(15)
    torch.manual_seed(5)  # ByzFL permutes with torch's global generator
    assert close(K.bucket_means(x, 4, perm), byzfl.Bucketing(4)(x.clone()))
    assert close(K.monna(x, f, 4), byzfl.MoNNA(f, 4)(x.clone()))


# ------------------------------------------------------------------------ f's default (ByzFL's)
def _scenario(aggregator, attacks=(), clients_per_round=None):
    from tests.conftest import TINY
    from fllab.scenario.loader import validate_schema

    data = {**TINY, "aggregator": aggregator, "attacks": list(attacks),
            "federation": {**TINY["federation"], "num_clients": 10, "clients_per_round": clients_per_round}}
    return validate_schema(data)


SIGN_FLIP = {"name": "sign_flip", "fraction": 0.2, "scale": 4.0}


def test_unset_f_becomes_the_declared_malicious_count_in_every_f_of_the_chain():
    from fllab.defenses.aggregators.byzantine import with_default_f
    from fllab.scenario.build import resolve

    setup = resolve(with_default_f(_scenario({"name": "nnm", "then": {"name": "krum"}}, [SIGN_FLIP])))
    assert setup.resolved["aggregator"]["f"] == 2 and setup.resolved["aggregator"]["then"] == {"name": "krum", "f": 2}
    assert setup.aggregator.params.f == 2 and setup.aggregator.inner.params.f == 2
    # bare names too; an explicit f (0 included) is kept as written; capped at the clients per round
    assert with_default_f(_scenario("trimmed_mean", [SIGN_FLIP])).aggregator.spec() == {"name": "trimmed_mean", "f": 2}
    assert with_default_f(_scenario({"name": "krum", "f": 0}, [SIGN_FLIP])).aggregator.spec() == {"name": "krum", "f": 0}
    assert with_default_f(_scenario("bulyan", [{**SIGN_FLIP, "fraction": 0.6}], 5)).aggregator.spec() == {"name": "bulyan", "f": 5}
    # nothing to fill: no poisoning attack, or a rule without f
    plain = _scenario("krum")
    assert with_default_f(plain) is plain
    median = _scenario("median", [SIGN_FLIP])
    assert with_default_f(median) is median


def test_the_default_f_is_what_makes_trimmed_mean_bite():
    """8 honest updates near 1 and 2 sign-flipped ones at -40: the bare rule (f = 0) is the
    mean and is dragged to -7.2; with the scenario's 2 malicious clients it trims both and averages
    the 6 middle honest values, (0.9 + 0.95 + 0.98 + 1.0 + 1.0 + 1.02) / 6 = 0.975."""
    from fllab.defenses.aggregators.byzantine import with_default_f

    updates = col(0.9, 1.0, 1.1, 0.95, 1.05, 1.0, 0.98, 1.02, -40.0, -40.0)
    bare = AGGREGATORS.build(_scenario("trimmed_mean", [SIGN_FLIP]).aggregator.spec())
    defaulted = AGGREGATORS.build(with_default_f(_scenario("trimmed_mean", [SIGN_FLIP])).aggregator.spec())
    assert bare(updates).item() == pytest.approx(-7.2, abs=1e-4)
    assert defaulted(updates).item() == pytest.approx(0.975, abs=1e-6)


def test_a_bad_attack_fraction_is_reported_under_its_path():
    from fllab.defenses.aggregators.byzantine import with_default_f

    with pytest.raises(ConfigError, match=r"^attacks\.0"):
        with_default_f(_scenario("krum", [{**SIGN_FLIP, "fraction": "lots"}]))


def test_a_run_with_a_bare_krum_tolerates_the_attacks_malicious_clients(tiny):
    """Through fllab.scenario.build.resolve: `aggregator: krum` against 20% sign-flippers of 10
    clients resolves to f = 2 (run, sweep, validate and scorecard all resolve through it)."""
    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema

    tiny.update(aggregator="krum", attacks=[SIGN_FLIP])
    tiny["federation"]["num_clients"] = 10
    setup = resolve(validate_schema(tiny))
    assert setup.resolved["aggregator"] == {"name": "krum", "f": 2} and setup.aggregator.params.f == 2
