"""Counter-based Gaussian noise: the same numbers on any device and in any batch layout.

The noise for (seed, image index, timestep index) is a pure function of those integers,
computed with splitmix64 on int64 tensors and Box-Muller in float64. So a results folder
does not depend on batch size or on which images were computed first, an interrupted run
resumes with the same noise, and a fast engine can be checked against the plain loop on
*the same* noise.
"""
from __future__ import annotations

import math

import torch

from ddpmcodec.core.splitmix import GAMMA, mix64_torch, signed64, srl64

_GAMMA = signed64(GAMMA)


def stream_keys(seed: int, *counters: torch.Tensor) -> torch.Tensor:
    """One 64-bit key per element of the broadcast counters (int64 tensors)."""
    key = mix64_torch(torch.tensor(int(seed) & ((1 << 63) - 1), dtype=torch.long) + _GAMMA)
    for c in counters:
        key = mix64_torch(key ^ mix64_torch(torch.as_tensor(c, dtype=torch.long) + _GAMMA))
    return key


def uniform_bits(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[*keys.shape, n] int64 words, word j of stream key = mix(key + (j+1)*gamma)."""
    j = torch.arange(1, n + 1, dtype=torch.long, device=keys.device)
    return mix64_torch(keys.unsqueeze(-1) + j * _GAMMA)


def counter_normal(seed: int, image_ids, timesteps, shape, device=None) -> torch.Tensor:
    """Standard normal float64 noise of shape [B, *shape] for B (image, timestep) pairs.

    ``image_ids`` and ``timesteps`` are int sequences/tensors broadcastable to [B].
    """
    image_ids = torch.as_tensor(image_ids, dtype=torch.long, device=device)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long, device=device)
    image_ids, timesteps = torch.broadcast_tensors(image_ids, timesteps)
    keys = stream_keys(seed, image_ids.to(device), timesteps.to(device))
    if keys.device != image_ids.device:
        keys = keys.to(image_ids.device)
    n = math.prod(shape)
    words = uniform_bits(keys, 2 * n)
    scale = 2.0 ** -53
    u1 = (srl64(words[..., 0::2], 11) + 1).to(torch.float64) * scale  # (0, 1]
    u2 = srl64(words[..., 1::2], 11).to(torch.float64) * scale  # [0, 1)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.reshape(len(keys), *shape)
