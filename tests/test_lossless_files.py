"""Whole lossless files: the default chain, classical seeds (JPEG-XL or WebP-lossless) as
the stack's initial bits, the growing batch layout, the classical fallback, and the compact
format's defences.

Oracles: exact round trips (files of 1, 2 and many images); libjxl's own JPEG-XL stream at
effort 9 and Pillow's own WebP-lossless file of the same image (the fallback must be at
most 8 bytes more, and smaller); the seeds' bits are exactly their streams' bytes; every
truncation and bit flip of the new layout is a DDPMCodecError."""
from __future__ import annotations

import io

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.lossless import classical, webp
from ddpmcodec.codec.api import decode_bytes
from ddpmcodec.codec.lossless.codec import BitsBackCodec
from ddpmcodec.codec.lossless.params import DEFAULT_STEPS, LosslessParams
from ddpmcodec.codec.lossless.seeds import initial_words, read_seeds as _read_seeds, seed_words
from ddpmcodec.codec.lossless.streams import unpack_streams
from ddpmcodec.errors import DDPMCodecError


def pillow_webp_bytes(image: np.ndarray) -> int:
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(image).save(b, "WEBP", lossless=True, method=6, quality=100)
    return len(b.getvalue())


def jxl_bytes(image: np.ndarray) -> int:
    import imagecodecs
    return len(imagecodecs.jpegxl_encode(image, lossless=True, effort=9))


def test_one_image_falls_back_to_a_classical_stream_within_8_bytes_of_jpegxl(embedded_model,
                                                                           test_images):
    codec = BitsBackCodec(embedded_model)
    enc = codec.encode(test_images[:1])
    assert enc.header.mode == "classical-lossless"
    assert enc.stats.extra["method"] == "classical-lossless"
    # no bits-back file is made for one image: it would carry its whole dip unpaid
    assert enc.stats.initial_bits == 0 and "bitsback_file_bytes" not in enc.stats.extra
    forced = codec.encode(test_images[:1], method="bitsback")
    assert len(forced.data) > len(enc.data) + 0.5 * forced.stats.extra[
        "dip_bits_per_image_estimate"] / 8
    assert len(enc.data) <= jxl_bytes(test_images[0]) + 8
    assert len(enc.data) < pillow_webp_bytes(test_images[0])
    assert enc.stats.header_bits // 8 == 8
    for dec in (codec.decode(enc.data), decode_bytes(embedded_model, enc.data),
                classical.ClassicalLosslessCodec(None).decode(enc.data)):
        assert np.array_equal(dec.images, test_images[:1])


def test_default_file_of_many_images_uses_seeds_and_a_growing_layout(embedded_model, test_images):
    codec = BitsBackCodec(embedded_model)
    x = test_images[:5]
    enc = codec.encode(x, method="bitsback")
    s, h = enc.stats, enc.header
    assert h.mode == "lossless" and h.num_steps == DEFAULT_STEPS
    params = LosslessParams.unpack(h.params, h)
    m = len(params.seed_lengths)
    assert m >= 1 and s.extra["seed_images"] == m and s.net_dims == (5 - m) * 3072
    streams = [classical.classical_stream(im) for im in x[:m]]
    assert params.seed_lengths == tuple(len(v) for v in streams)
    assert params.classical_seeds == any(classical.stream_codec(v) == "jxl" for v in streams)
    assert s.side_bits == 8 * sum(len(v) for v in streams)
    # the seeds carry the first batch's dip: almost no initial bits are left to pay
    assert s.initial_bits_per_dim < 0.05
    layout = params.batches(h)
    assert layout[0][0] == m and layout[-1][1] == 5
    sizes = [b - a for a, b in layout]
    assert sizes[0] == 1 and sizes == sorted(sizes)  # starts with one image, grows
    assert s.file_bits < 8 * sum(pillow_webp_bytes(im) for im in x)
    # the header holds the chain: 3-4 bytes a step for its timesteps and variances
    assert h.num_steps == len(h.timesteps) and len(enc.data) - len(container.unpack(enc.data)[1]) < 40 + 4 * h.num_steps
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
    """A random network codes images badly: auto must keep the classical streams."""
    codec = BitsBackCodec(tiny_model)
    enc = codec.encode(test_images[:3], steps=2)
    assert enc.header.mode == "classical-lossless"
    assert enc.stats.extra["bitsback_file_bytes"] > len(enc.data)
    alone = codec.encode(test_images[:3], steps=2, method="classical")
    assert alone.data == enc.data
    assert np.array_equal(codec.decode(enc.data).images, test_images[:3])
    only_webp = codec.encode(test_images[:3], steps=2, method="webp")
    assert only_webp.header.mode == "webp-lossless" and len(only_webp.data) > len(enc.data)
    assert np.array_equal(codec.decode(only_webp.data).images, test_images[:3])


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


def _streams_decode_to(payload: bytes, header, images) -> bool:
    """Whether a model-free payload's streams decode to ``images`` (the decoder's work
    without its pixel checksum): what decoding a changed payload must then return."""
    try:
        if header.mode == "webp-lossless":
            streams, image = webp.unpack_streams(payload, header.num_images), webp.webp_image
        else:
            streams = unpack_streams(payload, header.num_images, "streams",
                                     classical.LEAST_STREAM_BYTES)
            image = classical.classical_image
        return all(np.array_equal(image(st, header.image_shape), im)
                   for st, im in zip(streams, images))
    except DDPMCodecError:
        return False


@pytest.fixture(scope="module")
def classical_file(tiny_model, test_images):
    return (BitsBackCodec(tiny_model).encode(test_images[:2], method="classical").data,
            test_images[:2])


@pytest.mark.parametrize("which", ["seeded_file", "webp_file", "classical_file"])
def test_every_truncation_and_bit_flip_is_refused(request, tiny_model, which):
    """Every truncation is an error. Every bit flip of the bits-back file is one (its CRCs
    cover every byte); so is every flip in a webp-lossless file's header (its CRC-16) and
    in a classical-lossless one's (canonical, under the pixel checksum), while one in their
    streams must give an error unless the streams still decode to the same pixels (libwebp
    and libjxl ignore some bits): then the right images, as computed."""
    data, images = request.getfixturevalue(which)
    codec = BitsBackCodec(tiny_model)
    assert np.array_equal(codec.decode(data).images, images)
    for n in range(len(data)):
        with pytest.raises(DDPMCodecError):
            codec.decode(data[:n])
    header, payload = container.unpack(data)
    start = len(data) - len(payload)
    rng = np.random.default_rng(0)
    right = 0
    for i in sorted(set(rng.integers(0, len(data), 300).tolist()) | set(range(40))):
        bad = bytearray(data)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        same = (header.model_free and i >= start
                and _streams_decode_to(bytes(bad[start:]), header, images))
        if same:
            assert np.array_equal(codec.decode(bytes(bad)).images, images)
            right += 1
            continue
        with pytest.raises(DDPMCodecError):
            codec.decode(bytes(bad))
    assert right <= 10  # nearly every flip changes the pixels, and the checksum sees it


def test_forged_seed_streams_are_corrupt_files(tiny_model, seeded_file, test_images, monkeypatch):
    """Payloads changed behind recomputed CRCs, and files whose seed stream is not the
    seed image's: the final checks refuse each, unless the seed stream still decodes to
    the seed image (computed), when the file decodes right."""
    data, images = seeded_file
    header, payload = container.unpack(data)
    codec = BitsBackCodec(tiny_model)
    p = bytearray(payload)
    for i in (len(p) - 1, len(p) - 40, len(p) // 2, 3):  # every byte is read by a pop
        q = bytearray(p)
        q[i] ^= 0x04
        with pytest.raises(DDPMCodecError, match="corrupt file|decoding failed"):
            codec.decode(container.pack(header, bytes(q)))
    # the encoder handed another stream for the seed image: its file carries it
    real = classical.classical_stream
    forgeries = [real(test_images[9])]
    for codecs in (("jxl",), ("webp",)):
        true = real(images[0], codecs)
        forgeries += [bytes(true[:k]) + bytes([true[k] ^ 1 << b]) + bytes(true[k + 1:])
                      for k, b in ((2, 3), (len(true) // 2, 5), (len(true) - 1, 7),
                                   (len(true) - 1, 0))]
    for stream in forgeries:
        monkeypatch.setattr(classical, "classical_stream", lambda im, c=None, s=stream: s
                            if np.array_equal(im, images[0]) else real(im, c))
        forged = BitsBackCodec(tiny_model).encode(images, steps=2, batch_size=2,
                                                  method="bitsback", seed_images=1).data
        monkeypatch.undo()
        try:
            same = np.array_equal(classical.classical_image(stream, (3, 32, 32)), images[0])
        except DDPMCodecError:
            same = False
        if same:
            assert np.array_equal(codec.decode(forged).images, images)
        else:
            with pytest.raises(DDPMCodecError, match="checksum|WebP|JPEG-XL|classical"):
                codec.decode(forged)


def test_default_chain_needs_a_calibration(tiny_model, test_images):
    with pytest.raises(DDPMCodecError, match="calibrat"):
        BitsBackCodec(tiny_model).encode(test_images[:2], method="bitsback")


def test_bad_options(tiny_model, test_images):
    codec = BitsBackCodec(tiny_model)
    with pytest.raises(DDPMCodecError, match="method"):
        codec.encode(test_images[:2], steps=2, method="flif")
    with pytest.raises(DDPMCodecError, match="seed_images"):
        codec.encode(test_images[:2], steps=2, seed_images=2)


# -- a Pillow without WebP, the default chain's errors -------------------------------------------
_NO_WEBP = """
import sys
sys.modules["PIL._webp"] = None  # what a Pillow built without libwebp looks like
import numpy as np
from ddpmcodec.codec.lossless import classical, webp
from ddpmcodec.errors import DDPMCodecError
data = open(sys.argv[1], "rb").read()
for what, run in (("decode", lambda: webp.WebPLosslessCodec(None).decode(data)),
                  ("encode", lambda: webp.WebPLosslessCodec(None).encode(np.zeros((1, 8, 8, 3), np.uint8)))):
    try:
        run()
    except DDPMCodecError as exc:
        print(what, "|", exc)
"""


def test_a_pillow_without_webp_is_named_not_a_corrupt_file(webp_file, tmp_path):
    """A Pillow built without libwebp (simulated: its _webp module does not import) cannot
    open any WebP stream; that is a missing dependency, not damage, and both directions
    say so."""
    import subprocess
    import sys
    data, _ = webp_file
    (tmp_path / "f.ddpm").write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _NO_WEBP, str(tmp_path / "f.ddpm")],
                         capture_output=True, text=True, timeout=120)
    lines = dict(line.split(" | ", 1) for line in out.stdout.splitlines() if " | " in line)
    assert set(lines) == {"decode", "encode"}, out.stdout + out.stderr
    for msg in lines.values():
        assert "WebP support" in msg and "corrupt" not in msg and "pip install" in msg


def test_default_chain_relabels_only_a_missing_calibration(tmp_path, monkeypatch):
    """Only an absent calibration is "the default chain needs the model's calibration";
    a damaged one, or one of another model, keeps its own message."""
    import json

    from conftest import make_tiny_ckpt
    from ddpmcodec.codec.lossless.params import default_chain
    from ddpmcodec.io.calibration import FILE_NAME, FORMAT, VERSION
    from ddpmcodec.io.models import load_model
    monkeypatch.setenv("DDPMCODEC_CACHE", str(tmp_path / "cache"))
    ckpt = make_tiny_ckpt(tmp_path / "ck", seed=7)
    model = load_model(ckpt)
    with pytest.raises(DDPMCodecError, match="needs the model's calibration.*ddpmcodec calibrate"):
        default_chain(model)  # none anywhere
    with pytest.raises(DDPMCodecError, match="needs the model's calibration"):
        default_chain(model, calibration=tmp_path / "absent.json")
    (ckpt / FILE_NAME).write_text("{ damaged")
    for call in (lambda: default_chain(model), lambda: default_chain(model, calibration=ckpt / FILE_NAME)):
        with pytest.raises(DDPMCodecError) as err:
            call()
        assert "unreadable calibration file" in str(err.value)
        assert "needs the model's calibration" not in str(err.value)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                 "model": {"fingerprint": "0" * 16}}))
    with pytest.raises(DDPMCodecError) as err:
        default_chain(model, calibration=other)
    assert "calibrates model" in str(err.value) and "needs the model" not in str(err.value)


# -- the one-image file checks its pixels ---------------------------------------------------------
def test_webp_lossless_files_check_their_pixels(test_images):
    """A webp-lossless file holds a pixel checksum in place of the payload CRC (format 4):
    another image's stream behind a valid container is refused, the file is no larger, and
    files of format 2 (payload CRC-32, no pixel checksum) still decode."""
    codec = webp.WebPLosslessCodec(None)
    for i in range(3):
        enc = codec.encode(test_images[i:i + 1])
        header, payload = container.unpack(enc.data)
        forged = container.pack(header, webp.webp_stream(test_images[i + 1]))
        with pytest.raises(DDPMCodecError, match="checksum"):
            codec.decode(forged)
        assert header.pixel_checksum == container.pixel_checksum(test_images[i:i + 1])
        old = container.pack(container.model_free_header("webp-lossless", (3, 32, 32), 1), payload)
        assert container.read_header(old).version == 2
        assert len(enc.data) == len(old) and len(enc.data) - len(payload) == 15
        for data in (enc.data, old):
            assert np.array_equal(codec.decode(data).images, test_images[i:i + 1])


def test_a_stream_of_another_size_is_refused_before_it_is_decoded(webp_file, monkeypatch):
    """The VP8L header names the image's size; a stream whose size is not the file's is
    refused before Pillow allocates it (a forged 16383 x 16383 is a decompression bomb)."""
    import struct

    from PIL import Image
    data, _ = webp_file
    header, payload = container.unpack(data)
    streams = webp.unpack_streams(payload, header.num_images)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    for side in (16383, 12000, 33):
        s = bytearray(streams[0])
        s[1:5] = struct.pack("<I", (side - 1) | (side - 1) << 14 | (struct.unpack("<I", s[1:5])[0] & ~((1 << 28) - 1)))
        with pytest.raises(DDPMCodecError, match="size|holds"):
            webp.webp_image(bytes(s), header.image_shape)
    assert not opened


def test_the_decoder_holds_the_stored_words_not_the_regenerated_ones(tiny_model, seeded_file,
                                                                     monkeypatch):
    """The P regenerated initial words lie below everything the decoder reads (the
    encoder's stack never sank beneath them), so its stack starts on the stored words
    and a margin of PREFIX_MARGIN_WORDS: memory follows the payload, not the header's W."""
    from ddpmcodec.codec.lossless import codec as lossless_codec
    from ddpmcodec.codec.lossless.params import PREFIX_MARGIN_WORDS
    data, images = seeded_file
    header, payload = container.unpack(data)
    params = LosslessParams.unpack(header.params, header)
    assert params.prefix_words > PREFIX_MARGIN_WORDS  # a file with words to leave out
    sizes = []
    real = lossless_codec.ChainStack
    monkeypatch.setattr(lossless_codec, "ChainStack",
                        lambda words, seed=0, exact=False: sizes.append(len(words)) or real(words, seed, exact))
    assert np.array_equal(BitsBackCodec(tiny_model).decode(data).images, images)
    assert sizes == [PREFIX_MARGIN_WORDS + len(payload) // 4]
