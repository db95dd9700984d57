"""What the commands share: option types, the device choice, output of a result, default
results folders, and the one-line summaries of a codec's statistics.

Imported by every command's module before typer parses anything, so it (like them) must
stay light: torch, diffusers, the pipelines and ddpmcodec.io.models are imported inside
the functions that use them, and the defaults shown in --help come from torch-free
modules (tests/test_cli_startup.py holds that line)."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.errors import DDPMCodecError

# -- options shared by several commands ---------------------------------------------------
Ckpt = Annotated[Optional[str], typer.Option(
    "--ckpt", help="diffusers checkpoint folder or hub id (e.g. google/ddpm-cifar10-32); "
                   "default: the embedded model")]
Dataset = Annotated[Optional[str], typer.Option(
    "--dataset", help="named dataset: cifar10 (torchvision; downloads on first use)")]
Split = Annotated[str, typer.Option("--split", help="dataset split: test or train")]
DataPath = Annotated[Optional[Path], typer.Option(
    "--data", help=".npz with a uint8 NHWC 'images' array, a folder of PNGs, or one image")]
SampleDataPath = Annotated[Optional[Path], typer.Option(
    "--data", help=".npz with a uint8 NHWC 'images' array, a folder of PNGs, or one image "
                   "(default, without --dataset: the 8 CIFAR-10 test images shipped in the "
                   "package)")]
NumImages = Annotated[Optional[int], typer.Option(
    "--num-images", "-n", help="use the first N images (fixed order)")]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", "-K", help="a chain of K steps (default: the full chain)")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="images per network call")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the counter-based noise")]
Json = Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="discard an existing results folder instead of resuming it")]


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DDPMCodecError(f"--device {device}: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise DDPMCodecError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def json_safe(value):
    """``value`` as plain JSON data: NaN and infinities become None (JSON has neither, and
    Python's json would write the non-standard ``NaN``), numpy and torch scalars and arrays
    become numbers and lists, tuples lists, anything else unknown its str (a Path)."""
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch, without importing either here
        return json_safe(value.tolist())
    return str(value)


def dumps_json(value) -> str:
    """Strict JSON text of ``value`` (see :func:`json_safe`): every --json output goes
    through here, so a value that does not apply is ``null``, never ``NaN``."""
    return json.dumps(json_safe(value), allow_nan=False)


def emit(summary: dict, as_json: bool, lines: list[str]) -> None:
    """The command's result: one JSON object, or human-readable lines."""
    if as_json:
        typer.echo(dumps_json(summary))
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


_invoked: list[str] = []


def invoked_command() -> str:
    """The command line being run, for reports that say how to regenerate them."""
    return " ".join(["ddpmcodec", *(shlex.quote(a) for a in _invoked)])


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.3f}%"


def stats_summary(stats) -> dict:
    """The JSON summary of a CodecStats (per-image lists left out)."""
    d = stats.to_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if not isinstance(v, list)}
    return d


def stats_lines(stats) -> list[str]:
    s = stats
    lines = [f"  whole file: {s.file_bits_per_dim:.5f} bits/dim ({s.file_bits // 8} bytes, "
             f"header {s.header_bits // 8} bytes)"]
    if s.net_dims:
        m = s.num_images - s.net_dims // s.dims
        lines += [
            f"  net rate of the {s.net_dims // s.dims} bits-back image(s): {s.bits_per_dim:.5f} "
            f"bits/dim   bound for this chain: {s.bound_bits_per_dim:.5f} bits/dim   "
            f"overhead: {_pct(s.overhead)}",
            f"  {m} WebP-lossless seed image(s): {s.side_bits:.0f} bits   initial bits nobody "
            f"paid back: {s.initial_bits:.0f} ({s.initial_bits_per_dim:.4f} bits/dim)"]
    return lines + [f"  time: {s.seconds:.2f} s ({s.images_per_second:.3f} images/s)"]
