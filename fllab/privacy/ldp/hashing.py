"""A vectorised seeded hash family for local hashing (BLH / OLH).

Wang et al. (USENIX Security 2017) hash each value with a hash function drawn at random by the
client from a universal family; the reference implementation draws a 64-bit seed and uses
``xxhash32(str(v), seed) % g``.  Here the family is the SplitMix64 finaliser (Steele, Lea & Flood,
OOPSLA 2014) applied to ``seed + (v + 1) * 0x9E3779B97F4A7C15``: a bijective 64-bit mixer whose
output bits are indistinguishable from uniform for statistical purposes, evaluated on whole numpy
arrays at once.  ``H_seed(v) = mix(seed, v) mod g``.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def seeded_hash(seeds: np.ndarray, values: np.ndarray, g: int) -> np.ndarray:
    """``H_seed(v) in {0..g-1}`` for broadcastable arrays of uint64 ``seeds`` and int ``values``."""
    with np.errstate(over="ignore"):
        z = np.asarray(seeds, dtype=np.uint64) + (np.asarray(values, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(g)).astype(np.int64)
