"""`ddpmcodec encode`: images into one compressed file, lossless or progressive.

    ddpmcodec encode img.png -o img.ddpm --lossless
    ddpmcodec encode ../shared/data/cifar10-test-800.npz -n 16 -o test16.ddpm --lossless --steps 25
    ddpmcodec encode img.png -o img.ddpm --progressive        # lossy; any prefix decodes

A file decodes only with the model that encoded it (its fingerprint is in the header).
By default the network runs in exact integer arithmetic, so the file decodes to the same
pixels on any machine, CPU or GPU, with any thread count (docs/portability.md); with
--float32 it runs the float32 network instead (faster), and the file decodes only on the
same kind of device with the same thread count and software stack.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ddpmcodec.cli.chain_options import (
    DEFAULT_TRAJECTORY,
    DEFAULT_VARIANCE,
    CalibrationFile,
    TimestepsFile,
)
from ddpmcodec.cli.common import (
    Ckpt,
    Json,
    NumImages,
    Quiet,
    Seed,
    emit,
    resolve_device,
    stats_lines,
    stats_summary,
)
from ddpmcodec.codec.lossless import params as lossless_params
from ddpmcodec.codec.progressive import params as progressive_params
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.pipelines.defaults import SHARD_SIZE as DEFAULT_SHARD_SIZE

Opt = typer.Option
# the codecs' own defaults (torch-free modules), so that --help states what the code does
L, P = lossless_params, progressive_params


def encode(
    out: Annotated[Path, Opt("--out", "-o", help="the compressed file to write")],
    paths: Annotated[Optional[List[Path]], typer.Argument(
        help="PNG image(s), a folder of images, or an .npz with a uint8 NHWC 'images' array "
             "(default: the 8 CIFAR-10 test images shipped in the package)",
        show_default=False)] = None,
    lossless: Annotated[bool, Opt(
        "--lossless", help="bits-back ANS through the latent chain, exact pixels (the "
                            "default); with --progressive: a progressive file whose complete "
                            "form decodes to the exact pixels")] = False,
    steps: Annotated[Optional[int], Opt(
        "--steps", "-K", help=f"a chain of K steps (default: {L.DEFAULT_STEPS} for "
                              f"--lossless, {P.DEFAULT_STEPS} for --progressive)")] = None,
    trajectory: Annotated[Optional[str], Opt(
        "--trajectory", help=f"which K timesteps: even, quadratic or dp (the K-subset that "
                             f"minimises the expected bound, from the model's calibration); "
                             f"default: {L.DEFAULT_TRAJECTORY} for --lossless "
                             f"('{DEFAULT_TRAJECTORY}' once "
                             f"--variance is given), the codec's geometric schedule for "
                             f"--progressive")] = None,
    variance: Annotated[Optional[str], Opt(
        "--variance", help=f"reverse variance of every step: model, fixedlarge, fixedsmall or "
                           f"analytic (from the model's calibration); default: "
                           f"{L.DEFAULT_VARIANCE} for --lossless ('{DEFAULT_VARIANCE}' once "
                           f"--trajectory "
                           f"or --timesteps is given), the codec's fitted proposals for "
                           f"--progressive")] = None,
    timesteps: TimestepsFile = None, calibration: CalibrationFile = None,
    ckpt: Ckpt = None, num_images: NumImages = None,
    batch_size: Annotated[int, Opt(
        "--batch-size", "-b", help="images per network call at most (lossless: batches grow "
                                   "to this as the stack grows)")] = L.DEFAULT_BATCH,
    seed: Seed = 0,
    device: Annotated[str, Opt(
        "--device", help="cpu or cuda[:N]: where the network runs (the file decodes on any "
                         "device; with --float32 only on the same kind)")] = "cpu",
    float32: Annotated[bool, Opt(
        "--float32", help="the float32 network instead of the exact one: faster, but the "
                          "file decodes only on this kind of device with this thread count "
                          "and software stack")] = False,
    grid_log2: Annotated[int, Opt(
        "--grid-log2", help="lossless: at least 2^G latent grid points per standard "
                            "deviation")] = L.DEFAULT_GRID_LOG2,
    support_sigmas: Annotated[float, Opt(
        "--support-sigmas", help="lossless: latent alphabets span this many standard "
                                 "deviations each side (a multiple of "
                                 "1/16)")] = L.DEFAULT_SUPPORT_SIGMAS,
    method: Annotated[str, Opt(
        "--method", help="lossless: auto (the shorter file of bits-back and the classical "
                         "file, each image its shorter JPEG-XL or WebP-lossless stream; one "
                         "image: the classical file), bitsback, classical, or webp "
                         "(WebP-lossless only)")] = "auto",
    seed_images: Annotated[Optional[int], Opt(
        "--seed-images", help="lossless: how many first images are stored classically "
                              "(JPEG-XL or WebP-lossless) to give the bits-back stack its "
                              "initial bits (default: as "
                              "many as the first image's dip needs)")] = None,
    progressive: Annotated[bool, Opt(
        "--progressive", help="lossy and progressive: reverse channel coding of the latent "
                              "chain; any prefix of the file decodes (see docs/progressive.md)")] = False,
    chunk_bits: Annotated[Optional[float], Opt(
        "--chunk-bits", help=f"progressive: KL per channel-simulation chunk, bits (default "
                             f"{P.DEFAULT_CHUNK_BITS:g})")] = None,
    margin: Annotated[Optional[float], Opt(
        "--margin", help=f"progressive: search 2^(mean chunk KL + margin) candidates per "
                         f"chunk (default {P.DEFAULT_MARGIN_BITS:g}; each bit more doubles the "
                         f"encoder's time; see docs/progressive.md)")] = None,
    bpp: Annotated[Optional[float], Opt(
        "--bpp", help="progressive: stop at the last coded step whose whole file fits this "
                      "many bits per pixel (per image: H*W pixels)")] = None,
    psnr: Annotated[Optional[float], Opt(
        "--psnr", help="progressive: stop at the first coded step whose mean "
                       "reconstruction reaches this PSNR (dB, over all the images)")] = None,
    max_bytes: Annotated[Optional[int], Opt(
        "--max-bytes", help="progressive: stop at the last coded step whose whole file "
                            "fits this many bytes per image")] = None,
    check_bits: Annotated[Optional[int], Opt(
        "--check-bits", help=f"progressive: bits of each coded step's check of the decoded "
                             f"latents (1-{P.MAX_CHECK_BITS}, default {P.DEFAULT_CHECK_BITS}: "
                             f"a wrong decode of a prefix passes with probability "
                             f"2^-bits)")] = None,
    search_device: Annotated[Optional[str], Opt(
        "--search-device", help="progressive: where the encoder searches candidates: cpu "
                                "(numpy, the default), cuda[:N] or torch:cpu (torch); the "
                                "file is the same and decodes on the CPU")] = None,
    search_workers: Annotated[Optional[int], Opt(
        "--search-workers", help="progressive: processes that search candidates at once on "
                                 "the CPU (default: one per CPU; Linux); the file is the "
                                 "same for any number")] = None,
    dataset: Annotated[Optional[str], Opt(
        "--dataset", help="cifar10: the data set itself (from $DDPMCODEC_DATA, default "
                          "~/.cache/ddpmcodec; downloaded there when online) instead of "
                          "PATH")] = None,
    split: Annotated[str, Opt("--split", help="--dataset: train or test")] = "test",
    shard_size: Annotated[Optional[int], Opt(
        "--shard-size", help=f"a data set into a folder -o of shard files of N images each "
                             f"(resumable: run the same command again after an interruption; "
                             f"default {DEFAULT_SHARD_SIZE} with --workers or --dataset)")] = None,
    workers: Annotated[int, Opt(
        "--workers", help="shards: processes that code shards at once (each loads the "
                          "model; under torchrun, per rank)")] = 1,
    overwrite: Annotated[bool, Opt(
        "--overwrite", help="shards: start the folder afresh instead of resuming it")] = False,
    as_json: Json = False, quiet: Quiet = False,
):
    if batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    if lossless and progressive and (float32 or any(v is not None for v in (bpp, psnr, max_bytes))):
        raise DDPMCodecError("--progressive --lossless codes every step with the exact network: "
                             "give no --bpp, --psnr, --max-bytes or --float32 (decode a prefix "
                             "for a smaller file)")
    if not progressive and (chunk_bits is not None or margin is not None):
        raise DDPMCodecError("--chunk-bits and --margin apply to --progressive")
    if progressive and (method != "auto" or seed_images is not None):
        raise DDPMCodecError("--method and --seed-images apply to --lossless")
    if not progressive and any(v is not None for v in (bpp, psnr, max_bytes, check_bits,
                                                       search_device, search_workers)):
        raise DDPMCodecError("--bpp, --psnr, --max-bytes, --check-bits, --search-device and "
                             "--search-workers apply to --progressive")
    if shard_size is None and (dataset is not None or workers != 1):
        shard_size = DEFAULT_SHARD_SIZE
    if shard_size is None and overwrite:
        raise DDPMCodecError("--overwrite applies to shard folders (--shard-size)")
    if dataset is not None and paths:
        raise DDPMCodecError("give PATH or --dataset, not both")
    if shard_size is not None and (bpp, psnr, max_bytes) != (None, None, None):
        raise DDPMCodecError("--bpp, --psnr and --max-bytes apply to single files, not shards")
    if shard_size is None and out.is_dir():
        raise DDPMCodecError(f"-o {out} is a folder; give the path of the file to write "
                             f"(or --shard-size N to write shards into it)")
    if shard_size is not None and out.exists() and not out.is_dir():
        raise DDPMCodecError(f"-o {out} is a file; shards go into a folder")
    # torch and the codecs only now: a mistake in the options above is named at once
    from ddpmcodec.codec.api import get_codec
    from ddpmcodec.io.atomic import write_bytes_atomic
    from ddpmcodec.io.data import SAMPLE_IMAGES, load_images

    def read_images():
        if dataset is not None:
            return load_images(None, dataset, split, num_images)
        return load_images([str(p) for p in paths] if paths else SAMPLE_IMAGES, None,
                           "test", num_images)
    images = None
    if (not progressive and shard_size is None and dataset is None and method != "bitsback"
            and seed_images is None and not float32 and device == "cpu"
            and (steps, trajectory, variance, timesteps, calibration) == (None,) * 5):
        # a file that may need no network (WebP-lossless, classical, one image): written
        # without loading torch or the model, which is most of a one-image command's time
        from ddpmcodec.codec.lossless.classical import model_free_file
        from ddpmcodec.io.checkpoints import checkpoint_image_shape
        images = read_images()
        enc = model_free_file(images.images, method, checkpoint_image_shape(ckpt))
        if enc is not None:
            write_bytes_atomic(out, enc.data)
            _lossless_summary(enc, out, None, as_json)
            return
    from ddpmcodec.io.models import load_model
    device = resolve_device(device)
    model = load_model(ckpt, device, lazy=True)  # diffusers only if the float32 network runs
    # the chain (and its calibration) is checked before the data is read
    chain = _chain(model, progressive, steps, trajectory, variance, timesteps, calibration)
    if images is None:
        images = read_images()
    if shard_size is not None:
        opts = ({"steps": steps if chain is None else None, "batch_size": batch_size,
                 "seed": seed, "chain": chain, "exact": not float32, "lossless": lossless,
                 **{k: v for k, v in (("chunk_bits", chunk_bits), ("margin_bits", margin),
                                      ("check_bits", check_bits)) if v is not None}}
                if progressive else
                {"steps": steps if chain is None else None, "batch_size": batch_size,
                 "seed": seed, "grid_log2": grid_log2, "support_sigmas": support_sigmas,
                 "chain": chain, "method": method, "seed_images": seed_images,
                 "exact": not float32})
        if progressive and chain is not None and variance not in (None, "model"):
            opts["variance"] = "model"
        _encode_shards(model, ckpt, device, images, out, "progressive" if progressive
                       else "lossless", opts, shard_size, workers, overwrite, quiet, as_json)
        return
    if progressive:
        opts = {k: v for k, v in (("chunk_bits", chunk_bits), ("margin_bits", margin),
                                  ("bpp", bpp), ("psnr", psnr), ("max_bytes", max_bytes),
                                  ("check_bits", check_bits), ("search_device", search_device),
                                  ("search_workers", search_workers))
                if v is not None}
        if chain is not None and variance not in (None, "model"):
            opts["variance"] = "model"  # propose with the chain's own variances
        enc = get_codec("progressive")(model).encode(
            images.images, steps=steps if chain is None else None, batch_size=batch_size,
            seed=seed, progress=not quiet, chain=chain, exact=not float32,
            lossless=lossless, **opts)
        write_bytes_atomic(out, enc.data)
        summary, lines = _progressive_summary(enc, out, model)
        emit(summary, as_json, lines)
        return
    enc = get_codec("lossless")(model).encode(
        images.images, steps=steps if chain is None else None, batch_size=batch_size,
        seed=seed, progress=not quiet, grid_log2=grid_log2, support_sigmas=support_sigmas,
        chain=chain, method=method, seed_images=seed_images, exact=not float32)
    write_bytes_atomic(out, enc.data)
    _lossless_summary(enc, out, model, as_json)


def _lossless_summary(enc, out: Path, model, as_json: bool) -> None:
    """Print what a lossless encode wrote (``model`` None: a file made without it)."""
    s = enc.stats
    fingerprint = None if model is None else model.fingerprint  # the model loaded, if any
    summary = {"file": str(out), "mode": "lossless", "method": s.extra["method"],
               "fingerprint": fingerprint, "num_images": s.num_images,
               "num_steps": s.num_steps, "device_kind": enc.header.device_kind,
               **stats_summary(s)}
    how = {"bitsback": f"{s.num_steps}-step chain, {s.extra.get('seed_images')} classical "
                       f"seed image(s)",
           "classical-lossless": f"as classical streams ({s.extra.get('jxl_streams')} JPEG-XL, "
                                 f"{s.extra.get('webp_streams')} WebP-lossless; shorter here)",
           }.get(s.extra["method"], "as WebP-lossless streams")
    whose = ("no model needed to decode" if enc.header.model_free
             else f"model {fingerprint}")
    emit(summary, as_json, [
        f"wrote {out}: {s.num_images} image(s), lossless, {how}, {whose}; "
        f"{_decodes_where(enc.header)}"] + stats_lines(s))


def _encode_shards(model, ckpt, device, images, out: Path, mode: str, opts: dict,
                   shard_size: int, workers: int, overwrite: bool, quiet: bool,
                   as_json: bool) -> None:
    from ddpmcodec.pipelines.shards import ShardJob, encode_dataset
    job = ShardJob(mode, opts, None if ckpt is None else str(ckpt), str(device))
    summary = encode_dataset(model, images, out, job, shard_size, workers, overwrite,
                             progress=not quiet)
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    classical = ", ".join(f"{name} {summary[f'{key}_bpd']:.4f}" for key, name in (
        ("jpegxl", "JPEG-XL"), ("webp_lossless", "WebP-lossless"), ("png", "PNG"))
        if f"{key}_bpd" in summary)
    bound = ("" if summary["bound_bpd"] is None else
             f"; bits-back images: net {summary['net_bpd']:.4f}, bound "
             f"{summary['bound_bpd']:.4f} bits/dim")
    emit(summary, as_json, [
        f"wrote {summary['shards']} shard(s) of {summary['num_images']} image(s) into {out} "
        f"({mode}): whole files {summary['file_bpd']:.4f} bits/dim{bound}",
        f"  the same images, one file each: {classical}"
        + (f" (ours {summary['vs_jpegxl']:.4f}x JPEG-XL)" if "vs_jpegxl" in summary else ""),
        f"  decode one: ddpmcodec decode {out} --image I -o OUT (a folder or .npz) "
        f"(or a shard file itself); summary: {out / 'summary.json'}"])


def _decodes_where(header) -> str:
    """Where a new file decodes, in words."""
    from ddpmcodec.codec.checks import is_exact
    if not header.device_kind or is_exact(header):
        return "decodes on any machine" + (f" ({header.device_kind} network)"
                                           if header.device_kind else "")
    return (f"decodes only on {header.device_kind} with {header.num_threads} thread(s) and "
            f"this software stack (--float32)")


# an f-string is not a docstring: set after the def, so the help quotes the defaults
encode.__doc__ = f"""Compress images into one file. --lossless (the default): bits-back coding in
    Bit-Swap order on a {L.DEFAULT_STEPS}-step chain chosen by dynamic programming with
    {L.DEFAULT_VARIANCE} variances (needs the model's calibration; the embedded model has
    one); the net size approaches the negative ELBO of the chain (what `ddpmcodec nll
    --steps {L.DEFAULT_STEPS} --trajectory {L.DEFAULT_TRAJECTORY} --variance
    {L.DEFAULT_VARIANCE}` reports). The first image(s) are stored classically (each its
    shorter JPEG-XL or WebP-lossless stream) and give the stack its initial bits; a file is
    written as plain classical streams when that is shorter (always for one image). The
    size reported first is the whole file.
    --progressive: lossy, on {P.DEFAULT_STEPS} geometrically spaced coded steps; every
    prefix of the file decodes (`ddpmcodec decode --bytes N`); with --variance other than
    model its proposals use the chain's variance, else a variance fitted per image and step;
    with --lossless too, the pixels follow the last step and the whole file decodes exactly.
    The chain (timesteps and variances) is recorded in the file: decoding needs only the
    file and the model."""


def _chain(model, progressive: bool, steps, trajectory, variance, timesteps, calibration):
    """The chain the options ask for, or None for the codec's default chain."""
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    if progressive and trajectory is None and timesteps is None:
        coded = P.coded_schedule(model.diffusion.num_steps, steps or P.DEFAULT_STEPS)  # validates
        if variance in (None, "model"):
            return None  # the codec's own schedule and fitted proposals
        timesteps = list(coded)
    if progressive:
        variance = variance or DEFAULT_VARIANCE
    elif trajectory is None and timesteps is None and variance is None:
        return L.default_chain(model, steps, calibration)
    if steps is None and timesteps is None:
        # the codec's K, as --help says: without it the chain would be the full one
        # (lossless) or, for an even trajectory, silently the codec's default chain
        steps = P.DEFAULT_STEPS if progressive else L.DEFAULT_STEPS
    opts = ChainOptions(steps if timesteps is None else None, trajectory or DEFAULT_TRAJECTORY,
                        variance or DEFAULT_VARIANCE, timesteps, calibration).validate()
    if opts.is_default:  # the model's own respacing (validates --steps)
        return model.diffusion.with_steps(steps)
    return select_chain(model, opts)[0]


def _progressive_summary(enc, out: Path, model) -> tuple[dict, list[str]]:
    from ddpmcodec.codec.progressive.reconstruct import truncation_table
    s = enc.stats
    rows = truncation_table(s)
    summary = {"file": str(out), "mode": "progressive", "fingerprint": model.fingerprint,
               "num_images": s.num_images, "num_steps": s.num_steps,
               "coded_steps": s.extra["coded_steps"], "target_reached": s.extra["target_reached"],
               "timesteps": list(enc.header.timesteps), "device_kind": enc.header.device_kind,
               "payload_bits": s.payload_bits, "header_bits": s.header_bits,
               "kl_bits": s.bound_bits, "overhead": s.overhead, "seconds": s.seconds,
               "channel": s.extra["params"],
               "truncation_points": [{k: r[k] for k in (
                   "step", "t", "file_bits_per_image", "payload_bits_per_image",
                   "kl_bits_per_image", "overhead", "rmse", "psnr")} for r in rows]}
    coded = s.extra["coded_steps"]
    target = (f" (target reached: {s.extra['target_reached']})"
              if s.extra["target_reached"] else "")
    lines = [f"wrote {out}: {s.num_images} image(s), {coded} of {s.num_steps} coded steps"
             f"{target}, progressive, "
             f"model {model.fingerprint}; {_decodes_where(enc.header)} ({s.seconds:.1f} s)",
             f"  full rate: {s.bits_per_dim:.4f} bits/dim payload for a summed KL of "
             f"{s.bound_bits_per_dim:.4f} (overhead {100 * s.overhead:+.1f}%); whole file "
             f"{s.file_bits_per_dim:.4f} bits/dim ({s.file_bits // 8} bytes)",
             "  step     t   bytes (prefix)   bits/image   KL bits/image   RMSE   PSNR"]
    for r in rows:
        lines.append(f"  {r['step']:>4d} {r['t']:>5d}   "
                     f"{int(r['file_bits_per_image'] * s.num_images / 8):>14d}"
                     f"   {r['payload_bits_per_image']:>10.0f}   {r['kl_bits_per_image']:>13.0f}"
                     f"   {r['rmse']:>5.2f}  {r['psnr']:>5.2f}")
    layer = s.extra.get("lossless")
    if layer:
        summary["lossless"] = layer
        lines.append(f"  lossless     0   {layer['file_bytes']:>14d}   "
                     f"{8 * layer['bytes'] / s.num_images:>10.0f}   (pixels: ideal "
                     f"{layer['ideal_bits'] / s.num_images:.0f} bits/image)   exact pixels")
    return summary, lines
