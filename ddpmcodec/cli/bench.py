"""`ddpmcodec bench`: speed and accuracy of the likelihood engines, in one table (the
measurement itself is :mod:`ddpmcodec.pipelines.bench`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.cli.common import (
    Ckpt,
    Dataset,
    Device,
    Json,
    SampleDataPath,
    Seed,
    Split,
    Steps,
    emit,
    resolve_device,
)
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.pipelines.defaults import FAST_BATCH_CPU, FAST_BATCH_CUDA

Opt = typer.Option
PRECISIONS_CPU = "fp32,bf16"   # tf32 is a CUDA mode
PRECISIONS_CUDA = "fp32,tf32,bf16"


def _parse_list(text: str, cast, what: str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DDPMCodecError(f"{what}: expected a comma-separated list, got {text!r}") from None
    return items


def bench(ckpt: Ckpt = None,
          random_init: Annotated[Optional[str], Opt(
              "--random-init", help="benchmark a randomly initialised network of this "
                                    "config instead (paper: 35.7M, small, tiny)")] = None,
          dataset: Dataset = None, split: Split = "test", data: SampleDataPath = None,
          num_images: Annotated[int, Opt("--num-images", "-n", help="images")] = 4,
          steps: Steps = None,
          batch_size: Annotated[Optional[int], Opt(
              "--batch-size", "-b", help="pairs per network call of the fast engine "
                                         f"(default {FAST_BATCH_CUDA} on CUDA, {FAST_BATCH_CPU} on the CPU)")] = None,
          device: Device = "auto", seed: Seed = 0,
          precisions: Annotated[Optional[str], Opt(
              "--precisions", help=f"fast-engine precisions to measure, comma-separated "
                                   f"(default {PRECISIONS_CPU}; {PRECISIONS_CUDA} on "
                                   f"CUDA)")] = None,
          fp32_timesteps: Annotated[int, Opt(
              "--fp32-timesteps", help="also measure tf32/bf16 with timestep indices below "
                                       "this in fp32")] = 0,
          compile: Annotated[bool, Opt("--compile/--no-compile",
                                       help="torch.compile the fast engine's network")] = False,
          cuda_graphs: Annotated[Optional[bool], Opt(
              "--cuda-graphs/--no-cuda-graphs", help="CUDA graphs (default: on with CUDA)")] = None,
          nfe: Annotated[str, Opt("--nfe", help="estimator budgets to measure, comma-separated "
                                                "('' for none)")] = "10,25,50,100",
          proposal: Annotated[Optional[Path], Opt(
              "--proposal", help="proposal for the estimator (default: the model's own)")] = None,
          reference_images: Annotated[int, Opt(
              "--reference-images", help="images for the float64-network reference "
                                         "(slow; 0: none)")] = 8,
          out: Annotated[Optional[Path], Opt(
              "--out", "-o", help="results folder (default runs/bench/<model>-<device>-n<N>-K<K>)")] = None,
          as_json: Json = False,
          quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress lines")] = False):
    """Images/s and accuracy of the plain loop and the fast engine (per precision) on the
    same images, noise and device, and the estimator's error bar against its network
    evaluations; printed and written as JSON + Markdown."""
    import torch

    from ddpmcodec.io.atomic import write_json_atomic, write_text_atomic
    from ddpmcodec.io.data import check_fits, data_or_sample, load_images
    from ddpmcodec.io.models import load_model
    from ddpmcodec.io.results import check_out_folder
    from ddpmcodec.pipelines.bench import random_model, run_bench, table_lines
    if out is not None:
        check_out_folder(out)  # before any work: a file here is a one-line error
    dev = resolve_device(device)
    if ckpt is not None and random_init is not None:
        raise DDPMCodecError("give --ckpt or --random-init, not both")
    model = random_model(random_init, dev) if random_init else load_model(ckpt, dev)
    model.diffusion.with_steps(steps)
    if num_images < 1:
        raise DDPMCodecError(f"--num-images must be positive, got {num_images}")
    images = load_images(data_or_sample(data, dataset), dataset, split, num_images)
    check_fits(images.images, model.image_shape)
    cuda = torch.device(dev).type == "cuda"
    precs = _parse_list(precisions or (PRECISIONS_CUDA if cuda else PRECISIONS_CPU), str,
                        "--precisions")
    for p in precs:
        if p not in ("fp32", "tf32", "bf16"):
            raise DDPMCodecError(f"--precisions: unknown precision {p!r} (fp32, tf32, bf16)")
    nfes = _parse_list(nfe, int, "--nfe")
    graphs = cuda if cuda_graphs is None else cuda_graphs
    res = run_bench(model, images, steps, batch_size, seed, precs, fp32_timesteps, compile,
                    graphs, nfes, proposal, reference_images, progress=not quiet)
    K = steps or model.diffusion.num_steps
    out = out or Path("runs") / "bench" / (f"{model.fingerprint[:8]}-{torch.device(dev).type}"
                                           f"-n{len(images)}-K{K}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = table_lines(res)
    write_json_atomic(out / "results.json", {
        "schema": 1, "kind": "bench", "config": res["config"], "status": "complete",
        "summary": {"full_bound": res["full_bound"], "estimator": res["estimator"]},
        "run": res["run"]})
    write_text_atomic(out / "bench.md", "\n".join(lines) + "\n")
    emit({"results": str(out), **res}, as_json, lines + ["", f"wrote {out / 'results.json'}"])
