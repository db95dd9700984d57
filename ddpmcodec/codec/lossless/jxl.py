"""JPEG-XL lossless codestreams (libjxl through imagecodecs): the shortest classical code of
a small image, for the model-free file and the seeds of the bits-back stack.

A bare JPEG-XL codestream starts with the signature ``FF 0A`` and a SizeHeader (ISO/IEC
18181-1, read least significant bit first); :func:`jxl_size` reads the size from it, so a
stream whose size is not the file's is refused before libjxl allocates its image. Lossless
decoding is defined bit for bit by the standard, so a stream decodes to the same pixels
with any conforming decoder on any machine.

The encoder tries several efforts and keeps the shortest stream: at 32x32 libjxl's
highest effort is not its smallest (on CIFAR-10 test images 600-679: effort 9 averages
4.207 bits/dim, the shortest of efforts 5 to 9 per image 4.155).
"""
from __future__ import annotations

import numpy as np

from ddpmcodec.errors import DDPMCodecError

JXL_SIGNATURE = b"\xff\x0a"
JXL_EFFORTS = (5, 6, 7, 8, 9)   # each image keeps the shortest of these
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
_NO_JXL = ("JPEG-XL streams need imagecodecs with libjxl (`pip install imagecodecs`, "
           "whose wheels include it), which this Python lacks, so it cannot {what} them; "
           "the file itself may be fine")


def _codecs():
    try:
        import imagecodecs
    except ImportError:
        raise DDPMCodecError(_NO_JXL.format(what="read or write")) from None
    if not imagecodecs.JPEGXL.available:
        raise DDPMCodecError(_NO_JXL.format(what="read or write"))
    return imagecodecs


def available() -> bool:
    """Whether JPEG-XL streams can be written and read here."""
    try:
        _codecs()
    except DDPMCodecError:
        return False
    return True


def jxl_stream(image: np.ndarray, efforts=JXL_EFFORTS) -> bytes:
    """The shortest lossless JPEG-XL codestream of one uint8 [H, W, C] image (C = 1 or 3)
    over ``efforts`` (ties: the lower effort), single-threaded."""
    ic = _codecs()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise DDPMCodecError(f"JPEG-XL codes uint8 [H, W, 1 or 3] images here, got "
                             f"{image.dtype} {image.shape}")
    arr = np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)
    best = None
    for e in efforts:
        s = bytes(ic.jpegxl_encode(arr, lossless=True, effort=int(e), numthreads=1))
        if best is None or len(s) < len(best):
            best = s
    if best[:2] != JXL_SIGNATURE:  # pragma: no cover - imagecodecs writes bare codestreams
        raise DDPMCodecError("this imagecodecs writes JPEG-XL containers, not codestreams")
    return best


class _Bits:
    """Bits of a byte string, least significant bit of each byte first."""

    def __init__(self, data: bytes):
        self.value, self.pos, self.size = int.from_bytes(data, "little"), 0, 8 * len(data)

    def u(self, n: int) -> int:
        if self.pos + n > self.size:
            raise DDPMCodecError("corrupt file: a JPEG-XL stream ends inside its size header")
        v = (self.value >> self.pos) & ((1 << n) - 1)
        self.pos += n
        return v

    def side(self, div8: bool) -> int:
        if div8:
            return (self.u(5) + 1) * 8
        return self.u((9, 13, 18, 30)[self.u(2)]) + 1


def jxl_size(stream: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG-XL codestream's SizeHeader; DDPMCodecError when the
    stream does not start like one."""
    if bytes(stream[:2]) != JXL_SIGNATURE:
        raise DDPMCodecError("corrupt file: a JPEG-XL stream does not start like one")
    b = _Bits(bytes(stream[2:11]))  # a SizeHeader is at most 68 bits
    div8 = bool(b.u(1))
    height = b.side(div8)
    ratio = b.u(3)
    if ratio == 0:
        width = b.side(div8)
    else:
        num, den = _RATIOS[ratio]
        width = height * num // den
    return width, height


def jxl_image(stream: bytes, image_shape) -> np.ndarray:
    """Decode a JPEG-XL codestream to uint8 [H, W, C] of ``image_shape`` (C, H, W); its
    size is checked before libjxl decodes it, its channels and depth after."""
    c, h, w = (int(v) for v in image_shape)
    size = jxl_size(stream)
    if size != (w, h):
        raise DDPMCodecError(f"corrupt file: a JPEG-XL stream holds a {size[0]}x{size[1]} "
                             f"image, the file's size is {w}x{h}")
    ic = _codecs()
    try:
        arr = np.asarray(ic.jpegxl_decode(bytes(stream), numthreads=1))
    except (ic.JpegxlError, RuntimeError) as exc:  # what libjxl's wrapper
        # raises on a damaged stream (JpegxlError; "could not determine frame count" is a
        # plain RuntimeError)
        raise DDPMCodecError(f"corrupt file: a JPEG-XL stream does not decode ({exc})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.shape != (h, w, c):
        raise DDPMCodecError(f"corrupt file: a JPEG-XL stream holds a {arr.dtype} "
                             f"{arr.shape} image, not uint8 {(h, w, c)}")
    return np.ascontiguousarray(arr)
