"""Progressive files that end lossless (``encode(..., lossless=True)``): the pixels under
the discretized decoder p(x0 | x_1) after the last coded step, in the same stream.

Oracles: the same images, seed and options coded without the layer (every coded step's
prefix decodes to the same latents and images, and costs the same bytes but for the
header's params); the complete file decodes to the exact pixels, checked by its 32-bit
pixel check; truncations and flips of the layer are errors or prefixes, never wrong
pixels passed off as exact."""
from __future__ import annotations

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.progressive import codec as prog_codec
from ddpmcodec.errors import DDPMCodecError

FAST = dict(chunk_bits=6.0, margin_bits=2.0, max_log2=12)


@pytest.fixture(scope="module")
def codec(tiny_model):
    return prog_codec.ProgressiveCodec(tiny_model)


@pytest.fixture(scope="module")
def pair(codec, test_images):
    x = test_images[:1]
    opts = dict(steps=4, seed=3, **FAST)
    return x, codec.encode(x, **opts), codec.encode(x, lossless=True, **opts)


def _prefixes(enc) -> list:
    return [row["prefix_bytes"] for row in enc.stats.extra["steps"]]


def test_every_step_decodes_as_the_lossy_file_and_the_whole_file_is_exact(codec, pair):
    x, lossy, full = pair
    extra = container.header_size(full.header, 0) - container.header_size(lossy.header, 0)
    assert extra >= 0 and full.header.params != lossy.header.params  # the flag "lossless"
    a, b = _prefixes(lossy), _prefixes(full)
    assert [v + extra for v in a] == b
    for s, (na, nb) in enumerate(zip(a, b)):
        da, db = codec.decode(lossy.data, max_bytes=na), codec.decode(full.data, max_bytes=nb)
        assert da.stats.extra["steps_decoded"] == db.stats.extra["steps_decoded"] == s + 1
        assert np.array_equal(da.images, db.images) and not db.stats.extra["lossless"]
    dec = codec.decode(full.data)
    assert np.array_equal(dec.images, x)
    assert dec.stats.extra["lossless"] and dec.stats.extra["pixels_verified"]
    assert dec.stats.extra["bytes_used"] == len(full.data)
    layer = full.stats.extra["lossless"]
    assert layer["file_bytes"] == len(full.data) and layer["bytes"] == len(full.data) - b[-1]
    # the ideal code length of the pixels is what the layer costs, up to a few bytes
    assert abs(8 * (layer["bytes"] - 4) - layer["ideal_bits"]) < 8 * 8
    every = codec.decode_every_step(full.data)
    assert [e["step"] for e in every] == [1, 2, 3, 4, 4] and every[-1]["lossless"]
    assert np.array_equal(every[-1]["images"]["mean"], x)
    assert [e["bytes_used"] for e in every[:-1]] == b and every[-1]["bytes_used"] == len(full.data)


def test_cuts_inside_the_layer_are_prefixes_or_errors(codec, pair):
    x, _, full = pair
    last = _prefixes(full)[-1]
    for n in (last + 1, (last + len(full.data)) // 2):
        with pytest.raises(DDPMCodecError, match="lossless layer|cut short"):
            codec.decode(full.data[:n])
        part = codec.decode(full.data, max_bytes=n)
        assert part.stats.extra["steps_decoded"] == 4 and not part.stats.extra["lossless"]
    for n in (len(full.data) - 3,):  # inside the pixel check
        with pytest.raises(DDPMCodecError, match="pixel check"):
            codec.decode(full.data[:n])
        part = codec.decode(full.data, max_bytes=n)
        assert part.stats.extra["lossless"] and not part.stats.extra["pixels_verified"]
        assert np.array_equal(part.images, x)  # the layer was whole; only its check is cut


def test_flips_in_the_layer_are_refused(codec, pair):
    x, _, full = pair
    last = _prefixes(full)[-1]
    rng = np.random.default_rng(0)
    for i in sorted(set(rng.integers(last, len(full.data), 4).tolist())):
        bad = bytearray(full.data)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(DDPMCodecError):
            codec.decode(bytes(bad))


def test_lossless_needs_the_exact_network_and_every_step(codec, test_images):
    with pytest.raises(DDPMCodecError, match="exact network"):
        codec.encode(test_images[:1], steps=3, lossless=True, exact=False, **FAST)
    with pytest.raises(DDPMCodecError, match="every step"):
        codec.encode(test_images[:1], steps=3, lossless=True, psnr=20.0, **FAST)
