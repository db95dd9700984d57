"""The real rate-distortion curve of the progressive codec, drawn from the folder that
:func:`ddpmcodec.pipelines.rd_codec.run_rd_codec` writes (codec_points.csv, theory.csv,
baselines.csv, results.json) and nothing else."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ddpmcodec.io.atomic import savefig_atomic


def rate_at_rmse(bits, rmse, target: float) -> float:
    """Bits needed to reach ``target`` RMSE on a decreasing curve (log-linear interpolation
    between the points around it; NaN when the curve never gets there)."""
    bits, rmse = np.asarray(bits, float), np.asarray(rmse, float)
    for i in range(1, len(bits)):
        if rmse[i] <= target < rmse[i - 1]:
            f = (math.log(rmse[i - 1]) - math.log(target)) / (math.log(rmse[i - 1]) - math.log(rmse[i]))
            return float(bits[i - 1] + f * (bits[i] - bits[i - 1]))
    return float("nan")


def draw(points: pd.DataFrame, theory: pd.DataFrame, baselines: pd.DataFrame, path: Path,
         title: str = "", full_chain: pd.DataFrame | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("rmse", "psnr")):
        ax.plot(theory["kl_bpd"], theory[metric], "k--", lw=1.2,
                label="theory: KL of the codec's proposal, exact samples")
        ax.plot(theory["model_kl_bpd"], theory[metric], "k:", lw=1.2,
                label="theory: bound terms with the model's variance")
        if full_chain is not None:
            ax.plot(full_chain["rate_bpd"], full_chain[metric], color="0.6", lw=1,
                    label="theory: full chain (nll results)")
        mean = points[points["recon"] == "mean"]
        ax.plot(mean["kl_bpd"], mean[metric], "o", mfc="none", color="C0",
                label="codec: KL along its path")
        for i, (r, grp) in enumerate(points.groupby("recon", sort=False)):
            ax.plot(grp["bpd"], grp[metric], "o-", color=f"C{i}", ms=4,
                    label=f"codec: actual payload bits ({r})")
        for j, (c, grp) in enumerate(baselines.groupby("codec")):
            ax.plot(grp["bpd"], grp[metric], "s-", color=f"C{5 + j}", ms=3, lw=1, label=c.upper())
        ax.set_xscale("log")
        ax.set_xlabel("rate (bits/dim)")
        ax.set_ylabel({"rmse": "RMSE [0, 255]", "psnr": "PSNR (dB)"}[metric])
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)


def draw_folder(folder) -> Path:
    """rd_codec.png of a folder written by ``run_rd_codec`` (with the full-chain curve of
    the nll results folder it names, when that folder is still there)."""
    folder = Path(folder)
    res = json.loads((folder / "results.json").read_text())
    points = pd.read_csv(folder / "codec_points.csv")
    theory = pd.read_csv(folder / "theory.csv")
    baselines = pd.read_csv(folder / "baselines.csv")
    full_chain = None
    nll_results = res["config"].get("nll_results")
    if nll_results and (Path(nll_results) / "results.json").is_file():
        from ddpmcodec.core.rd import rate_distortion
        from ddpmcodec.io.results import load_arrays
        full_chain = rate_distortion(load_arrays(nll_results))
    s = res["summary"]
    title = (f"model {res['config']['model']['fingerprint']}, {s['num_images']} images, "
             f"K={s['steps']}, B={s['channel']['chunk_bits']} bits, "
             f"margin {s['channel']['margin_bits']}")
    path = folder / "rd_codec.png"
    draw(points, theory, baselines, path, title, full_chain)
    return path


def summary_lines(info: dict) -> list[str]:
    """Human-readable lines for the CLI."""
    f = info["full_rate"]
    lines = [f"progressive codec, {info['num_images']} images, K={info['steps']}: at full rate "
             f"{f['bits_per_image']:.0f} bits/image ({f['bpd']:.3f} bits/dim) for a summed KL of "
             f"{f['kl_bits_per_image']:.0f} (overhead {100 * f['overhead']:.1f}%), "
             f"RMSE {f['rmse']:.2f}, PSNR {f['psnr']:.2f} dB",
             "RMSE   codec bits  theory bits   JPEG bits   WebP bits   (per image)"]
    for r in info["equal_rmse"]:
        lines.append(f"{r['rmse']:>4.0f}   {r['codec_bits']:>10.0f}   {r['theory_bits']:>10.0f}"
                     f"   {r['jpeg_bits']:>9.0f}   {r['webp_bits']:>9.0f}")
    for what, why in info["skipped"].items():
        lines.append(why)
    lines.append(f"wrote {info['out']} (codec_points.csv, theory.csv, baselines.csv, rd_codec.png)")
    return lines
