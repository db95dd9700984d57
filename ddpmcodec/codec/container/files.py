"""Whole files: a header and its payload packed together, and read back with every
check (magic, version, CRCs, lengths, trailing bytes) before a codec sees the payload."""
from __future__ import annotations

from ddpmcodec.codec.container import v1, v2, v3, v4, v5
from ddpmcodec.codec.container.fields import BlobReader, BlobWriter, crc16, crc32
from ddpmcodec.codec.container.header import Header
from ddpmcodec.codec.container.limits import (
    FORMAT_CLASSICAL, FORMAT_COMPACT, FORMAT_MODEL_FREE, FORMAT_VERSION, MAGIC, MAGIC_V1, MAX_FILE_BYTES, MODES,
    SUPPORTED_VERSIONS, MODE_NAMES)
from ddpmcodec.errors import DDPMCodecError


# -- the whole file ------------------------------------------------------------------------
_BODIES = {FORMAT_VERSION: v2, FORMAT_COMPACT: v3, FORMAT_MODEL_FREE: v4, FORMAT_CLASSICAL: v5}
# formats whose payload runs to the end of the file (it, or the pixels, check themselves)
_TO_THE_END = (FORMAT_COMPACT, FORMAT_CLASSICAL)


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload into the container bytes (format 2, 3, 4 or 5, as
    the header says)."""
    header.validate()
    if header.version not in _BODIES:
        raise DDPMCodecError(f"this ddpmcodec writes format versions "
                             f"{', '.join(map(str, _BODIES))} only")
    head = (MAGIC + bytes([header.version << 4 | MODES[header.mode]])
            + _BODIES[header.version].write_body(header))
    payload = bytes(payload)
    if header.version == FORMAT_COMPACT:
        return head + bytes([crc16(head) & 0xFF]) + payload
    if header.version == FORMAT_CLASSICAL:  # canonical, and its pixel checksum covers it
        return head + payload
    tail = BlobWriter().u16(crc16(head)).uvar(len(payload))
    if header.version == FORMAT_VERSION:  # format 4 checks the decoded pixels instead
        tail.u32(crc32(payload))
    return b"".join([head, tail.getvalue(), payload])


def header_size(header: Header, payload_bytes: int) -> int:
    """Bytes of a packed file that are not payload (the payload's length is among them)."""
    if header.version in _TO_THE_END:
        return len(pack(header, b""))
    return len(pack(header, b"")) - 1 + len(BlobWriter().uvar(payload_bytes).getvalue())


def _read_head(data: bytes) -> tuple[Header, int | None, int | None, BlobReader]:
    """Magic, version, header (CRC-checked and validated), payload length and CRC (None,
    None in formats 3 and 5: the payload runs to the end and checks itself, or the pixel
    checksum checks everything; the CRC is None in format 4, whose header holds the decoded
    pixels' checksum); the reader is left at the payload's first byte."""
    if data[:len(MAGIC_V1)] == MAGIC_V1:
        return v1.read_head(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise DDPMCodecError("not a ddpmcodec file (bad magic bytes)")
    r = BlobReader(data, "file")
    r.raw(len(MAGIC), "magic")
    vm = r.u8("format version")
    if vm >> 4 not in _BODIES:
        raise DDPMCodecError(f"file format version {vm >> 4} is not supported by this ddpmcodec "
                             f"(it reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    if vm & 0x0F not in MODE_NAMES:
        raise DDPMCodecError(f"header: unknown codec mode {vm & 0x0F}")
    # parse first (every size bounded), then check the CRC of exactly what was parsed;
    # a parse error in a damaged header reports the damage, not the field
    r.what = "header"
    compact_format = vm >> 4 == FORMAT_COMPACT
    try:
        header = _BODIES[vm >> 4].read_body(r, MODE_NAMES[vm & 0x0F])
    except DDPMCodecError as exc:
        if "truncated" in str(exc):
            raise DDPMCodecError(f"file is truncated ({exc})") from None
        raise DDPMCodecError(f"corrupt file: the header is damaged ({exc})") from None
    end = r.pos
    r.what = "file"
    if vm >> 4 == FORMAT_CLASSICAL:
        return header, None, None, r
    if compact_format:
        if r.u8("header checksum") != crc16(data[:end]) & 0xFF:
            raise DDPMCodecError("corrupt file: the header checksum does not match")
        return header, None, None, r
    if r.u16("header checksum") != crc16(data[:end]):
        raise DDPMCodecError("corrupt file: the header checksum does not match")
    payload_len = r.uvar("payload length")
    payload_crc = r.u32("payload checksum") if header.version == FORMAT_VERSION else None
    return header, payload_len, payload_crc, r


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate container bytes -> (header, payload). DDPMCodecError on anything
    wrong; the payload's CRC (format 2) is checked here, its content is the codec's
    business (and the pixel checksum of a format 4 file the codec's to verify)."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
    if payload_len is None:
        return header, r.raw(r.remaining, "payload")
    if payload_len != r.remaining:
        raise DDPMCodecError(f"file is truncated or padded: the header announces a payload of "
                             f"{payload_len} bytes, {r.remaining} follow")
    payload = r.raw(payload_len, "payload")
    if payload_crc is not None and crc32(payload) != payload_crc:
        raise DDPMCodecError("corrupt file: the payload checksum does not match")
    return header, payload


def read_header(data: bytes) -> Header:
    """Only the validated header (still checks the payload's length and CRC)."""
    return unpack(data)[0]


def unpack_prefix(data: bytes) -> tuple[Header, bytes, bool]:
    """Parse a file that may be cut short after its header -> (header, available payload
    bytes, complete; None in format 3, whose payload has no length). For codecs whose payload decodes from any prefix (progressive):
    the header must be whole and valid (its CRC is checked); the payload's CRC is checked
    only when the file is complete, and then a mismatch is an error as in :func:`unpack`.
    A prefix's content is the codec's to verify."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
    if payload_len is None:  # formats 3 and 5: whether the payload is whole is the codec's to say
        return header, r.raw(r.remaining, "payload"), None
    if r.remaining > payload_len:
        raise DDPMCodecError(f"file is padded: the header announces a payload of "
                             f"{payload_len} bytes, {r.remaining} follow")
    complete = r.remaining == payload_len
    payload = r.raw(r.remaining, "payload")
    if complete and payload_crc is not None and crc32(payload) != payload_crc:
        raise DDPMCodecError("corrupt file: the payload checksum does not match")
    return header, payload, complete


def read_file(path) -> bytes:
    """The bytes of a compressed file, with clear errors (missing, not ours, too large)."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise DDPMCodecError(f"no such file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(MAGIC_V1))
        if start != MAGIC_V1 and start[:len(MAGIC)] != MAGIC:
            raise DDPMCodecError(f"{path} is not a ddpmcodec file (bad magic bytes)")
        if size > MAX_FILE_BYTES:
            raise DDPMCodecError(f"{path} is {size} bytes, more than this reader accepts")
        f.seek(0)
        return f.read()
