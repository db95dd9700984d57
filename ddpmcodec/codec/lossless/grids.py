"""Each latent's grid and alphabets, fixed by the schedule, and the probabilities of the
discretized Gaussian decoder (see the package docstring for why grids are per latent)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.codec.lossless.params import MAX_HALF
from ddpmcodec.codec.network import p_variance_range
from ddpmcodec.core.likelihood import LN2

_WHITEN_MARGIN = 1.05        # whiten 5% more bits than a pop is expected to read
_LOG2_SQRT_2PI_E = 2.047095585180641  # log2 sqrt(2 pi e), the literal (no libm)
_PROB_BLOCK = 1024           # pixels per block of decoder_probs' float64 arithmetic


# -- the per-latent grids ------------------------------------------------------------------
@dataclass(frozen=True)
class LatentGrids:
    """x_k = s * delta[k] with integer s. q(x_k | x_{k-1}) pops x_k on an alphabet of
    2*pop_half[k]+1 symbols, the reverse step (or prior) pushes it on 2*push_half[k]+1.
    All arrays have shape [K]."""

    delta: np.ndarray  # float64, powers of two
    pop_half: np.ndarray  # int64
    push_half: np.ndarray  # int64
    q_std: np.ndarray  # float64: std of q(x_k | x_{k-1})
    exact: bool = False  # built for the exact network: no libm on any path (see below)


def p_std_range(diffusion) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest std of p_theta(x_{k-1}|x_k) for k = 0..K-1 (float64 [K];
    equal unless the variance is learned, which interpolates between the two fixed ones)."""
    K = diffusion.num_steps
    k = torch.arange(K)
    x = torch.zeros(K, 1, dtype=torch.float64)
    if diffusion.variance_type == "learned":
        lo = diffusion.p_log_variance(k, x, -torch.ones_like(x))
        hi = diffusion.p_log_variance(k, x, torch.ones_like(x))
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    else:
        lo = hi = diffusion.p_log_variance(k, x)
    return torch.exp(0.5 * lo[:, 0]).numpy(), torch.exp(0.5 * hi[:, 0]).numpy()


def latent_grids(diffusion, grid_log2: int, support_sigmas: float,
                 exact: bool = False) -> LatentGrids:
    """The grid and alphabets of every latent, a pure function of the schedule.

    The grid resolves the narrower of the two Gaussians that code x_k; each alphabet
    covers ``support_sigmas`` of its own Gaussian's (largest) std. Pop and push alphabets
    differ only where the reverse step is much wider than the forward kernel (coarse
    respaced chains, the prior), and there the unequal leaks cost (R_push - R_pop) / 2^24
    / ln 2 bits per dim of that latent (0.0035 for the first latent of a 2-step chain,
    ~1e-4 on a 100-step chain); with equal widths they cancel."""
    K = diffusion.num_steps
    q_std = np.sqrt(diffusion.betas.numpy())
    if exact:  # square roots and exponents read off the floats: no libm
        p_lo, p_hi = (np.sqrt(v) for v in p_variance_range(diffusion))
    else:
        p_lo, p_hi = p_std_range(diffusion)
    # x_k is pushed by p(x_k | x_{k+1}) (chain step k+1), the last one by N(0, 1)
    push_lo = np.append(p_lo[1:], 1.0)
    push_hi = np.append(p_hi[1:], 1.0)
    if exact:  # 2^(floor(log2 v) - grid_log2), floor(log2 v) = frexp exponent - 1
        delta = np.ldexp(1.0, np.frexp(np.minimum(q_std, push_lo))[1] - 1 - grid_log2)
    else:
        delta = np.exp2(np.floor(np.log2(np.minimum(q_std, push_lo)) - grid_log2))
    pop_half = np.minimum(np.ceil(support_sigmas * q_std / delta), MAX_HALF).astype(np.int64)
    push_half = np.minimum(np.ceil(support_sigmas * push_hi / delta), MAX_HALF).astype(np.int64)
    assert len(delta) == K
    return LatentGrids(delta, pop_half, push_half, q_std, exact)


def whiten_count(g: LatentGrids, k: int, symbols: int) -> int:
    """16-bit words to whiten before popping ``symbols`` latents x_k: the bits the pop is
    expected to read (the entropy of the quantized kernel), plus 5%."""
    if g.exact:
        from ddpmcodec.core.exact.functions import decimal_log2
        entropy = decimal_log2(float(g.q_std[k] / g.delta[k])) + _LOG2_SQRT_2PI_E
    else:
        entropy = math.log2(float(g.q_std[k] / g.delta[k]) * math.sqrt(2 * math.pi * math.e))
    return int(math.ceil(_WHITEN_MARGIN * symbols * max(entropy, 1.0) / 16)) + 8


def dip_bits(g: LatentGrids, dims: int) -> float:
    """An upper estimate of one image's dip, bits: how far below its starting size the
    stack sinks while the image is coded. The first two pops (x_0 from q(x_0|x0), x_1 from
    q(x_1|x_0)) come before anything of the same size is pushed back; each reads about
    the entropy of its quantized kernel. (On the default chain: 8.5 bits/dim, against a
    measured dip of 6.8, as the pixels pushed between the pops give some back.)"""
    per = np.log2(g.q_std[:2] / g.delta[:2] * math.sqrt(2 * math.pi * math.e))
    return float(dims * np.maximum(per, 1.0).sum())


# -- the float64 models ------------------------------------------------------------------
def decoder_probs(mean: torch.Tensor, log_scale: torch.Tensor) -> np.ndarray:
    """Probabilities [n, 256] of the 8-bit levels under a Gaussian discretized to bins of
    width 2/255 on [-1, 1], edge bins taking the tails (as likelihood's
    ``discretized_gaussian_log_likelihood`` with cdf="exact"). mean, log_scale: float64 [n].

    Every bin is formed from the smaller tail mass T(z) = Phi(-|z|) at its two edges (no
    cancellation far out): T_lo - T_hi above the mean, T_hi - T_lo below it, and
    (1 - T_hi) - T_lo for the bin that holds the mean; the outer edges are -inf and +inf
    (T = 0). Files depend on these numbers bit for bit. Rows are formed in blocks of
    _PROB_BLOCK, whose [block, 256] arrays stay in the CPU's cache (3x faster than whole
    batches; elementwise, so the numbers are the same)."""
    edges = torch.arange(255, dtype=torch.float64) * (2.0 / 255.0) - 1.0 + 1.0 / 255.0
    out = np.empty((len(mean), 256), dtype=np.float64)
    for a in range(0, len(mean), _PROB_BLOCK):
        m, ls = mean[a:a + _PROB_BLOCK], log_scale[a:a + _PROB_BLOCK]
        z = (edges[None, :] - m[:, None]) * torch.exp(-ls)[:, None]  # [n, 255]
        tail = 0.5 * torch.erfc(z.abs() * math.sqrt(0.5))
        zero = torch.zeros_like(tail[:, :1])
        t_lo, t_hi = torch.cat([zero, tail], 1), torch.cat([tail, zero], 1)  # bin j: edges j-1, j
        inf = torch.full_like(zero, math.inf)
        z_lo, z_hi = torch.cat([-inf, z], 1), torch.cat([z, inf], 1)
        probs = torch.where(z_lo > 0, t_lo - t_hi,
                            torch.where(z_hi < 0, t_hi - t_lo, (1.0 - t_hi) - t_lo))
        out[a:a + len(m)] = probs.clamp(min=0.0).numpy()
    return out


def normal_logpdf(x, mean, std) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2), nats (std a float or tensor)."""
    std = torch.as_tensor(std, dtype=torch.float64)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def sum_bits(nats: torch.Tensor) -> torch.Tensor:
    """Per-image sum of elementwise nats, in bits (float64 [B])."""
    return nats.reshape(nats.shape[0], -1).sum(1) / LN2


def flat_float64(t, n: int) -> np.ndarray:
    """float64 contiguous [n] from a tensor or a scalar."""
    if isinstance(t, torch.Tensor):
        return np.ascontiguousarray(t.reshape(-1).numpy(), dtype=np.float64)
    return np.full(n, float(t), dtype=np.float64)
