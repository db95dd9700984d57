"""The progressive codec: :class:`ProgressiveCodec`, the contract of
:mod:`ddpmcodec.codec.api` over the encoder and the decoder of this package."""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec.api import Codec, CodecStats, Decoded, Encoded, Timer
from ddpmcodec.codec.checks import verify_pixels, with_exact_v1_note
from ddpmcodec.codec.network import chain_for
from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.decoder import check_decoded_any, decoded_steps, open_source
from ddpmcodec.codec.progressive.encoder import EncodeOptions, encode
from ddpmcodec.codec.progressive.framing import pixel_check
from ddpmcodec.codec.progressive.params import (
    DEFAULT_CHECK_BITS, DEFAULT_CHUNK_BITS, DEFAULT_GENERATOR, DEFAULT_MARGIN_BITS,
    DEFAULT_MAX_LOG2, DEFAULT_RECON_STEPS)
from ddpmcodec.codec.progressive.reconstruct import check_recons, reconstruct
from ddpmcodec.codec.reproducibility import deterministic
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import from_model_space


class ProgressiveCodec(Codec):
    """Lossy, progressive: any whole-packet prefix decodes to the latent of a coded step."""

    mode = "progressive"

    def encode(self, images: np.ndarray, *, steps: int | None = None, batch_size: int = 8,
               seed: int = 0, progress: bool = False, chunk_bits: float = DEFAULT_CHUNK_BITS,
               margin_bits: float = DEFAULT_MARGIN_BITS, max_log2: int = DEFAULT_MAX_LOG2,
               variance: str = "fit", keep_latents: bool = False, chain=None,
               max_bytes: int | None = None, bpp: float | None = None,
               psnr: float | None = None, check_bits: int = DEFAULT_CHECK_BITS,
               generator: str = DEFAULT_GENERATOR, search_device: str | None = None,
               search_workers: int | None = None, budget_rule: str = "layout",
               exact: bool = True, lossless: bool = False) -> Encoded:
        """Compress ``images`` (uint8 NHWC). ``steps`` = K coded latents (default 16) on
        :func:`coded_schedule`, or the latents of ``chain`` (a Diffusion on the model's
        schedule from t = 0 to T - 1, whose reverse variance the ``model`` proposal uses).

        stats.bound_bits is the summed KL of the codec's own proposals along the coded path
        (the information the channel had to convey); stats.extra["steps"] has, per coded
        step, the KL, the ideal code lengths, the packet sizes and the distortion of the
        mean reconstruction there (see :func:`truncation_table`).

        Targets (at most one): ``max_bytes`` (whole file, per image) or ``bpp`` (whole
        file, bits per pixel) keep the longest prefix of coded steps within budget;
        ``psnr`` (dB, of the mean reconstruction over the file's images) stops after the
        first coded step that reaches it. Coding stops there: the file holds only those
        steps (``coded_steps`` in its parameters) and its pixel checksum is that of the
        last step's mean reconstruction.

        Encoder-only (the format does not record them): ``search_device`` runs generator
        v2's candidate search in torch there; ``search_workers`` sets how many processes
        search chunks at once on the CPU (None: one per CPU;
        :func:`.channel.encode_gaussian`);
        ``budget_rule`` ("layout", or "chunk", the rule before) sets each chunk's search
        budget (:func:`.channel.search_budget`).

        ``exact`` (the default): the exact network, and every number the coders read
        computed by IEEE operations, so the file decodes to the same pixels on any machine;
        it ends with a 32-bit check of the last step's mean reconstruction. False: the
        float32 network (faster; the file decodes only on this kind of device with this
        thread count and software stack).

        ``lossless`` (exact files, no target): after the last coded step the pixels follow
        under the discretized decoder p(x0 | x_1) (:mod:`.pixels`): every prefix decodes as
        it would without them, the whole file decodes to the exact pixels, and its 32-bit
        check is that of the pixels.
        """
        return encode(
            self.model, images, steps=steps, batch_size=batch_size, seed=seed,
            progress=progress,
            channel=ch.ChannelParams(float(chunk_bits), float(margin_bits), int(max_log2)),
            variance=variance, chain=chain, max_bytes=max_bytes, bpp=bpp, psnr=psnr,
            check_bits=check_bits, generator=generator,
            options=EncodeOptions(search_device, search_workers, budget_rule, keep_latents),
            exact=exact, lossless=lossless)

    def decode(self, data: bytes, *, progress: bool = False, upto_step: int | None = None,
               max_bytes: int | None = None, recon: str = "mean",
               recon_steps: int = DEFAULT_RECON_STEPS, keep_latents: bool = False) -> Decoded:
        """Decompress a file, or the first ``max_bytes`` bytes of one (a prefix: the coded
        steps they hold), or its first ``upto_step`` coded steps; reconstruct x0 by
        ``recon`` (mean, sample or flow; the latter two run ``recon_steps`` network steps
        from the reached latent to t = 0). Without ``max_bytes``, ``data`` is the whole
        file: one whose stream ends before its last coded step (or before the
        ``upto_step``-th) is cut or damaged, and an error, not a shorter prefix. A lossless
        file whose bytes hold its pixel layer decodes to its exact pixels (any ``recon``;
        stats.extra["lossless"] says so)."""
        from ddpmcodec.progress import progress_bar
        check_recons([recon])
        src = open_source(self.model, data, upto_step, max_bytes)
        header = src.header
        model = self.model
        n, K = header.num_images, header.num_steps
        latents, x, k = [], None, None
        with Timer() as timer, deterministic(model.device, header.num_threads, src.exact), \
                progress_bar(n * src.limit, "decode", "img-step", enabled=progress) as bar:
            for s, x, k, _ in decoded_steps(self.model, src, bar):
                if keep_latents:
                    latents.append(x.clone())
            check_decoded_any(src, len(data) if max_bytes is None else min(len(data), max_bytes))
            diffusion = chain_for(header, model, src.params.chain_rule, src.params.chain_variances)
            if src.pixels is not None:
                images = src.pixels
                if src.pixel_check is not None:
                    _verify_check(src, images)
            else:
                x0_hat = reconstruct(model, diffusion, x, k, header.batches(), recon,
                                     recon_steps, header.seed, src.exact)
                images = from_model_space(x0_hat)
                if src.pixel_check is not None:
                    _verify_check(src, images if recon == "mean" else from_model_space(
                        reconstruct(model, diffusion, x, k, header.batches(), exact=True)))
        verified = src.pixel_check is not None
        if src.packets is not None and src.complete and recon == "mean":
            verify_pixels(images, header)
            verified = True
        stats = CodecStats("progressive", n, header.dims, K, 8 * src.used, 8 * src.hsize, 0.0,
                           float("nan"), timer.seconds,
                           {"steps_decoded": src.steps, "t": int(header.timesteps[k]) + 1,
                            "bytes_used": src.hsize + src.used, "complete": bool(src.complete),
                            "recon": "lossless" if src.pixels is not None else recon,
                            "pixels_verified": verified, "lossless": src.pixels is not None})
        if keep_latents:
            stats.extra["latents"] = latents
        return Decoded(images, header, stats)

    def decode_every_step(self, data: bytes, recons=("mean",),
                          recon_steps: int = DEFAULT_RECON_STEPS, progress: bool = False) -> list:
        """Decode once and reconstruct at every truncation point: a list with one dict per
        coded step: step, t, bytes_used (file prefix), images {recon: uint8 NHWC}. ``data``
        is the whole file (see :meth:`decode`)."""
        from ddpmcodec.progress import progress_bar
        check_recons(recons)
        src = open_source(self.model, data, None, None)
        header = src.header
        model = self.model
        diffusion = chain_for(header, model, src.params.chain_rule, src.params.chain_variances)
        out = []
        with deterministic(model.device, header.num_threads, src.exact), \
                progress_bar(header.num_images * src.limit, "decode", "img-step",
                             enabled=progress) as bar:
            for s, x, k, used in decoded_steps(self.model, src, bar):
                images = {r: from_model_space(reconstruct(model, diffusion, x, k, header.batches(),
                                                          r, recon_steps, header.seed,
                                                          src.exact))
                          for r in recons}
                out.append({"step": s + 1, "t": int(header.timesteps[k]) + 1,
                            "bytes_used": src.hsize + used, "images": images})
            if src.pixels is not None:  # a lossless file: one more point, the exact pixels
                _verify_check(src, src.pixels)
                out.append({"step": header.num_steps, "t": 0, "lossless": True,
                            "bytes_used": src.hsize + src.used,
                            "images": {r: src.pixels for r in recons}})
            elif src.pixel_check is not None:  # read after the last step
                _verify_check(src, images["mean"] if "mean" in images else from_model_space(
                    reconstruct(model, diffusion, x, k, header.batches(), exact=True)))
                out[-1]["bytes_used"] = src.hsize + src.used
        check_decoded_any(src, len(data))
        return out


def _verify_check(src, mean_images: np.ndarray) -> None:
    """An exact file's pixel check against the mean reconstruction after its last step
    (a lossless file's: against its decoded pixels)."""
    if pixel_check(mean_images) != src.pixel_check:
        raise DDPMCodecError(with_exact_v1_note(
            "decoding failed: the decoded pixels do not match the file's 32-bit pixel check "
            "(the file is corrupt)", src.header))
