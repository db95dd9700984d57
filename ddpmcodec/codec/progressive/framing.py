"""How a progressive payload is framed: the packets of formats 1-2 (a length, a check
and the range coder's words per coded step), the "more steps follow" marks of format 3's
single stream, and the checks of the latents after each coded step."""
from __future__ import annotations

import struct

import numpy as np
import torch

from ddpmcodec.codec import container
from ddpmcodec.codec.container import BlobReader
from ddpmcodec.codec.entropy import arith
from ddpmcodec.codec.progressive.params import END_BITS, PIXEL_CHECK_BYTES
from ddpmcodec.errors import DDPMCodecError

_LEB_MAX_BYTES = 5


# -- framing ---------------------------------------------------------------------------------
def _read_length(buf: bytes, pos: int) -> tuple[int, int] | None:
    """A packet length at ``pos``: (value, new position), or None when ``buf`` ends inside
    the number (a prefix); DDPMCodecError for a number longer than 5 bytes."""
    head = bytes(buf[pos:pos + _LEB_MAX_BYTES])
    if all(b & 0x80 for b in head):
        if len(head) < _LEB_MAX_BYTES:
            return None
        raise DDPMCodecError("corrupt file: a packet length is malformed")
    r = BlobReader(head, "corrupt file: a packet length")
    value = r.uvar("packet length")
    return value, pos + r.pos


def stream_words(data: bytes) -> np.ndarray:
    """The uint32 words of a framing-2 packet's stream: its bytes, most significant first,
    without the zero bytes that ended its last word (restored here)."""
    raw = bytes(data) + bytes(-len(data) % 4)
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def _packet_spans(payload: bytes, framing: int = 2) -> tuple[list[tuple[int, int]], str | None]:
    """(offset of the check value, offset just after the packet) of each whole packet from
    the start, and why the walk stopped short of the end (None when every byte is in a
    whole packet). DDPMCodecError for a malformed length."""
    spans, pos = [], 0
    check = 4 if framing == 1 else 2
    while pos < len(payload):
        got = _read_length(payload, pos)
        if got is None:
            return spans, "the payload ends inside a packet length"
        n, p = got
        end = p + check + (4 * n if framing == 1 else n)
        if end > len(payload):
            return spans, "a packet runs past the end of the payload"
        spans.append((p, end))
        pos = end
    return spans, None


def split_packets(payload: bytes, complete: bool = True,
                  framing: int = 2) -> list[tuple[int, np.ndarray]]:
    """The whole packets of a payload: [(latent check, uint32 words)]. In a complete
    payload every byte must belong to a packet; a prefix ends at its last whole packet."""
    spans, short = _packet_spans(payload, framing)
    if complete and short:
        raise DDPMCodecError(f"corrupt file: {short}")
    if framing == 1:
        return [(struct.unpack("<I", payload[p:p + 4])[0],
                 np.frombuffer(payload[p + 4:end], dtype="<u4").astype(np.uint32))
                for p, end in spans]
    return [(struct.unpack("<H", payload[p:p + 2])[0], stream_words(payload[p + 2:end]))
            for p, end in spans]


def packet_ends(payload: bytes, framing: int = 2) -> list[int]:
    """Payload byte offset just after each whole packet (for truncation points)."""
    return [end for _, end in _packet_spans(payload, framing)[0]]


def latent_crc(x: torch.Tensor, framing: int = 2) -> int:
    """Check value of float64 latents [N, C, H, W] (little-endian bytes): CRC-32 in
    framing 1, CRC-16 in framing 2 (it tells a decoder that went wrong from one that did
    not; a miss, 2^-16, leaves the pixel checksum at the end)."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f8")
    return container.crc32(arr.tobytes()) if framing == 1 else container.crc16(arr.tobytes())


def latent_check(x: torch.Tensor, bits: int) -> int:
    """The ``bits``-bit check (format 3) of float64 latents [N, C, H, W]: the low bits of
    their CRC-16 (up to 16 bits) or CRC-32."""
    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f8").tobytes()
    crc = container.crc16(data) if bits <= 16 else container.crc32(data)
    return crc & ((1 << bits) - 1)


def end_probs() -> np.ndarray:
    """P(more steps follow), P(the file ends) after a coded step that is not the chain's
    last: a file stopped by a target pays END_BITS once, a full one almost nothing."""
    end = 2.0 ** -END_BITS
    return np.array([1.0 - end, end])


def write_more(stream: arith.ArithEncoder, more: bool) -> None:
    stream.categorical(0 if more else 1, end_probs())


def pixel_check(images: np.ndarray) -> bytes:
    """The PIXEL_CHECK_BYTES an exact file's payload ends with, after its coded stream:
    the checksum of the uint8 NHWC mean reconstruction after its last coded step."""
    return container.pixel_checksum(images, PIXEL_CHECK_BYTES)


def stopped_size(stream: arith.ArithEncoder, s: int, K: int) -> int:
    """Payload bytes of the coded stream if the file ended after coded step s (its
    symbols are in ``stream``)."""
    saved = stream.checkpoint()
    if s + 1 < K:
        write_more(stream, False)
    size = stream.size()
    stream.restore(saved)
    return size
