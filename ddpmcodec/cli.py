"""The `ddpmcodec` command line: thin typer commands over the library.

``main(argv)`` is the testable entry point: it returns the exit code instead of exiting.
A user's mistake (:class:`DDPMCodecError`) prints one line on stderr and exits 1; usage
errors exit 2. Every command takes ``--json`` and then prints one JSON object on stdout;
progress bars go to stderr.

Commands live in small modules that each define ``register(app)``; add a module's name
to ``COMMAND_MODULES`` to add its commands.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

try:  # typer >= 0.20 vendors click; the exceptions live there
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exc

from .errors import DDPMCodecError

app = typer.Typer(
    name="ddpmcodec", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Likelihoods, rate-distortion and real compression with DDPMs "
         "(Ho et al. 2020). Without --ckpt every command uses the embedded model "
         "(ddpm-cifar10-4k-ch64).")

# -- options shared by several commands ---------------------------------------------------
Ckpt = Annotated[Optional[str], typer.Option(
    "--ckpt", help="diffusers checkpoint folder or hub id (e.g. google/ddpm-cifar10-32); "
                   "default: the embedded model")]
Dataset = Annotated[Optional[str], typer.Option(
    "--dataset", help="named dataset: cifar10 (torchvision; downloads on first use)")]
Split = Annotated[str, typer.Option("--split", help="dataset split: test or train")]
DataPath = Annotated[Optional[Path], typer.Option(
    "--data", help=".npz with a uint8 NHWC 'images' array, a folder of PNGs, or one image")]
NumImages = Annotated[Optional[int], typer.Option(
    "--num-images", "-n", help="use the first N images (fixed order)")]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", "-K", help="respaced chain of K evenly spaced steps (default: the full chain)")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="images per network call")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the counter-based noise")]
Json = Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="discard an existing results folder instead of resuming it")]

COMMAND_MODULES: list[str] = ["train_cli", "report_cli", "bench_cli", "codec_cli"]


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DDPMCodecError(f"--device {device}: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise DDPMCodecError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    """The command's result: one JSON object, or human-readable lines."""
    if as_json:
        typer.echo(json.dumps(summary, default=str))
    else:
        for line in lines:
            typer.echo(line)


def default_out(kind: str, fingerprint: str, data_spec: dict, steps: int, seed: int) -> Path:
    src = data_spec["kind"]
    if src == "cifar10":
        src = f"cifar10-{data_spec['split']}"
    elif "path" in data_spec:
        src = Path(data_spec["path"]).stem
    return Path("runs") / kind / f"{fingerprint[:8]}-{src}-n{data_spec['num_images']}-K{steps}-s{seed}"


def _compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size, device, seed,
                 out, overwrite, quiet, *, engine="fast", estimator="full", nfe=None,
                 proposal=None, precision="fp32", fp32_timesteps=0, compile=False,
                 cuda_graphs=False):
    from .data import load_images
    from .models import load_model
    from .nll import DEFAULT_NFE, distributed_rank, run_nll
    if batch_size is not None and batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    device = resolve_device(device)
    rank, world, local_rank = distributed_rank()
    if world > 1 and device == "cuda":  # torchrun: one GPU per local rank
        device = f"cuda:{local_rank}"
    model = load_model(ckpt, device)
    model.diffusion.with_steps(steps)  # validates --steps before reading data
    images = load_images(data, dataset, split, num_images)
    K = steps or model.diffusion.num_steps
    if out:
        out = Path(out)
    else:  # non-default choices get their own folder, so runs never collide
        out = default_out("nll", model.fingerprint, images.spec, K, seed)
        suffix = "".join([f"-M{nfe or DEFAULT_NFE}" if estimator == "importance" else "",
                          "" if precision == "fp32" else f"-{precision}",
                          "-plain" if engine == "plain" else ""])
        out = out.with_name(out.name + suffix)
    res = run_nll(model, images, out, steps, batch_size, seed, overwrite, not quiet and rank == 0,
                  engine=engine, estimator=estimator, nfe=nfe, proposal=proposal,
                  precision=precision, fp32_timesteps=fp32_timesteps, compile=compile,
                  cuda_graphs=cuda_graphs)
    return res, out


@app.command()
def nll(ckpt: Ckpt = None, dataset: Dataset = None, split: Split = "test",
        data: DataPath = None, num_images: NumImages = None, steps: Steps = None,
        batch_size: Annotated[Optional[int], typer.Option(
            "--batch-size", "-b", help="network batch: (image, timestep) pairs per call for the "
                                       "fast engine (default 512 on CUDA, 16 on the CPU), images "
                                       "per call for the plain one (default 64)")] = None,
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
                                "(default 50)")] = None,
        proposal: Annotated[Optional[Path], typer.Option(
            "--proposal", help="sampling distribution over timesteps for --estimator importance: "
                               "a full-bound nll results folder or a proposal.json (default: the "
                               "model's own, else one from Gaussian data)")] = None,
        precision: Annotated[str, typer.Option(
            "--precision", help="network arithmetic of the fast engine: fp32 (TF32 off), tf32 "
                                "(CUDA), bf16; check with `ddpmcodec bench` that it moves "
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

    Writes a results folder (results.json, arrays.npz, per_image.csv, per_step.csv); an
    interrupted run resumes from its finished batches. Under torchrun every rank computes
    a share of the images into the same folder and rank 0 merges them.
    """
    from .nll import distributed_rank
    res, out = _compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size,
                            device, seed, out, overwrite, quiet, engine=engine,
                            estimator=estimator, nfe=nfe, proposal=proposal,
                            precision=precision, fp32_timesteps=fp32_timesteps,
                            compile=compile, cuda_graphs=cuda_graphs)
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
        lines = [f"NLL bound: {s['total_bpd']:.4f} ± {s['total_se']:.4f} bits/dim "
                 f"({s['num_images']} images, {s['num_steps']} steps)",
                 f"  rate (prior + KL): {s['rate_bpd']:.4f} ± {s['rate_se']:.4f}   "
                 f"prior: {s['prior_bpd']:.6f}   decoder: {s['decoder_bpd']:.4f} ± {s['decoder_se']:.4f}"]
    emit(summary, as_json, lines + [f"  results: {out}"])


@app.command("rd-curve")
def rd_curve(results: Annotated[Optional[Path], typer.Option(
                 "--results", "-r", help="an nll results folder (else one is computed; with "
                                         "--codec progressive: a full-chain curve to overlay)")] = None,
             ckpt: Ckpt = None, dataset: Dataset = None, split: Split = "test",
             data: DataPath = None, num_images: NumImages = None, steps: Steps = None,
             batch_size: BatchSize = 64, device: Device = "auto", seed: Seed = 0,
             out: Annotated[Optional[Path], typer.Option(
                 "--out", "-o", help="where to write table4.csv, rd_curve.csv, figure5.png "
                                     "(default: the results folder)")] = None,
             codec: Annotated[str, typer.Option(
                 "--codec", help="theory: the bound's curve (Table 4, Figure 5); progressive: "
                                 "the real codec at every truncation point over the theoretical "
                                 "curve, with JPEG and WebP (see docs/progressive.md)")] = "theory",
             chunk_bits: Annotated[Optional[float], typer.Option(
                 "--chunk-bits", help="progressive: KL per chunk, bits (default 12)")] = None,
             margin: Annotated[Optional[float], typer.Option(
                 "--margin", help="progressive: candidate margin, bits (default 2)")] = None,
             recon: Annotated[Optional[List[str]], typer.Option(
                 "--recon", help="progressive: reconstruction(s) to measure: mean, sample, flow "
                                 "(repeat the option; default mean)")] = None,
             overwrite: Overwrite = False, as_json: Json = False, quiet: Quiet = False):
    """Rate (bits/dim) against distortion (RMSE on [0,255], PSNR) at every reverse step:
    the paper's Table 4 as CSV and Figure 5 as a three-panel PNG. With --codec progressive,
    the real progressive codec's curve (actual bits beside KL, RMSE, PSNR, LPIPS when its
    weights are present) over the theoretical one, with JPEG and WebP on the same images."""
    if codec == "progressive":
        from .data import load_images
        from .models import load_model
        from .progressive_cli import rd_progressive
        if batch_size < 1:
            raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
        model = load_model(ckpt, resolve_device(device))
        images = load_images(data, dataset, split, num_images)
        where = Path(out) if out else default_out("rd-codec", model.fingerprint, images.spec,
                                                  steps or 16, seed)
        info, lines = rd_progressive(model, images, where, steps=steps, chunk_bits=chunk_bits,
                                     margin_bits=margin, batch_size=min(batch_size, 8), seed=seed,
                                     recons=tuple(recon or ("mean",)), nll_results=results,
                                     quiet=quiet)
        emit(info, as_json, lines)
        return
    if codec != "theory":
        raise DDPMCodecError(f"--codec must be theory or progressive, got {codec!r}")
    if chunk_bits is not None or margin is not None or recon:
        raise DDPMCodecError("--chunk-bits, --margin and --recon apply to --codec progressive")
    from .analysis.rd_curve import write_rd
    if results is None:
        _, results = _compute_nll(ckpt, dataset, split, data, num_images, steps, batch_size,
                                  device, seed, None, overwrite, quiet)
    info = write_rd(results, out or results)
    summary = {"results": str(results), **info}
    lines = ["reverse_step   rate(bits/dim)   RMSE[0,255]   PSNR(dB)"]
    lines += [f"{r['reverse_step']:>12d}   {r['rate_bpd']:>14.5f}   {r['rmse']:>11.4f}   {r['psnr']:>8.2f}"
              for r in info["table4"]]
    lines += [f"wrote {info['table4_csv']}, {info['rd_curve_csv']}, {info['figure5_png']}"]
    emit(summary, as_json, lines)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).register(app)



_invoked: list[str] = []


def invoked_command() -> str:
    """The command line being run, for reports that say how to regenerate them."""
    import shlex
    return " ".join(["ddpmcodec", *(shlex.quote(a) for a in _invoked)])


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: sys.argv[1:]) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _invoked[:] = argv
    try:
        rv = app(args=argv, prog_name="ddpmcodec", standalone_mode=False)
    except DDPMCodecError as exc:
        typer.echo(f"ddpmcodec: error: {exc}", err=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        return 0
    except click_exc.ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())


_register_all()  # last: command modules import the option types and helpers above
