"""Distortion, defined once: RMSE on the [0, 255] scale and PSNR.

Every distortion the project reports is pooled over all pixels of all images (the mean
squared error is averaged first, then the square root taken), as the paper's Table 4 does.

    RMSE = sqrt(mean((a - b)^2))                  a, b on [0, 255]
         = 127.5 * sqrt(mean((x - y)^2))           x, y on [-1, 1] (model space)
    PSNR = 20 log10(255 / RMSE)                    dB; +inf when RMSE = 0
"""
from __future__ import annotations

import numpy as np

PEAK = 255.0
MODEL_TO_PIXEL = 127.5  # [-1, 1] -> [0, 255] is x * 127.5 + 127.5


def rmse_from_model_mse(mse):
    """RMSE on [0, 255] from a mean squared error measured in model space [-1, 1]."""
    return MODEL_TO_PIXEL * np.sqrt(mse)


def psnr(rmse):
    """PSNR in dB of an RMSE on [0, 255] (array or scalar; +inf where the RMSE is 0)."""
    rmse = np.asarray(rmse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = 20.0 * np.log10(PEAK / rmse)
    return float(out) if out.ndim == 0 else out


def mse_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of each image pair on [0, 255]: uint8 (or float) [N, ...] -> [N]."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return (d * d).reshape(len(d), -1).mean(1)


def rmse_psnr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Pooled RMSE on [0, 255] over all pixels of all images, and its PSNR."""
    rmse = float(np.sqrt(mse_per_image(a, b).mean()))
    return rmse, psnr(rmse)
