"""The exact path's coding probabilities (codec.entropy.exact_models): close to the
discretized Gaussians they stand for, and the same numbers whether tabulated per std or
computed per latent (a learned variance gives every latent its own std)."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ddpmcodec.codec.entropy import exact_models as em


def _reference_gaussian(frac, std, half):
    edges = np.arange(-half, half, dtype=np.float64) + 0.5
    cdf = norm.cdf((edges[None, :] - frac[:, None]) / std[:, None])
    cdf = np.hstack([np.zeros((len(frac), 1)), cdf, np.ones((len(frac), 1))])
    return np.diff(cdf, axis=1)


def test_gaussian_rows_are_the_discretized_gaussian():
    rng = np.random.default_rng(0)
    frac = rng.uniform(-0.5, 0.5, 200)
    std = np.full(200, 5.3)
    rows = em.gaussian_rows(frac, std, 40)
    assert rows.shape == (200, 81)
    assert np.allclose(rows.sum(axis=1), 1.0, atol=1e-12)
    # the offset is rounded to 1/256 of a step: at most 1/512 step off, ~4e-4 std here
    ref = _reference_gaussian(np.rint(frac * 256) / 256, std, 40)
    assert np.max(np.abs(rows - ref)) < 1e-9
    assert np.max(np.abs(rows - _reference_gaussian(frac, std, 40))) < 2e-4


def test_per_latent_stds_give_the_tables_numbers():
    rng = np.random.default_rng(1)
    n = 3000
    frac = rng.uniform(-0.5, 0.5, n)
    levels = 4.0 + rng.integers(0, 40, n) / 8.0          # 40 distinct stds: computed directly
    assert len(np.unique(levels)) > em._TABLED_STDS
    direct = em.gaussian_rows(frac, levels, 30)
    for s in np.unique(levels)[:6]:
        sel = levels == s
        assert np.array_equal(direct[sel], em.gaussian_rows(frac[sel], levels[sel], 30))
    # means beyond the levels too, to the clip at -64 and 319 levels (the tables' ends)
    mean = np.concatenate([rng.uniform(-1.1, 1.1, n - 8),
                           [-1.51, -1.5, -2.0, 1.51, 1.5, 2.0, -1.0, 1.0]])
    std = 0.004 + rng.integers(0, 40, n) / 4000.0
    direct = em.pixel_rows(mean, std)
    assert np.allclose(direct.sum(axis=1), 1.0, atol=1e-12)
    for s in np.unique(std)[:6]:
        sel = std == s
        assert np.array_equal(direct[sel], em.pixel_rows(mean[sel], std[sel]))
