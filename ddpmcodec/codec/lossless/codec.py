"""The bits-back codec: encode and decode through the chain in Bit-Swap order (see
:mod:`ddpmcodec.codec.lossless` for the design)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ddpmcodec.codec import container
from ddpmcodec.codec.api import Codec, CodecStats, Decoded, Encoded, Timer, get_codec
from ddpmcodec.codec.checks import (
    check_chain, check_compatible, is_exact, new_header, start_encode, verify_pixels,
    with_exact_v1_note)
from ddpmcodec.codec.container import Header
from ddpmcodec.codec.entropy import coder
from ddpmcodec.codec.lossless.grids import (
    LatentGrids, normal_logpdf, sum_bits, dip_bits, latent_grids, whiten_count)
from ddpmcodec.codec.lossless.params import (
    DEFAULT_BATCH, DEFAULT_GRID_LOG2, DEFAULT_SUPPORT_SIGMAS, METHODS,
    PREFIX_MARGIN_WORDS, LosslessParams, default_chain, max_initial_words)
from ddpmcodec.codec.lossless import classical
from ddpmcodec.codec.lossless.seeds import (
    common_prefix, read_seeds, seed_count, initial_words, seed_words)
from ddpmcodec.codec.lossless.stack import ChainStack
from ddpmcodec.codec.network import (
    chain_for, exact_chain, exact_network_p, network_p, quantized_chain, variance_rule_of)
from ddpmcodec.codec.reproducibility import deterministic
from ddpmcodec.core.likelihood import prior_bpd, vb_terms_bpd
from ddpmcodec.io.data import to_model_space
from ddpmcodec.errors import DDPMCodecError


# -- the codec -------------------------------------------------------------------------------
class BitsBackCodec(Codec):
    """Lossless bits-back codec (see the module docstring).

    encode options: ``chain`` (a Diffusion on the model's schedule; default
    :func:`default_chain`) or ``steps`` (K evenly spaced steps with the model's variance),
    ``batch_size`` (images per network call at most: larger is faster), ``seed`` (of the
    initial words and whitening keys), ``grid_log2`` and ``support_sigmas`` (the latent
    grids), ``method`` (auto: the shorter of bits-back and the classical file, each image
    its shortest JPEG-XL or WebP-lossless stream; one image alone is always the classical
    file, as its bits-back file carries a whole dip of initial bits; bitsback; classical;
    webp: the WebP-lossless file), ``seed_images`` (images
    coded classically as the stack's initial bits; None: as many as the first
    batch's dip needs, see :func:`dip_bits`; 0: none) and ``exact`` (True, the default:
    the exact network and exact coding models, a file that decodes to the same pixels on
    any machine; False: the float32 network, faster, but a file that decodes only on
    this kind of device with this thread count and this software stack).
    """

    mode = "lossless"

    def __init__(self, model):
        super().__init__(model)
        coder.require()
        self._exact = False

    def _p(self, diffusion, x: torch.Tensor, k: int):
        """p_theta(x_{k-1} | x_k) for one batch x [B,C,H,W] (one network call): mean, std,
        log-scale (float64 [B,C,H,W]; None on the exact path) and the network output (for
        the bound)."""
        if self._exact:
            p = exact_network_p(self.model, diffusion, x, k, [(0, x.shape[0])])
            return p["mean"], p["std"], None, p["out"]
        p = network_p(self.model, diffusion, x, k, [(0, x.shape[0])])
        log_scale = 0.5 * p["log_variance"]
        return p["mean"], torch.exp(log_scale), log_scale, p["out"]

    # -- encoding --------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, steps: int | None = None,
               batch_size: int = DEFAULT_BATCH, seed: int = 0, progress: bool = False,
               grid_log2: int = DEFAULT_GRID_LOG2,
               support_sigmas: float = DEFAULT_SUPPORT_SIGMAS, chain=None,
               method: str = "auto", seed_images: int | None = None,
               exact: bool = True) -> Encoded:
        """Compress ``images``; see the class docstring for the options."""
        model = self.model
        self._exact = bool(exact)
        images, batch_size = start_encode(images, model, batch_size)
        if method not in METHODS:
            raise DDPMCodecError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        classical_ok = classical.supports(model.image_shape)
        if seed_images is not None and not 0 <= seed_images < len(images):
            raise DDPMCodecError(f"seed_images must be in 0..{len(images) - 1}, got {seed_images}")
        if seed_images and not classical_ok:
            raise DDPMCodecError("seed images are coded classically, which codes 1 or 3 channels")
        n = len(images)
        model_free = classical.model_free_file(images, method, model.image_shape)
        if model_free is not None:  # webp, classical, or one image
            return model_free
        codecs = classical.default_codecs()
        # the classical streams cost ~50 ms an image, the bits-back file seconds: always
        # weighed
        compare = method == "auto" and classical_ok
        with Timer() as classical_timer:
            streams = [classical.classical_stream(im, codecs) for im in images] if compare else []
        diffusion = self._chain(chain, steps)
        header = new_header("lossless", model, n, batch_size, seed, diffusion.timesteps,
                            container.pixel_checksum(images), exact=self._exact)
        LosslessParams(grid_log2, support_sigmas, 4, 0).validate(header)
        grids = latent_grids(diffusion, grid_log2, support_sigmas, exact=self._exact)
        dip = dip_bits(grids, header.dims)
        with Timer() as timer, deterministic(model.device, header.num_threads, self._exact):
            if seed_images is None:
                seed_images = seed_count(images, streams, dip, codecs) if classical_ok else 0
            for i in range(len(streams), seed_images):
                streams.append(classical.classical_stream(images[i], codecs))
            seeds = streams[:seed_images]
            enc = self._encode_bitsback(images, diffusion, grids, header, seeds, dip,
                                        (grid_log2, support_sigmas), progress)
        enc.stats.seconds = timer.seconds + classical_timer.seconds
        enc.stats.extra["bitsback_file_bytes"] = len(enc.data)
        if compare:
            alt = classical.ClassicalLosslessCodec.file(images, streams, enc.stats.seconds)
            enc.stats.extra["classical_file_bytes"] = len(alt.data)
            if len(alt.data) < len(enc.data):
                alt.stats.extra.update({k: enc.stats.extra[k] for k in (
                    "bitsback_file_bytes", "classical_file_bytes")})
                return alt
        return enc

    def _chain(self, chain, steps):
        model = self.model
        if chain is not None:
            if steps is not None and steps != chain.num_steps:
                raise DDPMCodecError(f"--steps {steps} disagrees with the {chain.num_steps}-step chain")
            check_chain(chain, model)
        elif steps is not None:
            chain = model.diffusion.with_steps(steps)
        else:
            chain = default_chain(model)
        # the file holds explicit variances quantized
        return exact_chain(chain, model) if self._exact else quantized_chain(chain, model)

    def _encode_bitsback(self, images, diffusion, grids, header, seeds, dip, grid, progress):
        model = self.model
        W = self._initial_estimate(grids, header.batch_size * header.dims)
        W_cap = max_initial_words(header.batch_size, header.dims)
        top, terminator = seed_words(seeds)
        while True:
            W = min(W, W_cap)
            base = initial_words(header.seed, W)
            init = np.concatenate([base, top])
            stack, bound, elbo, layout = self._encode_all(images, diffusion, grids, header, init,
                                                          len(base), len(seeds), dip, progress)
            if stack.low_water >= 3:  # two head words + one untouched word: never ran dry
                break
            if W == W_cap:
                raise DDPMCodecError("the bits-back stack ran dry; cannot encode these images")
            W *= 4
        final = stack.ans.words()
        P = min(common_prefix(final, base), W)
        m = len(seeds)
        if layout == tuple(b - a for a, b in header.batches()):
            layout = ()  # the header's batch size throughout: nothing to record
        rule, values = variance_rule_of(diffusion, model)
        params = LosslessParams(*grid, W, P, variance_rule=rule, variances=values,
                                seed_lengths=tuple(len(s) for s in seeds), layout=layout,
                                terminator=terminator, classical_seeds=any(
                                    classical.stream_codec(s) == "jxl" for s in seeds))
        header = dataclasses.replace(header, params=params.pack())
        try:
            params.validate(header).check_payload(header, len(final) - P)
        except DDPMCodecError as exc:  # not seen in practice: a decoder would refuse the file
            raise DDPMCodecError(f"cannot write a bits-back file of these images ({exc}); "
                                 f"use --method classical") from None
        payload = np.ascontiguousarray(final[P:], dtype="<u4").tobytes()
        data = container.pack(header, payload)
        net_bits = stack.ans.num_valid_bits() - coder.valid_bits(init)
        stats = _stats(header, params, len(payload), len(data), net_bits, 0.0)
        stats.bound_bits = float(bound[m:].sum())
        stats.extra.update(escapes=stack.escapes, bound_bits_per_image=bound[m:].tolist(),
                           elbo_bits=float(elbo[m:].sum()),
                           elbo_bits_per_image=elbo[m:].tolist(),
                           dip_bits_per_image_estimate=dip,
                           layout=list(params.batches(header)))
        return Encoded(data, header, stats)

    @staticmethod
    def _initial_estimate(grids: LatentGrids, symbols: int) -> int:
        """Words for three pops of one batch from the widest forward kernel (unconsumed
        initial words cost nothing: they are regenerated, not stored)."""
        per = np.log2(grids.q_std / grids.delta * math.sqrt(2 * math.pi * math.e)).max()
        return int(3 * symbols * (max(per, 1.0) + 1.0) / 32) + 1024

    def _encode_all(self, images, diffusion, grids, header, init, W, m, dip, progress):
        """Bits-back code images m..N-1 on the stack ``init`` (W seeded words, then the
        seeds' words). Each batch is as large as the stack above the seeded words can
        carry through its dip (``dip`` bits per image at first, then the dip measured on
        the batches so far), up to the header's batch size; the layout is recorded.
        Returns (stack, bound bits [N], sampled -ELBO bits [N], layout)."""
        from ddpmcodec.progress import progress_bar
        stack = ChainStack(init, header.seed, self._exact)
        base_bits = coder.valid_bits(init[:W])
        n = len(images)
        bound, elbo = np.zeros(n), np.zeros(n)
        layout, a, measured = [], m, 0.0
        with progress_bar((n - m) * diffusion.num_steps, "encode", "img-step",
                          enabled=progress) as bar:
            while a < n:
                above = stack.ans.num_valid_bits() - base_bits
                per = measured or dip
                size = max(1, min(header.batch_size, n - a, int(above // per)))
                before = stack.batch_low = stack.ans.num_words()
                bound[a:a + size], elbo[a:a + size] = self._encode_batch(
                    stack, diffusion, grids, images[a:a + size], a, bar)
                measured = max(measured, 32.0 * (before - stack.batch_low) / size)
                layout.append(size)
                a += size
        return stack, bound, elbo, tuple(layout)

    def _encode_batch(self, stack: ChainStack, diffusion, g: LatentGrids, pixels, start: int, bar):
        """Bit-Swap encoding of one batch (images start..); returns (bound, sampled -ELBO)
        bits per image."""
        x0 = to_model_space(pixels)
        B, K = x0.shape[0], diffusion.num_steps
        dims = x0[0].numel()
        kvec = lambda k: torch.full((B,), k, dtype=torch.long)  # noqa: E731
        # step 0: bits back from q(x_0 | x0), then the pixels with the decoder; the very
        # first pop reads the seeded words, which need no whitening
        q_mean = math.sqrt(1.0 - float(diffusion.betas[0])) * x0
        if start > 0:
            stack.whiten(whiten_count(g, 0, B * dims), start, 0)
        s_prev = stack.pop_q(q_mean, g.q_std[0], g.delta[0], int(g.pop_half[0]))
        x_prev = s_prev.to(torch.float64) * g.delta[0]
        elbo = sum_bits(normal_logpdf(x_prev, q_mean, g.q_std[0]))
        mean, std, log_scale, out = self._p(diffusion, x_prev, 0)
        levels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).reshape(-1)
        stack.push_pixels(levels, mean, log_scale, std)
        dec = vb_terms_bpd(diffusion, x0, x_prev, kvec(0), out)["vb"] * dims
        bound = dec.clone()
        elbo += dec
        bar.update(B)
        for k in range(1, K):
            q_mean = math.sqrt(1.0 - float(diffusion.betas[k])) * x_prev
            stack.whiten(whiten_count(g, k, B * dims), start, k)
            s_k = stack.pop_q(q_mean, g.q_std[k], g.delta[k], int(g.pop_half[k]))
            x_k = s_k.to(torch.float64) * g.delta[k]
            mean, std, _, out = self._p(diffusion, x_k, k)
            stack.push_p(s_prev, mean, std, g.delta[k - 1], int(g.push_half[k - 1]))
            bound += vb_terms_bpd(diffusion, x0, x_k, kvec(k), out)["vb"] * dims
            elbo += sum_bits(normal_logpdf(x_k, q_mean, g.q_std[k])
                              - normal_logpdf(x_prev, mean, std))
            s_prev, x_prev = s_k, x_k
            bar.update(B)
        stack.push_p(s_prev, 0.0, 1.0, g.delta[K - 1], int(g.push_half[K - 1]))
        elbo -= sum_bits(normal_logpdf(x_prev, 0.0, 1.0))
        bound += prior_bpd(diffusion, x0) * dims
        return bound.numpy(), elbo.numpy()

    # -- decoding --------------------------------------------------------------------------
    def decode(self, data: bytes, *, progress: bool = False) -> Decoded:
        header, payload = container.unpack(data)
        if header.model_free:  # the encoder's fallback: no network needed
            return get_codec(header.mode)(self.model).decode(data)
        check_compatible(header, self.model, self.mode)
        try:
            return self._decode(header, payload, len(data), progress)
        except DDPMCodecError as exc:
            raise DDPMCodecError(with_exact_v1_note(str(exc), header)) from None

    def _decode(self, header, payload: bytes, file_bytes: int, progress: bool) -> Decoded:
        from ddpmcodec.progress import progress_bar
        self._exact = is_exact(header)
        params = LosslessParams.unpack(header.params, header)
        if len(payload) % 4:
            raise DDPMCodecError("corrupt file: the lossless payload is not a whole number of words")
        if not payload:  # (a zero last word is refused by coder.Stack)
            raise DDPMCodecError("corrupt file: the lossless payload is empty")
        params.check_payload(header, len(payload) // 4)  # bounds all work by the file's size
        diffusion = chain_for(header, self.model, params.variance_rule, params.variances)
        grids = latent_grids(diffusion, params.grid_log2, params.support_sigmas, self._exact)
        # the regenerated words below the margin are never read: the stack starts there
        below = max(0, params.prefix_words - PREFIX_MARGIN_WORDS)
        base = initial_words(header.seed, params.initial_words, below)
        stored = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        final = np.concatenate([base[:params.prefix_words - below], stored])
        shape = tuple(header.image_shape)
        batches = params.batches(header)
        m = len(params.seed_lengths)
        decoded = []
        with Timer() as timer, deterministic(self.model.device, header.num_threads, self._exact):
            stack = ChainStack(final, header.seed, self._exact)
            with progress_bar((header.num_images - m) * diffusion.num_steps, "decode",
                              "img-step", enabled=progress) as bar:
                for a, b in reversed(batches):
                    self._check_enough_bits(stack, grids, (b - a) * header.dims)
                    decoded.append(self._decode_batch(stack, diffusion, grids, b - a, a, shape,
                                                      bar))
            rest = stack.ans.words()
            seeds = read_seeds(rest, base, params, shape)
        images = verify_pixels(np.concatenate(seeds + decoded[::-1]), header)
        net_bits = coder.valid_bits(final) - coder.valid_bits(rest)
        stats = _stats(header, params, len(payload), file_bytes, net_bits, timer.seconds)
        return Decoded(images, header, stats)

    @staticmethod
    def _check_enough_bits(stack: ChainStack, g: LatentGrids, symbols: int) -> None:
        """Before a batch: the encoder pushed its last latent with N(0, I) on a grid of
        width delta, at least -log2(max probability) bits per symbol, so the stack must
        hold that much. A header that claims more images than the payload can hold fails
        here, before any network runs, so decoding time is bounded by the file's size."""
        sigma = 1.0 / float(g.delta[-1])  # the prior's std in grid units
        per_symbol = -math.log2(min(1.0, 1.0 / (sigma * math.sqrt(2 * math.pi)) + 2.0 ** -23))
        if stack.ans.num_valid_bits() < symbols * per_symbol:
            raise DDPMCodecError("corrupt file: the payload is too short for the images its "
                                 "header announces")

    def _decode_batch(self, stack: ChainStack, diffusion, g: LatentGrids, B: int, start: int,
                      shape, bar):
        """The mirror image of _encode_batch (every operation undone in reverse order)."""
        K = diffusion.num_steps
        full = (B, *shape)
        dims = math.prod(shape)
        s_k = stack.pop_p(0.0, 1.0, g.delta[K - 1], int(g.push_half[K - 1]), full)
        x_k = s_k.to(torch.float64) * g.delta[K - 1]
        for k in range(K - 1, 0, -1):
            mean, std, _, _ = self._p(diffusion, x_k, k)
            s_prev = stack.pop_p(mean, std, g.delta[k - 1], int(g.push_half[k - 1]), full)
            x_prev = s_prev.to(torch.float64) * g.delta[k - 1]
            q_mean = math.sqrt(1.0 - float(diffusion.betas[k])) * x_prev
            stack.push_q(s_k, q_mean, g.q_std[k], g.delta[k], int(g.pop_half[k]))
            stack.whiten(whiten_count(g, k, B * dims), start, k)
            s_k, x_k = s_prev, x_prev
            bar.update(B)
        mean, std, log_scale, _ = self._p(diffusion, x_k, 0)
        levels = stack.pop_pixels(mean, log_scale, std)
        pixels = torch.from_numpy(levels.astype(np.uint8)).reshape(full)
        x0 = to_model_space(pixels.permute(0, 2, 3, 1).numpy())
        q_mean = math.sqrt(1.0 - float(diffusion.betas[0])) * x0
        stack.push_q(s_k, q_mean, g.q_std[0], g.delta[0], int(g.pop_half[0]))
        if start > 0:
            stack.whiten(whiten_count(g, 0, B * dims), start, 0)
        bar.update(B)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _stats(header: Header, params: LosslessParams, payload_bytes: int, file_bytes: int,
           net_bits: float, seconds: float) -> CodecStats:
    """Sizes of a bits-back file: the payload splits into the seeds' streams (side bits),
    the bits-back images' net bits and the rest (initial bits nobody paid back)."""
    payload_bits = 8 * payload_bytes
    side_bits = 8 * sum(params.seed_lengths)
    m = len(params.seed_lengths)
    return CodecStats(
        mode="lossless", num_images=header.num_images, dims=header.dims,
        num_steps=header.num_steps, payload_bits=payload_bits,
        header_bits=8 * (file_bytes - payload_bytes),
        initial_bits=float(payload_bits - net_bits - side_bits), bound_bits=params.bound_bits,
        seconds=seconds, side_bits=float(side_bits), net_images=header.num_images - m,
        extra={"method": "bitsback", "seed_images": m, "grid_log2": params.grid_log2,
               "support_sigmas": params.support_sigmas, "batch_size": header.batch_size,
               "initial_words": params.initial_words, "prefix_words": params.prefix_words,
               "device_kind": header.device_kind, "num_threads": header.num_threads})
