"""Several images' streams in one payload: the lengths of all but the last as varints,
then the streams (the webp-lossless and classical-lossless files)."""
from __future__ import annotations

from ddpmcodec.codec.container import BlobReader, BlobWriter
from ddpmcodec.errors import DDPMCodecError


def pack_streams(streams: list[bytes]) -> bytes:
    """Lengths of all streams but the last (varints), then the streams."""
    w = BlobWriter()
    for s in streams[:-1]:
        w.uvar(len(s))
    for s in streams:
        w.raw(s)
    return w.getvalue()


def unpack_streams(data: bytes, count: int, what: str, least_bytes: int) -> list[bytes]:
    """The ``count`` streams of :func:`pack_streams`; each holds at least ``least_bytes``
    (its codec's header), so a payload too short for ``count`` of them is refused before
    anything is read."""
    least = (least_bytes + 1) * count - 1
    if len(data) < least:
        raise DDPMCodecError(f"corrupt file: {len(data)} bytes cannot hold {count} "
                             f"{what} (at least {least})")
    r = BlobReader(data, what)
    lengths = [r.bounded("stream length", r.uvar("stream length"), least_bytes, len(data))
               for _ in range(count - 1)]
    streams = [r.raw(n, "stream") for n in lengths]
    if r.remaining < least_bytes:
        raise DDPMCodecError(f"corrupt file: {what} are truncated")
    streams.append(r.raw(r.remaining, "stream"))
    return streams
