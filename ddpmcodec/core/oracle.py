"""Analytic data distributions with exact likelihoods and exact optimal denoisers.

These are oracles for testing estimators and codecs: for data whose law is known in
closed form, the Bayes-optimal eps-prediction E[eps | x_t] is computable exactly, so the
bound of a "perfect" network can be compared with the exact NLL.

* :class:`DiscretePixels`: every pixel independent, on the 256-level grid
  a_j = j/127.5 - 1 with probabilities ``probs`` (e.g. a discretized Gaussian). Exact NLL
  = -sum_pixels log2 P(x) / D bits/dim; E[x0|x_t] is a softmax over the atoms.
* :class:`GaussianPixels`: every pixel independent N(mean, std^2), continuous; the
  posterior is Gaussian, so E[x0|x_t] and every expected bound term are closed form.

A denoiser is a callable (x_t [B,C,H,W], original timestep indices long [B]) -> eps,
evaluated in float64 (pass ``model_dtype=torch.float64`` to the likelihood functions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.core.diffusion import Diffusion

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


@dataclass
class DiscretePixels:
    """Independent pixels with a discrete law ``probs`` [256] on the 8-bit grid."""

    probs: torch.Tensor

    @classmethod
    def discretized_gaussian(cls, mean: float = 0.0, std: float = 0.1) -> "DiscretePixels":
        """P(a_j) proportional to the N(mean, std^2) mass of bin j (edges take the tails)."""
        from scipy.stats import norm
        edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])
        p = np.diff(norm.cdf(edges, loc=mean, scale=std))
        return cls(torch.tensor(p / p.sum(), dtype=torch.float64))

    def __post_init__(self):
        self.probs = torch.as_tensor(self.probs, dtype=torch.float64)
        keep = self.probs > 1e-300  # atoms with no mass cannot appear and cost nothing
        self._atoms = LEVELS[keep]
        self._log_p = torch.log(self.probs[keep])

    def sample(self, n: int, shape=(3, 8, 8), generator: torch.Generator | None = None) -> np.ndarray:
        """n images, uint8 [n, H, W, C] (NHWC like every image array in ddpmcodec)."""
        c, h, w = shape
        idx = torch.multinomial(self.probs, n * c * h * w, replacement=True, generator=generator)
        return idx.to(torch.uint8).reshape(n, c, h, w).permute(0, 2, 3, 1).numpy()

    def nll_bpd(self, images: np.ndarray) -> np.ndarray:
        """Exact -log2 P(x) / D per image (float64 [n])."""
        lp = torch.log2(self.probs)[torch.from_numpy(images.astype(np.int64))]
        return (-lp.reshape(len(images), -1).mean(1)).numpy()

    def entropy_bpd(self) -> float:
        p = self.probs[self.probs > 0]
        return float(-(p * torch.log2(p)).sum())

    def posterior_mean(self, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] with x_t = sqrt(abar) x0 + sqrt(1-abar) eps; abar broadcasts to x_t."""
        x = x_t.to(torch.float64).unsqueeze(-1)
        abar = abar.unsqueeze(-1)
        logits = self._log_p - (x - abar.sqrt() * self._atoms) ** 2 / (2.0 * (1.0 - abar))
        return (torch.softmax(logits, dim=-1) * self._atoms).sum(-1)

    def denoiser(self, diffusion: Diffusion):
        """The exact E[eps | x_t] for the full-chain ``diffusion`` (original indices)."""
        return _eps_denoiser(self.posterior_mean, diffusion)


@dataclass
class GaussianPixels:
    """Independent continuous pixels N(mean, std^2) (the closed-form case)."""

    mean: float = 0.0
    std: float = 0.2

    def sample(self, n: int, shape=(3, 8, 8), generator: torch.Generator | None = None) -> torch.Tensor:
        """n images float64 [n, C, H, W] (continuous, in model space)."""
        return self.mean + self.std * torch.randn(n, *shape, generator=generator, dtype=torch.float64)

    def posterior_var(self, abar):
        """Var[x0 | x_t]."""
        s2 = self.std ** 2
        return s2 * (1.0 - abar) / (abar * s2 + 1.0 - abar)

    def posterior_mean(self, x_t, abar):
        s2 = self.std ** 2
        return (abar.sqrt() * s2 * x_t + (1.0 - abar) * self.mean) / (abar * s2 + 1.0 - abar)

    def denoiser(self, diffusion: Diffusion):
        return _eps_denoiser(self.posterior_mean, diffusion)

    def expected_kl_nats(self, diffusion: Diffusion) -> torch.Tensor:
        """E over x0 and x_k of L_k per dimension, nats, for k = 1..K-1 (index 0 unused: 0).

        With the exact posterior-mean predictor (no clipping), mu_theta - mu_tilde =
        coef1 (E[x0|x_k] - x0), whose mean square is coef1^2 Var[x0|x_k], so
        E L_k = 0.5 (log(s2/btilde) + (btilde + coef1^2 Var[x0|x_k]) / s2 - 1)
        with s2 the reverse variance and btilde the posterior variance.
        """
        ab = diffusion.alphas_cumprod
        k = torch.arange(diffusion.num_steps)
        s2 = torch.exp(diffusion.p_log_variance(k, torch.zeros(len(k), 1)).reshape(-1))
        bt = diffusion.posterior_variance
        c1 = diffusion.posterior_mean_coef1
        out = 0.5 * (torch.log(s2 / bt) + (bt + c1 ** 2 * self.posterior_var(ab)) / s2 - 1.0)
        out[0] = 0.0
        return out

    def expected_prior_kl_nats(self, diffusion: Diffusion) -> float:
        """E over x0 of KL(q(x_{K-1}|x0) || N(0,1)) per dimension, nats."""
        ab = float(diffusion.alphas_cumprod[-1])
        m2 = self.mean ** 2 + self.std ** 2
        return 0.5 * ((1.0 - ab) + ab * m2 - 1.0 - math.log(1.0 - ab))


def _eps_denoiser(posterior_mean, diffusion: Diffusion):
    abar_full = diffusion.alphas_cumprod

    def call(x_t, t):
        x_t = x_t.to(torch.float64)
        abar = abar_full[t.cpu()].to(x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
        x0 = posterior_mean(x_t, abar.expand_as(x_t))
        return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
    return call
