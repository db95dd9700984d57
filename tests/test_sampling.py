"""Samplers against the closed-form Gaussian oracle, and their determinism."""
import math

import pytest
import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.oracle import GaussianPixels
from ddpmcodec.core.sampling import nearest_step, reverse_process, sample


def _affine_chain(chain, law, method):
    """For N(m, s^2) pixels and the exact denoiser every reverse step is affine plus
    Gaussian noise: x_{k-1} = A x_k + B + sigma z. Returns the composed (A, B, variance)
    that maps x_T to x0, computed step by step in plain Python floats."""
    m, s2 = law.mean, law.std ** 2
    A, B, V = 1.0, 0.0, 0.0
    k_all = torch.arange(chain.num_steps)
    log_var = chain.p_log_variance(k_all, torch.zeros(len(k_all), 1)).reshape(-1).tolist()
    for k in range(chain.num_steps - 1, -1, -1):
        ab, abp = chain.alphas_cumprod[k].item(), chain.alphas_cumprod_prev[k].item()
        c = ab ** 0.5 * s2 / (ab * s2 + 1 - ab)  # x0_hat = c x + d
        d = (1 - ab) * m / (ab * s2 + 1 - ab)
        if method == "ddim":
            if k == 0:
                a, b, var = c, d, 0.0
            else:  # sqrt(abp) x0_hat + sqrt(1-abp) (x - sqrt(ab) x0_hat) / sqrt(1-ab)
                r = (1 - abp) ** 0.5 / (1 - ab) ** 0.5
                a = abp ** 0.5 * c + r * (1 - ab ** 0.5 * c)
                b = abp ** 0.5 * d - r * ab ** 0.5 * d
                var = 0.0
        else:
            c1, c2 = chain.posterior_mean_coef1[k].item(), chain.posterior_mean_coef2[k].item()
            a, b = c1 * c + c2, c1 * d
            var = math.exp(log_var[k]) if k > 0 else 0.0
        A, B, V = a * A, a * B + b, a * a * V + var
    return A, B, V


@pytest.mark.parametrize("method,steps,variance", [("ddim", 100, "fixedlarge"),
                                                   ("ancestral", None, "fixedsmall"),
                                                   ("ancestral", 50, "fixedlarge")])
def test_samplers_match_the_exact_gaussian_reverse_chain(method, steps, variance):
    """With the exact E[eps|x_t] of N(0.1, 0.2^2) pixels the sampler is an affine map of
    x_T plus Gaussian noise, known in closed form: DDIM must equal it to rounding, the
    ancestral sampler must match its mean and variance."""
    full = Diffusion.from_schedule("linear", 1000, variance_type=variance)
    chain = full.with_steps(steps)
    law = GaussianPixels(0.1, 0.2)
    n = 256
    r = sample(law.denoiser(full), chain, n, (1, 4, 4), seed=5, method=method)
    A, B, V = _affine_chain(chain, law, method)
    from ddpmcodec.core.sampling import prior_noise
    x_T = prior_noise(chain, torch.arange(n), 5, (1, 4, 4))
    if method == "ddim":
        # the sampler hands x_t to the network in float32: rounding of order 1e-8
        torch.testing.assert_close(r["x0"], A * x_T + B, rtol=0, atol=1e-6)
    else:
        x = r["x0"].flatten()
        mean, var = B, A * A + V  # x_T ~ N(0, 1)
        se_mean = math.sqrt(var / len(x))
        assert abs(x.mean().item() - mean) < 4 * se_mean
        assert abs(x.var().item() / var - 1) < 4 * math.sqrt(2 / len(x))


def test_reverse_process_is_reproducible_and_records_steps(tiny_model):
    chain = tiny_model.diffusion.with_steps(6)
    den = tiny_model.denoiser()
    a = sample(den, chain, 2, (3, 32, 32), seed=1, record=[5, 0])
    b = sample(den, chain, 2, (3, 32, 32), seed=1, record=[5, 0])
    c = sample(den, chain, 2, (3, 32, 32), seed=2)
    assert torch.equal(a["x0"], b["x0"]) and not torch.equal(a["x0"], c["x0"])
    assert set(a["pred_x0"]) == {5, 0} and a["x"][5].shape == (2, 3, 32, 32)
    # one sample alone equals the same sample in a batch (counter-based noise)
    one = sample(den, chain, 1, (3, 32, 32), seed=1, first_id=1)
    torch.testing.assert_close(one["x0"][0], a["x0"][1], atol=1e-5, rtol=0)
    # DDIM from a given latent is deterministic
    x = a["x"][5]
    d1 = reverse_process(den, chain, x, 5, [0, 1], 0, "ddim")["x0"]
    d2 = reverse_process(den, chain, x, 5, [0, 1], 9, "ddim")["x0"]
    assert torch.equal(d1, d2)
    assert nearest_step(chain, 1000) == 5 and nearest_step(chain, 1) == 0
