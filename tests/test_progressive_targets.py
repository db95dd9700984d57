"""Target-rate progressive encoding (--max-bytes, --bpp, --psnr) and format 3's stream end.

Oracle: encoding is deterministic, so a target file must decode to the full file's first
coded steps, be the longest such file within a byte budget (per the sizes the full run
records for a file stopped after each step) or the first step whose PSNR reaches a
target, per the full file's own truncation table."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ddpmcodec.cli import main
from ddpmcodec.codec import container
from ddpmcodec.codec.progressive import codec as prog_codec
from ddpmcodec.codec.progressive import params as prog_params
from ddpmcodec.codec.progressive import reconstruct
from ddpmcodec.errors import DDPMCodecError

FAST = dict(chunk_bits=6.0, margin_bits=2.0, max_log2=12, steps=4, seed=3)


@pytest.fixture(scope="module")
def full(tiny_model, test_images):
    codec = prog_codec.ProgressiveCodec(tiny_model)
    return codec, codec.encode(test_images[:1], **FAST)


def test_max_bytes_keeps_the_longest_prefix_within_budget(full, test_images):
    codec, enc = full
    rows = enc.stats.extra["steps"]
    stopped = [row["stopped_bytes"] for row in rows]
    prefix = [row["prefix_bytes"] for row in rows]
    # a file that ends after step s is no longer than the full file's prefix plus the
    # end mark (12 bits) and the exact file's pixel check, and every step adds bytes
    tail = prog_params.PIXEL_CHECK_BYTES
    assert all(a <= b + 2 + tail for a, b in zip(stopped, prefix))
    assert stopped[-1] == len(enc.data)
    assert all(b > a for a, b in zip(stopped, stopped[1:]))
    for budget in (stopped[0] + 1, stopped[1] + 3, stopped[2]):
        t = codec.encode(test_images[:1], max_bytes=budget, **FAST)
        c = t.stats.extra["coded_steps"]
        assert len(t.data) <= budget and 1 <= c < 4 and t.stats.extra["target_reached"] == "bytes"
        # the longest: one more step would not have fitted
        assert len(t.data) == stopped[c - 1] and stopped[c] > budget
        dec = codec.decode(t.data)
        assert dec.stats.extra["complete"] and dec.stats.extra["steps_decoded"] == c
        assert np.array_equal(dec.images, codec.decode(enc.data, upto_step=c).images)
        # a prefix of a target file still decodes; nothing may follow its end
        assert codec.decode(t.data, upto_step=1).stats.extra["steps_decoded"] == 1
        with pytest.raises(DDPMCodecError, match="after the end"):
            codec.decode(t.data + b"\x07")
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
    rows = reconstruct.truncation_table(enc.stats)
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


def test_compact_file(full):
    """Format 3: an 8-byte header at the default settings (this file has other settings,
    which its header spells out), and no framing: the payload is the
    coded stream, whose size is the coded symbols plus the per-step checks and an end of
    at most two bytes, then (an exact file) the 4-byte pixel check."""
    _, enc = full
    header, payload = container.unpack(enc.data)
    assert header.version == container.FORMAT_COMPACT
    default = container.compact(dataclasses.replace(
        header, params=b"", seed=0, timesteps=prog_params.coded_schedule(1000, prog_params.DEFAULT_STEPS)))
    assert len(container.pack(default, b"")) == 8
    rows = enc.stats.extra["steps"]
    symbols = sum(im["code_bits"] for row in rows for im in row["images"])
    checks = (prog_params.DEFAULT_CHECK_BITS * len(rows)
              + 8 * prog_params.PIXEL_CHECK_BYTES)
    assert symbols + checks <= 8 * len(payload) <= symbols + checks + 16 + 1
    assert prog_params.ProgressiveParams.defaults().pack_compact() == b""


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


def test_check_bits_and_search_device(tmp_path, tiny_ckpt, test_npz):
    """--check-bits is recorded and used; --search-device torch:cpu (the torch search a GPU
    runs) and --search-workers 1 or 3 write the very same file as the default search (one
    process per CPU); a device torch lacks and a bad worker count are clear errors."""
    f, g = tmp_path / "a.ddpm", tmp_path / "b.ddpm"
    base = ["encode", str(test_npz), "-n", "1", "--progressive", "--steps", "3",
            "--chunk-bits", "6", "--ckpt", str(tiny_ckpt), "-q", "--check-bits", "20"]
    assert main(base + ["-o", str(f)]) == 0
    for extra in (["--search-device", "torch:cpu"], ["--search-workers", "1"],
                  ["--search-workers", "3"]):
        assert main(base + ["-o", str(g)] + extra) == 0
        assert f.read_bytes() == g.read_bytes()
    assert main(base + ["-o", str(g), "--search-workers", "0"]) == 1
    header = container.read_header(f.read_bytes())
    assert prog_params.ProgressiveParams.unpack(header.params, header.num_steps).check_bits == 20
    assert main(["decode", str(f), "-o", str(tmp_path / "d.npz"), "--ckpt", str(tiny_ckpt),
                 "-q"]) == 0
    assert main(base + ["-o", str(g), "--search-device", "nowhere"]) == 1
    assert main(base[:-2] + ["-o", str(g), "--check-bits", "0"]) == 1
