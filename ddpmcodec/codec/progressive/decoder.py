"""The progressive decoder: a file or any prefix of it parsed and checked before any
network runs (:func:`open_source`), then its coded steps regenerated one by one, each
verified against the encoder's check (:func:`decoded_steps`).

A prefix is what ``max_bytes`` (--bytes) asks for: then the bytes decode to the coded
steps they determine. Without it the bytes are the whole file, and a stream that ends
before the file's last coded step (a cut or damaged file) is an error, never a shorter
prefix passed off as the file. Before any array is made, the payload must hold at least
one bit per image (every coded step after the first costs each image at least 1.4 bits,
its variance level or its KL; the encoder never writes a file below the bound), so that
memory and time are bounded by the file's size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.codec import container
from ddpmcodec.codec.checks import check_compatible, is_exact, with_exact_v1_note
from ddpmcodec.codec.entropy import arith, coder
from ddpmcodec.codec.network import chain_for
from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.framing import (
    end_probs, latent_check, latent_crc, packet_ends, split_packets)
from ddpmcodec.codec.progressive.levels import level_kl_hint, level_octave_probs, level_variance
from ddpmcodec.codec.progressive.params import (
    LEVELS_PER_NAT, LEVELS_PER_NAT_COMPACT, MAX_LATENT_VALUES, MAX_LEVEL_EXPONENT,
    MAX_LEVEL_NATS, PIXEL_CHECK_BYTES, ProgressiveParams)
from ddpmcodec.codec.progressive.pixels import decoder_p, read_pixels
from ddpmcodec.codec.progressive.steps import step_plan
from ddpmcodec.errors import DDPMCodecError


@dataclass
class Source:
    """A parsed file or prefix: its header and parameters, the payload bytes present, the
    header's size, how many coded steps to decode at most, the whole packets of a format
    1-2 file (None: format 3's single stream), and what decoding found out."""

    header: container.Header
    params: ProgressiveParams
    payload: bytes
    hsize: int
    limit: int
    packets: list | None
    complete: bool | None
    whole: bool = True  # the bytes are the whole file (no max_bytes): it must end as one
    steps: int = 0   # coded steps decoded so far
    used: int = 0    # payload bytes that hold them
    pixel_check: bytes | None = None  # an exact file's, read after its last coded step
    pixels: np.ndarray | None = None  # a lossless file's exact pixels (uint8 NHWC), once read

    @property
    def exact(self) -> bool:
        """Coded with the exact network: every number is computed by IEEE operations."""
        return is_exact(self.header)

    def ended(self, where: str) -> None:
        """The stream ran out of bytes ``where``: a prefix ends there; a whole file may not."""
        if self.whole:
            raise DDPMCodecError(
                f"the file ends {where} of {self.header.num_steps} (it is cut short or "
                f"damaged); to decode the coded steps a prefix holds, give --bytes "
                f"{self.hsize + len(self.payload)}")


def open_source(model, data: bytes, upto_step: int | None, max_bytes: int | None) -> "Source":
    """Parse and check a file or prefix, before any network runs."""
    whole = max_bytes is None
    data = bytes(data)
    if whole:  # every check of a complete file: lengths, payload CRC (formats 1-2)
        header, payload = container.unpack(data)
        complete = True if header.version != container.FORMAT_COMPACT else None
    else:
        if max_bytes < 1:
            raise DDPMCodecError(f"--bytes must be positive, got {max_bytes}")
        data = data[:max_bytes]
        header, payload, complete = container.unpack_prefix(data)
    check_compatible(header, model, "progressive")
    if header.num_images > 8 * len(payload):
        raise DDPMCodecError(
            f"{'corrupt file: the header' if whole else 'the file prefix is too short: its header'}"
            f" claims {header.num_images} images, which {len(payload)} payload byte(s) "
            f"cannot hold (a progressive file holds at least one bit per image)")
    stream = header.version == container.FORMAT_COMPACT
    if stream and not header.params:
        params = ProgressiveParams.defaults()
    else:
        params = ProgressiveParams.unpack(header.params, header.num_steps)
        if not params.generator_matches():
            raise DDPMCodecError(
                f"this file's candidate generator ({params.generator}) does not reproduce "
                f"here (numpy or math library differs from the encoder's); decode where it "
                f"was encoded")
    K = header.num_steps
    if header.num_images * header.dims > MAX_LATENT_VALUES:
        raise DDPMCodecError(f"the file claims {header.num_images} images of {header.dims} values: "
                             f"more than one progressive file holds (at most {MAX_LATENT_VALUES} values)")
    if header.timesteps[0] != 0 or header.timesteps[-1] != header.num_timesteps - 1:
        raise DDPMCodecError("header: a progressive chain runs from t = 0 to T - 1")
    if upto_step is not None and not 1 <= upto_step <= K:
        raise DDPMCodecError(f"--upto-step must be between 1 and {K}, got {upto_step}")
    hsize = len(data) - len(payload)
    packets = None
    if not stream:
        packets = split_packets(payload, complete, params.framing)
        expected = params.coded_steps or K
        if len(packets) > expected or (complete and len(packets) != expected):
            raise DDPMCodecError(f"corrupt file: {len(packets)} coded steps, the header "
                                 f"announces {expected}")
        packets = packets[:upto_step]
        complete = bool(complete and len(packets) == expected)
        if not packets:
            raise DDPMCodecError(
                f"the file prefix ({len(data)} bytes) holds no whole coded step; the header "
                f"alone is {hsize} bytes")
    return Source(header, params, payload, hsize, upto_step or K, packets, complete, whole)


def decoded_steps(model, src: "Source", bar=None):
    """Yield (coded step s, latents x float64 [N, C, H, W], chain step k of x, payload
    bytes that hold the steps so far), each verified against the encoder's check; set
    ``src.complete`` when the file's last step was read, and ``src.pixels`` when a
    lossless file's pixels were. Run inside :func:`deterministic`."""
    header, params = src.header, src.params
    diffusion = chain_for(header, model, params.chain_rule, params.chain_variances)
    n, dims, K = header.num_images, header.dims, header.num_steps
    batches = header.batches()
    index_model = ch.IndexModel(params.channel, exact=src.exact)
    last_level: list = [None] * n
    if src.packets is not None:
        ends = packet_ends(src.payload, params.framing)
        readers = ((ch.SymbolReader(coder.QueueReader(words)), crc)
                   for crc, words in src.packets)
    else:
        stream = arith.ArithDecoder(src.payload)
        reader = ch.SymbolReader(stream)
    x = None
    for s in range(src.limit if src.packets is None else len(src.packets)):
        if src.packets is not None:
            reader, crc = next(readers)
        elif s > 0:
            more = _more(stream)
            if more is None:
                src.ended(f"after coded step {s}")
                return
            if not more:
                finish(src, stream)
                return
        plan = step_plan(model, diffusion, s, x, batches, n, dims, src.exact)
        got = _step_latents(src, reader, plan, s, last_level, index_model, bar)
        if got is None:  # (raised outside the except: running out of bytes is no bug)
            src.ended(f"inside coded step {s + 1}")
            return
        x = torch.from_numpy(got[0]).reshape(n, *header.image_shape)
        ok = (latent_crc(x, params.framing) == crc if src.packets is not None
              else latent_check(x, params.check_bits) == got[1])
        if not ok:
            raise DDPMCodecError(with_exact_v1_note(
                f"decoding failed at coded step {s + 1}: the latents do not match the "
                f"encoder's (corrupt file, or a different device, library or model "
                f"evaluated the network)", header))
        used = ends[s] if src.packets is not None else stream.bytes_used()
        src.steps, src.used = s + 1, used
        yield s, x, K - 1 - s, used
    if src.packets is None and src.limit == K:
        if params.lossless:
            mean, std, _ = decoder_p(model, diffusion, x, batches)
            try:
                pixels = read_pixels(stream, mean, std, header.image_shape)
            except arith.Exhausted:  # a prefix: its coded steps
                src.ended(f"inside the lossless layer after coded step {K}")
                return
            src.pixels = pixels
            src.used = stream.bytes_used()
        finish(src, stream)


def _step_latents(src: "Source", reader, plan, s: int, last_level: list, index_model, bar):
    """Coded step s of every image from ``reader``: (latents float64 [N, dims], the step's
    check in format 3, else None), or None when the bytes end first."""
    header, params = src.header, src.params
    n, dims = header.num_images, header.dims
    per_nat = LEVELS_PER_NAT if src.packets is not None else LEVELS_PER_NAT_COMPACT
    x_new = np.empty((n, dims))
    try:
        for i in range(n):
            var_p, hint = plan.var_p[i], plan.kl_hint
            if s > 0 and params.variance == "fit":
                level = reader.exp_golomb(MAX_LEVEL_EXPONENT, level_octave_probs(last_level[i]))
                if level > MAX_LEVEL_NATS * per_nat:
                    raise DDPMCodecError(f"corrupt file: a variance level of {level} at coded step {s + 1}")
                last_level[i] = level
                var_p = np.full(dims, level_variance(plan.var_q, level, per_nat, src.exact))
                hint = level_kl_hint(level, dims, per_nat)
            x_new[i] = ch.decode_gaussian(reader, plan.mean_p[i], var_p, params.channel,
                                          header.seed, (i, s), hint, index_model)
            if bar is not None:
                bar.update(1)
        check = reader.uniform_bits(params.check_bits) if src.packets is None else None
    except arith.Exhausted:
        return None
    return x_new, check


def _more(stream: arith.ArithDecoder) -> bool | None:
    """Whether more coded steps follow (None: the bytes end before the mark says)."""
    try:
        return stream.categorical(end_probs()) == 0
    except arith.Exhausted:
        return None


def finish(src: "Source", stream: arith.ArithDecoder) -> None:
    """The stream's last symbol is read: the file is complete, and nothing may follow
    but an exact file's pixel check (PIXEL_CHECK_BYTES, kept in ``src.pixel_check``)."""
    used = stream.bytes_used()
    tail = len(src.payload) - used
    if src.exact:
        if tail < PIXEL_CHECK_BYTES:
            if src.whole:
                raise DDPMCodecError(
                    f"the file ends {max(tail, 0)} byte(s) into its {PIXEL_CHECK_BYTES}-byte "
                    f"pixel check (it is cut short or damaged); to decode the coded steps it "
                    f"holds, unchecked, give --bytes {src.hsize + len(src.payload)}")
            return  # a prefix that ends inside the check: the coded steps, unchecked
        src.pixel_check = bytes(src.payload[used:used + PIXEL_CHECK_BYTES])
        src.used = used + PIXEL_CHECK_BYTES
        tail -= PIXEL_CHECK_BYTES
    if tail:
        raise DDPMCodecError(f"corrupt file: {tail} byte(s) after the end of the coded stream")
    src.complete = True


def check_decoded_any(src: "Source", data_len: int) -> None:
    if src.steps == 0:
        raise DDPMCodecError(
            f"the file prefix ({data_len} bytes) holds no whole coded step; the header "
            f"alone is {src.hsize} bytes")
