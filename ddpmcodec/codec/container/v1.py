"""Format 1 (read only): an 8-byte magic b"\\x89DDPMC\\r\\n", fixed-width fields, the
whole fingerprint, a 16-byte pixel checksum and two CRC-32s (~130 bytes before any chain)."""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec.container.chains import CHAIN_EVEN, CHAIN_EXPLICIT, CHAIN_FULL, evenly_spaced
from ddpmcodec.codec.container.fields import BlobReader, crc32
from ddpmcodec.codec.container.header import Header
from ddpmcodec.codec.container.limits import (
    CHECKSUM_BYTES_V1, FINGERPRINT_BYTES, MAGIC_V1, MAX_DEVICE_CHARS, MAX_HEADER_BYTES,
    MAX_PARAMS_BYTES, MAX_TIMESTEPS, MODEL_FREE_MODES, SUPPORTED_VERSIONS, MODE_NAMES)
from ddpmcodec.errors import DDPMCodecError


# -- format 1 (read only) ------------------------------------------------------------------
def read_body(body: bytes) -> Header:
    r = BlobReader(body, "header")
    mode_id = r.u8("mode")
    if mode_id not in MODE_NAMES or MODE_NAMES[mode_id] in MODEL_FREE_MODES:
        raise DDPMCodecError(f"header: unknown codec mode {mode_id}")
    fp = r.raw(FINGERPRINT_BYTES, "fingerprint").hex()
    shape = (r.u16("channels"), r.u16("height"), r.u16("width"))
    n, batch, seed, T = r.u32("num_images"), r.u32("batch_size"), r.u64("seed"), r.u32("num_timesteps")
    r.bounded("num_timesteps", T, 1, MAX_TIMESTEPS)
    kind = r.u8("chain kind")
    K = r.bounded("num_steps", r.u32("num_steps"), 1, T)
    if kind == CHAIN_FULL:
        if K != T:
            raise DDPMCodecError(f"header: a full chain has {T} steps, not {K}")
        ts = tuple(range(T))
    elif kind == CHAIN_EVEN:
        ts = evenly_spaced(T, K)
    elif kind == CHAIN_EXPLICIT:
        ts = tuple(int(t) for t in np.frombuffer(r.raw(4 * K, "timesteps"), dtype="<u4"))
    else:
        raise DDPMCodecError(f"header: unknown chain kind {kind}")
    dev_len = r.bounded("device kind length", r.u8("device kind length"), 1, MAX_DEVICE_CHARS)
    dev_raw = r.raw(dev_len, "device kind")
    try:
        dev = dev_raw.decode("ascii")
    except UnicodeDecodeError:
        raise DDPMCodecError("header: device kind is not ASCII") from None
    threads = r.u16("num_threads")
    checksum = r.raw(CHECKSUM_BYTES_V1, "pixel checksum")
    params = r.blob("params", MAX_PARAMS_BYTES)
    r.end()
    return Header(MODE_NAMES[mode_id], fp, shape, n, batch, seed, T, ts, dev, threads,
                  checksum, params, 1).validate()


def read_head(data: bytes) -> tuple[Header, int, int, BlobReader]:
    r = BlobReader(data, "file")
    r.raw(len(MAGIC_V1), "magic")
    start = r.pos
    version = r.u16("format version")
    if version != 1:
        raise DDPMCodecError(f"file format version {version} is not supported by this ddpmcodec "
                             f"(it reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    body_len = r.u32("header length")
    if body_len > MAX_HEADER_BYTES:
        raise DDPMCodecError(f"file: header claims {body_len} bytes (at most {MAX_HEADER_BYTES})")
    body = r.raw(body_len, "header")
    head_crc = r.u32("header checksum")
    if crc32(data[start:start + 6 + body_len]) != head_crc:
        raise DDPMCodecError("corrupt file: the header checksum does not match")
    header = read_body(body)
    payload_len = r.u64("payload length")
    payload_crc = r.u32("payload checksum")
    return header, payload_len, payload_crc, r
