"""Few-step chains on the analytic oracles (ddpmcodec.core.oracle), where the right answer is
known in closed form:

1. Gaussian pixels: the true reverse kernel q(x_s | x_t) is Gaussian, so with the exact
   posterior-mean predictor the best reverse variance is Var[x_s | x_t], computed here from
   the joint law of (x_s, x_t) alone; the analytic variance of core.chains must equal it,
   and the x0-prediction error it needs, measured by the calibration code path on samples,
   must match Var[x0 | x_t].
2. Discrete pixels on the 8-bit grid: for chains of every trajectory and variance rule, the
   Monte-Carlo bound computed by the library matches the independent quadrature of
   tests/test_oracle.py and stays above the exact NLL; the analytic variance beats the
   fixed ones on the same trajectory.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmcodec.core import chains
from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.likelihood import bound_plain_loop
from ddpmcodec.core.oracle import DiscretePixels, GaussianPixels
from ddpmcodec.io.data import to_model_space
from tests.test_oracle import _expected_bound_by_quadrature


def test_analytic_variance_is_the_exact_reverse_variance_for_gaussian_data():
    full = Diffusion.from_schedule("linear", 1000)
    law = GaussianPixels(mean=0.1, std=0.2)
    abar = full.alphas_cumprod.numpy()
    m = law.posterior_var(full.alphas_cumprod).numpy()  # E||x0 - E[x0|x_t]||^2 / d
    ts = chains.quadratic_timesteps(1000, 12)
    chain = chains.build_chain(full, ts, "analytic", m, decoder_variance=1e-4)
    s2 = law.std ** 2
    for k in range(1, len(ts)):
        a_t, a_s = abar[ts[k]], abar[ts[k - 1]]
        var_s = a_s * s2 + 1 - a_s          # Var x_s
        var_t = a_t * s2 + 1 - a_t          # Var x_t
        cov = math.sqrt(a_t / a_s) * var_s  # Cov(x_s, x_t): x_t = sqrt(a_t/a_s) x_s + noise
        exact = var_s - cov ** 2 / var_t
        assert float(chain.reverse_variance[k]) == pytest.approx(exact, rel=1e-9)


def test_calibration_path_measures_the_posterior_variance():
    """The statistic m is the xstart_mse of the bound computation (what `calibrate` runs);
    with the exact predictor it estimates Var[x0 | x_t] without bias."""
    full = Diffusion.from_schedule("linear", 1000)
    law = GaussianPixels(mean=0.1, std=0.2)
    idx = [0, 10, 100, 400, 999]
    n = 64
    x0 = law.sample(n, (3, 8, 8), torch.Generator().manual_seed(5))
    out = bound_plain_loop(law.denoiser(full), full.respace(idx), x0, torch.arange(n), seed=2,
                           model_dtype=torch.float64)
    mse = out["xstart_mse"].numpy()
    want = law.posterior_var(full.alphas_cumprod[idx]).numpy()
    z = (mse.mean(0) - want) / (mse.std(0, ddof=1) / math.sqrt(n))
    assert np.abs(z).max() < 4.5, z


def _discrete_law() -> DiscretePixels:
    probs = torch.zeros(256, dtype=torch.float64)
    probs[[0, 60, 170, 255]] = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    return DiscretePixels(probs)


def _m_by_quadrature(law: DiscretePixels, abar: np.ndarray, nodes: int = 96) -> np.ndarray:
    """E (x0 - E[x0|x_t])^2 for every alpha-bar, by Gauss-Hermite quadrature."""
    p = law.probs.numpy()
    support = np.nonzero(p > 0)[0]
    atoms, w = support / 127.5 - 1.0, p[support]
    y, gh = np.polynomial.hermite.hermgauss(nodes)
    z, gh = math.sqrt(2.0) * y, gh / math.sqrt(math.pi)
    out = np.empty(len(abar))
    for i, a in enumerate(abar):
        xt = math.sqrt(a) * atoms[:, None] + math.sqrt(1 - a) * z[None, :]
        logits = np.log(w)[None, None, :] - (xt[..., None] - math.sqrt(a) * atoms) ** 2 / (2 * (1 - a))
        logits -= logits.max(-1, keepdims=True)
        post = np.exp(logits)
        post /= post.sum(-1, keepdims=True)
        x0_hat = (post * atoms).sum(-1)
        out[i] = float(w @ (((atoms[:, None] - x0_hat) ** 2) @ gh))
    return out


@pytest.mark.parametrize("trajectory,variance", [
    ("even", "analytic"), ("dp", "analytic"), ("dp", "fixedlarge"), ("quadratic", "fixedsmall")])
def test_every_chain_bounds_the_exact_nll(trajectory, variance):
    full = Diffusion.from_schedule("linear", 1000)
    law = _discrete_law()
    m = _m_by_quadrature(law, full.alphas_cumprod.numpy())
    K = 10
    ts = chains.chain_timesteps(full, K, trajectory, variance, m)
    chain = chains.build_chain(full, ts, variance, m, decoder_variance=float(m[0]) + 1e-6)
    n = 48
    images = law.sample(n, (1, 8, 8), torch.Generator().manual_seed(1))
    out = bound_plain_loop(law.denoiser(full), chain, to_model_space(images), torch.arange(n),
                           seed=7, model_dtype=torch.float64)
    diff = out["total"].numpy() - law.nll_bpd(images)
    se = diff.std(ddof=1) / math.sqrt(n)
    expected = _expected_bound_by_quadrature(law, chain, full)
    entropy = law.entropy_bpd()
    assert expected > entropy
    assert diff.mean() > -3 * se, "bound below the exact NLL"
    assert abs(diff.mean() - (expected - entropy)) < 4 * se + 1e-4, (diff.mean(), expected - entropy, se)
    if variance == "analytic":  # the optimum beats the papers' variance on the same steps
        fixed = chains.build_chain(full, ts, "fixedlarge")
        assert expected < _expected_bound_by_quadrature(law, fixed, full)
