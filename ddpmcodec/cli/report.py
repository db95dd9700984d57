"""`ddpmcodec report`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.cli.common import (
    BatchSize,
    Ckpt,
    Dataset,
    Device,
    Json,
    NumImages,
    Quiet,
    SampleDataPath,
    Seed,
    emit,
    invoked_command,
    resolve_device,
)

TrainData = Annotated[Optional[Path], typer.Option(
    "--train-data", help="training images for the train column of Table 1 "
                         "(with --dataset cifar10: the train split)")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="tiny sizes (a pipeline test)")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="report folder")]


def report(out: OutDir, ckpt: Ckpt = None, dataset: Dataset = None, data: SampleDataPath = None,
           train_data: TrainData = None, num_images: NumImages = None, quick: QuickOpt = False,
           batch_size: BatchSize = 64, device: Device = "auto", seed: Seed = 0,
           as_json: Json = False, quiet: Quiet = False):
    """The paper's analyses as one report: NLL table (test/train, full and respaced chains),
    Table 4 and Figure 5 (rate-distortion), Figure 6 (progressive generation), Figure 7
    (samples sharing a latent), Figure 8 (interpolation). Writes OUT/README.md with the
    tables inline and the figures linked; finished parts are reused when rerun."""
    from ddpmcodec.io.data import data_or_sample, load_images
    from ddpmcodec.io.results import check_out_folder
    check_out_folder(out)  # before any work: a file here is a one-line error
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.report import build_report
    model = load_model(ckpt, resolve_device(device))
    test = load_images(data_or_sample(data, dataset), dataset, "test", num_images)
    train = None
    if train_data is not None:
        train = load_images(train_data, None, "train", num_images)
    elif dataset is not None:
        train = load_images(None, dataset, "train", num_images)
    info = build_report(model, test, train, out, quick, seed, batch_size, invoked_command(),
                        not quiet)
    emit(info, as_json, [f"report written to {out}/README.md ({info['seconds']:.0f} s)",
                         *[f"  {f}" for f in info["files"]]])
