"""`ddpmcodec encode` and `ddpmcodec decode`: real compression through the latent chain.

    ddpmcodec encode img.png -o img.ddpm --lossless --steps 100
    ddpmcodec encode ../shared/data/cifar10-test-800.npz -n 16 -o test16.ddpm --lossless
    ddpmcodec decode test16.ddpm -o test16.npz        # or -o folder/ for PNGs
    ddpmcodec encode img.png -o img.ddpm --progressive        # lossy; any prefix decodes
    ddpmcodec decode img.ddpm -o rec/ --bytes 600 --recon flow

A file decodes only with the model that encoded it (its fingerprint is in the header) and
on the same kind of device (network results differ between kinds of hardware), so the
default device is the CPU; pass --device cuda to encode for GPU decoding.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import progressive_cli as pcli
from .cli import BatchSize, Ckpt, Json, NumImages, Quiet, Seed, Steps, emit, resolve_device
from .errors import DDPMCodecError

Opt = typer.Option
MAX_FILE_BYTES = 1 << 34  # refuse to read anything larger into memory


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_codec_file(path: Path) -> bytes:
    """The bytes of a compressed file, with clear errors (missing, not ours, too large)."""
    from .codec.container import MAGIC
    path = Path(path)
    if not path.is_file():
        raise DDPMCodecError(f"no such file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise DDPMCodecError(f"{path} is not a ddpmcodec file (bad magic bytes)")
        if size > MAX_FILE_BYTES:
            raise DDPMCodecError(f"{path} is {size} bytes, more than this reader accepts")
        f.seek(0)
        return f.read()


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.3f}%"


def stats_summary(stats) -> dict:
    """The JSON summary of a CodecStats (per-image lists left out)."""
    d = stats.to_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if not isinstance(v, list)}
    return d


def stats_lines(stats) -> list[str]:
    s = stats
    return [
        f"  net rate: {s.bits_per_dim:.5f} bits/dim   bound for this chain: "
        f"{s.bound_bits_per_dim:.5f} bits/dim   overhead: {_pct(s.overhead)}",
        f"  initial bits (one-off): {s.initial_bits:.0f} ({s.initial_bits_per_dim:.4f} bits/dim "
        f"over these images)   whole file: {s.file_bits_per_dim:.5f} bits/dim "
        f"({s.file_bits // 8} bytes)",
        f"  time: {s.seconds:.2f} s ({s.images_per_second:.3f} images/s)"]


def register(app: typer.Typer) -> None:
    @app.command()
    def encode(
        paths: Annotated[List[Path], typer.Argument(
            help="PNG image(s), a folder of images, or an .npz with a uint8 NHWC 'images' array",
            show_default=False)],
        out: Annotated[Path, Opt("--out", "-o", help="the compressed file to write")],
        lossless: Annotated[bool, Opt(
            "--lossless", help="bits-back ANS through the latent chain, exact pixels (the default)")] = False,
        steps: Steps = None, ckpt: Ckpt = None, num_images: NumImages = None,
        batch_size: BatchSize = 8, seed: Seed = 0,
        device: Annotated[str, Opt(
            "--device", help="cpu or cuda[:N]; the file decodes only on the same kind of device")] = "cpu",
        grid_log2: Annotated[int, Opt(
            "--grid-log2", help="lossless: at least 2^G latent grid points per standard deviation")] = 5,
        support_sigmas: Annotated[float, Opt(
            "--support-sigmas", help="lossless: latent alphabets span this many standard "
                                     "deviations each side (a multiple of 1/16)")] = 5.0,
        progressive: Annotated[bool, Opt("--progressive", help=pcli.HELP_PROGRESSIVE)] = False,
        chunk_bits: Annotated[Optional[float], Opt("--chunk-bits", help=pcli.HELP_CHUNK_BITS)] = None,
        margin: Annotated[Optional[float], Opt("--margin", help=pcli.HELP_MARGIN)] = None,
        as_json: Json = False, quiet: Quiet = False,
    ):
        """Compress images into one file. --lossless: bits-back coding in Bit-Swap order;
        the net size approaches the negative ELBO of the chain (what `ddpmcodec nll
        --steps K` reports). Larger --batch-size is faster but costs more one-off initial
        bits (about 13 bits/dim per image of the first batch)."""
        from .codec.base import get_codec
        from .data import load_images
        from .models import load_model
        if batch_size < 1:
            raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
        if lossless and progressive:
            raise DDPMCodecError("give one of --lossless and --progressive")
        if not progressive and (chunk_bits is not None or margin is not None):
            raise DDPMCodecError("--chunk-bits and --margin apply to --progressive")
        device = resolve_device(device)
        model = load_model(ckpt, device)
        if progressive:
            from .codec.progressive import coded_schedule
            if steps is not None:  # validates --steps before reading data
                coded_schedule(model.diffusion.num_steps, steps)
            images = load_images([str(p) for p in paths], None, "test", num_images)
            summary, lines = pcli.encode_progressive(
                model, images, out, steps=steps, chunk_bits=chunk_bits, margin_bits=margin,
                batch_size=batch_size, seed=seed, quiet=quiet, write=_write_atomic)
            emit(summary, as_json, lines)
            return
        model.diffusion.with_steps(steps)  # validates --steps before reading data
        images = load_images([str(p) for p in paths], None, "test", num_images)
        codec = get_codec("lossless")(model)
        enc = codec.encode(images.images, steps=steps, batch_size=batch_size, seed=seed,
                           progress=not quiet, grid_log2=grid_log2, support_sigmas=support_sigmas)
        _write_atomic(out, enc.data)
        s = enc.stats
        summary = {"file": str(out), "mode": "lossless", "fingerprint": model.fingerprint,
                   "num_images": s.num_images, "num_steps": s.num_steps,
                   "device_kind": enc.header.device_kind, **stats_summary(s)}
        emit(summary, as_json, [
            f"wrote {out}: {s.num_images} image(s), {s.num_steps}-step chain, lossless, "
            f"model {model.fingerprint} on {enc.header.device_kind}"] + stats_lines(s))

    @app.command()
    def decode(
        file: Annotated[Path, typer.Argument(help="a file written by `ddpmcodec encode`",
                                             show_default=False)],
        out: Annotated[Path, Opt("--out", "-o", help="OUT.npz: one uint8 NHWC 'images' array; "
                                 "otherwise a folder of PNGs")],
        ckpt: Ckpt = None,
        upto_step: Annotated[Optional[int], Opt("--upto-step", help=pcli.HELP_UPTO_STEP)] = None,
        max_bytes: Annotated[Optional[int], Opt("--bytes", help=pcli.HELP_BYTES)] = None,
        recon: Annotated[Optional[str], Opt("--recon", help=pcli.HELP_RECON)] = None,
        recon_steps: Annotated[Optional[int], Opt("--recon-steps", help=pcli.HELP_RECON_STEPS)] = None,
        as_json: Json = False, quiet: Quiet = False,
    ):
        """Decompress a file written by `ddpmcodec encode`, with the model that wrote it.
        The decoded pixels are checked against the checksum in the file; a mismatch is an
        error, never a wrong image. A progressive file (or the first bytes of one) decodes
        to the last whole coded step, its latents checked bit for bit."""
        from .codec.base import decode_device, get_codec
        from .codec.container import read_header
        from .data import save_images
        from .models import load_model
        data = read_codec_file(file)
        header = pcli.header_of(data)  # a progressive file may be cut short
        progressive_opts = (upto_step, max_bytes, recon, recon_steps)
        if header.mode == "progressive":
            model = load_model(ckpt, decode_device(header))
            summary, lines = pcli.decode_progressive(
                model, data, out, upto_step=upto_step, max_bytes=max_bytes,
                recon=recon or "mean", recon_steps=recon_steps, quiet=quiet)
            emit({"file": str(file), **summary}, as_json, lines)
            return
        if any(v is not None for v in progressive_opts):
            raise DDPMCodecError("--upto-step, --bytes, --recon and --recon-steps apply to "
                                 f"progressive files; {file} is a {header.mode} file")
        header = read_header(data)
        device = decode_device(header)
        model = load_model(ckpt, device)
        codec = get_codec(header.mode)(model)
        dec = codec.decode(data, progress=not quiet)
        written = save_images(dec.images, out)
        s = dec.stats
        summary = {"file": str(file), "out": str(out), "mode": header.mode,
                   "fingerprint": header.fingerprint, "num_images": s.num_images,
                   "num_steps": s.num_steps, "device_kind": header.device_kind,
                   "files_written": len(written), **stats_summary(s)}
        emit(summary, as_json, [
            f"decoded {s.num_images} image(s) from {file} ({header.mode}, {s.num_steps}-step "
            f"chain) into {out}; pixels verified"] + stats_lines(s))
