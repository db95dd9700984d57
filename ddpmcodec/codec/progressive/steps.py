"""One coded step's two Gaussians: the proposal p_theta both sides form from the latent
so far, and the encoder's target q(x_s | x_t, x0)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.codec.network import clipped_posterior_variance, exact_network_p, network_p
from ddpmcodec.core.likelihood import LN2

_PRIVATE_TAG = 0xA11


# -- per-step math ---------------------------------------------------------------------------
def kvec(k: int, n: int) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def network_p_on_device(model, diffusion, x: torch.Tensor, k: int, batches,
                        exact: bool = False) -> dict:
    """p_theta of chain step k as this codec forms it: with the exact network
    (:func:`.network.exact_network_p`; ``log_variance`` absent, ``variance`` float64
    [N, C, H, W] or a float) or, for float32 files, :func:`.network.network_p` on the
    model's device, as this codec has always formed it."""
    if not exact:
        return network_p(model, diffusion, x, k, batches, math_on_model_device=True)
    p = exact_network_p(model, diffusion, x, k, batches)
    std = p.pop("std")
    p["variance"] = std * std
    return p


def prior_kl_hint(abar: float, dims: int, exact: bool = False) -> float:
    """A bound on KL(q(x_T|x0) || N(0, I)) in bits that both sides know: dims *
    -log(1 - abar) / 2 nats for x0 in [-1, 1] (about 0.09 bits for CIFAR). Exact files
    take the log in decimal (no libm)."""
    if exact:
        from decimal import Decimal
        ln = (Decimal(1) - Decimal(abar)).ln()
        return float(-ln * dims / 2 / Decimal(2).ln())
    return -0.5 * dims * math.log1p(-abar) / LN2


@dataclass
class StepPlan:
    """What both sides know at a coded step before any symbol: chain step of the latent
    they produce and the proposal p (float64 numpy [N, dims])."""

    k_out: int
    mean_p: np.ndarray
    var_p: np.ndarray  # [N, dims]
    var_q: float       # posterior variance (scalar) of this step
    pred_x0: torch.Tensor | None  # x0-prediction of the latent coded before (None at s=0)
    kl_hint: float | None = None  # bits, when the receiver can bound the KL itself


def step_plan(model, diffusion, s: int, x: torch.Tensor | None, batches, n: int, dims: int,
              exact: bool = False) -> StepPlan:
    """The plan of coded step s. ``exact``: the exact network, and every number the
    coder reads by IEEE operations (files that decode on any machine)."""
    K = diffusion.num_steps
    if s == 0:
        k = K - 1
        abar = float(diffusion.alphas_cumprod[k])
        # the prior step sends no KL: its bound is known to both sides
        hint = prior_kl_hint(abar, dims, exact)
        # N(0, I) for every image: views, not N x dims arrays
        return StepPlan(k, np.broadcast_to(0.0, (n, dims)), np.broadcast_to(1.0, (n, dims)),
                        1.0 - abar, None, hint)
    k = K - s  # chain step of the latent we condition on; we produce k - 1
    p = network_p_on_device(model, diffusion, x, k, batches, exact)
    if exact:
        var_q = float(clipped_posterior_variance(diffusion)[k])
        var_p = np.broadcast_to(np.asarray(p["variance"], dtype=np.float64).reshape(-1)
                                if torch.is_tensor(p["variance"]) else p["variance"],
                                (n * dims,)).reshape(n, dims)
    else:
        var_q = float(torch.exp(diffusion.posterior_log_variance_clipped[k]))
        var_p = torch.exp(p["log_variance"]).reshape(n, dims).numpy()
    return StepPlan(k - 1, p["mean"].reshape(n, dims).numpy(), var_p, var_q, p["pred_x0"])


def q_target(diffusion, x0: torch.Tensor, x: torch.Tensor | None, s: int):
    """q's mean [N, dims] (float64 numpy) for coded step s."""
    n = x0.shape[0]
    K = diffusion.num_steps
    if s == 0:
        k = K - 1
        mean = float(diffusion.sqrt_alphas_cumprod[k]) * x0
    else:
        mean, _ = diffusion.q_posterior(x0, x, kvec(K - s, n))
    return mean.reshape(n, -1).numpy()


def private_rng(seed: int, image: int, step: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), image, step, _PRIVATE_TAG]))
