"""Few-step chain math (ddpmcodec.core.chains): the analytic variance is the optimum of the
expected KL, and the DP trajectory is the best of all subsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ddpmcodec.core import chains
from ddpmcodec.core.diffusion import Diffusion


def _abar(T=12):
    return Diffusion.from_schedule("linear", T, 1e-3, 0.3).alphas_cumprod.numpy()


def test_jump_coefficients_match_the_respaced_posterior():
    d = Diffusion.from_schedule("linear", 50)
    ts = [0, 7, 19, 49]
    r = d.respace(ts)
    abar = d.alphas_cumprod.numpy()
    for k in range(1, len(ts)):
        a, lam2 = chains.jump_coefficients(abar[ts[k]], abar[ts[k - 1]])
        assert a == pytest.approx(float(r.posterior_mean_coef1[k]), rel=1e-12)
        assert lam2 == pytest.approx(float(r.posterior_variance[k]), rel=1e-12)


def test_analytic_variance_minimises_the_expected_kl():
    at, as_, m = 0.3, 0.6, 0.05
    s_star = chains.analytic_variance(at, as_, m)
    grid = s_star * np.exp(np.linspace(-2, 2, 4001))
    kl = chains.expected_kl(at, as_, m, grid)
    assert grid[np.argmin(kl)] == pytest.approx(s_star, rel=2e-3)
    assert chains.expected_kl(at, as_, m) == pytest.approx(kl.min(), rel=1e-6, abs=1e-12)
    # out-of-range estimates are clipped to the proven interval [lam2, lam2 + 4 a^2]
    a, lam2 = chains.jump_coefficients(at, as_)
    assert chains.analytic_variance(at, as_, -1.0) == pytest.approx(lam2)
    assert chains.analytic_variance(at, as_, 9.0) == pytest.approx(lam2 + 4 * a * a)


@pytest.mark.parametrize("variance", ["analytic", "fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("K", [2, 3, 5, 12])
def test_dp_equals_brute_force(variance, K):
    T = 12
    rng = np.random.default_rng(K)
    m = np.sort(rng.uniform(1e-4, 0.5, T))  # x0-prediction error grows with t
    cost = chains.jump_costs(_abar(T), m, variance)
    path, value = chains.dp_trajectory(cost, K)
    best = min(((0, *mid, T - 1) for mid in itertools.combinations(range(1, T - 1), K - 2)),
               key=lambda p: chains.chain_cost(cost, p))
    assert value == pytest.approx(chains.chain_cost(cost, best), rel=1e-12)
    assert value == pytest.approx(chains.chain_cost(cost, path), rel=1e-12)
    assert path[0] == 0 and path[-1] == T - 1 and len(path) == K
    assert all(b > a for a, b in zip(path[:-1], path[1:]))


def test_quadratic_timesteps_are_strictly_increasing():
    for T, K in [(1000, 10), (1000, 1000), (20, 19), (5, 2)]:
        ts = chains.quadratic_timesteps(T, K)
        assert ts[0] == 0 and ts[-1] == T - 1 and len(ts) == K
        assert all(b > a for a, b in zip(ts[:-1], ts[1:]))
