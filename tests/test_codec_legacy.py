"""Files made by an earlier ddpmcodec still decode, bit for bit.

tests/data holds two files that the code of v0.1 (before the package was reorganised into
core/io/codec/...) encoded with the embedded default model from image 799 of
../shared/data/cifar10-test-800.npz:

* v0.1-lossless-K5.ddpm: lossless, a 5-step chain, one image;
* v0.1-progressive-K4.ddpm: progressive, 4 coded steps, chunk_bits 8.

Oracles: the decoders verify the header's pixel checksum (lossless: the image; progressive:
the full-rate mean reconstruction) and, for the progressive file, the CRC of the latents
after every coded step; the lossless result is also compared with the image itself when
../shared is present. The files are tied to the CPU kind that made them (device kind in
the header), so elsewhere the test is skipped and says why.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.api import decode_bytes
from ddpmcodec.codec.reproducibility import device_kind

DATA = Path(__file__).parent / "data"
LOSSLESS = DATA / "v0.1-lossless-K5.ddpm"
PROGRESSIVE = DATA / "v0.1-progressive-K4.ddpm"
IMAGE_INDEX = 799


def _legacy(path: Path) -> bytes:
    data = path.read_bytes()
    kind, here = container.read_header(data).device_kind, device_kind("cpu")
    if kind != here:
        pytest.skip(f"{path.name} was encoded on {kind}; this CPU is {here}, and the codecs' "
                    f"numbers are only reproducible on the same kind")
    return data


def test_legacy_lossless_file_decodes_to_the_image(embedded_model, request):
    data = _legacy(LOSSLESS)
    dec = decode_bytes(embedded_model, data)  # raises unless the pixel checksum matches
    h = dec.header
    assert (h.mode, h.num_images, h.num_steps) == ("lossless", 1, 5)
    assert dec.images.shape == (1, 32, 32, 3) and dec.images.dtype == np.uint8
    assert container.pixel_checksum(dec.images, 16) == h.pixel_checksum  # format 1: 16 bytes
    test_npz = request.getfixturevalue("test_npz")  # skips (with its reason) without ../shared
    with np.load(test_npz, allow_pickle=False) as f:
        assert np.array_equal(dec.images[0], f["images"][IMAGE_INDEX])


def test_legacy_progressive_file_decodes_at_every_step(embedded_model):
    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    from ddpmcodec.codec.progressive.params import ProgressiveParams
    data = _legacy(PROGRESSIVE)
    codec = ProgressiveCodec(embedded_model)
    full = codec.decode(data)  # every step's latent CRC, then the pixel checksum
    h = full.header
    assert (h.mode, h.num_images, h.num_steps) == ("progressive", 1, 4)
    assert ProgressiveParams.unpack(h.params).channel.chunk_bits == 8.0
    assert full.stats.extra["complete"] and full.stats.extra["t"] == 1
    assert container.pixel_checksum(full.images, 16) == h.pixel_checksum  # format 1: 16 bytes


def test_legacy_webp_lossless_file_decodes(test_images):
    """A webp-lossless file of format 2 (what the encoder wrote before format 4 put a pixel
    checksum in its header: a payload CRC-32 instead), laid out here byte by byte from
    the format's table, still decodes; it needs no model and no particular CPU."""
    import struct
    import zlib

    from ddpmcodec.codec.lossless.webp import webp_stream
    stream = webp_stream(test_images[0])
    head = container.MAGIC + bytes([2 << 4 | 3, 3, 32, 32, 1])  # version 2, mode 3; C, H, W, N
    n = len(stream)
    length = bytes([n & 0x7F | 0x80, n >> 7]) if n >= 128 else bytes([n])
    data = (head + struct.pack("<H", container.crc16(head)) + length
            + struct.pack("<I", zlib.crc32(stream)) + stream)
    dec = decode_bytes(None, data)
    assert (dec.header.version, dec.header.mode, dec.header.pixel_checksum) == (2, "webp-lossless", b"")
    assert np.array_equal(dec.images, test_images[:1]) and len(data) - n == 15
