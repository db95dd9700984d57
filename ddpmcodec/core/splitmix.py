"""splitmix64's finaliser (Steele, Lea & Flood 2014), the one hash behind every
counter-based random number of the package, on three kinds of operand.

The mixing is integer arithmetic modulo 2^64, so each form gives the same bits on every
machine: :func:`mix64` on Python ints, :func:`mix64_numpy` in place on uint64 arrays
(numpy wraps), :func:`mix64_torch` on int64 tensors (torch has no uint64 arithmetic: the
multiplication wraps in two's complement, and a logical right shift is an arithmetic one
then a mask). One set of constants serves all three.
"""
from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15                     # the golden-ratio increment
MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
SHIFTS = (30, 27, 31)
MASK64 = (1 << 64) - 1

_U64 = {"m": tuple(np.uint64(m) for m in MULTIPLIERS), "s": tuple(np.uint64(s) for s in SHIFTS)}


def signed64(v: int) -> int:
    """A value mod 2^64 as the int64 of the same bits."""
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def mix64(z: int) -> int:
    """The finaliser of a Python int (taken mod 2^64)."""
    z &= MASK64
    for shift, mult in zip(SHIFTS, MULTIPLIERS):
        z = ((z ^ (z >> shift)) * mult) & MASK64
    return z ^ (z >> SHIFTS[2])


def mix64_numpy(z: np.ndarray, scratch: np.ndarray) -> None:
    """The finaliser of uint64 ``z`` in place; ``scratch`` is a uint64 array of z's shape
    (the candidate generator reuses both, so nothing is allocated per call)."""
    (m1, m2), (s1, s2, s3) = _U64["m"], _U64["s"]
    for shift, mult in ((s1, m1), (s2, m2)):
        np.right_shift(z, shift, scratch)
        np.bitwise_xor(z, scratch, z)
        np.multiply(z, mult, z)
    np.right_shift(z, s3, scratch)
    np.bitwise_xor(z, scratch, z)


def srl64(z, k: int):
    """Logical right shift of an int64 tensor (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64_torch(z):
    """The finaliser of an int64 tensor (a new tensor; any device)."""
    for shift, mult in zip(SHIFTS, MULTIPLIERS):
        z = (z ^ srl64(z, shift)) * signed64(mult)
    return z ^ srl64(z, SHIFTS[2])
