"""The fitted proposal variance: one level per image and coded step, var_p = var_q *
exp(level / per_nat), its code and the KL it implies (see the package docstring)."""
from __future__ import annotations

import math

import numpy as np

from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.params import LEVELS_PER_NAT, MAX_LEVEL_EXPONENT, MAX_LEVEL_NATS
from ddpmcodec.core.likelihood import LN2
from ddpmcodec.errors import DDPMCodecError


# -- the fitted proposal variance ------------------------------------------------------------
def level_variance(var_q: float, level: int, per_nat: int = LEVELS_PER_NAT,
                   exact: bool = False) -> float:
    """The proposal variance of a fitted level: var_q * e^(level / per_nat), the
    exponential by :func:`~ddpmcodec.core.exact.functions.exp_basic` in exact files (the
    platform's libm in float32 ones)."""
    if exact:
        from ddpmcodec.core.exact.functions import exp_basic
        return var_q * float(exp_basic(level / per_nat))
    return var_q * math.exp(level / per_nat)


def fitted_level(mean_q: np.ndarray, var_q: float, mean_p: np.ndarray,
                 per_nat: int = LEVELS_PER_NAT, exact: bool = False) -> int:
    """The variance level l >= 0 (var_p = var_q e^{l/per_nat}) that minimises the KL: the
    better of the two levels around the optimum var_q + mean((mean_q - mean_p)^2)."""
    v = float(np.mean((mean_q - mean_p) ** 2))
    x = per_nat * math.log1p(v / var_q)
    best, best_kl = 0, math.inf
    for lvl in {max(0, math.floor(x)), max(0, math.ceil(x))}:
        kl = float(ch.kl_bits(mean_q, var_q, mean_p,
                              level_variance(var_q, lvl, per_nat, exact)).sum())
        if kl < best_kl:
            best, best_kl = lvl, kl
    if best > MAX_LEVEL_NATS * per_nat:
        raise DDPMCodecError("the fitted variance is out of range for this file format")
    return best


def level_octave_probs(previous: int | None) -> np.ndarray:
    """Model of the octave of a variance level given the same image's level at the
    previous coded step (levels grow slowly along the chain): two-sided geometric around
    the previous octave, a little heavier one octave up; uniform without a previous one."""
    n = MAX_LEVEL_EXPONENT + 1
    if previous is None:
        return np.full(n, 1.0 / n)
    c = 2 * ((previous + 1).bit_length() - 1) + 1
    # 2^-(2|e - c/2|) = 2^-|2e - c|: exact powers of two (ldexp, no libm)
    p = np.ldexp(1.0, -np.abs(2 * np.arange(n) - c))
    return p / p.sum()


def level_kl_hint(level: int, dims: int, per_nat: int = LEVELS_PER_NAT) -> float:
    """KL (bits) implied by a fitted level: dims * l / (2 * per_nat) nats."""
    return dims * level / (2.0 * per_nat) / LN2
