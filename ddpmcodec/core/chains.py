"""Few-step chains: which timesteps to keep, and which reverse variance to use at each.

A K-step chain keeps original indices ``0 = t_0 < t_1 < ... < t_{K-1} = T-1`` (index
convention of :mod:`ddpmcodec.core.diffusion`) and a reverse variance per step. Its
negative ELBO is a valid bound for ANY fixed choice of both (it is the bound of that
K-step latent-variable model); the choice only decides how tight it is.

Everything here needs one statistic of the network per original index i, measured on
calibration images (never on the images being measured):

    m[i] = E ||x0 - clip(x0_hat(x_i))||^2 / d        (model space [-1, 1], per dimension)

A jump from index t down to index s < t (alpha-bar abar_t < abar_s) has the posterior

    q(x_s | x_t, x0) = N(a x0 + b x_t, lam2 I),   beta = 1 - abar_t / abar_s,
    a = sqrt(abar_s) beta / (1 - abar_t),  lam2 = beta (1 - abar_s) / (1 - abar_t),

and the model p(x_s | x_t) = N(a x0_hat + b x_t, sigma2 I) has the expected KL, per dim,

    C(sigma2) = 1/2 [ log(sigma2 / lam2) + (lam2 + a^2 m_t) / sigma2 - 1 ]   nats,

which is smallest at sigma2* = lam2 + a^2 m_t ("analytic" variance, the isotropic optimum
given the x0-prediction, as in Bao et al. 2022), where C = 1/2 log(1 + a^2 m_t / lam2).
Since 0 <= m_t <= 4 for data and predictions in [-1, 1], sigma2* lies in
[lam2, lam2 + 4 a^2] whatever the estimate; we clip to that interval.

The decoder (chain step 0, index t_0) is the discretized Gaussian of the bound; its
analytic variance is chosen on calibration residuals at t_0 by :func:`decoder_variance`.

The best trajectory for a given K minimises the sum of the expected jump costs over all
increasing K-subsets that start at index 0 and end at T-1 (prior and decoder terms are
then fixed): dynamic programming over the pairwise cost table (Watson et al. 2021),
O(K T^2) time, vectorised over the T^2 table.

All math in float64 numpy.
"""
from __future__ import annotations

import math

import numpy as np

from ddpmcodec.errors import DDPMCodecError

VARIANCES = ("model", "fixedlarge", "fixedsmall", "analytic")
TRAJECTORIES = ("even", "quadratic", "dp")
M_MAX = 4.0  # largest squared error per dimension between two points of [-1, 1]


def jump_coefficients(abar_t, abar_s):
    """(a, lam2) of q(x_s | x_t, x0) for a jump from alpha-bar ``abar_t`` down to
    ``abar_s`` (arrays broadcast; abar_s = 1 means s is the data itself: lam2 = 0)."""
    abar_t = np.asarray(abar_t, dtype=np.float64)
    abar_s = np.asarray(abar_s, dtype=np.float64)
    beta = 1.0 - abar_t / abar_s
    a = np.sqrt(abar_s) * beta / (1.0 - abar_t)
    lam2 = beta * (1.0 - abar_s) / (1.0 - abar_t)
    return a, lam2


def analytic_variance(abar_t, abar_s, m_t):
    """sigma2* = lam2 + a^2 m_t of a jump, with m_t clipped to [0, 4] (so sigma2* stays in
    its proven interval [lam2, lam2 + 4 a^2] whatever the estimate)."""
    a, lam2 = jump_coefficients(abar_t, abar_s)
    return lam2 + a * a * np.clip(m_t, 0.0, M_MAX)


def expected_kl(abar_t, abar_s, m_t, sigma2=None):
    """Expected KL(q(x_s|x_t,x0) || p(x_s|x_t)) per dimension, nats, for reverse variance
    ``sigma2`` (None: the analytic optimum, where it is 1/2 log(1 + a^2 m_t / lam2))."""
    a, lam2 = jump_coefficients(abar_t, abar_s)
    m_t = np.clip(np.asarray(m_t, dtype=np.float64), 0.0, M_MAX)
    if sigma2 is None:
        return 0.5 * np.log1p(a * a * m_t / lam2)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    return 0.5 * (np.log(sigma2 / lam2) + (lam2 + a * a * m_t) / sigma2 - 1.0)


def jump_costs(alphas_cumprod, m, variance: str = "analytic") -> np.ndarray:
    """The pairwise table C[s, t] (nats per dim) of the jump t -> s for all s < t
    (np.inf elsewhere), under ``variance``: analytic, fixedlarge (sigma2 = the jump's
    beta) or fixedsmall (sigma2 = lam2). ``alphas_cumprod`` and ``m`` are [T]."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    T = len(abar)
    if m.shape != (T,):
        raise DDPMCodecError(f"calibration has {m.shape[0] if m.ndim else 0} timesteps, "
                             f"the schedule {T}")
    s, t = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    upper = s < t
    cost = np.full((T, T), np.inf)
    at, as_, mt = abar[t[upper]], abar[s[upper]], m[t[upper]]
    if variance == "analytic":
        cost[upper] = expected_kl(at, as_, mt)
    elif variance == "fixedlarge":
        cost[upper] = expected_kl(at, as_, mt, 1.0 - at / as_)
    elif variance == "fixedsmall":
        cost[upper] = expected_kl(at, as_, mt, jump_coefficients(at, as_)[1])
    else:
        raise DDPMCodecError(f"no jump cost for variance {variance!r}")
    return cost


def dp_trajectory(cost: np.ndarray, steps: int) -> tuple[list[int], float]:
    """The K-subset 0 = t_0 < ... < t_{K-1} = T-1 minimising sum_k cost[t_{k-1}, t_k],
    and that minimum. ``cost`` is the [T, T] table of :func:`jump_costs`."""
    T = cost.shape[0]
    if not 2 <= steps <= T:
        raise DDPMCodecError(f"a dp trajectory needs 2 <= K <= {T} steps, got {steps}")
    if steps == T:  # the only K-subset
        every = list(range(T))
        return every, chain_cost(cost, every)
    best = np.full(T, np.inf)   # best[t]: cheapest path of k+1 indices from 0 ending at t
    best[0] = 0.0
    choice = np.zeros((steps, T), dtype=np.int64)
    for k in range(1, steps):
        total = best[:, None] + cost          # [s, t]: reach s with k indices, then jump s -> t
        choice[k] = np.argmin(total, axis=0)
        best = total[choice[k], np.arange(T)]
    path = [T - 1]
    for k in range(steps - 1, 0, -1):
        path.append(int(choice[k, path[-1]]))
    path.reverse()
    return path, float(best[T - 1])


def quadratic_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """K indices from 0 to T-1 spaced quadratically (dense near the data, as in DDIM's
    'quad' option), made strictly increasing."""
    if not 2 <= steps <= num_timesteps:
        raise DDPMCodecError(f"--steps must be between 2 and {num_timesteps}, got {steps}")
    raw = (np.linspace(0.0, math.sqrt(num_timesteps - 1), steps) ** 2).round().astype(int)
    ts = [0]
    for k in range(1, steps):
        ts.append(min(max(int(raw[k]), ts[-1] + 1), num_timesteps - steps + k))
    ts[-1] = num_timesteps - 1
    return ts


def chain_cost(cost: np.ndarray, timesteps) -> float:
    """sum of cost[t_{k-1}, t_k] along a trajectory."""
    ts = list(timesteps)
    return float(sum(cost[s, t] for s, t in zip(ts[:-1], ts[1:])))


def interpolate_stat(indices, values, num_timesteps: int) -> np.ndarray:
    """A per-index statistic measured at ``indices`` (increasing, from 0 to T-1) extended
    to every index 0..T-1, linearly in log(value) (the x0-prediction error spans decades)."""
    idx = np.asarray(indices, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if idx[0] != 0 or idx[-1] != num_timesteps - 1 or np.any(np.diff(idx) <= 0):
        raise DDPMCodecError("calibration indices must increase from 0 to T-1")
    log_v = np.log(np.clip(v, 1e-30, None))
    return np.exp(np.interp(np.arange(num_timesteps), idx, log_v))


def chain_timesteps(full, steps: int | None, trajectory: str = "even", variance: str = "model",
                    m: np.ndarray | None = None) -> list[int]:
    """The K original indices of a trajectory on the full chain ``full`` (a Diffusion):
    even (the papers' respacing), quadratic, or dp (needs the calibration statistic ``m``;
    minimises the expected KL terms under ``variance``)."""
    from ddpmcodec.core.diffusion import spaced_timesteps
    T = full.num_steps
    K = T if steps is None else int(steps)
    if trajectory == "even":
        return spaced_timesteps(T, K)
    if trajectory == "quadratic":
        return quadratic_timesteps(T, K)
    if trajectory == "dp":
        if m is None:
            raise DDPMCodecError("--trajectory dp needs the model's calibration statistics")
        rule = cost_variance(full, variance)
        return dp_trajectory(jump_costs(full.alphas_cumprod.numpy(), m, rule), K)[0]
    raise DDPMCodecError(f"--trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")


def cost_variance(full, variance: str) -> str:
    """The variance rule a dp trajectory is optimised for (``model`` -> the checkpoint's)."""
    rule = full.variance_type if variance == "model" else variance
    if rule not in ("analytic", "fixedlarge", "fixedsmall"):
        raise DDPMCodecError(f"--trajectory dp has no cost table for the {rule} variance; "
                             f"use --variance analytic, fixedlarge or fixedsmall")
    return rule


def build_chain(full, timesteps, variance: str = "model", m: np.ndarray | None = None,
                decoder_variance: float | None = None):
    """The respaced Diffusion on ``timesteps`` with the reverse-variance rule ``variance``:
    model (the checkpoint's), fixedlarge, fixedsmall, or analytic (explicit variances:
    sigma2* = lam2 + a^2 m_t for every jump, and ``decoder_variance`` for the decoder at
    index 0; at another first index the decoder uses m[t_0], the Gaussian optimum)."""
    if variance not in VARIANCES:
        raise DDPMCodecError(f"--variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
    ts = [int(t) for t in timesteps]
    chain = full if ts == list(range(full.num_steps)) else full.respace(ts)
    if variance == "model":
        return chain
    if variance in ("fixedlarge", "fixedsmall"):
        return chain.with_variance(variance)
    if m is None:
        raise DDPMCodecError("--variance analytic needs the model's calibration statistics")
    abar = full.alphas_cumprod.numpy()
    sigma2 = np.empty(len(ts))
    sigma2[1:] = analytic_variance(abar[ts[1:]], abar[ts[:-1]], m[ts[1:]])
    if ts[0] == 0 and decoder_variance is not None:
        sigma2[0] = decoder_variance
    else:
        sigma2[0] = float(np.clip(m[ts[0]], 1e-12, M_MAX))
    return chain.with_variance("explicit", sigma2)
