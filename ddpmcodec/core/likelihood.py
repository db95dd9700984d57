"""The variational bound term by term, exactly as the official DDPM code defines it.

For an image x0 (scaled to [-1, 1]) and a chain of K steps (``Diffusion``), the bound is

    L = L_prior + sum_{k=1}^{K-1} L_k + L_0                                     (nats)

    L_prior = KL(q(x_{K-1}|x0) || N(0, I))
    L_k     = KL(q(x_{k-1}|x_k, x0) || p_theta(x_{k-1}|x_k)),   x_k ~ q(x_k|x0)
    L_0     = -log p_theta(x0|x_0-latent), the discretized Gaussian decoder

where p_theta's mean goes through the clipped x0-prediction. Every term is reported per
image in bits/dim: nats summed over pixels, divided by (D * ln 2), D = C*H*W.
The "rate" is L_prior + sum_{k>=1} L_k, the "decoder" term is L_0.

All math is float64; the network is evaluated in its own dtype (float32 by default).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ddpmcodec.core.diffusion import Diffusion, normal_kl
from ddpmcodec.core.rng import counter_normal

LN2 = 0.6931471805599453  # ln 2, correctly rounded (a literal: no libm)

# A denoiser maps (x_t float32 [B,C,H,W], original timestep indices long [B]) to the
# network output [B,C or 2C,H,W].
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _approx_standard_normal_cdf(x):
    """The official code's tanh approximation of Phi (kept to reproduce its numbers)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, cdf: str = "exact"):
    """Elementwise log-probability (nats) of 8-bit data x in [-1, 1] under a Gaussian
    discretized to 256 bins of width 2/255; the edge bins take the tails.

    ``cdf="exact"`` uses Phi in float64 through log_ndtr, accurate far into the tails;
    ``cdf="tanh"`` reproduces the official code's approximation and its 1e-12 floor.
    """
    x, mean, log_scale = (t.to(torch.float64) for t in (x, mean, log_scale))
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    plus_in = inv_std * (centered + 1.0 / 255.0)
    min_in = inv_std * (centered - 1.0 / 255.0)
    if cdf == "tanh":
        cdf_plus = _approx_standard_normal_cdf(plus_in)
        cdf_min = _approx_standard_normal_cdf(min_in)
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    elif cdf == "exact":
        log_cdf_plus = torch.special.log_ndtr(plus_in)
        log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
        # a bin entirely in one tail: log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(
        # log Phi(a) - log Phi(b))), mirrored for the upper tail; no cancellation, no underflow
        upper = min_in > 0
        hi = torch.where(upper, -min_in, plus_in)
        lo = torch.where(upper, -plus_in, min_in)
        log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
        log_delta = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    else:
        raise ValueError(f"cdf must be 'exact' or 'tanh', got {cdf!r}")
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def vb_terms_bpd(diffusion: Diffusion, x0, x_t, k, model_out, cdf: str = "exact",
                 clip: bool = True):
    """Bound term at chain step k for each image, in bits/dim (float64 [B]).

    k: long [B]. Where k == 0 the term is the decoder NLL of x0, elsewhere the KL term.
    Returns dict(vb, pred_x0, eps) with pred_x0 the x0-prediction, clipped to [-1, 1] when
    ``clip`` (the bound's definition; training objectives use ``clip=False``, as improved
    DDPM does, so that the clamp does not cut gradients).
    """
    true_mean, true_logvar = diffusion.q_posterior(x0, x_t, k)
    out = diffusion.p_mean_variance(x_t, k, model_out, clip=clip)
    kl = mean_flat(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])) / LN2
    nll = -mean_flat(discretized_gaussian_log_likelihood(
        x0, out["mean"], 0.5 * out["log_variance"], cdf=cdf)) / LN2
    vb = torch.where(k.to(kl.device) == 0, nll, kl)
    return {"vb": vb, "pred_x0": out["pred_x0"], "eps": out["eps"]}


def prior_bpd(diffusion: Diffusion, x0) -> torch.Tensor:
    """L_prior per image in bits/dim (float64 [B])."""
    return mean_flat(diffusion.prior_kl(x0.to(torch.float64))) / LN2


def step_terms(denoiser: Denoiser, diffusion: Diffusion, x0, image_ids, k, seed: int,
               model_dtype=torch.float32, cdf: str = "exact"):
    """Bound term, x0-prediction MSE and eps MSE for a batch of (image, chain step) pairs.

    x0: float64 [B,C,H,W] in [-1, 1]; image_ids, k: long [B]. The noise of each pair is
    ``counter_normal(seed, image_id, original timestep)``, independent of batching.
    Returns float64 [B] tensors vb (bits/dim), xstart_mse and eps_mse (per-pixel MSE on
    the [-1, 1] scale).
    """
    k = torch.as_tensor(k, dtype=torch.long)
    t_orig = diffusion.timesteps[k]
    noise = counter_normal(seed, image_ids, t_orig, x0.shape[1:]).to(x0.device)
    x_t = diffusion.q_sample(x0, k, noise)
    with torch.no_grad():
        model_out = denoiser(x_t.to(model_dtype), t_orig.to(x0.device))
    terms = vb_terms_bpd(diffusion, x0, x_t, k, model_out, cdf=cdf)
    return {"vb": terms["vb"],
            "xstart_mse": mean_flat((terms["pred_x0"] - x0) ** 2),
            "eps_mse": mean_flat((terms["eps"] - noise) ** 2)}


def bound_plain_loop(denoiser: Denoiser, diffusion: Diffusion, x0, image_ids, seed: int = 0,
                     progress=None, model_dtype=torch.float32, cdf: str = "exact"):
    """The full bound of a batch, one network call per chain step (the reference loop).

    x0: float64 [B,C,H,W] in [-1, 1]; image_ids: long [B] (global indices: they pick the
    noise). ``progress`` is called once per step. Returns a dict of float64 CPU tensors:
    vb, xstart_mse, eps_mse of shape [B, K] (column k = chain step k, column 0 the
    decoder), prior [B], and total [B] = prior + vb.sum(1), all bits/dim except the MSEs.
    """
    x0 = x0.to(torch.float64)
    b, K = x0.shape[0], diffusion.num_steps
    image_ids = torch.as_tensor(image_ids, dtype=torch.long)
    out = {name: torch.zeros(b, K, dtype=torch.float64) for name in ("vb", "xstart_mse", "eps_mse")}
    for k in reversed(range(K)):
        terms = step_terms(denoiser, diffusion, x0, image_ids, torch.full((b,), k), seed,
                           model_dtype, cdf)
        for name in out:
            out[name][:, k] = terms[name].cpu()
        if progress is not None:
            progress()
    out["prior"] = prior_bpd(diffusion, x0).cpu()
    out["total"] = out["prior"] + out["vb"].sum(dim=1)
    return out
