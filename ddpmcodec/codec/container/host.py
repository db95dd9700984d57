"""The device-kind and thread-count fields of formats 2 and 3: where a float32 file's
numbers were made (a one-byte code for the kinds of DEVICE_KINDS, else spelt out)."""
from __future__ import annotations

from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.limits import DEVICE_KINDS, MAX_DEVICE_CHARS
from ddpmcodec.errors import DDPMCodecError


def device_code(kind: str) -> int:
    """1.. for a kind of DEVICE_KINDS, 0 for one that is spelt out."""
    return DEVICE_KINDS.index(kind) + 1 if kind in DEVICE_KINDS else 0


def device_of_code(code: int) -> str:
    """The kind of a code 1..len(DEVICE_KINDS)."""
    if not 1 <= code <= len(DEVICE_KINDS):
        raise DDPMCodecError(f"header: unknown device kind code {code}")
    return DEVICE_KINDS[code - 1]


def write_device(w: BlobWriter, kind: str) -> None:
    code = device_code(kind)
    w.u8(code)
    if code == 0:
        w.varblob(kind.encode("ascii"))


def read_device(r: BlobReader) -> str:
    code = r.u8("device kind")
    if code == 0:
        raw = r.varblob("device kind", MAX_DEVICE_CHARS)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DDPMCodecError("header: device kind is not ASCII") from None
    return device_of_code(code)
