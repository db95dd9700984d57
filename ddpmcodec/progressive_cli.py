"""Command-line glue of the progressive codec, for `ddpmcodec encode --progressive`,
`ddpmcodec decode` (of progressive files and their prefixes) and
`ddpmcodec rd-curve --codec progressive`.

The commands themselves live in codec_cli.py (encode, decode) and cli.py (rd-curve); these
functions do the work and return ``(summary, lines)`` for :func:`ddpmcodec.cli.emit`, so the
commands stay thin. Everything a user can get wrong raises DDPMCodecError.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DDPMCodecError

# option help texts, shared by the commands that expose them
HELP_PROGRESSIVE = ("lossy and progressive: reverse channel coding of the latent chain; any "
                    "prefix of the file decodes (see docs/progressive.md)")
HELP_CHUNK_BITS = "progressive: KL per channel-simulation chunk, bits (default 12)"
HELP_MARGIN = "progressive: search 2^(chunk KL + margin) candidates per chunk (default 2)"
HELP_UPTO_STEP = "progressive: decode only the first S coded steps"
HELP_BYTES = "progressive: decode only the first N bytes of the file (the whole steps in them)"
HELP_RECON = ("progressive: reconstruct x0 from the reached latent by its denoised mean, an "
              "ancestral sample, or the deterministic DDIM (probability-flow) path")
HELP_RECON_STEPS = "progressive: network steps of --recon sample/flow (default 20)"


def header_of(data: bytes):
    """The validated header of a file or of a prefix of one."""
    from .codec.container import unpack_prefix
    return unpack_prefix(data)[0]


def encode_progressive(model, images, out: Path, *, steps: int | None = None,
                       chunk_bits: float | None = None, margin_bits: float | None = None,
                       batch_size: int = 8, seed: int = 0, quiet: bool = False,
                       write=None) -> tuple[dict, list[str]]:
    """Encode an ImageSet's images into ``out``; ``write(path, bytes)`` writes the file
    (default: Path.write_bytes)."""
    from .codec import progressive as pg
    codec = pg.ProgressiveCodec(model)
    opts = {}
    if chunk_bits is not None:
        opts["chunk_bits"] = chunk_bits
    if margin_bits is not None:
        opts["margin_bits"] = margin_bits
    enc = codec.encode(images.images, steps=steps, batch_size=batch_size, seed=seed,
                       progress=not quiet, **opts)
    (write or (lambda p, b: Path(p).write_bytes(b)))(out, enc.data)
    s = enc.stats
    rows = pg.truncation_table(s)
    summary = {"file": str(out), "mode": "progressive", "fingerprint": model.fingerprint,
               "num_images": s.num_images, "num_steps": s.num_steps,
               "timesteps": list(enc.header.timesteps), "device_kind": enc.header.device_kind,
               "payload_bits": s.payload_bits, "header_bits": s.header_bits,
               "kl_bits": s.bound_bits, "overhead": s.overhead, "seconds": s.seconds,
               "channel": s.extra["params"],
               "truncation_points": [{k: r[k] for k in (
                   "step", "t", "file_bits_per_image", "payload_bits_per_image", "kl_bits_per_image",
                   "overhead", "rmse", "psnr")} for r in rows]}
    lines = [f"wrote {out}: {s.num_images} image(s), {s.num_steps} coded steps, progressive, "
             f"model {model.fingerprint} on {enc.header.device_kind} ({s.seconds:.1f} s)",
             f"  full rate: {s.bits_per_dim:.4f} bits/dim payload for a summed KL of "
             f"{s.bound_bits_per_dim:.4f} (overhead {100 * s.overhead:+.1f}%); whole file "
             f"{s.file_bits_per_dim:.4f} bits/dim ({s.file_bits // 8} bytes)",
             "  step     t   bytes (prefix)   bits/image   KL bits/image   RMSE   PSNR"]
    for r in rows:
        lines.append(f"  {r['step']:>4d} {r['t']:>5d}   {int(r['file_bits_per_image'] * s.num_images / 8):>14d}"
                     f"   {r['payload_bits_per_image']:>10.0f}   {r['kl_bits_per_image']:>13.0f}"
                     f"   {r['rmse']:>5.2f}  {r['psnr']:>5.2f}")
    return summary, lines


def decode_progressive(model, data: bytes, out: Path, *, upto_step: int | None = None,
                       max_bytes: int | None = None, recon: str = "mean",
                       recon_steps: int | None = None, quiet: bool = False) -> tuple[dict, list[str]]:
    """Decode a progressive file (or prefix) and write the images to ``out``."""
    from .codec import progressive as pg
    from .data import save_images
    if upto_step is not None and max_bytes is not None:
        raise DDPMCodecError("give at most one of --upto-step and --bytes")
    codec = pg.ProgressiveCodec(model)
    dec = codec.decode(data, progress=not quiet, upto_step=upto_step, max_bytes=max_bytes,
                       recon=recon, recon_steps=recon_steps or pg.DEFAULT_RECON_STEPS)
    written = save_images(dec.images, out)
    s, e = dec.stats, dec.stats.extra
    summary = {"out": str(out), "mode": "progressive", "fingerprint": dec.header.fingerprint,
               "num_images": s.num_images, "num_steps": s.num_steps,
               "steps_decoded": e["steps_decoded"], "t": e["t"], "bytes_used": e["bytes_used"],
               "complete": e["complete"], "recon": recon, "bits_per_dim": 8 * e["bytes_used"] / s.total_dims,
               "seconds": s.seconds, "files_written": len(written)}
    verified = ("pixels verified" if e["complete"] and recon == "mean"
                else "latents verified bit for bit")
    lines = [f"decoded {s.num_images} image(s) at coded step {e['steps_decoded']}/{s.num_steps} "
             f"(t = {e['t']}) from the first {e['bytes_used']} bytes "
             f"({summary['bits_per_dim']:.4f} bits/dim), reconstruction: {recon}; {verified}",
             f"  wrote {out} ({s.seconds:.1f} s)"]
    return summary, lines


def rd_progressive(model, images, out: Path, *, steps: int | None = None,
                   chunk_bits: float | None = None, margin_bits: float | None = None,
                   batch_size: int = 8, seed: int = 0, recons=("mean",), recon_steps: int | None = None,
                   nll_results: Path | None = None, quiet: bool = False) -> tuple[dict, list[str]]:
    """`rd-curve --codec progressive`: the real RD curve (analysis/rd_codec.py)."""
    from .analysis.rd_codec import run_rd_codec, summary_lines
    info = run_rd_codec(model, images.images, out, steps=steps, chunk_bits=chunk_bits,
                        margin_bits=margin_bits, batch_size=batch_size, seed=seed, recons=recons,
                        recon_steps=recon_steps, nll_results=nll_results, data_spec=images.spec,
                        progress=not quiet)
    return info, summary_lines(info)


def is_progressive_file(data: bytes) -> bool:
    try:
        return header_of(data).mode == "progressive"
    except DDPMCodecError:
        return False


__all__ = ["decode_progressive", "encode_progressive", "header_of", "is_progressive_file",
           "rd_progressive"]
