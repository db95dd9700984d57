"""`ddpmcodec nll`: the bound per image and per timestep, into a results folder."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
    Steps,
    default_out,
    emit,
    resolve_device,
)
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.pipelines.defaults import (
    DEFAULT_NFE,
    FAST_BATCH_CPU,
    FAST_BATCH_CUDA,
    PLAIN_BATCH,
)


def compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size, device, seed,
                 out, overwrite, quiet, *, engine="fast", estimator="full", nfe=None,
                 proposal=None, precision="fp32", fp32_timesteps=0, compile=False,
                 cuda_graphs=False, chain_options=None):
    """The nll run of a command's options; ``chain_options`` (a ChainOptions) chooses the
    chain (default: ``steps`` evenly spaced with the model's variance)."""
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    from ddpmcodec.io.results import check_out_folder
    if batch_size is not None and batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    if out:  # before the model and the data are read: a file here is a one-line error
        check_out_folder(out)
    # torch only now: a mistake in the options above is named at once
    from ddpmcodec.io.data import data_or_sample, load_images
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.nll import distributed_rank, run_nll
    device = resolve_device(device)
    rank, world, local_rank = distributed_rank()
    if world > 1 and device == "cuda":  # torchrun: one GPU per local rank
        device = f"cuda:{local_rank}"
    model = load_model(ckpt, device)
    opts = (chain_options or ChainOptions(steps)).validate()
    chain, choice = None, None
    if opts.is_default:
        model.diffusion.with_steps(steps)  # validates --steps before reading data
    else:  # the chain (and its calibration) is checked before the data is read
        chain, choice = select_chain(model, opts)
    images = load_images(data_or_sample(data, dataset), dataset, split, num_images)
    K = chain.num_steps if chain is not None else steps or model.diffusion.num_steps
    if out:
        out = Path(out)
    else:  # non-default choices get their own folder, so runs never collide
        out = default_out("nll", model.fingerprint, images.spec, K, seed)
        suffix = "".join([f"-{choice['trajectory']}-{choice['variance']}" if choice else "",
                          f"-M{nfe or DEFAULT_NFE}" if estimator == "importance" else "",
                          "" if precision == "fp32" else f"-{precision}",
                          "-plain" if engine == "plain" else ""])
        out = out.with_name(out.name + suffix)
    res = run_nll(model, images, out, None if chain is not None else steps, batch_size, seed,
                  overwrite, not quiet and rank == 0, engine=engine, estimator=estimator,
                  nfe=nfe, proposal=proposal, precision=precision,
                  fp32_timesteps=fp32_timesteps, compile=compile, cuda_graphs=cuda_graphs,
                  chain=chain, chain_choice=choice)
    return res, out


def nll(ckpt: Ckpt = None, dataset: Dataset = None, split: Split = "test",
        data: SampleDataPath = None, num_images: NumImages = None, steps: Steps = None,
        trajectory: Trajectory = DEFAULT_TRAJECTORY, variance: Variance = DEFAULT_VARIANCE,
        timesteps: TimestepsFile = None, calibration: CalibrationFile = None,
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", "-b", help="network batch: (image, timestep) pairs per call for the "
                                       f"fast engine (default {FAST_BATCH_CUDA} on CUDA, {FAST_BATCH_CPU} on the CPU), "
                                       f"images per call for the plain one (default {PLAIN_BATCH})")] = None,
        device: Device = "auto", seed: Seed = 0,
        out: Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="results folder (default: runs/nll/<model>-<data>-n<N>-K<K>-s<seed>)")] = None,
        engine: Annotated[str, typer.Option(
            "--engine", help="fast: many (image, timestep) pairs per network call; plain: the "
                             "reference loop, one call per timestep (same numbers, same noise)")] = "fast",
        estimator: Annotated[str, typer.Option(
            "--estimator", help="full: every term of the chain; importance: an unbiased "
                                "estimate from --nfe network evaluations per image, with "
                                "standard errors")] = "full",
        nfe: Annotated[Optional[int], typer.Option(
            "--nfe", "-M", help="network evaluations per image for --estimator importance "
                                f"(default {DEFAULT_NFE})")] = None,
        proposal: Annotated[Optional[Path], typer.Option(
            "--proposal", help="sampling distribution over timesteps for --estimator importance: "
                               "a full-bound nll results folder or a proposal.json (default: the "
                               "model's own, else one from Gaussian data)")] = None,
        precision: Annotated[str, typer.Option(
            "--precision", help="network arithmetic of the fast engine: fp32 (TF32 off), tf32 "
                                "(CUDA), bf16, fp64, or exact (the integer network both "
                                "codecs code with: its bound beside fp32's is their rate "
                                "cost); check with `ddpmcodec bench` that it moves "
                                "the bound by < 0.002 bits/dim")] = "fp32",
        fp32_timesteps: Annotated[int, typer.Option(
            "--fp32-timesteps", help="with tf32/bf16: timestep indices below this run in fp32 "
                                     "(where the bound is most sensitive)")] = 0,
        compile: Annotated[bool, typer.Option(
            "--compile/--no-compile", help="torch.compile the network (fixed-shape batches)")] = False,
        cuda_graphs: Annotated[bool, typer.Option(
            "--cuda-graphs/--no-cuda-graphs", help="capture the network call in a CUDA graph")] = False,
        overwrite: Overwrite = False, as_json: Json = False, quiet: Quiet = False):
    """Negative log-likelihood bound in bits/dim: prior + KL terms + discretized decoder,
    per image and per timestep, exactly as the official DDPM code defines it.

    With --steps K (and --trajectory, --variance, --timesteps) the bound is that of the
    K-step chain: a valid negative ELBO of that K-step model in its own right, reported
    as such, not an estimate of the full chain's bound.

    Writes a results folder (results.json, arrays.npz, per_image.csv, per_step.csv); an
    interrupted run resumes from its finished batches. Under torchrun every rank computes
    a share of the images into the same folder and rank 0 merges them.
    """
    from ddpmcodec.io.chain_choice import ChainOptions
    res, out = compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size,
                            device, seed, out, overwrite, quiet, engine=engine,
                            estimator=estimator, nfe=nfe, proposal=proposal,
                            precision=precision, fp32_timesteps=fp32_timesteps,
                            compile=compile, cuda_graphs=cuda_graphs,
                            chain_options=ChainOptions(steps, trajectory, variance, timesteps,
                                                       calibration))
    from ddpmcodec.pipelines.nll import distributed_rank
    if distributed_rank()[0] != 0:
        return
    s = res["summary"]
    summary = {"results": str(out), "fingerprint": res["config"]["model"]["fingerprint"], **s,
               "compute_seconds": res["run"]["compute_seconds"]}
    if estimator == "importance":
        lines = [f"NLL bound (estimate): {s['total_bpd']:.4f} ± {s['total_se']:.4f} bits/dim "
                 f"({s['num_images']} images, {s['nfe_per_image']:.1f} network evaluations "
                 f"per image for a chain of {s['num_steps']} steps)",
                 f"  Monte-Carlo part of the error: ± {s['total_mc_se']:.4f}   (± "
                 f"{s['mc_sd_per_image']:.4f} for one image)",
                 f"  rate (prior + KL): {s['rate_bpd']:.4f}   prior: {s['prior_bpd']:.6f}   "
                 f"decoder: {s['decoder_bpd']:.4f} ± {s['decoder_se']:.4f}"]
    else:
        choice = res["config"].get("chain_choice")
        what = (f"{s['num_steps']} steps" if choice is None else
                f"{s['num_steps']}-step chain: {choice['trajectory']} trajectory, "
                f"{choice['variance']} variance")
        lines = [f"NLL bound: {s['total_bpd']:.4f} ± {s['total_se']:.4f} bits/dim "
                 f"({s['num_images']} images, {what})",
                 f"  rate (prior + KL): {s['rate_bpd']:.4f} ± {s['rate_se']:.4f}   "
                 f"prior: {s['prior_bpd']:.6f}   decoder: {s['decoder_bpd']:.4f} ± {s['decoder_se']:.4f}"]
    emit(summary, as_json, lines + [f"  results: {out}"])
