"""The one RMSE/PSNR definition (`core.metrics`): [0, 255] scale, pooled over all pixels of
all images (mean squared error first, then the square root), PSNR = 20 log10(255 / RMSE),
+inf at RMSE 0. Expected values are worked out by hand in the comments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddpmcodec.core.metrics import mse_per_image, psnr, rmse_from_model_mse, rmse_psnr


def test_model_space_scale():
    # [-1, 1] -> [0, 255] multiplies differences by 127.5 (not 255, not 128)
    assert rmse_from_model_mse(0.04) == pytest.approx(127.5 * 0.2)          # 25.5
    assert rmse_from_model_mse(1.0) == pytest.approx(127.5)
    np.testing.assert_allclose(rmse_from_model_mse(np.array([0.0, 0.25])), [0.0, 63.75])


def test_psnr_values_and_inf_at_zero():
    assert psnr(25.5) == pytest.approx(20.0)                     # 20 log10(255 / 25.5) = 20
    assert psnr(2.55) == pytest.approx(40.0)
    assert psnr(255.0) == pytest.approx(0.0)
    assert isinstance(psnr(25.5), float)
    assert psnr(0.0) == math.inf                                 # no warning, no nan
    out = psnr(np.array([0.0, 25.5, 63.75]))
    assert out[0] == math.inf and out[1] == pytest.approx(20.0)
    assert out[2] == pytest.approx(20 * math.log10(4))           # 12.0412


def test_mse_per_image_does_not_wrap_uint8():
    a = np.full((2, 4, 4, 3), 10, dtype=np.uint8)
    b = np.full((2, 4, 4, 3), 20, dtype=np.uint8)
    # 10 - 20 in uint8 would wrap to 246 (MSE 60516); the difference is -10: MSE 100
    np.testing.assert_allclose(mse_per_image(a, b), [100.0, 100.0])
    np.testing.assert_allclose(mse_per_image(b, a), [100.0, 100.0])


def test_rmse_psnr_is_pooled_not_mean_of_per_image():
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[1] = 10                   # image 0 identical (MSE 0), image 1 off by 10 (MSE 100)
    rmse, p = rmse_psnr(b, a)
    # pooled: sqrt((0 + 100) / 2) = sqrt(50) = 7.0711;  mean of per-image RMSEs would be 5.0
    assert rmse == pytest.approx(math.sqrt(50.0), rel=1e-12)
    assert p == pytest.approx(20 * math.log10(255 / math.sqrt(50.0)), rel=1e-12)  # 31.1411
    assert p == pytest.approx(31.1411, abs=1e-4)
    assert rmse_psnr(a, a) == (0.0, math.inf)


def test_pixel_and_model_space_agree():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 2, 5, 5))
    y = rng.uniform(-1, 1, (3, 2, 5, 5))
    px, py = x * 127.5 + 127.5, y * 127.5 + 127.5
    rmse, _ = rmse_psnr(px, py)
    assert rmse == pytest.approx(float(rmse_from_model_mse(((x - y) ** 2).mean())), rel=1e-12)
