"""What the stack starts with: seeded pseudo-random words, and the classical streams
(JPEG-XL or WebP-lossless) of the first images (HiLLoC's seeds) that serve as its initial
bits."""
from __future__ import annotations

import numpy as np
import torch

from ddpmcodec.codec.lossless.params import LosslessParams
from ddpmcodec.core.rng import stream_keys
from ddpmcodec.core.splitmix import GAMMA, mix64_torch, signed64
from ddpmcodec.errors import DDPMCodecError

_INIT_STREAM = 0x1B17        # tag of the initial-words stream (any fixed number)
_GAMMA = signed64(GAMMA)


def _raw(keys: torch.Tensor, a: int, b: int) -> np.ndarray:
    """Words a..b-1 of :func:`ddpmcodec.core.rng.uniform_bits`'s stream (uint64):
    mix(key + (j+1) * gamma), computed for those counters only."""
    j = torch.arange(a + 1, max(a, b) + 1, dtype=torch.long)
    return mix64_torch(keys.unsqueeze(-1) + j * _GAMMA).numpy().view(np.uint64)


def initial_words(seed: int, n: int, start: int = 0) -> np.ndarray:
    """The seeded words the encoder's stack starts with: uint32 [n], last word nonzero
    (an ANS stack never ends in a zero word); with ``start``, only words start..n-1 of
    them, made without the others (word i < ceil(n/2) is the low half of the stream's
    i-th 64-bit number, word i >= ceil(n/2) the high half of number i - ceil(n/2))."""
    h = (n + 1) // 2
    keys = stream_keys(seed, torch.tensor(_INIT_STREAM))
    low = _raw(keys, min(start, h), h) & 0xFFFFFFFF
    high = _raw(keys, max(start, h) - h, n - h) >> 32
    words = np.concatenate([low, high]).astype(np.uint32)
    if len(words):
        words[-1] |= 1
    return words


def seed_count(images, streams, dip: float, codecs) -> int:
    """The fewest first images whose classical streams (of ``codecs``, appended to
    ``streams`` as they are made) carry one image's dip (a seed costs its classical size
    minus its bits-back size, ~0.2-0.5 bits/dim; an uncovered dip bit costs one bit). At
    most N - 1."""
    from ddpmcodec.codec.lossless.classical import classical_stream
    m, bits = 0, 0
    while m < len(images) - 1 and bits < dip:
        if m == len(streams):
            streams.append(classical_stream(images[m], codecs))
        bits += 8 * len(streams[m])
        m += 1
    return m


def seed_words(streams) -> tuple[np.ndarray, bool]:
    """The seeds' streams as uint32 stack words (zero-padded to whole words) and whether a
    terminating word 1 had to follow (an ANS stack never ends in a zero word)."""
    blob = b"".join(streams)
    blob += bytes(-len(blob) % 4)
    words = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
    if len(words) and words[-1] == 0:
        return np.append(words, np.uint32(1)), True
    return words, False


def read_seeds(rest: np.ndarray, base: np.ndarray, params: LosslessParams, shape) -> list:
    """What the decoder's stack holds at the end: the seeded words ``base`` (all of
    them, or the top ones its stack started on), then the seeds' words. Returns the seed
    images (uint8 [1, H, W, C] each)."""
    from ddpmcodec.codec.lossless.classical import classical_image
    from ddpmcodec.codec.lossless.webp import webp_image
    decode = classical_image if params.classical_seeds else webp_image
    W, total = len(base), sum(params.seed_lengths)
    expected = -(-total // 4) + int(params.terminator)
    if len(rest) != W + expected or not np.array_equal(rest[:W], base):
        raise DDPMCodecError("decoding failed: the stream does not end in its initial words "
                             "(corrupt file, or the network was evaluated differently)")
    top = rest[W:]
    if params.terminator and top[-1] != 1:
        raise DDPMCodecError("corrupt file: the seed images' words do not end as recorded")
    blob = np.ascontiguousarray(top[:-1] if params.terminator else top, dtype="<u4").tobytes()
    if any(blob[total:]):
        raise DDPMCodecError("corrupt file: the seed images' padding is not zero")
    out, a = [], 0
    c, h, w = shape
    for n in params.seed_lengths:
        out.append(decode(blob[a:a + n], shape).reshape(1, h, w, c))
        a += n
    return out


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n
