"""`ddpmcodec calibrate`: the per-timestep statistics that few-step chains need, measured
on calibration images and written as a calibration file (:mod:`ddpmcodec.io.calibration`).

The x0-prediction error m[i] = E||x0 - clip(x0_hat(x_i))||^2 / d is the ``xstart_mse`` that
the bound computes anyway, so the measurement is an ``nll`` run on the chain of the
calibrated indices (``points`` of them, quadratically spaced so that they are dense near
the data where m changes fastest, or all T): resumable, and its results folder is kept
beside the file. The decoder's variance is chosen on the same images: the residuals
x0 - clip(x0_hat(x_0)) at index 0, under the discretized Gaussian decoder, for a grid of
variances.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.core.chains import quadratic_timesteps
from ddpmcodec.core.likelihood import (
    LN2,
    discretized_gaussian_log_likelihood,
    mean_flat,
)
from ddpmcodec.core.rng import counter_normal
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.calibration import Calibration
from ddpmcodec.io.data import ImageSet, check_fits, to_model_space
from ddpmcodec.io.models import LoadedModel
from ddpmcodec.io.results import load_arrays
from ddpmcodec.pipelines.nll import run_nll

# decoder variances tried: from far below a pixel bin ((2/255)^2 = 6.2e-5) to far above
DECODER_GRID = np.exp(np.linspace(np.log(1e-7), np.log(1e-2), 141))


def calibration_indices(num_timesteps: int, points: int | None) -> list[int]:
    """The original indices to measure: all (None or >= T), else ``points`` of them."""
    if points is None or points >= num_timesteps:
        return list(range(num_timesteps))
    if points < 2:
        raise DDPMCodecError(f"--points must be at least 2, got {points}")
    return quadratic_timesteps(num_timesteps, points)


def decoder_grid_bpd(model: LoadedModel, x0: torch.Tensor, ids: torch.Tensor, seed: int,
                     grid=DECODER_GRID, batch_size: int = 16) -> np.ndarray:
    """Mean decoder bits/dim at index 0 over the images, for every variance of ``grid``."""
    full = model.diffusion
    den = model.denoiser()
    k0 = torch.zeros(1, dtype=torch.long)
    total = np.zeros(len(grid))
    for a in range(0, len(x0), batch_size):
        xb, ib = x0[a:a + batch_size], ids[a:a + batch_size]
        k = k0.expand(len(xb))
        x_t = full.q_sample(xb, k, counter_normal(seed, ib, 0, xb.shape[1:]))
        out = den(x_t.to(model.device, torch.float32), full.timesteps[k].to(model.device)).cpu()
        pred = full.p_mean_variance(x_t, k, out)["pred_x0"]
        for j, v in enumerate(grid):
            ll = discretized_gaussian_log_likelihood(xb, pred, torch.full_like(pred, 0.5 * np.log(v)))
            total[j] += float(-mean_flat(ll).sum()) / LN2
    return total / len(x0)


def calibrate(model: LoadedModel, images: ImageSet, work: str | Path, points: int | None = None,
              seed: int = 0, batch_size: int | None = None, progress: bool = True,
              command: str = "") -> Calibration:
    """Measure the calibration of ``model`` on ``images``; the nll run goes to ``work``."""
    check_fits(images.images, model.image_shape)
    T = model.diffusion.num_steps
    indices = calibration_indices(T, points)
    chain = model.diffusion if len(indices) == T else model.diffusion.respace(indices)
    t0 = time.perf_counter()
    run_nll(model, images, work, None, batch_size, seed, progress=progress, engine="fast",
            chain=chain, chain_choice={"purpose": "calibration", "points": len(indices)})
    arrays = load_arrays(work)
    n = len(images)
    mse = arrays["xstart_mse"]  # [N, P]
    se = mse.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(mse.shape[1])
    x0 = to_model_space(images.images)
    dec = decoder_grid_bpd(model, x0, torch.arange(n), seed)
    meta = {"model": {"fingerprint": model.fingerprint, "source": model.source},
            "data": images.spec, "seed": int(seed), "num_images": int(n),
            "nll_results": str(work), "seconds": time.perf_counter() - t0,
            "command": command}
    return Calibration(model.fingerprint, T, np.asarray(indices, dtype=np.int64),
                       mse.mean(0), se, arrays["eps_mse"].mean(0), DECODER_GRID.copy(), dec, meta)
