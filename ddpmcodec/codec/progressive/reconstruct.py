"""x0 from a decoded latent (the denoised mean, an ancestral sample or the DDIM path),
and the truncation table of an encode's statistics."""
from __future__ import annotations

import math

import numpy as np
import torch

from ddpmcodec.codec.api import CodecStats
from ddpmcodec.codec.progressive.params import DEFAULT_RECON_STEPS, RECONS
from ddpmcodec.codec.progressive.steps import network_p_on_device
from ddpmcodec.core.metrics import mse_per_image, psnr
from ddpmcodec.io.data import from_model_space
from ddpmcodec.errors import DDPMCodecError


def check_recons(recons) -> None:
    """DDPMCodecError for a reconstruction name that is not one of RECONS."""
    for r in recons:
        if r not in RECONS:
            raise DDPMCodecError(f"--recon must be one of {', '.join(RECONS)}, got {r!r}")


def rmse_per_image(pred_x0: torch.Tensor, orig: np.ndarray) -> list:
    """RMSE on [0, 255] of the uint8 reconstruction of each image."""
    return np.sqrt(mse_per_image(from_model_space(pred_x0), orig)).tolist()


def reconstruct(model, diffusion, x: torch.Tensor, k: int, batches, recon: str = "mean",
                recon_steps: int = DEFAULT_RECON_STEPS, seed: int = 0) -> torch.Tensor:
    """x0 (float64 [N, C, H, W] in [-1, 1]) from the latent x at chain step k of
    ``diffusion``: the clipped x0-prediction (mean), or ``recon_steps`` reverse steps on
    evenly spaced original indices from timesteps[k] down to 0, ancestral (sample) or DDIM
    with eta = 0 (flow)."""
    if recon == "mean" or int(diffusion.timesteps[k]) == 0:
        return network_p_on_device(model, diffusion, x, k, batches)["pred_x0"].clamp(-1.0, 1.0)
    from ddpmcodec.core.sampling import reverse_process
    if recon_steps < 1:
        raise DDPMCodecError(f"--recon-steps must be positive, got {recon_steps}")
    t = int(diffusion.timesteps[k])
    full = model.diffusion
    count = min(recon_steps + 1, t + 1)
    ts = sorted({int(round(v)) for v in np.linspace(0, t, count)})
    chain = full.respace(ts)
    den = model.denoiser()

    def call(xb, tb):
        return den(xb.to(model.device), tb.to(model.device)).cpu()
    outs = []
    for a, b in batches:
        res = reverse_process(call, chain, x[a:b], chain.num_steps - 1, torch.arange(a, b),
                              seed ^ 0x5EED, "ancestral" if recon == "sample" else "ddim")
        outs.append(res["x0"])
    return torch.cat(outs)


def truncation_table(stats: CodecStats, header_bits: int | None = None) -> list[dict]:
    """One row per truncation point (after each coded step) from an encoder's stats:
    cumulative actual bits of the file prefix (header + whole packets) and of the coded
    symbols alone, cumulative KL, per image, and the mean-reconstruction RMSE/PSNR."""
    rows = stats.extra["steps"]
    n, dims = stats.num_images, stats.dims
    hb = stats.header_bits if header_bits is None else header_bits
    out, file_bits, code_bits, kl, model_kl = [], float(hb), 0.0, 0.0, 0.0
    for row in rows:
        file_bits += 8 * row["packet_bytes"]
        code_bits += sum(im["code_bits"] for im in row["images"])
        kl += sum(im["kl_bits"] for im in row["images"])
        model_kl += sum(im["model_kl_bits"] for im in row["images"])
        rmse = np.asarray(row["rmse"])
        mse = float(np.mean(rmse ** 2))
        out.append({
            "step": row["step"], "t": row["t"],
            "file_bits_per_image": file_bits / n,
            "payload_bits_per_image": (file_bits - hb) / n,
            "code_bits_per_image": code_bits / n,
            "kl_bits_per_image": kl / n,
            "model_kl_bits_per_image": model_kl / n,
            "payload_bpd": (file_bits - hb) / (n * dims),
            "kl_bpd": kl / (n * dims),
            "overhead": (file_bits - hb) / kl - 1.0 if kl > 0 else float("nan"),
            "code_overhead": code_bits / kl - 1.0 if kl > 0 else float("nan"),
            "rmse": math.sqrt(mse),
            "psnr": psnr(math.sqrt(mse)),
            "chunks_per_image": sum(im["chunks"] for im in row["images"]) / n,
            "searched_per_image": sum(im["searched"] for im in row["images"]) / n,
            "saturated_frac": (sum(im["saturated_chunks"] for im in row["images"])
                               / max(1, sum(im["chunks"] for im in row["images"]))),
            "seconds": row["seconds"]})
    return out
