"""Sampling from the reverse process: ancestral and DDIM, from pure noise or from a given
latent x_t; the x0-prediction along the way (progressive generation).

All math in float64; the network in float32. Noise comes from ``rng.counter_normal``:
the reverse-step noise of sample ``s`` at chain step k is
``counter_normal(seed, s, timesteps[k])`` and the starting noise x_T uses the counter
value T (one past the last index), so a sample is reproducible one by one and the same
noise can be shared between runs on purpose (interpolation, shared latents).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.likelihood import Denoiser
from ddpmcodec.core.rng import counter_normal


def _t(diffusion: Diffusion, k: int, n: int) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def reverse_process(denoiser: Denoiser, diffusion: Diffusion, x_start: torch.Tensor,
                    start_k: int, sample_ids, seed: int, method: str = "ancestral",
                    record: Iterable[int] = (), on_step: Callable | None = None,
                    model_dtype=torch.float32) -> dict:
    """Run the reverse chain from ``x_start`` (the latent at chain step ``start_k``) to x0.

    method: ``ancestral`` (x_{k-1} ~ p_theta(x_{k-1}|x_k), no noise at the last step, as
    the official sampler) or ``ddim`` (eta = 0: x_{k-1} = sqrt(abar_{k-1}) x0_hat +
    sqrt(1 - abar_{k-1}) eps_hat, the deterministic probability-flow path).
    Returns dict(x0 = float64 [B,C,H,W] in [-1, 1], pred_x0 = {k: tensor} and
    x = {k: tensor} for the recorded chain steps k (x[k] is the latent at step k)).
    """
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"method must be ancestral or ddim, got {method!r}")
    record = set(record)
    x = x_start.to(torch.float64)
    n = x.shape[0]
    sample_ids = torch.as_tensor(sample_ids, dtype=torch.long)
    preds, latents = {}, {}
    for k in range(start_k, -1, -1):
        kk = _t(diffusion, k, n)
        t_orig = diffusion.timesteps[kk].to(x.device)
        with torch.no_grad():
            out = diffusion.p_mean_variance(x, kk, denoiser(x.to(model_dtype), t_orig))
        if k in record:
            preds[k] = out["pred_x0"].cpu()
            latents[k] = x.cpu()
        if method == "ancestral":
            if k > 0:
                z = counter_normal(seed, sample_ids, diffusion.timesteps[k], x.shape[1:]).to(x.device)
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z
            else:
                x = out["mean"]
        else:
            ab_prev = diffusion.alphas_cumprod_prev[k].item()
            eps = diffusion.predict_eps(x, kk, out["pred_x0"])
            x = ab_prev ** 0.5 * out["pred_x0"] + (1.0 - ab_prev) ** 0.5 * eps if k > 0 \
                else out["pred_x0"]
        if on_step is not None:
            on_step()
    return {"x0": x.clamp(-1.0, 1.0), "pred_x0": preds, "x": latents}


def prior_noise(diffusion: Diffusion, sample_ids, seed: int, shape) -> torch.Tensor:
    """x_T ~ N(0, I) for each sample (counter value T)."""
    T = int(diffusion.timesteps[-1]) + 1
    return counter_normal(seed, sample_ids, T, shape)


def sample(denoiser: Denoiser, diffusion: Diffusion, n: int, shape, seed: int = 0,
           method: str = "ancestral", record: Iterable[int] = (), first_id: int = 0,
           on_step=None, device=None) -> dict:
    """n samples from pure noise (see :func:`reverse_process`)."""
    ids = torch.arange(first_id, first_id + n)
    x_T = prior_noise(diffusion, ids, seed, shape).to(device)
    return reverse_process(denoiser, diffusion, x_T, diffusion.num_steps - 1, ids, seed,
                           method, record, on_step)


def diffuse(diffusion: Diffusion, x0: torch.Tensor, k: int, noise: torch.Tensor) -> torch.Tensor:
    """x_k ~ q(x_k | x0) with the given noise."""
    return diffusion.q_sample(x0.to(torch.float64), _t(diffusion, k, x0.shape[0]), noise)


def nearest_step(diffusion: Diffusion, t: int) -> int:
    """The chain step whose paper time timesteps[k] + 1 is closest to t."""
    return int((diffusion.timesteps + 1 - t).abs().argmin())
