"""Target-rate progressive encoding (--max-bytes, --bpp, --psnr) and the compact framing.

Oracle: encoding is deterministic, so a target file must be the full file's first coded
steps (same packets), the longest prefix within a byte budget or the first step whose
PSNR reaches a target, per the full file's own truncation table; its pixel checksum is
verified on decoding."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ddpmcodec.cli import main
from ddpmcodec.codec import container
from ddpmcodec.codec import progressive as pg
from ddpmcodec.errors import DDPMCodecError

FAST = dict(chunk_bits=6.0, margin_bits=2.0, max_log2=12, steps=4, seed=3)


@pytest.fixture(scope="module")
def full(tiny_model, test_images):
    codec = pg.ProgressiveCodec(tiny_model)
    return codec, codec.encode(test_images[:1], **FAST)


def _packets(data: bytes) -> list:
    return pg.split_packets(container.unpack(data)[1])


def test_max_bytes_keeps_the_longest_prefix_within_budget(full, test_images):
    codec, enc = full
    _, payload = container.unpack(enc.data)
    ends = pg.packet_ends(payload)
    hsize = len(enc.data) - len(payload)
    for budget in (hsize + ends[0] + 1, hsize + ends[1] + 3, hsize + ends[2]):
        t = codec.encode(test_images[:1], max_bytes=budget, **FAST)
        c = t.stats.extra["coded_steps"]
        assert len(t.data) <= budget and 1 <= c < 4 and t.stats.extra["target_reached"] == "bytes"
        assert [w.tolist() for _, w in _packets(t.data)] == [w.tolist() for _, w in _packets(enc.data)[:c]]
        # one more step would not have fitted (a partial file records its step count: a
        # byte more of header than the full file's)
        assert hsize + ends[c] + (c + 1 < 4) > budget
        dec = codec.decode(t.data)  # complete: pixel checksum of step c's reconstruction
        assert dec.stats.extra["complete"] and dec.stats.extra["steps_decoded"] == c
        assert np.array_equal(dec.images, codec.decode(enc.data, upto_step=c).images)
        # and a prefix of a target file still decodes
        assert codec.decode(t.data, upto_step=1).stats.extra["steps_decoded"] == 1
    big = codec.encode(test_images[:1], max_bytes=len(enc.data), **FAST)
    assert big.data == enc.data and big.stats.extra["target_reached"] is None


def test_bpp_is_max_bytes_per_pixel(full, test_images):
    codec, enc = full
    budget = len(enc.data) - 10
    by_bytes = codec.encode(test_images[:1], max_bytes=budget, **FAST)
    by_bpp = codec.encode(test_images[:1], bpp=8 * budget / (32 * 32), **FAST)
    assert by_bpp.data == by_bytes.data


def test_psnr_stops_at_the_first_step_that_reaches_it(full, test_images):
    codec, enc = full
    rows = pg.truncation_table(enc.stats)
    target = rows[1]["psnr"]
    expect = next(r["step"] for r in rows if r["psnr"] >= target)
    t = codec.encode(test_images[:1], psnr=target, **FAST)
    assert t.stats.extra["coded_steps"] == expect
    assert t.stats.extra["target_reached"] == ("psnr" if expect < 4 else None)
    assert np.array_equal(codec.decode(t.data).images, codec.decode(enc.data, upto_step=expect).images)


def test_target_errors(full, test_images):
    codec, _ = full
    with pytest.raises(DDPMCodecError, match="at most one target"):
        codec.encode(test_images[:1], max_bytes=1000, psnr=20.0, **FAST)
    with pytest.raises(DDPMCodecError, match="first coded step alone"):
        codec.encode(test_images[:1], max_bytes=20, **FAST)
    for bad in (dict(bpp=0.0), dict(psnr=-3.0), dict(max_bytes=0)):
        with pytest.raises(DDPMCodecError):
            codec.encode(test_images[:1], **bad, **FAST)


def test_compact_packets(full):
    """Framing 2: a varint byte count, a 16-bit latent check, the stream without the zero
    bytes that end its last word."""
    _, enc = full
    _, payload = container.unpack(enc.data)
    for s, ((crc, words), end) in enumerate(zip(_packets(enc.data), pg.packet_ends(payload))):
        body = pg.stream_bytes(words)
        assert np.array_equal(pg.stream_words(body), words)
        assert not body or body[-1] != 0 or len(body) % 4 == 1
        assert crc < 1 << 16
    words = np.array([0x01020300, 0], dtype=np.uint32)
    assert pg.stream_bytes(words) == bytes([1, 2, 3, 0, 0])  # never below the last word
    assert np.array_equal(pg.stream_words(pg.stream_bytes(words)), words)


def test_cli_targets(capsys, tmp_path, tiny_ckpt, test_npz):
    f = tmp_path / "t.ddpm"
    code = main(["encode", str(test_npz), "-n", "1", "-o", str(f), "--progressive", "--steps",
                 "4", "--chunk-bits", "6", "--ckpt", str(tiny_ckpt), "--max-bytes", "300",
                 "--json", "-q"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and f.stat().st_size <= 300 and out["coded_steps"] <= 4
    code = main(["encode", str(test_npz), "-n", "1", "-o", str(f), "--lossless", "--bpp", "2",
                 "--ckpt", str(tiny_ckpt)])
    assert code == 1 and "--progressive" in capsys.readouterr().err
