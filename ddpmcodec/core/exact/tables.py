"""The exact network's non-linearities as integer tables, built from
:mod:`~ddpmcodec.core.exact.functions` (the same integers on every machine)."""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from ddpmcodec.core.exact import spec
from ddpmcodec.core.exact.functions import exp_basic


@functools.cache
def silu_table() -> np.ndarray:
    """int64 [2 L + 2], L = SILU_RANGE 2^TABLE_BITS: entry L + i is round(silu(x) 2^F) at
    x = i 2^-TABLE_BITS (one entry past the end, for interpolation)."""
    L = spec.SILU_RANGE << spec.TABLE_BITS
    x = np.arange(-L, L + 2, dtype=np.float64) * 2.0 ** -spec.TABLE_BITS
    return np.rint(x * 2.0 ** spec.FRAC_BITS / (1.0 + exp_basic(-x))).astype(np.int64)


@functools.cache
def softmax_exp_table() -> np.ndarray:
    """int64 [R 2^TABLE_BITS + 2], R = SOFTMAX_EXP_RANGE: entry i is
    round(e^(-i 2^-TABLE_BITS) 2^SOFTMAX_EXP_BITS) (one entry past the end)."""
    n = spec.SOFTMAX_EXP_RANGE << spec.TABLE_BITS
    x = -np.arange(n + 2, dtype=np.float64) * 2.0 ** -spec.TABLE_BITS
    return np.rint(exp_basic(x) * 2.0 ** spec.SOFTMAX_EXP_BITS).astype(np.int64)


def at_every_step(table: np.ndarray) -> np.ndarray:
    """A table's linear interpolation, as the network defines it, at every 2^-FRAC_BITS:
    int64 [(len(table) - 2) 2^D + 1], D = FRAC_BITS - TABLE_BITS, entry u holding
    T[i] + round((T[i+1] - T[i]) f / 2^D) for u = i 2^D + f (halves rounded up), in exact
    integer arithmetic. One gather per point instead of an interpolation of two."""
    t = np.asarray(table, dtype=np.int64)
    D = 1 << (spec.FRAC_BITS - spec.TABLE_BITS)
    u = np.arange((len(t) - 2) * D + 1, dtype=np.int64)
    i, f = u // D, u % D
    step = t[i + 1] - t[i]
    return t[i] + (2 * step * f + D) // (2 * D)


def tables_digest() -> str:
    """16 hex digits of SHA-256 over both tables (the same on every machine)."""
    h = hashlib.sha256()
    h.update(silu_table().astype("<i8").tobytes())
    h.update(softmax_exp_table().astype("<i8").tobytes())
    return h.hexdigest()[:16]
