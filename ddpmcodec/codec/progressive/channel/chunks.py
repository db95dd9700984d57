"""One target's chunk plan: its layout, the permutation, each chunk's key and the
candidates both sides regenerate."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpmcodec.codec.progressive.channel import generator_v2 as cand
from ddpmcodec.codec.progressive.channel.generator_v1 import GENERATOR_ID, candidate_normals
from ddpmcodec.codec.progressive.channel.index import IndexModel, octave
from ddpmcodec.codec.progressive.channel.keys import (
    _hash_path, chunk_slices, derive_key, shared_permutation)
from ddpmcodec.core.splitmix import GAMMA as _SPLITMIX_GAMMA
from ddpmcodec.core.splitmix import mix64 as _mix64
from ddpmcodec.codec.progressive.channel.params import ChannelParams, layout


@dataclass
class ChunkPlan:
    """What both sides derive from the integer KL of one Gaussian before any index: the
    chunks (dimension indices of the flattened target, by the shared permutation), the
    mean chunk KL (bits) and context of the index model, the chunks' keys and the
    candidate generator."""

    groups: list            # int64 arrays of dimension indices, one per chunk
    mean_bits: float
    context: int
    model: IndexModel
    key_seed: int
    key_path: tuple
    generator: str
    path_hash: int          # derive_key's hash of (key_seed, *key_path), before the chunk

    @classmethod
    def make(cls, q_int: int, params: ChannelParams, dims: int, key_seed: int, key_path: tuple,
             index_model: IndexModel | None) -> ChunkPlan:
        J = layout(q_int, params, dims)  # bounded by dims whatever a corrupt stream claims
        perm = shared_permutation(derive_key(key_seed, *key_path, 0xC0FFEE), dims)
        model = index_model if index_model is not None else IndexModel(params)
        path_hash = _hash_path(_mix64(int(key_seed) + _SPLITMIX_GAMMA), *key_path)
        return cls([perm[a:b] for a, b in chunk_slices(dims, J)], q_int / J, int(J > 1),
                   model, key_seed, key_path, params.generator, path_hash)

    def key(self, j: int) -> np.ndarray:
        """The Philox key of chunk j's candidates."""
        return derive_key(self.key_seed, *self.key_path, j + 1)

    def v2_key(self, j: int) -> int:
        """The 64-bit key of chunk j's v2 candidates: the first word of its Philox key
        (derive_key's hash, continued from the path's)."""
        return _hash_path(self.path_hash, j + 1)

    def octave_probs(self) -> np.ndarray:
        return self.model.probs(self.mean_bits, self.context)

    def update(self, index: int) -> None:
        """Both sides, after each chunk's index: the adaptive model learns its octave."""
        self.model.update(octave(index), self.mean_bits, self.context)

    def place(self, out: np.ndarray, indices: list, mp: np.ndarray, vp: np.ndarray) -> None:
        """Write candidate indices[j] of every chunk j (mean_p + sqrt(var_p) * eps) into
        ``out`` (v2: all chunks' normals in one pass of the generator)."""
        if self.generator == GENERATOR_ID:
            for j, (idx, n) in enumerate(zip(self.groups, indices)):
                eps = candidate_normals(self.key(j), n, 1, len(idx))[0]
                out[idx] = mp[idx] + np.sqrt(vp[idx]) * eps
            return
        if not self.groups:
            return
        eps = cand.chunk_normals_numpy([self.v2_key(j) for j in range(len(self.groups))],
                                       indices, [len(idx) for idx in self.groups])
        idx = np.concatenate(self.groups)
        out[idx] = mp[idx] + np.sqrt(vp[idx]) * eps.astype(np.float64)
