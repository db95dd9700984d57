"""Rate-distortion of the reverse process from the per-step bound terms (paper Table 4 /
Figure 5).

Having received chain latent x_k (chain step k, paper time t = timesteps[k] + 1) a receiver
has paid the prior and every KL term of the steps above and at k:

    rate(k) = L_prior + sum_{j >= k, j >= 1} L_j           (bits/dim, mean over images)

and reconstructs x0 by the clipped x0-prediction from x_k, whose distortion is

    RMSE(k) = 127.5 * sqrt(mean over images and pixels of ||x0_hat - x0||^2)   ([0, 255] scale)
    PSNR(k) = 20 log10(255 / RMSE(k)).

The reverse step of chain step k is K - k (1 = the first step after x_{K-1}, K = the last).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ddpmcodec.core.metrics import psnr, rmse_from_model_mse


def rate_distortion(arrays: dict) -> pd.DataFrame:
    """One row per chain step k: reverse_step, t, rate_bpd (+ se), rmse, psnr, mse."""
    vb, prior, mse = arrays["vb"], arrays["prior"], arrays["xstart_mse"]
    n, K = vb.shape
    kl = vb.copy()
    kl[:, 0] = 0.0  # the decoder term L_0 is distortion, not rate
    # per image: rate of having x_k = prior + sum_{j >= k} kl_j
    per_image_rate = prior[:, None] + np.cumsum(kl[:, ::-1], axis=1)[:, ::-1]
    rate = per_image_rate.mean(0)
    rate_se = per_image_rate.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(K)
    mean_mse = mse.mean(0)
    rmse = rmse_from_model_mse(mean_mse)
    ts = np.asarray(arrays["timesteps"])
    return pd.DataFrame({"k": np.arange(K), "reverse_step": K - np.arange(K), "t": ts + 1,
                         "rate_bpd": rate, "rate_se": rate_se, "rmse": rmse, "psnr": psnr(rmse),
                         "mse": mean_mse})


def table4(curve: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 4: ten rows at reverse steps K, 0.9K, ..., 0.1K."""
    K = len(curve)
    steps = sorted({max(1, int(round(K * (10 - j) / 10))) for j in range(10)}, reverse=True)
    rows = curve.set_index("reverse_step").loc[steps].reset_index()
    return rows[["reverse_step", "t", "rate_bpd", "rate_se", "rmse", "psnr"]]
