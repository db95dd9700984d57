"""Elementary functions whose results are fixed on every machine.

IEEE 754 fixes the result of +, -, *, / and sqrt (correctly rounded) but not of exp, log,
sin, cos or erf: each libm, and each SIMD variant of one, may round differently. What
decides bits in a file (the exact network's tables, the coders' probabilities) is built
from the functions here instead:

* :func:`exp_basic` and :func:`normal_cdf_basic`: numpy float64 arrays through +, -, *, /
  only, every operation a separate ufunc (numpy never fuses a multiply and an add), so
  they give the same bits on every CPU. Accurate to a few ulp, which only the rate sees.
* :func:`decimal_exp`, :func:`decimal_log2`, :func:`decimal_sin_cos`: Python's decimal
  module (libmpdec, exactly specified) at 40 digits, rounded to float64 once: for the
  handful of scalars a chain or a timestep embedding needs.
"""
from __future__ import annotations

from decimal import Decimal, localcontext

import numpy as np

_DIGITS = 40
# ln 2 split so that k * _LN2_HI is exact for |k| < 2^20 (its last 20 bits are zero)
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10
_INV_LN2 = 1.4426950408889634
_EXP_TERMS = 14       # Taylor terms of exp on |r| <= ln2 / 2: the next is below 2^-60
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SERIES_TERMS = 90     # Phi's series at |z| < _CF_FROM: the last term is below 1e-17
_CF_FROM = 5.0
_CF_DEPTH = 60         # Laplace's continued fraction of the Mills ratio at z >= 5


def exp_basic(x: np.ndarray) -> np.ndarray:
    """e^x for float64 x (values below -700 give 0), by range reduction and a Taylor
    polynomial: the same bits on every machine."""
    x = np.maximum(np.asarray(x, dtype=np.float64), -700.0)
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.ones_like(r)
    for n in range(_EXP_TERMS, 0, -1):  # Horner: 1 + r/1 (1 + r/2 (1 + ...))
        p = 1.0 + (r / n) * p
    return np.ldexp(p, k.astype(np.int64))  # exact scaling by 2^k


def normal_cdf_basic(z: np.ndarray) -> np.ndarray:
    """Phi(z) and the upper tail 1 - Phi(z), float64 arrays of z's shape, with no
    cancellation in the tails (the smaller of the two is computed directly)."""
    z = np.asarray(z, dtype=np.float64)
    a = np.abs(z)
    pdf = exp_basic(-0.5 * (a * a)) * _INV_SQRT_2PI
    # Phi(a) - 1/2 = pdf(a) * sum a^(2n+1) / (1*3*...*(2n+1))
    near = np.minimum(a, _CF_FROM)
    term, total, a2 = near.copy(), near.copy(), near * near
    for n in range(1, _SERIES_TERMS):
        term = term * a2 / (2 * n + 1)
        total = total + term
    small_tail = 0.5 - pdf * total
    # 1 - Phi(a) = pdf(a) / (a + 1/(a + 2/(a + 3/(a + ...)))), evaluated from the bottom
    far = np.maximum(a, _CF_FROM)
    frac = far.copy()
    for n in range(_CF_DEPTH, 0, -1):
        frac = far + n / frac
    far_tail = pdf / frac
    upper_abs = np.where(a < _CF_FROM, small_tail, far_tail)  # 1 - Phi(|z|)
    upper_abs = np.maximum(upper_abs, 0.0)
    lower = np.where(z < 0, upper_abs, 1.0 - upper_abs)
    upper = np.where(z < 0, 1.0 - upper_abs, upper_abs)
    return lower, upper


def decimal_exp(x) -> float:
    """e^x rounded once to float64 from 40 correct digits."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        return float(Decimal(x).exp())


def decimal_log2(x) -> float:
    """log2(x) for x > 0, rounded once to float64 from 40 correct digits."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        return float(Decimal(x).ln() / Decimal(2).ln())


def decimal_pow2(x) -> float:
    """2^x rounded once to float64 from 40 correct digits."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        return float((Decimal(x) * Decimal(2).ln()).exp())


def decimal_pi() -> Decimal:
    """pi to 42 digits (Machin's formula, arctan by its series), at 50 digits of precision."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS + 10

        def arctan_inv(n: int) -> Decimal:
            x, total, k = Decimal(1) / n, Decimal(0), 0
            power, n2, eps = x, n * n, Decimal(10) ** -(_DIGITS + 2)
            while power > eps:
                total += power / (2 * k + 1) if k % 2 == 0 else -power / (2 * k + 1)
                power /= n2
                k += 1
            return total
        return 16 * arctan_inv(5) - 4 * arctan_inv(239)


def decimal_sin_cos(x: Decimal) -> tuple[Decimal, Decimal]:
    """(sin x, cos x) of a Decimal by reduction modulo 2 pi and Taylor series."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS + 10
        two_pi = 2 * decimal_pi()
        x = Decimal(x)
        x -= two_pi * (x / two_pi).to_integral_value()
        eps = Decimal(10) ** -(_DIGITS + 5)
        s, c = Decimal(0), Decimal(0)
        term, n = Decimal(1), 0
        while True:  # term = x^n / n!
            if n % 4 == 0:
                c += term
            elif n % 4 == 1:
                s += term
            elif n % 4 == 2:
                c -= term
            else:
                s -= term
            n += 1
            term = term * x / n
            if abs(term) < eps and n > 2:
                break
        return s, c
