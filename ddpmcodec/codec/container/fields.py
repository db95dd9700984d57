"""The bounded field helpers of the format and its checksums.

"v" in the format's tables is an unsigned LEB128 varint (7 bits a byte, low bits first,
shortest form only); integers are little-endian. :class:`BlobWriter` / :class:`BlobReader`
write and read the header and are what codecs use for their ``params`` blob and payload
framing (the one LEB128 implementation of the package). A reader bounds every size before
anything is allocated from it and raises :class:`DDPMCodecError` with a one-line reason.
"""
from __future__ import annotations

import binascii
import hashlib
import struct
import zlib

import numpy as np

from ddpmcodec.codec.container.limits import CHECKSUM_BYTES
from ddpmcodec.errors import DDPMCodecError


def crc32(data) -> int:
    """CRC-32 of bytes (or a buffer) as an unsigned 32-bit int: the checksum of payloads,
    progressive packets and the generator check."""
    return zlib.crc32(data) & 0xFFFFFFFF


def crc16(data) -> int:
    """CRC-16 (CCITT) of bytes: the header's checksum in format 2."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def pixel_checksum(images: np.ndarray, nbytes: int = CHECKSUM_BYTES) -> bytes:
    """``nbytes``-byte SHA-256 prefix over uint8 NHWC pixels (with their shape, so a
    reshaped array of the same bytes does not match)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DDPMCodecError(f"pixel checksums are over uint8 NHWC arrays, got {images.dtype} {images.shape}")
    h = hashlib.sha256(struct.pack("<4Q", *images.shape))
    h.update(images.tobytes())
    return h.digest()[:nbytes]


# -- bounded field helpers -----------------------------------------------------------------
class BlobWriter:
    """Appends little-endian fields to a bytearray."""

    def __init__(self):
        self.buf = bytearray()

    def u8(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<B", v)
        return self

    def u16(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<H", v)
        return self

    def u32(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<I", v)
        return self

    def u64(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<Q", v)
        return self

    def f64(self, v: float) -> "BlobWriter":
        self.buf += struct.pack("<d", v)
        return self

    def raw(self, b: bytes) -> "BlobWriter":
        self.buf += b
        return self

    def blob(self, b: bytes) -> "BlobWriter":
        """u32 length + bytes."""
        return self.u32(len(b)).raw(b)

    def uvar(self, v: int) -> "BlobWriter":
        """An unsigned LEB128 varint: 7 bits a byte, low bits first (0..127 in one byte)."""
        v = int(v)
        if not 0 <= v < 1 << 64:
            raise DDPMCodecError(f"varint out of range: {v}")
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)
        return self

    def svar(self, v: int) -> "BlobWriter":
        """A signed varint (zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...)."""
        v = int(v)
        return self.uvar(2 * v if v >= 0 else -2 * v - 1)

    def varblob(self, b: bytes) -> "BlobWriter":
        """varint length + bytes."""
        return self.uvar(len(b)).raw(b)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class BlobReader:
    """Reads little-endian fields with bounds checks; every failure is a DDPMCodecError
    naming ``what`` is being read."""

    def __init__(self, data: bytes, what: str = "data"):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def raw(self, n: int, name: str = "field") -> bytes:
        if n < 0 or n > self.remaining:
            raise DDPMCodecError(f"{self.what} is truncated (reading {name}: need {n} bytes, "
                                 f"{self.remaining} left)")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def _unpack(self, fmt: str, name: str):
        return struct.unpack(fmt, self.raw(struct.calcsize(fmt), name))[0]

    def u8(self, name="u8") -> int:
        return self._unpack("<B", name)

    def u16(self, name="u16") -> int:
        return self._unpack("<H", name)

    def u32(self, name="u32") -> int:
        return self._unpack("<I", name)

    def u64(self, name="u64") -> int:
        return self._unpack("<Q", name)

    def f64(self, name="f64") -> float:
        return self._unpack("<d", name)

    def uvar(self, name="varint") -> int:
        """An unsigned LEB128 varint of at most 64 bits, in its shortest form (so that
        every value has exactly one encoding)."""
        v = shift = 0
        for i in range(10):
            byte = self.u8(name)
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if (byte == 0 and i > 0) or v >= 1 << 64:
                    raise DDPMCodecError(f"{self.what}: {name} is not a valid varint")
                return v
        raise DDPMCodecError(f"{self.what}: {name} is not a valid varint")

    def svar(self, name="varint") -> int:
        u = self.uvar(name)
        return u >> 1 if not u & 1 else -((u + 1) >> 1)

    def varblob(self, name: str, max_len: int) -> bytes:
        n = self.uvar(f"{name} length")
        if n > max_len:
            raise DDPMCodecError(f"{self.what}: {name} claims {n} bytes (at most {max_len})")
        return self.raw(n, name)

    def bounded(self, name: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise DDPMCodecError(f"{self.what}: {name} = {value} is outside {lo}..{hi}")
        return value

    def blob(self, name: str, max_len: int) -> bytes:
        n = self.u32(f"{name} length")
        if n > max_len:
            raise DDPMCodecError(f"{self.what}: {name} claims {n} bytes (at most {max_len})")
        return self.raw(n, name)

    def end(self) -> None:
        if self.remaining:
            raise DDPMCodecError(f"{self.what} has {self.remaining} unexpected trailing byte(s)")
