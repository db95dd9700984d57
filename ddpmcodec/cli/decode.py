"""`ddpmcodec decode`: a file written by `ddpmcodec encode` back into images.

    ddpmcodec decode test16.ddpm -o test16.npz        # or -o folder/ for PNGs
    ddpmcodec decode img.ddpm -o rec/ --bytes 600 --recon flow   # a prefix of a progressive file
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.cli.common import Ckpt, Json, Quiet, emit, resolve_device, stats_lines, stats_summary
from ddpmcodec.codec.progressive.params import DEFAULT_RECON_STEPS, RECONS
from ddpmcodec.errors import DDPMCodecError

Opt = typer.Option
# the decoder's own defaults (a torch-free module), so that --help states what it does
DEFAULT_RECON = RECONS[0]


def decode(
    file: Annotated[Path, typer.Argument(help="a file written by `ddpmcodec encode`, or a "
                                              "folder of its shards (with --image)",
                                         show_default=False)],
    out: Annotated[Path, Opt("--out", "-o", help="OUT.npz: one uint8 NHWC 'images' array; "
                             "otherwise a folder of PNGs")],
    ckpt: Ckpt = None,
    upto_step: Annotated[Optional[int], Opt(
        "--upto-step", help="progressive: decode only the first S coded steps")] = None,
    max_bytes: Annotated[Optional[int], Opt(
        "--bytes", help="progressive: decode only the first N bytes of the file (the whole "
                        "steps in them)")] = None,
    recon: Annotated[Optional[str], Opt(
        "--recon", help=f"progressive: reconstruct x0 from the reached latent by its "
                        f"denoised mean, an ancestral sample, or the deterministic DDIM "
                        f"(probability-flow) path: {', '.join(RECONS)} (default "
                        f"{DEFAULT_RECON})")] = None,
    recon_steps: Annotated[Optional[int], Opt(
        "--recon-steps", help=f"progressive: network steps of --recon sample/flow "
                              f"(default {DEFAULT_RECON_STEPS})")] = None,
    device: Annotated[Optional[str], Opt(
        "--device", help="cpu, cuda[:N] or auto: where the network runs for a file of the "
                         "exact network (the same pixels on any); a --float32 file decodes "
                         "on the kind of device that wrote it")] = None,
    image: Annotated[Optional[int], Opt(
        "--image", help="a shard folder: decode the shard that holds image I (0-based) and "
                        "write that image")] = None,
    as_json: Json = False, quiet: Quiet = False,
):
    """Decompress a file written by `ddpmcodec encode`, with the model that wrote it.
    The decoded pixels are checked against the checksum in the file; a mismatch is an
    error, never a wrong image. A progressive file (or, with --bytes N, its first N bytes)
    decodes to the last whole coded step, its latents checked bit for bit."""
    from ddpmcodec.codec.container import read_file, read_header, unpack_prefix
    if file.is_dir() or image is not None:
        return _decode_from_shards(file, out, image, ckpt, device, quiet, as_json)
    data = read_file(file)
    header = unpack_prefix(data)[0]  # a progressive file may be cut short
    if header.mode == "progressive" and upto_step is not None and max_bytes is not None:
        raise DDPMCodecError("give at most one of --upto-step and --bytes")
    if header.mode != "progressive" and any(
            v is not None for v in (upto_step, max_bytes, recon, recon_steps)):
        raise DDPMCodecError("--upto-step, --bytes, --recon and --recon-steps apply to "
                             f"progressive files; {file} is a {header.mode} file")
    # the codecs only now: a mistake in the options above is named at once; torch and the
    # model only for a file that needs them (a model-free file decodes without either)
    from ddpmcodec.codec.api import get_codec
    from ddpmcodec.codec.checks import is_exact
    from ddpmcodec.codec.reproducibility import decode_device
    from ddpmcodec.io.data import save_images
    if device is not None and not header.model_free and not is_exact(header):
        raise DDPMCodecError(f"--device: {file} was written with --float32 and decodes only on "
                             f"{header.device_kind}; leave --device out")
    requested = resolve_device(device) if device is not None else None
    if header.mode == "progressive":
        model = _model(ckpt, decode_device(header, requested))
        recon = recon or DEFAULT_RECON
        dec = get_codec("progressive")(model).decode(
            data, progress=not quiet, upto_step=upto_step, max_bytes=max_bytes, recon=recon,
            recon_steps=recon_steps or DEFAULT_RECON_STEPS)
        written = save_images(dec.images, out)
        s, e = dec.stats, dec.stats.extra
        summary = {"file": str(file), "out": str(out), "mode": "progressive",
                   "fingerprint": dec.header.fingerprint, "num_images": s.num_images,
                   "num_steps": s.num_steps, "steps_decoded": e["steps_decoded"], "t": e["t"],
                   "bytes_used": e["bytes_used"], "complete": e["complete"],
                   "recon": e["recon"], "lossless": e["lossless"],
                   "bits_per_dim": 8 * e["bytes_used"] / s.total_dims, "seconds": s.seconds,
                   "files_written": len(written)}
        verified = ("pixels verified" if e["pixels_verified"]
                    else "latents verified bit for bit")
        where = ("all coded steps and the lossless layer: the exact pixels" if e["lossless"]
                 else f"coded step {e['steps_decoded']}/{s.num_steps} (t = {e['t']})")
        emit(summary, as_json, [
            f"decoded {s.num_images} image(s) at {where} from the first {e['bytes_used']} "
            f"bytes ({summary['bits_per_dim']:.4f} bits/dim), reconstruction: {e['recon']}; "
            f"{verified}",
            f"  wrote {out} ({s.seconds:.1f} s)"])
        return
    header = read_header(data)  # a complete file: every CRC checked before any work
    # a model-free file (the lossless codec's classical fallback) needs no model
    model = None if header.model_free else _model(ckpt, decode_device(header, requested))
    dec = get_codec(header.mode)(model).decode(data, progress=not quiet)
    written = save_images(dec.images, out)
    s = dec.stats
    summary = {"file": str(file), "out": str(out), "mode": header.mode,
               "fingerprint": header.fingerprint, "num_images": s.num_images,
               "num_steps": s.num_steps, "device_kind": header.device_kind,
               "files_written": len(written), **stats_summary(s)}
    how, check = ((f"{s.num_steps}-step chain", "pixels verified") if not header.model_free
                  else ("JPEG-XL and WebP-lossless streams" if header.mode == "classical-lossless"
                        else "WebP-lossless streams", "pixels verified" if header.pixel_checksum
                        else "streams' checksum verified"))
    emit(summary, as_json, [
        f"decoded {s.num_images} image(s) from {file} ({header.mode}, {how}) into {out}; "
        f"{check}"] + stats_lines(s))


def _decode_from_shards(folder: Path, out: Path, image, ckpt, device, quiet: bool,
                        as_json: bool) -> None:
    """The shard of a shard folder that holds image ``image``, decoded; that image written."""
    if image is None:
        raise DDPMCodecError(f"{folder} is a folder: give --image I to decode the shard that "
                             f"holds image I, or decode one of its shard files")
    if not folder.is_dir():
        raise DDPMCodecError(f"--image applies to a shard folder; {folder} is not one")
    from ddpmcodec.codec.api import decode_bytes
    from ddpmcodec.codec.container import read_file, read_header
    from ddpmcodec.codec.reproducibility import decode_device
    from ddpmcodec.io.data import save_images
    from ddpmcodec.pipelines.shards import read_manifest, shard_of_image
    manifest = read_manifest(folder)
    shard = shard_of_image(manifest, image)
    data = read_file(folder / shard["file"])
    header = read_header(data)
    requested = resolve_device(device) if device is not None else None
    model = None if header.model_free else _model(ckpt, decode_device(header, requested))
    dec = decode_bytes(model, data, **({} if header.model_free else {"progress": not quiet}))
    if len(dec.images) != shard["count"]:
        raise DDPMCodecError(f"{shard['file']} holds {len(dec.images)} images, its manifest "
                             f"says {shard['count']}")
    pick = dec.images[image - shard["first"]:image - shard["first"] + 1]
    written = save_images(pick, out, names=[f"{image:06d}"])
    summary = {"folder": str(folder), "shard": shard["file"], "image": image,
               "out": str(out), "mode": header.mode, "files_written": len(written),
               "seconds": dec.stats.seconds}
    emit(summary, as_json, [f"decoded {shard['file']} ({shard['count']} images, "
                            f"{header.mode}) and wrote image {image} to {out}"])


def _model(ckpt, device):
    """The checkpoint's model (lazy: diffusers only if the float32 network runs)."""
    from ddpmcodec.io.models import load_model
    return load_model(ckpt, device, lazy=True)
