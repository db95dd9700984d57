"""Whole lossless files: the default chain, WebP-lossless seeds as the stack's initial
bits, the growing batch layout, the all-WebP fallback, and the compact format's defences.

Oracles: exact round trips (files of 1, 2 and many images); Pillow's own WebP-lossless file
of the same image (the fallback must be smaller); the seeds' bits are exactly their
streams' bytes; every truncation and bit flip of the new layout is a DDPMCodecError."""
from __future__ import annotations

import io

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.lossless import webp
from ddpmcodec.codec.api import decode_bytes
from ddpmcodec.codec.lossless.codec import BitsBackCodec
from ddpmcodec.codec.lossless.params import DEFAULT_STEPS, LosslessParams
from ddpmcodec.codec.lossless.seeds import initial_words, read_seeds as _read_seeds, seed_words
from ddpmcodec.errors import DDPMCodecError


def pillow_webp_bytes(image: np.ndarray) -> int:
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(image).save(b, "WEBP", lossless=True, method=6, quality=100)
    return len(b.getvalue())


def test_one_image_falls_back_to_a_webp_stream_smaller_than_webp(embedded_model, test_images):
    codec = BitsBackCodec(embedded_model)
    enc = codec.encode(test_images[:1])
    assert enc.header.mode == "webp-lossless" and enc.stats.extra["method"] == "webp-lossless"
    # the bits-back file was made and measured, and it was longer
    assert enc.stats.extra["bitsback_file_bytes"] > len(enc.data)
    assert enc.stats.extra["webp_file_bytes"] == len(enc.data)
    assert len(enc.data) < pillow_webp_bytes(test_images[0])
    assert enc.stats.header_bits // 8 == 15
    for dec in (codec.decode(enc.data), decode_bytes(embedded_model, enc.data),
                webp.WebPLosslessCodec(None).decode(enc.data)):
        assert np.array_equal(dec.images, test_images[:1])


def test_default_file_of_many_images_uses_seeds_and_a_growing_layout(embedded_model, test_images):
    codec = BitsBackCodec(embedded_model)
    x = test_images[:8]
    enc = codec.encode(x)
    s, h = enc.stats, enc.header
    assert h.mode == "lossless" and h.num_steps == DEFAULT_STEPS
    params = LosslessParams.unpack(h.params, h)
    m = len(params.seed_lengths)
    assert m >= 1 and s.extra["seed_images"] == m and s.net_dims == (8 - m) * 3072
    streams = [webp.webp_stream(im) for im in x[:m]]
    assert params.seed_lengths == tuple(len(v) for v in streams)
    assert s.side_bits == 8 * sum(len(v) for v in streams)
    # the seeds carry the first batch's dip: almost no initial bits are left to pay
    assert s.initial_bits_per_dim < 0.05
    layout = params.batches(h)
    assert layout[0][0] == m and layout[-1][1] == 8
    sizes = [b - a for a, b in layout]
    assert sizes[0] == 1 and sizes == sorted(sizes)  # starts with one image, grows
    assert s.file_bits < 8 * sum(pillow_webp_bytes(im) for im in x)
    assert h.num_steps == len(h.timesteps) and len(enc.data) - len(container.unpack(enc.data)[1]) < 100
    dec = decode_bytes(embedded_model, enc.data)
    assert np.array_equal(dec.images, x)
    assert dec.stats.file_bits == s.file_bits and dec.stats.side_bits == s.side_bits


@pytest.mark.parametrize("n, seeds", [(1, 0), (2, 1), (2, 0), (5, 2)])
def test_bitsback_round_trips_with_and_without_seeds(tiny_model, test_images, n, seeds):
    codec = BitsBackCodec(tiny_model)
    x = test_images[:n]
    enc = codec.encode(x, steps=2, batch_size=2, method="bitsback", seed_images=seeds)
    assert enc.header.mode == "lossless" and enc.stats.extra["seed_images"] == seeds
    assert np.array_equal(codec.decode(enc.data).images, x)


def test_auto_weighs_both_files(tiny_model, test_images):
    """A random network codes images badly: auto must keep the WebP streams."""
    codec = BitsBackCodec(tiny_model)
    enc = codec.encode(test_images[:3], steps=2)
    assert enc.header.mode == "webp-lossless"
    assert enc.stats.extra["bitsback_file_bytes"] > len(enc.data)
    webp = codec.encode(test_images[:3], steps=2, method="webp")
    assert webp.data == enc.data
    assert np.array_equal(codec.decode(enc.data).images, test_images[:3])


def test_seed_words_and_their_terminator():
    streams = [b"\x2f\x01\x02", b"\x2f\x00\x00\x00\x00"]  # the last word would be zero
    words, term = seed_words(streams)
    assert term and words[-1] == 1 and len(words) == 3
    base = initial_words(0, 8)
    params = LosslessParams(2, 5.0, 8, 0, seed_lengths=(3, 5), layout=(1,), terminator=True)
    with pytest.raises(DDPMCodecError, match="does not decode|corrupt"):
        _read_seeds(np.concatenate([base, words]), base, params, (3, 32, 32))  # not WebP
    words2, term2 = seed_words([b"\x2f\x01\x02\x03\x04"])
    assert not term2 and len(words2) == 2
    bad = words.copy()
    bad[-1] = 2
    with pytest.raises(DDPMCodecError, match="do not end as recorded"):
        _read_seeds(np.concatenate([base, bad]), base, params, (3, 32, 32))
    with pytest.raises(DDPMCodecError, match="initial words"):
        _read_seeds(np.concatenate([base[1:], words]), base, params, (3, 32, 32))


@pytest.fixture(scope="module")
def seeded_file(tiny_model, test_images):
    enc = BitsBackCodec(tiny_model).encode(test_images[:3], steps=2, batch_size=2,
                                           method="bitsback", seed_images=1)
    return enc.data, test_images[:3]


@pytest.fixture(scope="module")
def webp_file(tiny_model, test_images):
    return BitsBackCodec(tiny_model).encode(test_images[:2], method="webp").data, test_images[:2]


@pytest.mark.parametrize("which", ["seeded_file", "webp_file"])
def test_every_truncation_and_bit_flip_is_refused(request, tiny_model, which):
    data, images = request.getfixturevalue(which)
    codec = BitsBackCodec(tiny_model)
    assert np.array_equal(codec.decode(data).images, images)
    for n in range(len(data)):
        with pytest.raises(DDPMCodecError):
            codec.decode(data[:n])
    rng = np.random.default_rng(0)
    for i in sorted(set(rng.integers(0, len(data), 300).tolist()) | set(range(40))):
        bad = bytearray(data)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(DDPMCodecError):
            codec.decode(bytes(bad))


def test_forged_seed_streams_are_corrupt_files(tiny_model, seeded_file):
    """A seed stream changed behind recomputed CRCs: the final check or WebP refuses it."""
    data, images = seeded_file
    header, payload = container.unpack(data)
    codec = BitsBackCodec(tiny_model)
    p = bytearray(payload)
    for i in (len(p) - 1, len(p) - 40, len(p) // 2):
        q = bytearray(p)
        q[i] ^= 0x04
        try:
            out = codec.decode(container.pack(header, bytes(q))).images
        except DDPMCodecError:
            continue
        assert np.array_equal(out, images)


def test_default_chain_needs_a_calibration(tiny_model, test_images):
    with pytest.raises(DDPMCodecError, match="calibrat"):
        BitsBackCodec(tiny_model).encode(test_images[:2], method="bitsback")


def test_bad_options(tiny_model, test_images):
    codec = BitsBackCodec(tiny_model)
    with pytest.raises(DDPMCodecError, match="method"):
        codec.encode(test_images[:2], steps=2, method="flif")
    with pytest.raises(DDPMCodecError, match="seed_images"):
        codec.encode(test_images[:2], steps=2, seed_images=2)
