"""Probabilities of the exact coding path, the same float64 numbers on every machine.

constriction's QuantizedGaussian evaluates erf through the platform's libm, whose last
bits differ between libraries and CPUs. The exact path gives constriction's Categorical
rows computed here instead, from :func:`~ddpmcodec.core.exact.functions.normal_cdf_basic`
(IEEE +, -, *, / only):

* a Gaussian's mean offset from the centre of its alphabet is rounded to 1/256 of a grid
  step (grids resolve a standard deviation in 4..8 steps, so the offset moves by under
  1/2000 of a standard deviation: ~1e-7 nats per latent), and rows are tabulated per
  (offset, std);
* the 8-bit decoder's mean is rounded to 1/256 of a level in the same way.

Each bin is formed from the smaller tail mass at its edges (no cancellation far out);
the outer symbols take the tails.
"""
from __future__ import annotations

import functools

import numpy as np

from ddpmcodec.core.exact.functions import normal_cdf_basic

OFFSET_STEPS = 256          # mean offsets in 1/256 of a grid step (or of a pixel level)
_PIXEL_REACH = 320          # pixel tables cover centres this many levels around a level
# Above this many distinct stds in one call (a learned variance: one std per latent) the
# rows are computed per symbol instead of tabulated per std: the same expression on the
# same operands, so the same numbers, without a table per latent.
_TABLED_STDS = 16


def _rows(lower: np.ndarray, upper: np.ndarray, z: np.ndarray) -> np.ndarray:
    """[n, e + 1] bin masses from the tail masses (lower, upper) [n, e] at e inner
    edges z (increasing along a row; only their signs are read); the outer bins run to
    -inf and +inf. Each bin comes from the smaller tails of its two edges: above both
    edges upper_lo - upper_hi, below both lower_hi - lower_lo, else (1 - upper_hi) -
    lower_lo (an outer bin's missing tails are 0, its missing edge at -inf or +inf),
    clipped at 0. Written bin by bin into one array (no padded copies of the inputs:
    these arrays are [pixels, 256])."""
    n, e = z.shape
    out = np.empty((n, e + 1))
    inner = out[:, 1:e]
    # every bin first as if it straddled zero, then those wholly above or below replaced
    np.subtract(1.0 - upper[:, 1:], lower[:, :-1], out=inner)
    np.copyto(inner, upper[:, :-1] - upper[:, 1:], where=z[:, :-1] > 0)
    np.copyto(inner, lower[:, 1:] - lower[:, :-1], where=z[:, 1:] < 0)
    # (z_lo > 0 is tested before z_hi < 0; both cannot hold for increasing edges)
    out[:, 0] = np.where(z[:, 0] < 0, lower[:, 0], 1.0 - upper[:, 0])
    out[:, e] = np.where(z[:, -1] > 0, upper[:, -1], 1.0 - lower[:, -1])
    return np.maximum(out, 0.0, out=out)


@functools.lru_cache(maxsize=256)
def _offset_table(std: float, half: int) -> np.ndarray:
    """float64 [2 OFFSET_STEPS + 1, 2 half + 1]: row j is the Gaussian of std ``std``
    (grid units) centred at (j - OFFSET_STEPS) / (2 OFFSET_STEPS) on the symbols
    -half..half, the outer two taking the tails."""
    j = np.arange(-OFFSET_STEPS // 2, OFFSET_STEPS // 2 + 1, dtype=np.float64) / OFFSET_STEPS
    r = np.arange(-half, half, dtype=np.float64) + 0.5               # inner edges
    z = (r[None, :] - j[:, None]) / std                              # [J, 2h]
    return _rows(*normal_cdf_basic(z), z)


def offset_index(frac: np.ndarray) -> np.ndarray:
    """Row of :func:`_offset_table` for mean offsets ``frac`` in [-1/2, 1/2] (int64)."""
    return np.rint(frac * OFFSET_STEPS).astype(np.int64) + OFFSET_STEPS // 2


def gaussian_rows(frac: np.ndarray, std: np.ndarray, half: int) -> np.ndarray:
    """[n, 2 half + 1] probabilities of symbols -half..half for Gaussians with offsets
    ``frac`` (float64 [n], in [-1/2, 1/2]) and stds ``std`` (float64 [n], grid units)."""
    idx = offset_index(frac)
    stds, inverse = np.unique(std, return_inverse=True)
    if len(stds) == 1:
        return _offset_table(float(stds[0]), half)[idx]
    if len(stds) > _TABLED_STDS:
        j = (idx - OFFSET_STEPS // 2).astype(np.float64) / OFFSET_STEPS
        r = np.arange(-half, half, dtype=np.float64) + 0.5
        z = (r[None, :] - j[:, None]) / np.asarray(std, dtype=np.float64).reshape(-1, 1)
        return _rows(*normal_cdf_basic(z), z)
    out = np.empty((len(frac), 2 * half + 1))
    for u, s in enumerate(stds):
        sel = inverse.reshape(-1) == u
        out[sel] = _offset_table(float(s), half)[idx[sel]]
    return out


@functools.lru_cache(maxsize=64)
def _pixel_edges(std_levels: float) -> tuple[np.ndarray, np.ndarray]:
    """Tail masses (lower, upper) [2 OFFSET_STEPS + 1, 2 R] at the level edges r + 1/2,
    r = -R..R-1, of a Gaussian of std ``std_levels`` (in levels) centred at offset j."""
    j = np.arange(-OFFSET_STEPS // 2, OFFSET_STEPS // 2 + 1, dtype=np.float64) / OFFSET_STEPS
    r = np.arange(-_PIXEL_REACH, _PIXEL_REACH, dtype=np.float64) + 0.5
    return normal_cdf_basic((r[None, :] - j[:, None]) / std_levels)


def pixel_rows(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[n, 256] probabilities of the 8-bit levels under the discretized Gaussian decoder
    (bins of width 2/255 on [-1, 1], edge bins take the tails) with means ``mean`` and
    stds ``std`` (float64 [n], model space)."""
    u = np.clip((mean + 1.0) * 127.5, -64.0, 319.0)                 # the mean in levels
    c = np.rint(u)
    idx = offset_index(u - c)
    c = c.astype(np.int64)
    levels = np.arange(255)
    scaled = std * 127.5
    stds, inverse = np.unique(scaled, return_inverse=True)
    if len(stds) > _TABLED_STDS:  # the tables' entries, computed where they are needed
        j = (idx - OFFSET_STEPS // 2).astype(np.float64) / OFFSET_STEPS
        r = (levels[None, :] - c[:, None]).astype(np.float64) + 0.5
        lower, upper = normal_cdf_basic((r - j[:, None]) / scaled.reshape(-1, 1))
        return _rows(lower, upper, r - j[:, None])
    out = np.empty((len(mean), 256))
    for k, s in enumerate(stds):
        first, windows, last = _pixel_bins(float(s))
        sel = slice(None) if len(stds) == 1 else np.nonzero(inverse.reshape(-1) == k)[0]
        rows, q = idx[sel], _PIXEL_REACH - c[sel]  # edge 0 (levels 0 | 1) is column q
        out[sel, 1:255] = windows[rows * first.shape[1] + q]  # the bins from edge q on
        out[sel, 0] = first[rows, q]
        out[sel, 255] = last[rows, q + 254]
    return out


@functools.lru_cache(maxsize=64)
def _pixel_bins(std_levels: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bins of :func:`pixel_rows` by (offset row j, column q of an edge) for a std of
    ``std_levels`` levels: [J, E] the lowest level's bin (everything below edge q) and
    the highest level's (everything above it), and the 254 inner bins from edge q on as
    row j E + q of a [J E - 253, 254] window view of the bins between edges q and q + 1
    (columns q >= E - 254 run into the next row: never read). Each bin is the same
    expression of the same tail masses as :func:`_rows` evaluates for a whole row, so
    the numbers are the same; a pixel's row is then three gathers (one a block of 254),
    not two gathers of tails and their differences."""
    lower, upper = _pixel_edges(std_levels)
    J, E = lower.shape
    j = np.arange(-OFFSET_STEPS // 2, OFFSET_STEPS // 2 + 1, dtype=np.float64) / OFFSET_STEPS
    z = (np.arange(-_PIXEL_REACH, _PIXEL_REACH)[None, :] + 0.5) - j[:, None]  # sign of each edge
    pairs = np.zeros((J, E))                                 # bin between edges q and q + 1
    pairs[:, :E - 1] = _rows(lower, upper, z)[:, 1:E]
    first = np.maximum(np.where(z < 0, lower, 1.0 - upper), 0.0)
    last = np.maximum(np.where(z > 0, upper, 1.0 - lower), 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(pairs.reshape(-1), 254)
    return first, windows, last
