"""Candidate generator v1 ("philox4x64-boxmuller-v1", formats 1-2): Philox-4x64 words
(numpy) keyed by the chunk, Box-Muller with the math library's log, cos and sin. Its
files decode only where that library gives the same bits."""
from __future__ import annotations

import math

import numpy as np

GENERATOR_ID = "philox4x64-boxmuller-v1"
_TWO32 = 2.0 ** -32
_TWO24_2PI = np.float32(2.0 ** -24 * 2.0 * math.pi)


def words_per_candidate(dims: int) -> int:
    """uint64 words one candidate of ``dims`` normals uses: one word per two normals,
    padded to whole Philox blocks (4 words) so that candidate n starts at counter n*w/4."""
    half = (dims + 1) // 2
    return 4 * ((half + 3) // 4)


def candidate_normals(key: np.ndarray, start: int, count: int, dims: int) -> np.ndarray:
    """Standard normals for candidates start..start+count-1: float64 [count, dims].

    Word i of a candidate gives u1 (high 32 bits) and u2 (top 24 of the low 32 bits);
    Box-Muller r = sqrt(-2 ln u1) (float64), angle 2 pi u2 (float32 cos/sin); normal i is
    r_i cos, normal half+i is r_i sin. Tails are cut at 6.66 sigma, angles are on a 2^-24
    grid: the law differs from N(0, 1) by less than 1e-7 in distribution function.
    The result for candidate n depends on (key, n, dims) only, not on start or count.
    """
    wpc = words_per_candidate(dims)
    half = (dims + 1) // 2
    counter = np.array([start * (wpc // 4), 0, 0, 0], dtype=np.uint64)
    words = np.random.Philox(key=key, counter=counter).random_raw(count * wpc)
    # uint32 halves (little-endian: [..., 0] low, [..., 1] high); converting uint32 is
    # much faster than converting uint64
    halves = words.view(np.uint32).reshape(count, wpc, 2)[:, :half]
    r = np.sqrt(-2.0 * np.log((halves[..., 1].astype(np.float64) + 1.0) * _TWO32))
    theta = (halves[..., 0] >> np.uint32(8)).astype(np.float32)
    theta *= _TWO24_2PI
    out = np.empty((count, 2, half))
    np.multiply(r, np.cos(theta), out=out[:, 0])
    np.multiply(r, np.sin(theta), out=out[:, 1])
    out = out.reshape(count, 2 * half)
    return out[:, :dims]
