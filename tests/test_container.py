"""The container format: exact round trips of every field, and a clear DDPMCodecError for
every malformed, truncated, corrupted or hostile file."""
from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.container import (
    MAGIC,
    BlobReader,
    BlobWriter,
    Header,
    pack,
    pixel_checksum,
    unpack,
)
from ddpmcodec.errors import DDPMCodecError


def make_header(**over) -> Header:
    fields = dict(mode="lossless", fingerprint="0123456789abcdef", image_shape=(3, 32, 32),
                  num_images=5, batch_size=2, seed=7, num_timesteps=1000,
                  timesteps=container.evenly_spaced(1000, 20), device_kind="cpu:AVX2",
                  num_threads=2, pixel_checksum=bytes(range(16)), params=b"\x01\x02params")
    fields.update(over)
    return Header(**fields)


@pytest.mark.parametrize("timesteps", [tuple(range(1000)), container.evenly_spaced(1000, 20),
                                       (3, 10, 999), (999,)])
def test_round_trip_every_field(timesteps):
    h = make_header(timesteps=timesteps, mode="progressive", seed=(1 << 63) - 1)
    payload = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    data = pack(h, payload)
    h2, p2 = unpack(data)
    assert h2 == h
    assert p2 == payload
    assert len(data) == container.header_size(h) + len(payload)


def test_chain_encodings_are_compact():
    full = pack(make_header(timesteps=tuple(range(1000))), b"")
    even = pack(make_header(timesteps=container.evenly_spaced(1000, 100)), b"")
    explicit = pack(make_header(timesteps=tuple(range(0, 1000, 10))), b"")  # not evenly spaced
    assert len(full) == len(even) < 200
    assert len(explicit) == len(even) + 4 * 100


def test_evenly_spaced_matches_diffusion():
    from ddpmcodec.core.diffusion import spaced_timesteps
    for T, K in [(1000, 1), (1000, 2), (1000, 20), (1000, 100), (1000, 1000), (7, 3)]:
        assert list(container.evenly_spaced(T, K)) == spaced_timesteps(T, K)


def test_pixel_checksum_sees_every_byte_and_the_shape():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    c = pixel_checksum(imgs)
    flipped = imgs.copy()
    flipped[1, 3, 3, 2] ^= 1
    assert pixel_checksum(flipped) != c
    assert pixel_checksum(imgs.reshape(2, 4, 12, 1)) != c
    assert pixel_checksum(imgs.copy()) == c


@pytest.mark.parametrize("over, msg", [
    (dict(mode="lossy"), "mode"), (dict(fingerprint="xyz"), "fingerprint"),
    (dict(image_shape=(0, 32, 32)), "channels"), (dict(image_shape=(3, 5000, 32)), "height"),
    (dict(num_images=0), "number of images"), (dict(batch_size=6), "batch size"),
    (dict(seed=-1), "seed"), (dict(timesteps=(5, 5)), "timesteps"),
    (dict(timesteps=(1000,)), "timesteps"), (dict(device_kind=""), "device"),
    (dict(device_kind="cpu\n"), "device"), (dict(num_threads=5000), "num_threads"),
    (dict(pixel_checksum=b"short"), "checksum"),
    (dict(params=bytes(container.MAX_PARAMS_BYTES + 1)), "params"),
    (dict(image_shape=(16, 4096, 256), num_images=1 << 20), "total pixels"),
])
def test_invalid_headers_are_refused_before_writing(over, msg):
    with pytest.raises(DDPMCodecError, match=msg):
        pack(make_header(**over), b"")


def test_every_truncation_is_a_clear_error():
    data = pack(make_header(), b"payload bytes")
    for n in range(len(data)):
        with pytest.raises(DDPMCodecError):
            unpack(data[:n])
    with pytest.raises(DDPMCodecError, match="truncated or padded"):
        unpack(data + b"\x00")


def test_every_single_bit_flip_is_detected():
    data = bytearray(pack(make_header(), b"some payload"))
    for i in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(DDPMCodecError):
                unpack(bytes(bad))


def test_garbage_and_wrong_magic():
    rng = np.random.default_rng(2)
    for n in (0, 3, 8, 64, 4096):
        with pytest.raises(DDPMCodecError):
            unpack(bytes(rng.integers(0, 256, n, dtype=np.uint8)))
    with pytest.raises(DDPMCodecError, match="magic"):
        unpack(b"PK\x03\x04" + bytes(100))


def _forge(body: bytes, version: int = 1, payload: bytes = b"", payload_len=None) -> bytes:
    """A file with a hand-made header body and valid CRCs (a hostile, well-formed file)."""
    head = struct.pack("<HI", version, len(body)) + body
    plen = len(payload) if payload_len is None else payload_len
    return (MAGIC + head + struct.pack("<I", zlib.crc32(head)) +
            struct.pack("<QI", plen, zlib.crc32(payload)) + payload)


def _body(**over) -> bytes:
    h = make_header(**over)
    return container._write_body(h)


def test_hostile_but_checksummed_headers():
    ok = _body()
    unpack(_forge(ok))  # the forging helper itself makes valid files
    with pytest.raises(DDPMCodecError, match="version 9"):
        unpack(_forge(ok, version=9))
    # a header length far beyond the bound, without the bytes behind it
    huge = MAGIC + struct.pack("<HI", 1, 1 << 31)
    with pytest.raises(DDPMCodecError, match="at most"):
        unpack(huge)
    # an enormous payload length is compared with the bytes present, never allocated
    with pytest.raises(DDPMCodecError, match="truncated or padded"):
        unpack(_forge(ok, payload_len=(1 << 64) - 1))
    # field-level hostility with correct CRCs
    body = bytearray(ok)
    body[0] = 9  # mode
    with pytest.raises(DDPMCodecError, match="mode"):
        unpack(_forge(bytes(body)))
    # num_images = 2^32-1: rejected by the bound, not allocated
    off = 1 + 8 + 6
    body = bytearray(ok)
    body[off:off + 4] = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(DDPMCodecError, match="number of images"):
        unpack(_forge(bytes(body)))
    # an explicit chain claiming 2^32-1 timesteps
    w = BlobWriter().u8(1).raw(bytes(8)).u16(3).u16(32).u16(32).u32(1).u32(1).u64(0).u32(1000)
    w.u8(2).u32(0xFFFFFFFF)
    with pytest.raises(DDPMCodecError, match="num_steps"):
        unpack(_forge(w.getvalue()))
    # params length beyond its bound
    tail = BlobWriter().u8(3).raw(b"cpu").u16(1).raw(bytes(16)).u32(1 << 30).getvalue()
    w = BlobWriter().u8(1).raw(bytes(8)).u16(3).u16(32).u16(32).u32(1).u32(1).u64(0)
    w.u32(10).u8(0).u32(10).raw(tail)
    with pytest.raises(DDPMCodecError, match="params"):
        unpack(_forge(w.getvalue()))
    # a full chain whose K disagrees with T, trailing bytes inside the header
    w = BlobWriter().u8(1).raw(bytes(8)).u16(3).u16(32).u16(32).u32(1).u32(1).u64(0)
    w.u32(10).u8(0).u32(9)
    with pytest.raises(DDPMCodecError, match="full chain"):
        unpack(_forge(w.getvalue()))
    with pytest.raises(DDPMCodecError, match="trailing"):
        unpack(_forge(ok + b"\x00"))


def test_blob_reader_bounds():
    r = BlobReader(BlobWriter().u32(5).raw(b"abc").getvalue(), "params")
    with pytest.raises(DDPMCodecError, match="truncated"):
        r.blob("name", 100)
    r = BlobReader(BlobWriter().blob(b"abcdef").getvalue(), "params")
    with pytest.raises(DDPMCodecError, match="at most 4"):
        r.blob("name", 4)
    r = BlobReader(BlobWriter().u8(1).u16(2).u32(3).u64(4).f64(0.5).blob(b"xy").getvalue())
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.f64(), r.blob("b", 2)) == (1, 2, 3, 4, 0.5, b"xy")
    r.end()


def test_header_helpers():
    h = make_header(num_images=5, batch_size=2)
    assert h.batches() == [(0, 2), (2, 4), (4, 5)]
    assert h.num_batches == 3 and h.dims == 3072 and h.num_steps == 20
    s = h.summary()
    assert s["num_steps"] == 20 and s["pixel_checksum"] == bytes(range(16)).hex()
    assert dataclasses.replace(h, seed=8) != h
