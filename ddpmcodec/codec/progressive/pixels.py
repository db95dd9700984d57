"""The lossless layer of a progressive file: after its last coded step (the latent at
t = 1, chain step 0), the 8-bit pixels under the discretized Gaussian decoder
p(x0 | x_1) of the exact network -- the L_0 term of the bound -- in the same arithmetic
stream, so a file cut anywhere before or inside the layer still decodes as a progressive
file, and the whole file decodes to the exact pixels.

The probabilities are :func:`ddpmcodec.codec.entropy.exact_models.pixel_rows` (libm-free,
the rows the lossless codec pushes), turned into integer frequencies by the arithmetic
coder on both sides. Pixels go image by image in C, H, W order.
"""
from __future__ import annotations

import numpy as np
import torch

from ddpmcodec.codec.entropy import arith
from ddpmcodec.codec.entropy.exact_models import pixel_rows
from ddpmcodec.codec.network import exact_network_p

_ROWS = 4096  # pixels whose rows are made at once


def decoder_p(model, diffusion, x: torch.Tensor, batches) -> tuple:
    """(mean, std) float64 [N, dims] of p(x0 | x at chain step 0), the exact network's,
    and its x0-prediction (the mean reconstruction there, float64 [N, C, H, W])."""
    p = exact_network_p(model, diffusion, x, 0, batches)
    n = x.shape[0]
    mean = p["mean"].reshape(n, -1).numpy()
    std = p["std"]
    std = (std.reshape(n, -1).numpy() if torch.is_tensor(std)
           else np.full_like(mean, float(std)))
    return mean, std, p["pred_x0"]


def _rows(mean: np.ndarray, std: np.ndarray):
    flat_m, flat_s = mean.reshape(-1), std.reshape(-1)
    for a in range(0, len(flat_m), _ROWS):
        yield a, pixel_rows(flat_m[a:a + _ROWS], flat_s[a:a + _ROWS])


def write_pixels(stream: arith.ArithEncoder, images: np.ndarray, mean: np.ndarray,
                 std: np.ndarray) -> float:
    """Code uint8 NHWC ``images`` under the decoder rows of ``mean``/``std`` [N, dims];
    returns their ideal code length in bits (under the coder's quantised probabilities,
    which give every level at least 2^-24)."""
    levels = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(-1)
    ideal = 0.0
    for a, rows in _rows(mean, std):
        for j, row in enumerate(rows):
            ideal += stream.categorical(int(levels[a + j]), row)
    return ideal


def read_pixels(stream: arith.ArithDecoder, mean: np.ndarray, std: np.ndarray,
                shape) -> np.ndarray:
    """The pixels :func:`write_pixels` coded: uint8 [N, H, W, C] of image ``shape``
    (C, H, W). Raises :class:`arith.Exhausted` when the bytes end first."""
    n = mean.shape[0]
    levels = np.empty(mean.size, dtype=np.uint8)
    for a, rows in _rows(mean, std):
        for j, row in enumerate(rows):
            levels[a + j] = stream.categorical(row)
    return np.ascontiguousarray(levels.reshape(n, *shape).transpose(0, 2, 3, 1))
