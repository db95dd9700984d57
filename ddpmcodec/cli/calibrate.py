"""`ddpmcodec calibrate`: the per-timestep statistics of a model that the analytic variance
and the dp trajectory need, from a few calibration images, as a calibration file."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.cli.common import (
    Ckpt,
    DataPath,
    Dataset,
    Device,
    Json,
    NumImages,
    Quiet,
    Seed,
    emit,
    invoked_command,
    resolve_device,
)
from ddpmcodec.errors import DDPMCodecError

Opt = typer.Option
DEFAULT_IMAGES = 16
DEFAULT_POINTS = 200


def calibrate(
    ckpt: Ckpt = None, dataset: Dataset = None,
    split: Annotated[str, Opt("--split", help="dataset split (default train: never calibrate "
                                              "on the images you will measure)")] = "train",
    data: DataPath = None,
    num_images: NumImages = DEFAULT_IMAGES,
    points: Annotated[int, Opt(
        "--points", "-P", help="timesteps measured, spaced quadratically (dense near the "
                               "data) and interpolated in between; the chain length T for all")] = DEFAULT_POINTS,
    out: Annotated[Optional[Path], Opt(
        "--out", "-o", help="the calibration file (default: ~/.cache/ddpmcodec/calibration/"
                            "<fingerprint>.json, where every command looks for it)")] = None,
    work: Annotated[Optional[Path], Opt(
        "--work", help="results folder of the underlying nll run on the P-step chain "
                       "(resumable; default runs/calibrate/<model>-<data>-n<N>-K<P>-s<seed>)")] = None,
    batch_size: Annotated[Optional[int], Opt(
        "--batch-size", "-b", help="(image, timestep) pairs per network call")] = None,
    device: Device = "auto", seed: Seed = 0, as_json: Json = False, quiet: Quiet = False,
):
    """Measure, on N calibration images, the x0-prediction error at every timestep (and
    the decoder's best variance) that `--variance analytic` and `--trajectory dp` need.
    Use training images: the statistics steer the chain, so calibrating on the test
    images would bias a test bound. The cost is N x P network evaluations; an interrupted
    run resumes."""
    from ddpmcodec.cli.common import default_out
    from ddpmcodec.io.calibration import default_calibration_path
    from ddpmcodec.io.data import load_images
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.calibrate import calibrate as run_calibrate
    from ddpmcodec.pipelines.calibrate import calibration_indices
    if out is not None and out.is_dir():
        raise DDPMCodecError(f"-o {out} is a folder; give the calibration file's path")
    model = load_model(ckpt, resolve_device(device))
    P = len(calibration_indices(model.diffusion.num_steps, points))
    images = load_images(data, dataset, split, num_images)
    work = work or default_out("calibrate", model.fingerprint, images.spec, P, seed)
    cal = run_calibrate(model, images, work, points, seed, batch_size, not quiet,
                        invoked_command())
    path = cal.save(out or default_calibration_path(model.fingerprint))
    m = cal.m()
    summary = {"calibration": str(path), "fingerprint": model.fingerprint,
               "num_images": len(images), "points": P, "work": str(work),
               "decoder_variance": cal.decoder_variance(), "seconds": cal.meta["seconds"]}
    emit(summary, as_json, [
        f"calibrated model {model.fingerprint} on {len(images)} images at {P} timesteps "
        f"({cal.meta['seconds']:.0f} s)",
        f"  x0-prediction MSE: {m[0]:.3g} at t=1, {m[len(m) // 2]:.3g} at t={len(m) // 2 + 1}, "
        f"{m[-1]:.3g} at t={len(m)}; decoder variance {cal.decoder_variance():.3g}",
        f"  wrote {path}"])
