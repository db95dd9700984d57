"""The classical-lossless mode and its JPEG-XL streams: each image the shorter of its
JPEG-XL codestream and its WebP-lossless stream, in a format 5 file.

Oracles: libjxl's decoder (imagecodecs) and its own encoder at effort 9 (our one-image file
is at most its stream plus 8 bytes), exact round trips, the SizeHeader parser against
libjxl on many sizes, and a forged size refused before libjxl allocates."""
from __future__ import annotations

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.api import decode_bytes, get_codec
from ddpmcodec.codec.lossless import classical, jxl, webp
from ddpmcodec.codec.lossless.streams import pack_streams, unpack_streams
from ddpmcodec.errors import DDPMCodecError

imagecodecs = pytest.importorskip("imagecodecs")
pytestmark = pytest.mark.skipif(not jxl.available(), reason="imagecodecs has no libjxl")


@pytest.mark.parametrize("h, w", [(32, 32), (1, 1), (7, 300), (300, 7), (33, 32), (32, 40),
                                  (48, 64), (64, 48), (9, 16), (600, 800), (513, 1000)])
def test_size_header_is_read_as_libjxl_writes_it(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    for c in (1, 3):
        x = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        s = jxl.jxl_stream(x, efforts=(3,))
        assert jxl.jxl_size(s) == (w, h)
        assert np.array_equal(jxl.jxl_image(s, (c, h, w)), x)


def test_streams_are_the_shortest_and_say_what_they_are(test_images):
    for im in test_images[:4]:
        j, v = jxl.jxl_stream(im), webp.webp_stream(im)
        s = classical.classical_stream(im)
        assert len(s) == min(len(j) - 1, len(v))
        assert classical.stream_codec(s) == ("jxl" if len(j) - 1 <= len(v) else "webp")
        assert classical.stream_codec(classical.classical_stream(im, ("webp",))) == "webp"
        assert np.array_equal(classical.classical_image(s, (3, 32, 32)), im)
        # the effort search: never longer than libjxl's effort 9 alone
        assert len(j) <= len(imagecodecs.jpegxl_encode(im, lossless=True, effort=9))
    with pytest.raises(DDPMCodecError, match="neither"):
        classical.stream_codec(b"\x00\x01")


def test_one_image_file_is_jpegxl_plus_7_bytes(test_images):
    codec = classical.ClassicalLosslessCodec(None)
    for i in range(3):
        im = test_images[i]
        enc = codec.encode(test_images[i:i + 1])
        header, payload = container.unpack(enc.data)
        assert header.version == container.FORMAT_CLASSICAL and len(enc.data) - len(payload) == 8
        assert len(enc.data) <= len(imagecodecs.jpegxl_encode(im, lossless=True, effort=9)) + 8
        if enc.stats.extra["jxl_streams"]:
            assert len(enc.data) == len(jxl.jxl_stream(im)) + 7
        for dec in (codec.decode(enc.data), decode_bytes(None, enc.data)):
            assert np.array_equal(dec.images, test_images[i:i + 1])
    assert get_codec("classical-lossless") is classical.ClassicalLosslessCodec


def test_grey_and_other_sizes_round_trip():
    rng = np.random.default_rng(1)
    for shape in [(3, 40, 24, 1), (2, 32, 32, 3), (1, 17, 5, 3)]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        x[..., :] = np.sort(x, axis=2)  # something compressible
        enc = classical.ClassicalLosslessCodec(None).encode(x)
        h = container.read_header(enc.data)
        assert (h.num_images, h.image_shape) == (shape[0], (shape[3], shape[1], shape[2]))
        assert np.array_equal(classical.ClassicalLosslessCodec(None).decode(enc.data).images, x)


def test_a_forged_size_is_refused_before_libjxl_decodes(test_images, monkeypatch):
    """The SizeHeader names the image's size: a stream that claims another is refused
    before libjxl is called (a forged 4096 x 4096 would make it allocate)."""
    s = bytearray(jxl.jxl_stream(test_images[0]))
    assert s[2] & 1  # a 32 x 32 image: div8 sizes
    calls = []
    monkeypatch.setattr(imagecodecs, "jpegxl_decode", lambda *a, **k: calls.append(1))
    for ydiv8 in (31, 0, 4):
        bad = bytearray(s)
        bad[2] = (bad[2] & ~0x3E) | (ydiv8 << 1)
        with pytest.raises(DDPMCodecError, match="holds a"):
            jxl.jxl_image(bytes(bad), (3, 32, 32))
    with pytest.raises(DDPMCodecError, match="start like one|size header"):
        jxl.jxl_image(b"\xff\x0a", (3, 32, 32))
    assert not calls


def test_damaged_streams_and_headers_are_clear_errors(test_images):
    codec = classical.ClassicalLosslessCodec(None)
    enc = codec.encode(test_images[:2])
    header, payload = container.unpack(enc.data)
    head = enc.data[:len(enc.data) - len(payload)]
    with pytest.raises(DDPMCodecError, match="checksum"):  # the images swapped
        streams = unpack_streams(payload, 2, "s", classical.LEAST_STREAM_BYTES)
        codec.decode(head + pack_streams(streams[::-1]))
    # a written field equal to its preset is not the canonical form
    odd = container.MAGIC + bytes([container.FORMAT_CLASSICAL << 4 | 4, 3, 3, 32, 32, 2])
    with pytest.raises(DDPMCodecError, match="preset"):
        container.unpack(odd + header.pixel_checksum + payload)
    one = container.MAGIC + bytes([container.FORMAT_CLASSICAL << 4 | 4, 2, 1])
    with pytest.raises(DDPMCodecError, match="number of images"):
        container.unpack(one + header.pixel_checksum + payload)
    for mode in ("lossless", "webp-lossless"):  # format 5 holds classical files only
        bad = container.MAGIC + bytes([container.FORMAT_CLASSICAL << 4 | container.MODES[mode], 0])
        with pytest.raises(DDPMCodecError, match="holds no"):
            container.unpack(bad + bytes(4) + payload)
    with pytest.raises(DDPMCodecError, match="does not decode|holds a|truncated"):
        codec.decode(enc.data[:-20])
