"""`ddpmcodec rd-curve`: Table 4 and Figure 5 from the bound terms, or the real
progressive codec's curve beside the theory and the classical codecs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ddpmcodec.cli.chain_options import (
    DEFAULT_TRAJECTORY,
    DEFAULT_VARIANCE,
    CalibrationFile,
    TimestepsFile,
    Trajectory,
    Variance,
)
from ddpmcodec.cli.common import (
    Ckpt,
    Dataset,
    Device,
    Json,
    NumImages,
    Overwrite,
    Quiet,
    SampleDataPath,
    Seed,
    Split,
    default_out,
    emit,
    resolve_device,
)
from ddpmcodec.cli.nll import compute_nll
from ddpmcodec.codec.progressive import params as P
from ddpmcodec.errors import DDPMCodecError

CODEC_BATCH = 8  # --codec progressive: images per network call at most


def rd_curve(results: Annotated[Optional[Path], typer.Option(
                 "--results", "-r", help="an nll results folder (else one is computed; with "
                                         "--codec progressive: a full-chain curve to overlay)")] = None,
             ckpt: Ckpt = None, dataset: Dataset = None, split: Split = "test",
             data: SampleDataPath = None, num_images: NumImages = None,
             steps: Annotated[Optional[int], typer.Option(
                 "--steps", "-K", help=f"a chain of K steps (default: the full chain; with "
                                       f"--codec progressive the codec's {P.DEFAULT_STEPS} "
                                       f"geometric steps)")] = None,
             trajectory: Trajectory = DEFAULT_TRAJECTORY, variance: Variance = DEFAULT_VARIANCE,
             timesteps: TimestepsFile = None, calibration: CalibrationFile = None,
             batch_size: Annotated[int, typer.Option(
                 "--batch-size", "-b", help=f"images per network call (--codec progressive: "
                                            f"at most {CODEC_BATCH})")] = 64,
             device: Device = "auto", seed: Seed = 0,
             out: Annotated[Optional[Path], typer.Option(
                 "--out", "-o", help="where to write table4.csv, rd_curve.csv, figure5.png "
                                     "(default: the results folder)")] = None,
             codec: Annotated[str, typer.Option(
                 "--codec", help="theory: the bound's curve (Table 4, Figure 5); progressive: "
                                 "the real codec at every truncation point over the theoretical "
                                 "curve, with JPEG and WebP (see docs/progressive.md)")] = "theory",
             chunk_bits: Annotated[Optional[float], typer.Option(
                 "--chunk-bits", help=f"progressive: KL per chunk, bits (default "
                                      f"{P.DEFAULT_CHUNK_BITS:g})")] = None,
             margin: Annotated[Optional[float], typer.Option(
                 "--margin", help=f"progressive: candidate margin, bits (default "
                                  f"{P.DEFAULT_MARGIN_BITS:g})")] = None,
             recon: Annotated[Optional[List[str]], typer.Option(
                 "--recon", help=f"progressive: reconstruction(s) to measure: "
                                 f"{', '.join(P.RECONS)} (repeat the option; default "
                                 f"{P.RECONS[0]})")] = None,
             overwrite: Overwrite = False, as_json: Json = False, quiet: Quiet = False):
    """Rate (bits/dim) against distortion (RMSE on [0,255], PSNR) at every reverse step:
    the paper's Table 4 as CSV and Figure 5 as a three-panel PNG. With --codec progressive,
    the real progressive codec's curve (actual bits beside KL, RMSE, PSNR, LPIPS when its
    weights are present) over the theoretical one, with JPEG and WebP on the same images."""
    from ddpmcodec.io.results import check_out_folder
    if out is not None:
        check_out_folder(out)  # before any work: a file here is a one-line error
    if codec == "progressive":
        if batch_size < 1:
            raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
        if (trajectory, variance, timesteps) != (DEFAULT_TRAJECTORY, DEFAULT_VARIANCE, None):
            raise DDPMCodecError("--codec progressive measures the codec on its own coded "
                                 "schedule; --trajectory, --variance and --timesteps apply to "
                                 "the theoretical curve (encode --progressive takes them)")
        from ddpmcodec.analysis.rd_codec import summary_lines
        from ddpmcodec.io.data import data_or_sample, load_images
        from ddpmcodec.io.models import load_model
        from ddpmcodec.pipelines.rd_codec import run_rd_codec
        model = load_model(ckpt, resolve_device(device))
        images = load_images(data_or_sample(data, dataset), dataset, split, num_images)
        where = Path(out) if out else default_out("rd-codec", model.fingerprint, images.spec,
                                                  steps or P.DEFAULT_STEPS, seed)
        info = run_rd_codec(model, images.images, where, steps=steps, chunk_bits=chunk_bits,
                            margin_bits=margin, batch_size=min(batch_size, CODEC_BATCH),
                            seed=seed, recons=tuple(recon or P.RECONS[:1]), nll_results=results,
                            data_spec=images.spec, progress=not quiet)
        emit(info, as_json, summary_lines(info))
        return
    if codec != "theory":
        raise DDPMCodecError(f"--codec must be theory or progressive, got {codec!r}")
    if chunk_bits is not None or margin is not None or recon:
        raise DDPMCodecError("--chunk-bits, --margin and --recon apply to --codec progressive")
    from ddpmcodec.io.chain_choice import ChainOptions
    chain_options = ChainOptions(steps, trajectory, variance, timesteps, calibration)
    from ddpmcodec.analysis.rd_curve import write_rd
    if results is None:
        _, results = compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size,
                                  device, seed, None, overwrite, quiet,
                                  chain_options=chain_options)
    elif not chain_options.is_default:
        raise DDPMCodecError("--trajectory, --variance and --timesteps choose the chain of a "
                             "new nll run; --results already has its chain")
    info = write_rd(results, out or results)
    summary = {"results": str(results), **info}
    lines = ["reverse_step   rate(bits/dim)   RMSE[0,255]   PSNR(dB)"]
    lines += [f"{r['reverse_step']:>12d}   {r['rate_bpd']:>14.5f}   {r['rmse']:>11.4f}   {r['psnr']:>8.2f}"
              for r in info["table4"]]
    lines += [f"wrote {info['table4_csv']}, {info['rd_curve_csv']}, {info['figure5_png']}"]
    emit(summary, as_json, lines)
