import math

import pytest
import torch

from ddpmcodec.core.diffusion import Diffusion, beta_schedule, spaced_timesteps
from ddpmcodec.errors import DDPMCodecError


def test_linear_schedule_is_the_papers():
    b = beta_schedule("linear", 1000)
    assert b.dtype == torch.float64 and len(b) == 1000
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)


def test_cosine_schedule_follows_its_alpha_bar():
    d = Diffusion.from_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 10, 500, 900):
        assert d.alphas_cumprod[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-9)
    assert d.betas.max().item() <= 0.999


def test_respacing_keeps_marginals_and_recomputes_betas():
    full = Diffusion.from_schedule("linear", 1000)
    ts = spaced_timesteps(1000, 20)
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 20
    sub = full.respace(ts)
    torch.testing.assert_close(sub.alphas_cumprod, full.alphas_cumprod[ts], rtol=1e-13, atol=0)
    assert sub.betas[0].item() == pytest.approx(full.betas[0].item())
    # an arbitrary increasing subset works too, and a bad one is refused
    sub2 = full.respace([5, 6, 400])
    assert sub2.alphas_cumprod[0].item() == pytest.approx(full.alphas_cumprod[5].item())
    with pytest.raises(DDPMCodecError):
        full.respace([3, 3, 9])
    with pytest.raises(DDPMCodecError):
        full.respace([0, 1000])
    with pytest.raises(DDPMCodecError):
        full.with_steps(0)


def test_posterior_matches_bayes_rule_numerically():
    """q(x_{k-1}|x_k,x0) from the closed form equals the normalised product
    q(x_k|x_{k-1}) q(x_{k-1}|x0), evaluated on a grid."""
    d = Diffusion.from_schedule("linear", 1000)
    k, x0, xt = 300, 0.4, 0.1
    mean, logvar = d.q_posterior(torch.tensor([[x0]], dtype=torch.float64),
                                 torch.tensor([[xt]], dtype=torch.float64), torch.tensor([k]))
    grid = torch.linspace(-3, 3, 200001, dtype=torch.float64)
    ab_prev = d.alphas_cumprod[k - 1]
    logp = (-(xt - (1 - d.betas[k]).sqrt() * grid) ** 2 / (2 * d.betas[k])
            - (grid - ab_prev.sqrt() * x0) ** 2 / (2 * (1 - ab_prev)))
    w = torch.softmax(logp, 0)
    m = (w * grid).sum()
    v = (w * (grid - m) ** 2).sum()
    assert mean.item() == pytest.approx(m.item(), abs=1e-8)
    assert logvar.exp().item() == pytest.approx(v.item(), rel=1e-5)


def test_variance_rules():
    d_large = Diffusion.from_schedule(variance_type="fixedlarge")
    d_small = Diffusion.from_schedule(variance_type="fixedsmall")
    d_learn = Diffusion.from_schedule(variance_type="learned")
    x = torch.zeros(1, 1)
    k = torch.tensor([500])
    assert d_large.p_log_variance(k, x).exp().item() == pytest.approx(d_large.betas[500].item())
    # fixedlarge at k=0 uses the clipped posterior variance, as the official code does
    assert d_large.p_log_variance(torch.tensor([0]), x).exp().item() == \
        pytest.approx(d_large.posterior_variance[1].item())
    assert d_small.p_log_variance(k, x).exp().item() == \
        pytest.approx(d_small.posterior_variance[500].item())
    for v, want in ((1.0, d_large.betas[500]), (-1.0, d_small.posterior_variance[500])):
        got = d_learn.p_log_variance(k, x, torch.full((1, 1), v)).exp().item()
        assert got == pytest.approx(want.item())
    mid = d_learn.p_log_variance(k, x, torch.zeros(1, 1))
    assert mid.item() == pytest.approx(0.5 * (math.log(d_large.betas[500]) +
                                              math.log(d_small.posterior_variance[500])))


def test_mean_goes_through_clipped_x0_prediction():
    d = Diffusion.from_schedule()
    x_t = torch.full((1, 3, 2, 2), 5.0, dtype=torch.float64)
    k = torch.tensor([10])
    out = d.p_mean_variance(x_t, k, torch.zeros(1, 3, 2, 2))
    assert out["pred_x0"].max().item() == 1.0
    want, _ = d.q_posterior(torch.ones_like(x_t), x_t, k)
    torch.testing.assert_close(out["mean"], want)
