"""WebP-lossless streams: the lossless codec's fallback and the seeds of its bits-back stack.

Pillow's WebP-lossless (libwebp, ``method=6``, the strongest setting) writes a RIFF file:
``b"RIFF" u32 size b"WEBP" b"VP8L" u32 n`` (20 bytes), the n-byte VP8L bitstream and a pad
byte when n is odd. Everything but the bitstream follows from n, so ddpmcodec stores only
the bitstream (:func:`webp_stream`) and rebuilds the file to decode it (:func:`webp_image`):
21 bytes of every image saved, which is what lets a one-image ddpmcodec file (15 bytes of
container) come out smaller than the WebP file of the same image.

:class:`WebPLosslessCodec` is the model-free mode ``webp-lossless``: N streams, their
lengths as varints (the last one implied), in a format 4 file whose header holds the
decoded pixels' checksum (files of format 2, with a payload CRC-32 instead, still decode).
The bits-back codec writes it when it is the shorter code (always for one image: see
:mod:`ddpmcodec.codec.lossless`), and puts the streams of its first images on its ANS
stack as initial bits (HiLLoC's seeding).

Bounded work. Every VP8L stream starts with a 5-byte header (signature 0x2f, width - 1 and
height - 1 in 14 bits each, an alpha hint and a 3-bit version): a file of N images holds
at least 6 N - 1 payload bytes (a stream and a length byte each), which is checked before
anything is read, and a stream whose header names another size than the file's is refused
before Pillow allocates its image. Pillow without WebP support (a build without libwebp)
is named as such, not as a corrupt file.
"""
from __future__ import annotations

import io
import struct

import numpy as np

from ddpmcodec.codec.lossless import streams as _streams
from ddpmcodec.codec.lossless.streams import pack_streams  # noqa: F401 - the file's layout
from ddpmcodec.errors import DDPMCodecError

WEBP_METHOD = 6  # libwebp's slowest and strongest lossless effort
_RIFF_BYTES = 20
VP8L_HEADER_BYTES = 5  # signature byte, then 32 bits of size, alpha and version
_VP8L_SIGNATURE = 0x2F
# what Pillow raises on bad image data (UnidentifiedImageError is an OSError)
_PIL_ERRORS = (OSError, SyntaxError, EOFError)
_NO_WEBP = ("this Pillow has no WebP support (it was built without libwebp), so it cannot "
            "{what} WebP-lossless streams; the file itself may be fine. Install a Pillow with "
            "WebP support: `pip install --force-reinstall pillow` (the wheels on PyPI include "
            "libwebp), or build Pillow with libwebp's development files installed")


def _require_webp(what: str) -> None:
    """DDPMCodecError, saying how to get it, when this Pillow lacks WebP support."""
    from PIL import features
    if not features.check("webp"):
        raise DDPMCodecError(_NO_WEBP.format(what=what))


def webp_stream(image: np.ndarray) -> bytes:
    """The VP8L bitstream of one uint8 [H, W, C] image (C = 1 or 3), WebP-lossless."""
    from PIL import Image
    if image.shape[-1] not in (1, 3):
        raise DDPMCodecError(f"WebP-lossless codes 1 or 3 channels, not {image.shape[-1]}")
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(
            buf, "WEBP", lossless=True, quality=100, method=WEBP_METHOD)
    except (KeyError, OSError):  # Pillow names no WEBP writer, or libwebp is absent
        _require_webp("write")
        raise
    data = buf.getvalue()
    n = struct.unpack("<I", data[16:20])[0] if len(data) >= _RIFF_BYTES else -1
    if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8L" or len(data) != _RIFF_BYTES + n + n % 2:
        raise DDPMCodecError("this libwebp does not write a plain VP8L file; cannot use WebP "
                             "streams")  # pragma: no cover - libwebp writes VP8X only for extras
    stream = data[_RIFF_BYTES:_RIFF_BYTES + n]
    if _riff(stream) != data:  # pragma: no cover - the layout above is the whole file
        raise DDPMCodecError("this libwebp's RIFF file cannot be rebuilt from its VP8L stream")
    return stream


def _riff(stream: bytes) -> bytes:
    n = len(stream)
    return (b"RIFF" + struct.pack("<I", 12 + n + n % 2) + b"WEBPVP8L" + struct.pack("<I", n)
            + stream + b"\0" * (n % 2))


def vp8l_size(stream: bytes) -> tuple[int, int]:
    """(width, height) from a VP8L stream's header; DDPMCodecError when it has none."""
    if len(stream) < VP8L_HEADER_BYTES or stream[0] != _VP8L_SIGNATURE:
        raise DDPMCodecError("corrupt file: a WebP-lossless stream does not start like one")
    bits = int.from_bytes(bytes(stream[1:VP8L_HEADER_BYTES]), "little")
    if bits >> 29:
        raise DDPMCodecError(f"corrupt file: a WebP-lossless stream of version {bits >> 29}")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1


def webp_image(stream: bytes, image_shape) -> np.ndarray:
    """Decode a VP8L bitstream to uint8 [H, W, C] of ``image_shape`` (C, H, W);
    DDPMCodecError when it is not one. Its size is checked before Pillow decodes it."""
    from PIL import Image
    c, h, w = (int(v) for v in image_shape)
    if vp8l_size(stream) != (w, h):
        raise DDPMCodecError(f"corrupt file: a WebP-lossless stream holds a "
                             f"{'x'.join(map(str, vp8l_size(stream)))} image, the file's "
                             f"size is {w}x{h}")
    try:
        with Image.open(io.BytesIO(_riff(bytes(stream))), formats=["WEBP"]) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except _PIL_ERRORS as exc:
        _require_webp("decode")
        raise DDPMCodecError(f"corrupt file: a WebP-lossless stream does not decode ({exc})") from None
    if arr.shape != (h, w, 3):
        raise DDPMCodecError(f"corrupt file: a WebP-lossless stream holds a {arr.shape} image, "
                             f"not {(h, w, 3)}")
    if c == 1:
        if not (arr[..., :1] == arr).all():
            raise DDPMCodecError("corrupt file: a grey image's WebP stream is not grey")
        return np.ascontiguousarray(arr[..., :1])
    return np.ascontiguousarray(arr)


def unpack_streams(data: bytes, count: int) -> list[bytes]:
    """The ``count`` VP8L streams of a webp-lossless payload (each at least its header)."""
    return _streams.unpack_streams(data, count, "WebP-lossless streams", VP8L_HEADER_BYTES)


class WebPLosslessCodec(_streams.StreamsCodec):
    """The model-free mode: every image a WebP-lossless stream."""

    mode = "webp-lossless"
    what = "WebP-lossless streams"
    least_stream_bytes = VP8L_HEADER_BYTES

    def stream(self, image: np.ndarray, **options) -> bytes:
        return webp_stream(image)

    image = staticmethod(webp_image)
