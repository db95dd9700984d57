"""The container format: exact round trips of every field, and a clear DDPMCodecError for
every malformed, truncated, corrupted or hostile file."""
from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.container import v2
from ddpmcodec.codec.container import BlobReader, BlobWriter, Header, MAGIC, pack, pixel_checksum, unpack
from ddpmcodec.errors import DDPMCodecError


def make_header(**over) -> Header:
    fields = dict(mode="lossless", fingerprint="0123abcd", image_shape=(3, 32, 32),
                  num_images=5, batch_size=2, seed=7, num_timesteps=1000,
                  timesteps=container.evenly_spaced(1000, 20), device_kind="cpu:AVX2",
                  num_threads=2, pixel_checksum=bytes(range(4)), params=b"\x01\x02params")
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
    assert len(data) == container.header_size(h, len(payload)) + len(payload)


def test_chain_encodings_are_compact():
    full = pack(make_header(timesteps=tuple(range(1000))), b"")
    even = pack(make_header(timesteps=container.evenly_spaced(1000, 100)), b"")
    explicit = pack(make_header(timesteps=tuple(range(0, 1000, 10))), b"")  # not evenly spaced
    assert len(full) == len(even) + 1  # K = 1000 takes a 2-byte varint, K = 100 one byte
    assert len(even) < 40
    assert len(explicit) == len(even) + 100  # a one-byte gap per step
    far = pack(make_header(timesteps=(0, 1, 999)), b"")
    assert len(far) == len(even) + 4  # 0, 0, 997 (two bytes)


def test_default_header_is_a_few_bytes():
    """The whole framing of a default file: magic, version, model id, shape, counts, chain,
    device, threads, pixel checksum, params length, header CRC, payload length and CRC."""
    h = make_header(timesteps=container.evenly_spaced(1000, 10), seed=0, params=b"")
    assert container.header_size(h, 1000) == 32
    free = container.model_free_header("webp-lossless", (3, 32, 32), 1)
    assert container.header_size(free, 1000) == 15
    data = pack(free, b"x" * 1000)
    assert unpack(data) == (free, b"x" * 1000)


def test_varints_round_trip_and_are_canonical():
    values = [0, 1, 127, 128, 300, (1 << 32) - 1, (1 << 64) - 1]
    w = BlobWriter()
    for v in values:
        w.uvar(v).svar(-v // 2).svar(v // 2)
    r = BlobReader(w.getvalue())
    assert [(r.uvar(), r.svar(), r.svar()) for _ in values] == [(v, -v // 2, v // 2) for v in values]
    r.end()
    for bad in (b"\x80\x00", b"\xff" * 10 + b"\x01", b"\x80"):
        with pytest.raises(DDPMCodecError):
            BlobReader(bad).uvar()
    with pytest.raises(DDPMCodecError):
        BlobWriter().uvar(-1)


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
    (dict(mode="lossy"), "mode"), (dict(fingerprint="xyz"), "model id"),
    (dict(image_shape=(0, 32, 32)), "channels"), (dict(image_shape=(3, 5000, 32)), "height"),
    (dict(num_images=0), "number of images"), (dict(batch_size=6), "batch size"),
    (dict(seed=-1), "seed"), (dict(timesteps=(5, 5)), "timesteps"),
    (dict(timesteps=(1000,)), "timesteps"), (dict(device_kind=""), "device"),
    (dict(device_kind="cpu\n"), "device"), (dict(num_threads=5000), "num_threads"),
    (dict(pixel_checksum=b"short"), "checksum"), (dict(fingerprint="0123456789abcdef"), "model id"),
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


def _forge(body: bytes, mode: int = 1, version: int = 2, payload: bytes = b"",
           payload_len=None) -> bytes:
    """A file with a hand-made header body and valid CRCs (a hostile, well-formed file)."""
    head = MAGIC + bytes([version << 4 | mode]) + body
    plen = len(payload) if payload_len is None else payload_len
    return (head + struct.pack("<H", container.crc16(head)) + BlobWriter().uvar(plen).getvalue()
            + struct.pack("<I", zlib.crc32(payload)) + payload)


def _body(**over) -> bytes:
    return v2.write_body(make_header(**over))


def _fields(n=1, batch=1, T=1000) -> BlobWriter:
    """model id, shape, N, batch, seed, T of a hand-made body."""
    return BlobWriter().raw(bytes(4)).uvar(3).uvar(32).uvar(32).uvar(n).uvar(batch).uvar(0).uvar(T)


def test_hostile_but_checksummed_headers():
    ok = _body()
    unpack(_forge(ok))  # the forging helper itself makes valid files
    with pytest.raises(DDPMCodecError, match="version 9"):
        unpack(_forge(ok, version=9))
    with pytest.raises(DDPMCodecError, match="mode"):
        unpack(_forge(ok, mode=9))
    # an enormous payload length is compared with the bytes present, never allocated
    with pytest.raises(DDPMCodecError, match="truncated or padded"):
        unpack(_forge(ok, payload_len=(1 << 64) - 1))
    # num_images = 2^32-1: rejected by the bound, not allocated
    with pytest.raises(DDPMCodecError, match="number of images"):
        unpack(_forge(_fields(n=(1 << 32) - 1).getvalue()))
    # an explicit chain claiming 2^32-1 timesteps
    with pytest.raises(DDPMCodecError, match="num_steps"):
        unpack(_forge(_fields().u8(2).uvar((1 << 32) - 1).getvalue()))
    # explicit timesteps that run past T
    with pytest.raises(DDPMCodecError, match="timestep"):
        unpack(_forge(_fields().u8(2).uvar(2).uvar(500).uvar(600).getvalue()))
    # params length beyond its bound
    tail = BlobWriter().u8(2).uvar(1).raw(bytes(4)).uvar(1 << 30).getvalue()
    with pytest.raises(DDPMCodecError, match="params"):
        unpack(_forge(_fields().u8(1).uvar(10).raw(tail).getvalue()))
    # an unknown device code, a full chain whose K disagrees with T
    with pytest.raises(DDPMCodecError, match="device"):
        unpack(_forge(_fields().u8(1).uvar(10).u8(200).getvalue()))
    with pytest.raises(DDPMCodecError, match="full chain"):
        unpack(_forge(_fields(T=10).u8(0).uvar(9).getvalue()))
    # bytes after the header that are not a valid payload framing
    with pytest.raises(DDPMCodecError):
        unpack(_forge(ok + b"\x00"))
    # a model-free header with a model field is refused before writing
    free = container.model_free_header("webp-lossless", (3, 32, 32), 1)
    with pytest.raises(DDPMCodecError, match="no model fields"):
        pack(dataclasses.replace(free, seed=1), b"")


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
    assert s["num_steps"] == 20 and s["pixel_checksum"] == bytes(range(4)).hex()
    assert dataclasses.replace(h, seed=8) != h


def test_compact_header_fields_and_damage():
    """Format 3: 8 bytes at the presets; every field away from its preset is spelt out and
    read back; a cut or damaged header, unknown flags and other modes are clear errors."""
    base = container.Header("progressive", "abcd", (3, 32, 32), 1, 1, 0, 1000,
                            container.geometric_timesteps(1000, 16), "cpu:AVX2", 2, b"", b"",
                            container.FORMAT_COMPACT).validate()
    assert len(container.pack(base, b"")) == 8
    variants = [dict(image_shape=(1, 64, 48)), dict(num_images=40, batch_size=8),
                dict(seed=12345), dict(num_timesteps=4000, timesteps=(0, 5, 3999)),
                dict(timesteps=container.geometric_timesteps(1000, 20)),
                dict(timesteps=(0, 7, 999)), dict(params=b"\x01\x02"),
                dict(device_kind="cuda:NVIDIA H200"), dict(num_threads=31),
                dict(num_threads=32), dict(num_threads=0), dict(device_kind="cpu:SVE256")]
    for v in variants:
        h = dataclasses.replace(base, **v).validate()
        data = container.pack(h, b"payload")
        assert container.unpack(data) == (h, b"payload")
        assert container.unpack_prefix(data) == (h, b"payload", None)
        head = container.header_size(h, 0)
        with pytest.raises(DDPMCodecError):
            container.unpack(data[:head - 1])
        for i in range(head):  # every single-bit error in the header is caught (the
            for bit in range(8):  # 8-bit check misses bursts of 3+ bits at about 2^-9)
                bad = bytearray(data)
                bad[i] ^= 1 << bit
                with pytest.raises(DDPMCodecError):
                    container.unpack(bytes(bad))
    geometric = dataclasses.replace(base, timesteps=container.geometric_timesteps(1000, 20))
    assert len(container.pack(geometric, b"")) == 10  # flag, chain kind, K
    # device and threads in one byte while they fit; else the code byte and a varint
    assert len(container.pack(dataclasses.replace(base, num_threads=32), b"")) == 9
    # a header written before flag bit 6 (code byte, threads varint) still reads
    old = (container.MAGIC + bytes([container.FORMAT_COMPACT << 4 | container.MODES["progressive"]])
           + bytes.fromhex("abcd") + bytes([0, container.DEVICE_KINDS.index("cpu:AVX2") + 1, 2]))
    old += bytes([container.crc16(old) & 0xFF])
    assert container.unpack(old + b"xy") == (base, b"xy")
    flags = bytearray(container.pack(base, b""))
    flags[5] = 0xC0
    with pytest.raises(DDPMCodecError):
        container.unpack(bytes(flags))
    with pytest.raises(DDPMCodecError, match="format 3"):
        dataclasses.replace(base, mode="lossless").validate()


def test_model_free_format_4_holds_the_pixel_checksum():
    """Format 4 (webp-lossless): the pixel checksum in the header, no payload CRC, as
    many bytes as format 2; every field round-trips, every truncation and every bit flip
    of the header is an error; model modes and a missing checksum are refused."""
    ck = bytes([9, 8, 7, 6])
    h = container.model_free_header("webp-lossless", (3, 32, 32), 2, ck)
    assert (h.version, h.pixel_checksum) == (container.FORMAT_MODEL_FREE, ck)
    data = pack(h, b"streams" * 40)
    assert unpack(data) == (h, b"streams" * 40)
    assert container.unpack_prefix(data) == (h, b"streams" * 40, True)
    old = container.model_free_header("webp-lossless", (3, 32, 32), 2)
    assert len(pack(old, b"streams" * 40)) == len(data)
    assert container.header_size(h, 280) == container.header_size(old, 280) == 15
    assert h.summary()["pixel_checksum"] == ck.hex() and "pixel_checksum" not in old.summary()
    for n in range(len(data)):
        with pytest.raises(DDPMCodecError):
            unpack(data[:n])
    with pytest.raises(DDPMCodecError, match="truncated or padded"):
        unpack(data + b"\x00")
    head = len(data) - 280
    for i in range(head):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(DDPMCodecError):
                unpack(bytes(bad))
    # the payload has no CRC here: its bytes are the codec's to check (by the pixels)
    bad = bytearray(data)
    bad[-1] ^= 1
    assert unpack(bytes(bad))[1] != b"streams" * 40
    with pytest.raises(DDPMCodecError, match="checksum"):
        pack(dataclasses.replace(h, pixel_checksum=b"abc"), b"")
    with pytest.raises(DDPMCodecError, match="no model fields"):
        pack(dataclasses.replace(h, seed=3), b"")
    with pytest.raises(DDPMCodecError, match="format 4"):
        pack(make_header(version=container.FORMAT_MODEL_FREE), b"")
    # a hand-made format 4 header of a model mode is refused when read
    body = BlobWriter().uvar(3).uvar(32).uvar(32).uvar(1).raw(ck).getvalue()
    head = MAGIC + bytes([container.FORMAT_MODEL_FREE << 4 | container.MODES["lossless"]]) + body
    forged = head + struct.pack("<H", container.crc16(head)) + b"\x00"
    with pytest.raises(DDPMCodecError, match="format 4"):
        unpack(forged)
