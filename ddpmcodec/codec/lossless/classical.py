"""Classical lossless streams: per image the shorter of its JPEG-XL codestream
(:mod:`.jxl`) and its WebP-lossless VP8L stream (:mod:`.webp`), as the lossless codec's
model-free file and as the seeds of its bits-back stack.

A stored stream says what it is by its first byte: a VP8L stream starts with its
signature 0x2F; a JPEG-XL codestream starts with ``FF 0A`` and is stored without the
``FF`` (so it starts with 0x0A, and one byte of every stream is saved). Both decode bit
for bit on any machine, the model-free file needs no network.

:class:`ClassicalLosslessCodec` is the model-free mode ``classical-lossless``: N stored
streams, the lengths of all but the last as varints, in a format 5 file (8 bytes of
container for one CIFAR-sized image, the 4-byte checksum of the decoded pixels among them).
Its one-image file is the image's JPEG-XL codestream plus 7 bytes (or its VP8L stream plus
8, when that is shorter).
"""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec.api import Encoded, Timer
from ddpmcodec.codec.lossless import jxl, webp
from ddpmcodec.codec.lossless.streams import StreamsCodec
from ddpmcodec.errors import DDPMCodecError

STREAM_CODECS = ("jxl", "webp")
_JXL_STORED = jxl.JXL_SIGNATURE[1]   # 0x0A: a JPEG-XL codestream without its first byte
_VP8L = 0x2F
LEAST_STREAM_BYTES = 2               # a stored stream: at least its first byte and one more


def default_codecs() -> tuple:
    """Both stream codecs, or WebP-lossless alone where imagecodecs has no libjxl."""
    return STREAM_CODECS if jxl.available() else ("webp",)


def supports(image_shape) -> bool:
    """Both codecs code 8-bit grey or RGB images."""
    return int(image_shape[0]) in (1, 3)


def classical_stream(image: np.ndarray, codecs=STREAM_CODECS) -> bytes:
    """The shortest stored stream of one uint8 [H, W, C] image over ``codecs`` (ties: the
    first named)."""
    best = None
    for name in codecs:
        if name == "jxl":
            s = jxl.jxl_stream(image)[1:]
        elif name == "webp":
            s = webp.webp_stream(image)
        else:
            raise DDPMCodecError(f"unknown stream codec {name!r}; known: {', '.join(STREAM_CODECS)}")
        if best is None or len(s) < len(best):
            best = s
    return best


def stream_codec(stored: bytes) -> str:
    """"jxl" or "webp", from a stored stream's first byte."""
    if len(stored) and stored[0] == _JXL_STORED:
        return "jxl"
    if len(stored) and stored[0] == _VP8L:
        return "webp"
    raise DDPMCodecError("corrupt file: a classical stream is neither JPEG-XL nor WebP-lossless")


def classical_image(stored: bytes, image_shape) -> np.ndarray:
    """Decode a stored stream to uint8 [H, W, C] of ``image_shape`` (C, H, W)."""
    if stream_codec(stored) == "jxl":
        return jxl.jxl_image(jxl.JXL_SIGNATURE[:1] + bytes(stored), image_shape)
    return webp.webp_image(stored, image_shape)


class ClassicalLosslessCodec(StreamsCodec):
    """The model-free mode: every image its shortest classical stream. encode option
    ``codecs``: the stream codecs to choose from (default both)."""

    mode = "classical-lossless"
    what = "classical streams"
    least_stream_bytes = LEAST_STREAM_BYTES

    def stream(self, image: np.ndarray, *, codecs=None, **options) -> bytes:
        return classical_stream(image, codecs or default_codecs())

    image = staticmethod(classical_image)

    @classmethod
    def extra(cls, streams: list[bytes]) -> dict:
        kinds = [stream_codec(s) for s in streams]
        return {"method": cls.mode, "jxl_streams": kinds.count("jxl"),
                "webp_streams": kinds.count("webp")}


def model_free_file(images: np.ndarray, method: str, image_shape) -> Encoded | None:
    """The lossless codec's file of uint8 [N, H, W, C] ``images`` (of the model's
    ``image_shape``, C, H, W) where ``method`` writes it without the network, else None:
    webp, the WebP-lossless file; classical, the classical file; auto of one image, the
    classical file too (one image has no seed, so its bits-back file would pay a whole dip,
    ~7 bits/dim, in initial bits: never the shorter). Needs neither the model nor torch,
    so a command that writes such a file starts at once."""
    from ddpmcodec.io.data import check_fits
    check_fits(images, image_shape)
    ok = supports(image_shape)
    if method in ("webp", "classical") and not ok:
        raise DDPMCodecError(f"the classical codecs code 1 or 3 channels, the model's "
                             f"images have {image_shape[0]}")
    if method == "webp":
        with Timer() as timer:
            streams = [webp.webp_stream(im) for im in images]
        return webp.WebPLosslessCodec.file(images, streams, timer.seconds)
    if method == "classical" or (method == "auto" and ok and len(images) == 1):
        codecs = default_codecs()
        with Timer() as timer:
            streams = [classical_stream(im, codecs) for im in images]
        return ClassicalLosslessCodec.file(images, streams, timer.seconds)
    return None
