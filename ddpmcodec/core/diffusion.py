"""Diffusion math in float64: schedules, q(x_t|x0), posteriors, p_theta, respacing.

Index convention (used everywhere in ddpmcodec): a timestep *index* ``i`` runs over
``0..T-1``; it is the paper's ``t = i + 1`` and it is what the network receives (the
diffusers convention). ``x_i`` below is the paper's ``x_{i+1}``; the data is ``x0``.

A respaced chain keeps an increasing subset ``timesteps`` of the T original indices; its
chain step ``k`` (0..K-1) is original index ``timesteps[k]``, and its betas are recomputed
from alpha-bar so that q(x_{t_k} | x0) is unchanged. All arrays are float64 torch tensors
on the CPU; :meth:`Diffusion.to` moves them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import torch

from ddpmcodec.core.exact.functions import decimal_pi
from ddpmcodec.errors import DDPMCodecError

VARIANCE_TYPES = ("fixedlarge", "fixedsmall", "learned", "explicit")
SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> torch.Tensor:
    """Betas (float64, shape [T]) for the named schedule, the same bits on every machine.

    ``linear``: Ho et al.'s ``linspace(beta_start, beta_end, T)`` (:func:`linear_betas`).
    ``cosine``: Nichol & Dhariwal's alpha-bar ``cos^2((t/T + s)/(1 + s) * pi/2)``, s=0.008,
    betas capped at 0.999 (:func:`cosine_betas`).
    """
    if num_timesteps < 1:
        raise DDPMCodecError(f"a schedule needs at least one timestep, got {num_timesteps}")
    if name == "linear":
        return torch.tensor(linear_betas(beta_start, beta_end, num_timesteps), dtype=torch.float64)
    if name == "cosine":
        return torch.tensor(cosine_betas(num_timesteps), dtype=torch.float64)
    raise DDPMCodecError(f"unknown beta schedule {name!r}; choose one of {SCHEDULES}")


def linear_betas(start: float, end: float, num: int) -> list[float]:
    """``num`` evenly spaced floats from ``start`` to ``end``, each correctly rounded.

    ``torch.linspace`` gives other last bits under other CPU kernels (with AVX2 it uses a
    fused multiply-add, without it a multiply and an add), and a model's fingerprint is
    hashed from its betas. Here every value is one correctly rounded operation on exact
    rationals, so IEEE 754 fixes it: step = (end - start) / (num - 1) in float64, then
    start + i * step for i < num // 2 and end - (num - 1 - i) * step above, each rounded
    once -- the same bits as torch's AVX2 kernel (checked for every schedule the project
    ships), so fingerprints and calibrations made on AVX2 machines stay valid.
    """
    if num == 1:
        return [float(start)]
    step = (float(end) - float(start)) / (num - 1)
    s, e, d = Fraction(float(start)), Fraction(float(end)), Fraction(step)
    half = num // 2
    return [float(s + d * i) if i < half else float(e - d * (num - 1 - i)) for i in range(num)]


_COS_DIGITS = 40  # decimal digits: far beyond float64, so rounding once is exact


def _decimal_cos(x: Decimal) -> Decimal:
    """cos(x) by its Taylor series in decimal arithmetic (exactly specified, no libm)."""
    term, total, k, x2 = Decimal(1), Decimal(1), 0, x * x
    eps = Decimal(10) ** -(_COS_DIGITS + 2)
    while abs(term) > eps:
        k += 2
        term = -term * x2 / (k * (k - 1))
        total += term
    return total


def cosine_betas(num: int, s: float = 0.008, cap: float = 0.999) -> list[float]:
    """Nichol & Dhariwal's cosine schedule with every beta correctly rounded: alpha-bar
    and the ratios in 40-digit decimal arithmetic (platform independent), rounded to
    float64 once, so the betas do not depend on a platform's cos."""
    with localcontext() as ctx:
        ctx.prec = _COS_DIGITS + 10
        half_pi = decimal_pi() / 2
        off = Decimal(s)

        def abar(t: int) -> Decimal:
            return _decimal_cos((Decimal(t) / num + off) / (1 + off) * half_pi) ** 2

        a = [abar(t) for t in range(num + 1)]
        return [min(float(1 - a[i + 1] / a[i]), cap) for i in range(num)]


# How a chain's constants take square roots: "ieee", correctly rounded (numpy's root is the
# processor's IEEE instruction), the same bits on every machine; "torch", torch.sqrt, which
# on the CPU goes through MKL's vector math, whose last bit depends on the processor (about
# 1% of float64 roots differ from IEEE's on an AMD EPYC, others on an Intel Xeon). Files
# written before exact-v2 were coded with "torch" and are decoded with it.
ROOTS = ("ieee", "torch")


def ieee_sqrt(t: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root of a float64 CPU tensor (a new tensor)."""
    return torch.from_numpy(np.sqrt(t.numpy()))


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced original indices in 0..T-1, always including 0 and T-1."""
    if not 1 <= steps <= num_timesteps:
        raise DDPMCodecError(f"--steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    return [int(round(k * stride)) for k in range(steps)]


def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


@dataclass
class Diffusion:
    """A (possibly respaced) Gaussian diffusion with a fixed reverse-variance rule.

    Attributes are float64 tensors of shape [K] indexed by chain step k; ``timesteps[k]``
    is the original index passed to the network. ``variance_type="explicit"`` takes the
    reverse variance sigma^2 of every chain step from ``reverse_variance`` [K] (step 0: the
    decoder's), e.g. the analytic variances of :mod:`ddpmcodec.core.chains`.
    """

    betas: torch.Tensor
    variance_type: str = "fixedlarge"
    timesteps: torch.Tensor = None  # long [K]
    schedule: dict = field(default_factory=dict)  # how the original schedule was made
    reverse_variance: torch.Tensor = None  # float64 [K], only with variance_type "explicit"
    roots: str = "ieee"  # square roots of the constants: "ieee" or "torch" (see ROOTS)

    def __post_init__(self):
        if self.variance_type not in VARIANCE_TYPES:
            raise DDPMCodecError(
                f"unknown variance type {self.variance_type!r}; choose one of {VARIANCE_TYPES}")
        b = self.betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise DDPMCodecError("betas must be a 1-D array in (0, 1)")
        if self.timesteps is None:
            self.timesteps = torch.arange(len(b))
        self.timesteps = torch.as_tensor(self.timesteps, dtype=torch.long)
        self.num_steps = len(b)
        if (self.variance_type == "explicit") != (self.reverse_variance is not None):
            raise DDPMCodecError("reverse_variance goes with variance_type 'explicit', and only with it")
        if self.reverse_variance is not None:
            v = self.reverse_variance = torch.as_tensor(self.reverse_variance, dtype=torch.float64)
            if v.shape != (len(b),) or not bool((torch.isfinite(v) & (v > 0)).all()):
                raise DDPMCodecError(f"reverse_variance must hold {len(b)} positive finite values")
        if self.roots not in ROOTS:
            raise DDPMCodecError(f"unknown square roots {self.roots!r}; choose one of {ROOTS}")
        sqrt = ieee_sqrt if self.roots == "ieee" else torch.sqrt
        a = 1.0 - b
        self.alphas_cumprod = torch.cumprod(a, 0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{k-1} | x_k, x0)
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # posterior_variance[0] is 0; the official code clips its log with the next value
        pv1 = self.posterior_variance[1] if len(b) > 1 else b[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([pv1.reshape(1), self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = b * sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * sqrt(a) / (1.0 - self.alphas_cumprod)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_schedule(cls, name: str = "linear", num_timesteps: int = 1000,
                      beta_start: float = 1e-4, beta_end: float = 0.02,
                      variance_type: str = "fixedlarge") -> "Diffusion":
        betas = beta_schedule(name, num_timesteps, beta_start, beta_end)
        spec = {"name": name, "num_timesteps": num_timesteps}
        if name == "linear":
            spec.update(beta_start=beta_start, beta_end=beta_end)
        return cls(betas, variance_type, schedule=spec)

    def respace(self, timesteps) -> "Diffusion":
        """The chain that keeps only the given original indices (strictly increasing).

        New betas are ``1 - abar[t_k] / abar[t_{k-1}]`` (``abar[t_{-1}] = 1``), so the
        marginals q(x_{t_k}|x0) are those of the full chain.
        """
        if self.num_steps != len(self.timesteps) or not torch.equal(
                self.timesteps, torch.arange(self.num_steps)):
            raise DDPMCodecError("respace a full chain, not an already respaced one")
        ts = torch.as_tensor(list(timesteps), dtype=torch.long)
        if ts.ndim != 1 or len(ts) == 0 or bool((ts[1:] <= ts[:-1]).any()) \
                or ts[0] < 0 or ts[-1] >= self.num_steps:
            raise DDPMCodecError(
                f"respaced timesteps must be strictly increasing indices in 0..{self.num_steps - 1}")
        if self.variance_type == "explicit":
            raise DDPMCodecError("respace a chain with a variance rule, not explicit variances")
        abar = self.alphas_cumprod[ts]
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return Diffusion(1.0 - abar / prev, self.variance_type, ts, dict(self.schedule),
                         roots=self.roots)

    def with_variance(self, variance_type: str, reverse_variance=None) -> "Diffusion":
        """The same chain with another reverse-variance rule (or explicit variances [K])."""
        return Diffusion(self.betas, variance_type, self.timesteps, dict(self.schedule),
                         reverse_variance, self.roots)

    def with_roots(self, roots: str) -> "Diffusion":
        """The same chain with its constants' square roots taken by ``roots`` (self if
        they already are)."""
        if roots == self.roots:
            return self
        return Diffusion(self.betas, self.variance_type, self.timesteps, dict(self.schedule),
                         self.reverse_variance, roots)

    def with_steps(self, steps: int | None) -> "Diffusion":
        """Respaced to ``steps`` evenly spaced steps (``None`` or T: the full chain)."""
        if steps is None or steps == self.num_steps:
            return self
        return self.respace(spaced_timesteps(self.num_steps, steps))

    @property
    def is_full_chain(self) -> bool:
        return self.num_steps == int(self.timesteps[-1]) + 1

    def spec(self) -> dict:
        """JSON-able description: schedule, variance type and kept timesteps."""
        spec = {"schedule": dict(self.schedule), "variance_type": self.variance_type,
                "num_steps": self.num_steps, "timesteps": self.timesteps.tolist()}
        if self.reverse_variance is not None:
            spec["reverse_variance"] = self.reverse_variance.tolist()
        return spec

    # -- forward process ----------------------------------------------------------------
    def _at(self, arr: torch.Tensor, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """arr[k] broadcast to x's shape (k: long [B])."""
        out = arr.to(x.device)[k.to(x.device)]
        return out.reshape(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0, k, noise):
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise, float64."""
        return self._at(self.sqrt_alphas_cumprod, k, x0) * x0 + \
            self._at(self.sqrt_one_minus_alphas_cumprod, k, x0) * noise

    def q_posterior(self, x0, x_t, k):
        """Mean and log-variance of q(x_{k-1} | x_k, x0); at k=0 the log-variance is the
        clipped one of the official code."""
        mean = self._at(self.posterior_mean_coef1, k, x_t) * x0 + \
            self._at(self.posterior_mean_coef2, k, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, k, x_t).expand_as(x_t)

    def prior_kl(self, x0):
        """Elementwise KL(q(x_{K-1}|x0) || N(0, I)) in nats."""
        k = torch.full((x0.shape[0],), self.num_steps - 1, dtype=torch.long)
        mean = self._at(self.sqrt_alphas_cumprod, k, x0) * x0
        logvar = torch.log(self._at(1.0 - self.alphas_cumprod, k, x0)).expand_as(x0)
        return normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))

    # -- reverse process ----------------------------------------------------------------
    def predict_x0(self, x_t, k, eps):
        return self._at(self.sqrt_recip_alphas_cumprod, k, x_t) * x_t - \
            self._at(self.sqrt_recipm1_alphas_cumprod, k, x_t) * eps

    def predict_eps(self, x_t, k, x0):
        return (self._at(self.sqrt_recip_alphas_cumprod, k, x_t) * x_t - x0) / \
            self._at(self.sqrt_recipm1_alphas_cumprod, k, x_t)

    def p_log_variance(self, k, x_t, var_out=None):
        """log sigma^2 of p_theta(x_{k-1}|x_k).

        fixedlarge: beta_k, with the clipped posterior variance at k=0 (official choice);
        fixedsmall: the clipped posterior variance; learned: the improved-DDPM
        interpolation ``frac*log(beta) + (1-frac)*log(beta~)``, ``frac = (v+1)/2`` with v the
        network's extra output channels.
        """
        if self.variance_type == "fixedlarge":
            logvar = torch.log(torch.cat([self.posterior_variance[1:2] if self.num_steps > 1
                                          else self.betas[:1], self.betas[1:]]))
            return self._at(logvar, k, x_t).expand_as(x_t)
        if self.variance_type == "fixedsmall":
            return self._at(self.posterior_log_variance_clipped, k, x_t).expand_as(x_t)
        if self.variance_type == "explicit":
            return self._at(torch.log(self.reverse_variance), k, x_t).expand_as(x_t)
        if var_out is None:
            raise DDPMCodecError("learned variance needs the model's variance channels")
        frac = (var_out.to(torch.float64) + 1.0) / 2.0
        min_log = self._at(self.posterior_log_variance_clipped, k, x_t)
        max_log = self._at(torch.log(self.betas), k, x_t)
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_variance(self, x_t, k, model_out, clip: bool = True):
        """p_theta(x_{k-1}|x_k) from the network output (eps, plus variance channels when
        learned). Returns dict(mean, log_variance, pred_x0, eps), all float64.

        The mean goes through the x0-prediction, clipped to [-1, 1] when ``clip`` (as in the
        official likelihood code).
        """
        model_out = model_out.to(torch.float64)
        c = x_t.shape[1]
        if self.variance_type == "learned":
            if model_out.shape[1] != 2 * c:
                raise DDPMCodecError(
                    f"learned variance needs {2 * c} output channels, the model has {model_out.shape[1]}")
            eps, var_out = model_out[:, :c], model_out[:, c:]
        else:
            eps, var_out = model_out[:, :c], None
        pred_x0 = self.predict_x0(x_t, k, eps)
        if clip:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _ = self.q_posterior(pred_x0, x_t, k)
        return {"mean": mean, "log_variance": self.p_log_variance(k, x_t, var_out),
                "pred_x0": pred_x0, "eps": eps}
