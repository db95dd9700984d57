"""`ddpmcodec nll`: the bound of a chain over a set of images, into a results folder.

Arrays written (``arrays.npz``; N images, K chain steps, column k = chain step k):
``image_id`` [N], ``vb`` [N,K] bits/dim (column 0 is the decoder term L_0),
``xstart_mse`` [N,K] and ``eps_mse`` [N,K] (per-pixel MSE on [-1, 1]), ``prior`` [N],
``total`` [N] bits/dim, and ``timesteps`` [K] (original indices). Tables: ``per_image.csv``
and ``per_step.csv``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import ImageSet, check_fits, to_model_space
from .likelihood import bound_plain_loop
from .models import LoadedModel
from .progress import progress_bar
from .results import ResultsFolder, mean_se, read_results


def nll_config(model: LoadedModel, images: ImageSet, steps: int | None, seed: int) -> dict:
    diffusion = model.diffusion.with_steps(steps)
    return {"model": {"fingerprint": model.fingerprint, "source": model.source},
            "data": images.spec, "chain": diffusion.spec(), "seed": int(seed),
            "estimator": "full", "decoder_cdf": "exact", "model_dtype": "float32"}


def summarize(arrays: dict) -> dict:
    """Summary numbers (bits/dim, mean and standard error over images)."""
    vb, prior = arrays["vb"], arrays["prior"]
    out = {"num_images": int(len(prior)), "num_steps": int(vb.shape[1])}
    for name, values in (("total_bpd", arrays["total"]), ("prior_bpd", prior),
                         ("kl_bpd", vb[:, 1:].sum(1)), ("rate_bpd", prior + vb[:, 1:].sum(1)),
                         ("decoder_bpd", vb[:, 0])):
        out[name], out[name.replace("_bpd", "_se")] = mean_se(values)
    return out


def tables(arrays: dict, names=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """per_image and per_step tables (pandas)."""
    vb = arrays["vb"]
    ids = arrays["image_id"]
    per_image = pd.DataFrame({
        "image_id": ids, "name": [names[i] if names else f"{i:06d}" for i in ids],
        "total_bpd": arrays["total"], "prior_bpd": arrays["prior"],
        "rate_bpd": arrays["prior"] + vb[:, 1:].sum(1), "decoder_bpd": vb[:, 0]})
    n = len(ids)
    sd = vb.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(vb.shape[1])
    per_step = pd.DataFrame({
        "k": np.arange(vb.shape[1]), "timestep": arrays["timesteps"],
        "t": arrays["timesteps"] + 1, "vb_bpd": vb.mean(0), "vb_se": sd,
        "xstart_mse": arrays["xstart_mse"].mean(0), "eps_mse": arrays["eps_mse"].mean(0)})
    return per_image, per_step


def run_nll(model: LoadedModel, images: ImageSet, out: str | Path, steps: int | None = None,
            batch_size: int = 64, seed: int = 0, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Compute (or resume, or just read) the bound of ``images`` under ``model``.

    Returns the results.json content; the folder ``out`` holds the arrays and tables.
    """
    check_fits(images.images, model.image_shape)
    diffusion = model.diffusion.with_steps(steps)
    folder = ResultsFolder(out, "nll", nll_config(model, images, steps, seed), overwrite)
    if folder.complete:
        return read_results(folder.path)
    done = folder.done_ids()
    todo = [i for i in range(len(images)) if i not in done]
    denoiser = model.denoiser()
    with progress_bar(len(todo) * diffusion.num_steps, "nll", "eval", enabled=progress) as bar:
        for start in range(0, len(todo), batch_size):
            ids = np.asarray(todo[start:start + batch_size])
            x0 = to_model_space(images.images[ids], model.device)
            t0 = time.perf_counter()
            terms = bound_plain_loop(denoiser, diffusion, x0, torch.from_numpy(ids), seed,
                                     progress=lambda: bar.update(len(ids)))
            folder.write_shard(ids, seconds=np.full(len(ids), (time.perf_counter() - t0) / len(ids)),
                               **{k: v.numpy() for k, v in terms.items()})
    arrays = folder.merged()
    arrays["timesteps"] = diffusion.timesteps.numpy()
    seconds = float(arrays.pop("seconds").sum())
    summary = summarize(arrays)
    per_image, per_step = tables(arrays, images.names)
    per_image.to_csv(folder.path / "per_image.csv", index=False)
    per_step.to_csv(folder.path / "per_step.csv", index=False)
    run = {"device": str(model.device), "torch": torch.__version__, "compute_seconds": seconds,
           "images_per_second": len(images) / seconds if seconds > 0 else None}
    return folder.finish(arrays, summary, run)
