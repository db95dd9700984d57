"""Shared randomness: the keys both sides derive from (seed, image, step, chunk, ...),
the permutation of a target's dimensions and its cut into chunks."""
from __future__ import annotations

import numpy as np

from ddpmcodec.core.splitmix import GAMMA as _SPLITMIX_GAMMA
from ddpmcodec.core.splitmix import mix64 as _mix64


def _hash_path(h: int, *counters: int) -> int:
    """``h`` (a seed's or a path's hash) continued through ``counters``."""
    for c in counters:
        h = _mix64(h ^ _mix64(int(c) + _SPLITMIX_GAMMA))
    return h


def derive_key(seed: int, *counters: int) -> np.ndarray:
    """A 128-bit Philox key (uint64 [2]) for a tuple of non-negative integers."""
    h = _hash_path(_mix64(int(seed) + _SPLITMIX_GAMMA), *counters)
    return np.array([h, _mix64(h + 0x632BE59BD9B4E019)], dtype=np.uint64)


def shared_permutation(key: np.ndarray, dims: int) -> np.ndarray:
    """A permutation of range(dims) from the key: stable argsort of Philox words (integer
    operations only, so the same on every machine)."""
    words = np.random.Philox(key=key).random_raw(dims)
    return np.argsort(words, kind="stable")


def chunk_slices(dims: int, num_chunks: int) -> list[tuple[int, int]]:
    """[start, stop) of ``num_chunks`` near-equal contiguous groups of range(dims) (the
    first dims % num_chunks groups are one longer), as numpy.array_split cuts."""
    base, extra = divmod(dims, num_chunks)
    out, start = [], 0
    for j in range(num_chunks):
        stop = start + base + (1 if j < extra else 0)
        out.append((start, stop))
        start = stop
    return out
