"""The encoder's targets: a whole-file size (--max-bytes, --bpp) or a PSNR (--psnr)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.core.metrics import rmse_psnr
from ddpmcodec.io.data import from_model_space
from ddpmcodec.errors import DDPMCodecError


@dataclass(frozen=True)
class Budget:
    bytes: int | None = None  # the whole file
    psnr: float | None = None


def budget_of(n: int, image_shape, max_bytes, bpp, psnr) -> Budget:
    """The encoder's target from the options (at most one)."""
    given = [name for name, v in (("--max-bytes", max_bytes), ("--bpp", bpp), ("--psnr", psnr))
             if v is not None]
    if len(given) > 1:
        raise DDPMCodecError(f"give at most one target, not {' and '.join(given)}")
    if max_bytes is not None:
        if max_bytes < 1:
            raise DDPMCodecError(f"--max-bytes must be positive, got {max_bytes}")
        return Budget(bytes=int(max_bytes) * n)
    if bpp is not None:
        if not bpp > 0:
            raise DDPMCodecError(f"--bpp must be positive, got {bpp}")
        _, h, w = image_shape
        return Budget(bytes=int(math.floor(bpp * h * w * n / 8)))
    if psnr is not None:
        if not 0 < psnr < 200:
            raise DDPMCodecError(f"--psnr must be a PSNR in dB (0..200), got {psnr}")
        return Budget(psnr=float(psnr))
    return Budget()


def psnr_of(pred_x0: torch.Tensor, orig: np.ndarray) -> float:
    """PSNR (dB) of the mean reconstruction over all images of the file."""
    return rmse_psnr(from_model_space(pred_x0), orig)[1]
