"""Analytic oracles for the bound: data whose law is known in closed form, with the exact
optimal eps-predictor plugged in as the model.

1. Continuous Gaussian pixels: every expected KL term E[L_k] and the prior are closed form
   (ddpmcodec.core.oracle.GaussianPixels); the Monte-Carlo mean of each computed term must match.
2. Discrete pixels on the 8-bit grid: the expected bound is computed here independently by
   Gauss-Hermite quadrature (numpy/scipy, written from the definitions); the Monte-Carlo
   bound must match it, it must be >= the exact NLL, and the gap bound - NLL is exactly the
   quadrature gap (so the tolerance is that gap plus Monte-Carlo error, nothing guessed).
3. Each KL term against a Monte-Carlo estimate of log q - log p.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.likelihood import (
    LN2,
    bound_plain_loop,
    discretized_gaussian_log_likelihood,
    vb_terms_bpd,
)
from ddpmcodec.core.oracle import DiscretePixels, GaussianPixels
from ddpmcodec.io.data import to_model_space


@pytest.mark.parametrize("variance_type,steps", [
    ("fixedlarge", 20), ("fixedsmall", 20), ("fixedlarge", None),
    pytest.param("fixedsmall", None, marks=pytest.mark.slow)])
def test_expected_kl_terms_match_closed_form_for_gaussian_data(variance_type, steps):
    full = Diffusion.from_schedule("linear", 1000, variance_type=variance_type)
    chain = full.with_steps(steps)
    law = GaussianPixels(mean=0.1, std=0.2)
    x0 = law.sample(32, (3, 8, 8), torch.Generator().manual_seed(0))
    out = bound_plain_loop(law.denoiser(full), chain, x0, torch.arange(32), seed=3,
                           model_dtype=torch.float64)
    got = out["vb"][:, 1:] * LN2  # nats/dim, per image and step
    mean, se = got.mean(0), got.std(0) / math.sqrt(len(got))
    want = law.expected_kl_nats(chain)[1:]
    z = (mean - want) / se.clamp(min=1e-12)
    assert z.abs().max() < 5.0, f"worst step {int(z.abs().argmax()) + 1}: z = {float(z.abs().max()):.2f}"
    prior = out["prior"] * LN2
    pz = (prior.mean() - law.expected_prior_kl_nats(chain)) / (prior.std() / math.sqrt(32))
    assert abs(float(pz)) < 5.0


def _expected_bound_by_quadrature(law: DiscretePixels, chain: Diffusion, full: Diffusion,
                                  nodes: int = 96) -> float:
    """E[bound] in bits/dim for independent discrete pixels, by Gauss-Hermite quadrature
    over x_t given each atom, written from the definitions with numpy/scipy."""
    p = law.probs.numpy()
    support = np.nonzero(p > 0)[0]
    atoms, w = support / 127.5 - 1.0, p[support]
    y, gh_w = np.polynomial.hermite.hermgauss(nodes)
    z, gh_w = math.sqrt(2.0) * y, gh_w / math.sqrt(math.pi)
    abar = chain.alphas_cumprod.numpy()
    bt = chain.posterior_variance.numpy()
    c1 = chain.posterior_mean_coef1.numpy()
    ks = np.arange(chain.num_steps)
    s2 = np.exp(chain.p_log_variance(torch.from_numpy(ks), torch.zeros(len(ks), 1)).numpy().ravel())
    total = 0.0
    for k in range(chain.num_steps):
        a = abar[k]
        # x_t for every (true atom, node): [J, N]
        xt = math.sqrt(a) * atoms[:, None] + math.sqrt(1 - a) * z[None, :]
        logits = np.log(w)[None, None, :] - (xt[..., None] - math.sqrt(a) * atoms) ** 2 / (2 * (1 - a))
        logits -= logits.max(-1, keepdims=True)
        post = np.exp(logits)
        post /= post.sum(-1, keepdims=True)
        x0_hat = (post * atoms).sum(-1)  # [J, N]
        if k == 0:  # decoder: -log of the Gaussian's mass on the true atom's bin
            s = math.sqrt(s2[0])
            lo = np.where(support[:, None] == 0, -np.inf, atoms[:, None] - 1 / 255)
            hi = np.where(support[:, None] == 255, np.inf, atoms[:, None] + 1 / 255)
            mass = norm.cdf((hi - x0_hat) / s) - norm.cdf((lo - x0_hat) / s)
            term = -np.log(mass)
        else:
            term = 0.5 * (np.log(s2[k] / bt[k]) + bt[k] / s2[k] - 1
                          + c1[k] ** 2 * (atoms[:, None] - x0_hat) ** 2 / s2[k])
        total += float(w @ (term @ gh_w))
    a = abar[-1]
    m2 = atoms ** 2
    total += float(w @ (0.5 * ((1 - a) + a * m2 - 1 - math.log(1 - a))))
    return total / math.log(2)


@pytest.mark.parametrize("variance_type,steps", [
    ("fixedlarge", None), ("fixedsmall", 50),
    pytest.param("fixedsmall", None, marks=pytest.mark.slow)])
def test_bound_on_discrete_data_matches_quadrature_and_exceeds_exact_nll(variance_type, steps):
    full = Diffusion.from_schedule("linear", 1000, variance_type=variance_type)
    chain = full.with_steps(steps)
    # four well separated levels with unequal probabilities: exact NLL known, cheap oracle
    probs = torch.zeros(256, dtype=torch.float64)
    probs[[0, 60, 170, 255]] = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    law = DiscretePixels(probs)
    n = 48
    images = law.sample(n, (1, 8, 8), torch.Generator().manual_seed(1))
    out = bound_plain_loop(law.denoiser(full), chain, to_model_space(images), torch.arange(n),
                           seed=7, model_dtype=torch.float64)
    bound = out["total"].numpy()
    nll = law.nll_bpd(images)
    expected = _expected_bound_by_quadrature(law, chain, full)
    entropy = law.entropy_bpd()
    # the expected bound of any model is >= the entropy (ELBO), and strictly here
    assert expected > entropy
    diff = bound - nll  # paired: image-to-image variation of the NLL cancels
    se = diff.std(ddof=1) / math.sqrt(n)
    assert diff.mean() > -3 * se, "bound below the exact NLL"
    # the computed bound matches the independently computed expectation
    assert abs(diff.mean() - (expected - entropy)) < 4 * se + 1e-4, \
        (diff.mean(), expected - entropy, se)


def test_kl_term_matches_monte_carlo_log_ratio():
    full = Diffusion.from_schedule("linear", 1000, variance_type="fixedlarge")
    law = DiscretePixels.discretized_gaussian(0.0, 0.3)
    images = law.sample(2, (3, 4, 4), torch.Generator().manual_seed(2))
    x0 = to_model_space(images)
    g = torch.Generator().manual_seed(3)
    den = law.denoiser(full)
    for i in (1, 10, 300, 999):
        k = torch.full((2,), i)
        x_t = full.q_sample(x0, k, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        out = den(x_t, k)
        vb = vb_terms_bpd(full, x0, x_t, k, out)["vb"]
        qm, qlv = full.q_posterior(x0, x_t, k)
        p = full.p_mean_variance(x_t, k, out)
        q_dist = torch.distributions.Normal(qm, (0.5 * qlv).exp())
        p_dist = torch.distributions.Normal(p["mean"], (0.5 * p["log_variance"]).exp())
        samples = q_dist.sample((4000,))
        ratio = (q_dist.log_prob(samples) - p_dist.log_prob(samples)).flatten(2).mean(2) / LN2
        mc, se = ratio.mean(0), ratio.std(0) / math.sqrt(4000)
        assert torch.all((mc - vb).abs() < 4 * se + 1e-9), (i, mc, vb, se)


def test_discretized_decoder_matches_scipy_and_normalises():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in ((0.0, 0.01), (0.5, 0.2), (-0.99, 0.003), (3.0, 0.5), (0.2, 1e-4)):
        m = torch.full_like(levels, mean)
        ls = torch.full_like(levels, math.log(std))
        lp = discretized_gaussian_log_likelihood(levels, m, ls)
        assert abs(float(torch.logsumexp(lp, 0).exp()) - 1.0) < 1e-9
        lo = np.concatenate([[-np.inf], levels.numpy()[1:] - 1 / 255])
        hi = np.concatenate([levels.numpy()[:-1] + 1 / 255, [np.inf]])
        # scipy's cdf difference cancels above the mean: take survival functions there
        mass = np.where(lo > mean, norm.sf(lo, mean, std) - norm.sf(hi, mean, std),
                        norm.cdf(hi, mean, std) - norm.cdf(lo, mean, std))
        ok = mass > 1e-200
        np.testing.assert_allclose(lp.numpy()[ok], np.log(mass[ok]), rtol=1e-7, atol=1e-9)
    # the official tanh approximation is close to the exact CDF
    lp_t = discretized_gaussian_log_likelihood(levels, torch.zeros(256, dtype=torch.float64),
                                               torch.full((256,), math.log(0.05)), cdf="tanh")
    lp_e = discretized_gaussian_log_likelihood(levels, torch.zeros(256, dtype=torch.float64),
                                               torch.full((256,), math.log(0.05)))
    assert float((lp_t.exp() - lp_e.exp()).abs().max()) < 1e-3
