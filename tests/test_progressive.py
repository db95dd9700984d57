"""Progressive lossy codec (ddpmcodec.codec.progressive).

Oracles: the decoder's latents equal the encoder's bit for bit at every coded step (and
the file's per-step CRCs say so too), with a tiny model and with the embedded model;
every whole-packet prefix of a file decodes to the latents of that step; a decoded
full-rate image equals the encoder's reconstruction (pixel checksum); corrupt, truncated
and foreign files give DDPMCodecError or the right image, nothing else.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_codec_fuzz import assert_raised_where_detected

from ddpmcodec.codec import container
from ddpmcodec.codec.progressive import codec as prog_codec
from ddpmcodec.codec.progressive import levels
from ddpmcodec.codec.progressive import params as prog_params
from ddpmcodec.codec.progressive import reconstruct
from ddpmcodec.codec.api import decode_bytes
from ddpmcodec.errors import DDPMCodecError

FAST = dict(chunk_bits=6.0, margin_bits=2.0, max_log2=12)


def _header_bytes(data: bytes) -> int:
    """Bytes of a complete file that are not payload."""
    return len(data) - len(container.unpack(data)[1])


def _ends(enc) -> list:
    """File bytes that hold the first 1, 2, ... coded steps (the encoder's truncation points)."""
    return [row["prefix_bytes"] for row in enc.stats.extra["steps"]]


@pytest.fixture(scope="module")
def codec(tiny_model):
    return prog_codec.ProgressiveCodec(tiny_model)


@pytest.fixture(scope="module")
def encoded(codec, test_images):
    return codec.encode(test_images[:2], steps=4, batch_size=2, seed=5, keep_latents=True, **FAST)


def _same_latents(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# -- schedule and parameters ------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 3, 16, 24, 1000])
def test_schedule(K):
    ts = prog_params.coded_schedule(1000, K)
    assert len(ts) == K and ts[0] == 0 and ts[-1] == 999
    assert all(b > a for a, b in zip(ts, ts[1:]))
    if K == 1000:
        assert ts == tuple(range(1000))


def test_schedule_errors():
    with pytest.raises(DDPMCodecError):
        prog_params.coded_schedule(1000, 1)
    with pytest.raises(DDPMCodecError):
        prog_params.coded_schedule(10, 11)


def test_params_round_trip():
    from ddpmcodec.codec.container.chains import pack_variance_rule, variances_of_codes
    from ddpmcodec.codec.progressive.channel import ChannelParams, GENERATOR_ID
    from ddpmcodec.codec.container import BlobWriter
    p = prog_params.ProgressiveParams(ChannelParams(10.25, 3.5, 18), "model", GENERATOR_ID, 1234,
                             "explicit", variances_of_codes([-2000, -5, 0]), 2).validate()
    assert prog_params.ProgressiveParams.unpack(p.pack(), 3) == p
    default = prog_params.ProgressiveParams(ChannelParams(prog_params.DEFAULT_CHUNK_BITS, prog_params.DEFAULT_MARGIN_BITS,
                                                 prog_params.DEFAULT_MAX_LOG2), "fit", GENERATOR_ID, 99)
    assert len(default.pack()) == 7  # version, flags, variance, generator, check, rule
    with pytest.raises(DDPMCodecError, match="generator"):
        prog_params.ProgressiveParams(ChannelParams(), generator="gen").pack()
    # version 2 (fixed-width fields, the generator spelt out, float64 variances) still reads
    def v2_blob(gen: bytes) -> bytes:
        w = BlobWriter().u8(2).u16(41).u16(14).u8(18).u8(1).u8(len(gen)).raw(gen).u32(1234)
        return pack_variance_rule(w, "explicit", (0.5, 0.25)).getvalue()
    old = prog_params.ProgressiveParams.unpack(v2_blob(GENERATOR_ID.encode()), 2)
    assert (old.version, old.framing, old.chain_variances, old.generator) == \
        (2, 1, (0.5, 0.25), GENERATOR_ID)
    assert old.channel.generator == GENERATOR_ID  # the channel simulates with the file's
    with pytest.raises(DDPMCodecError, match="generator"):
        prog_params.ProgressiveParams.unpack(v2_blob(b"gen"), 2)
    with pytest.raises(DDPMCodecError):
        prog_params.ProgressiveParams(ChannelParams(10.1, 3.0, 18)).pack()
    with pytest.raises(DDPMCodecError):
        prog_params.ProgressiveParams.unpack(p.pack()[:-1], 3)
    with pytest.raises(DDPMCodecError):
        prog_params.ProgressiveParams(ChannelParams(), "wide").validate()


def test_fitted_level_minimises_kl():
    from ddpmcodec.codec.progressive.channel import kl_bits
    rng = np.random.default_rng(0)
    mq, mp, vq = rng.normal(size=500), rng.normal(size=500) * 0.5, 0.3
    lvl = levels.fitted_level(mq, vq, mp)
    kls = [kl_bits(mq, vq, mp, vq * np.exp(l / prog_params.LEVELS_PER_NAT)).sum() for l in range(0, 2000)]
    assert lvl == int(np.argmin(kls))
    # the hint the receiver computes from the level is close to the true KL
    assert levels.level_kl_hint(lvl, 500) == pytest.approx(min(kls), rel=0.02)


# -- bit-exact round trips ---------------------------------------------------------------------
def test_round_trip_tiny(codec, encoded, test_images):
    dec = codec.decode(encoded.data, keep_latents=True)
    assert _same_latents(dec.stats.extra["latents"], encoded.stats.extra["latents"])
    assert np.array_equal(dec.images, encoded.stats.extra["reconstruction"])
    assert dec.images.shape == test_images[:2].shape and dec.images.dtype == np.uint8
    assert dec.stats.extra["complete"] and dec.stats.extra["t"] == 1
    # the generic entry point dispatches on the mode
    assert np.array_equal(decode_bytes(codec.model, encoded.data).images, dec.images)


def test_stats(encoded):
    st = encoded.stats
    rows = reconstruct.truncation_table(st)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    kl = sum(im["kl_bits"] for row in st.extra["steps"] for im in row["images"])
    assert st.bound_bits == pytest.approx(kl)
    assert st.payload_bits == 8 * (len(encoded.data) - _header_bytes(encoded.data))
    bits = [r["payload_bits_per_image"] for r in rows]
    assert all(b > a for a, b in zip(bits, bits[1:]))
    assert rows[-1]["payload_bits_per_image"] * 2 == pytest.approx(st.payload_bits)
    # coded symbols cost at least the KL they convey (PFR cannot beat it on average by much)
    assert rows[-1]["code_bits_per_image"] > 0.9 * rows[-1]["kl_bits_per_image"]
    assert np.isfinite(st.overhead)


def test_model_variance_round_trip(codec, test_images):
    enc = codec.encode(test_images[2:3], steps=3, variance="model", keep_latents=True, **FAST)
    dec = codec.decode(enc.data, keep_latents=True)
    assert _same_latents(dec.stats.extra["latents"], enc.stats.extra["latents"])
    rows = enc.stats.extra["steps"]
    assert all(im["level"] is None and im["kl_bits"] == pytest.approx(im["model_kl_bits"])
               for row in rows for im in row["images"])


def test_round_trip_embedded(embedded_model, test_images):
    codec = prog_codec.ProgressiveCodec(embedded_model)
    enc = codec.encode(test_images[:1], steps=3, seed=1, keep_latents=True, **FAST)
    dec = codec.decode(enc.data, keep_latents=True)
    assert _same_latents(dec.stats.extra["latents"], enc.stats.extra["latents"])
    assert np.array_equal(dec.images, enc.stats.extra["reconstruction"])
    rmse = np.sqrt(np.mean((dec.images.astype(float) - test_images[:1]) ** 2))
    assert rmse < 5  # a real model at t = 1 reconstructs closely
    assert reconstruct.truncation_table(enc.stats)[-1]["rmse"] == pytest.approx(rmse)


# -- prefixes ------------------------------------------------------------------------------------
def test_every_prefix_decodes(codec, encoded):
    """Cut anywhere: a prefix decodes exactly the coded steps whose truncation point it
    reaches, to the encoder's latents bit for bit."""
    data = encoded.data
    ends = _ends(encoded)
    # an exact file's 4-byte pixel check follows the last step's truncation point
    assert len(ends) == 4 and ends[-1] + prog_params.PIXEL_CHECK_BYTES == len(data)
    assert all(b > a for a, b in zip(ends, ends[1:]))
    whole = codec.decode(data)
    assert whole.stats.extra["complete"] and whole.stats.extra["bytes_used"] == len(data)
    full = encoded.stats.extra["latents"]
    for s, end in enumerate(ends):
        for cut in (end, end + 1, end - 1):
            if cut > len(data):
                continue
            steps = sum(e <= cut for e in ends)
            if steps == 0:
                with pytest.raises(DDPMCodecError, match="no whole coded step"):
                    codec.decode(data[:cut], max_bytes=cut)
                continue
            if cut < len(data):  # not the whole file: a prefix is asked for by --bytes
                with pytest.raises(DDPMCodecError, match="--bytes"):
                    codec.decode(data[:cut])
            dec = codec.decode(data[:cut], keep_latents=True, max_bytes=cut)
            assert dec.stats.extra["steps_decoded"] == steps
            assert _same_latents(dec.stats.extra["latents"], full[:steps])
            assert dec.stats.extra["bytes_used"] == ends[steps - 1]
            assert dec.stats.extra["complete"] == (cut == len(data))
        # --bytes and --upto-step are the same cut
        by_bytes = codec.decode(data, max_bytes=end)
        by_step = codec.decode(data, upto_step=s + 1)
        assert np.array_equal(by_bytes.images, by_step.images)
        assert by_step.stats.extra["t"] == encoded.header.timesteps[3 - s] + 1


def test_too_short_prefixes(codec, encoded):
    hsize = _header_bytes(encoded.data)
    with pytest.raises(DDPMCodecError, match="no whole coded step"):
        codec.decode(encoded.data, max_bytes=_ends(encoded)[0] - 1)
    with pytest.raises(DDPMCodecError):
        codec.decode(encoded.data[:hsize - 1])
    with pytest.raises(DDPMCodecError, match="--upto-step"):
        codec.decode(encoded.data, upto_step=5)
    with pytest.raises(DDPMCodecError, match="--bytes"):
        codec.decode(encoded.data, max_bytes=0)
    with pytest.raises(DDPMCodecError, match="after the end"):
        codec.decode(encoded.data + b"\x00")


@pytest.mark.parametrize("recon", ["sample", "flow"])
def test_reconstructions(codec, encoded, recon):
    a = codec.decode(encoded.data, upto_step=2, recon=recon, recon_steps=3)
    b = codec.decode(encoded.data, upto_step=2, recon=recon, recon_steps=3)
    assert np.array_equal(a.images, b.images) and a.images.shape == (2, 32, 32, 3)
    mean = codec.decode(encoded.data, upto_step=2)
    assert not np.array_equal(a.images, mean.images)
    with pytest.raises(DDPMCodecError):
        codec.decode(encoded.data, recon="median")


# -- errors and fuzzing -------------------------------------------------------------------------
def test_wrong_model_and_foreign_files(codec, encoded, tmp_path):
    from conftest import make_tiny_ckpt

    from ddpmcodec.io.models import load_model
    other = load_model(make_tiny_ckpt(tmp_path / "other", seed=1))
    with pytest.raises(DDPMCodecError, match="model"):
        prog_codec.ProgressiveCodec(other).decode(encoded.data)
    other_codec = prog_codec.ProgressiveCodec(other)
    for junk in (b"", b"hello world", bytes(200), np.random.default_rng(0).bytes(500)):
        with pytest.raises(DDPMCodecError):
            other_codec.decode(junk)
    # a lossless file is not a progressive one
    h = encoded.header
    import dataclasses
    foreign = container.pack(dataclasses.replace(
        h, mode="lossless", params=b"", version=2, fingerprint=other.fingerprint[:8],
        pixel_checksum=bytes(4)), b"\x00" * 8)
    with pytest.raises(DDPMCodecError, match="lossless"):
        prog_codec.ProgressiveCodec(other).decode(foreign)
    # a hostile header cannot make the decoder allocate without bound
    huge = container.pack(dataclasses.replace(h, num_images=1 << 20), b"\x00" * 8)
    with pytest.raises(DDPMCodecError, match="claims"):
        codec.decode(huge)


def test_corrupt_payload_is_caught(codec, encoded):
    """A flipped bit inside coded step 2's bytes fails that step's latent check."""
    ends = _ends(encoded)
    pre = bytearray(encoded.data[:ends[1]])
    pre[(ends[0] + ends[1]) // 2] ^= 0x01
    with pytest.raises(DDPMCodecError, match="coded step 2"):
        codec.decode(bytes(pre))


def test_fuzz(codec, encoded):
    """Mutated and truncated files, as whole files and as --bytes prefixes, each with its
    expected outcome: a cut file is an error as a whole file and, as a prefix, exactly
    the coded steps it holds; a damaged whole file is an error or (damage the stream
    does not feel) all its steps, a damaged prefix an error or some of its whole steps;
    never any other image."""
    data = encoded.data
    hsize = _header_bytes(encoded.data)
    ends = _ends(encoded)
    right = {s + 1: codec.decode(data, upto_step=s + 1).images for s in range(len(ends))}
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "right": 0}

    def expect(buf, most: int, as_prefix: bool) -> None:
        """An error, or the right images of ``most`` coded steps (a prefix: at most)."""
        try:
            dec = codec.decode(bytes(buf), max_bytes=len(buf) if as_prefix else None)
        except DDPMCodecError as exc:
            assert_raised_where_detected(exc)  # not a renamed bug
            outcomes["error"] += 1
            return
        steps = dec.stats.extra["steps_decoded"]
        assert steps == most or (as_prefix and steps < most), f"{steps} steps of {most}"
        assert np.array_equal(dec.images, right[steps]), "a wrong image"
        outcomes["right"] += 1

    for trial in range(45):
        buf = bytearray(data)
        kind = trial % 3
        if kind == 0:  # bit flips anywhere
            for _ in range(rng.integers(1, 4)):
                buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncation, sometimes with a flip in what is left
            buf = buf[:int(rng.integers(0, len(buf)))]
            with pytest.raises(DDPMCodecError):  # not the whole file
                codec.decode(bytes(buf))
            steps = sum(e <= len(buf) for e in ends)
            if len(buf) > hsize and rng.random() < 0.5:
                buf[int(rng.integers(hsize, len(buf)))] ^= 0x40
            elif steps == 0:  # a clean cut: exactly its whole steps, or none
                with pytest.raises(DDPMCodecError):
                    codec.decode(bytes(buf), max_bytes=len(buf))
                continue
            else:
                assert np.array_equal(codec.decode(bytes(buf), max_bytes=len(buf)).images,
                                      right[steps])
                continue
        else:  # inserted or deleted bytes
            pos = int(rng.integers(0, len(buf)))
            if rng.random() < 0.5:
                buf[pos:pos] = rng.bytes(int(rng.integers(1, 5)))
            else:
                del buf[pos:pos + int(rng.integers(1, 5))]
        expect(buf, sum(e <= len(buf) for e in ends) if kind == 1 else len(ends), kind == 1)
    assert outcomes["error"] > 20


@pytest.mark.parametrize("bug", [TypeError, AttributeError, ValueError])
def test_bugs_in_the_decoder_are_not_corrupt_files(codec, encoded, monkeypatch, bug):
    """A programming error inside the stream decoder, on a valid file, propagates
    unchanged (the old channel decoder turned any Exception into "corrupt file")."""
    from ddpmcodec.codec.entropy import arith

    def broken(self, probs):
        raise bug("a bug in the decoder")
    monkeypatch.setattr(arith.ArithDecoder, "categorical", broken)
    with pytest.raises(bug, match="a bug in the decoder"):
        codec.decode(encoded.data)


# -- command-line glue and the RD analysis ------------------------------------------------------
def test_cli_encode_decode_prefixes(tiny_ckpt, test_images, tmp_path, capsys):
    import json

    from ddpmcodec.cli import main
    from ddpmcodec.codec.container import unpack_prefix
    src = tmp_path / "one.npz"
    np.savez(src, images=test_images[:1])
    out = tmp_path / "a.ddpm"
    assert main(["encode", str(src), "-o", str(out), "--ckpt", str(tiny_ckpt), "--progressive",
                 "--steps", "3", "-b", "1", "--chunk-bits", "6", "--margin", "2", "-q",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = out.read_bytes()
    assert summary["num_steps"] == 3 and len(summary["truncation_points"]) == 3
    assert main(["decode", str(out), "-o", str(tmp_path / "full.npz"), "--ckpt", str(tiny_ckpt),
                 "-q", "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert s2["complete"] and s2["steps_decoded"] == 3
    cut = int(summary["truncation_points"][1]["file_bits_per_image"] // 8)
    (tmp_path / "cut.ddpm").write_bytes(data[:cut])
    # a cut file is not the whole file: decoding it as one says to give --bytes
    assert main(["decode", str(tmp_path / "cut.ddpm"), "-o", str(tmp_path / "no.npz"), "--ckpt",
                 str(tiny_ckpt), "-q"]) == 1
    assert f"--bytes {cut}" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "cut.ddpm"), "-o", str(tmp_path / "pngs"), "--ckpt",
                 str(tiny_ckpt), "--recon", "flow", "--recon-steps", "2", "-q", "--json",
                 "--bytes", str(cut)]) == 0
    s3 = json.loads(capsys.readouterr().out)
    assert s3["steps_decoded"] == 2 and not s3["complete"]
    assert len(list((tmp_path / "pngs").iterdir())) == 1
    assert unpack_prefix(data[:cut])[0].mode == "progressive"
    assert main(["decode", str(out), "-o", str(tmp_path / "x.npz"), "--ckpt", str(tiny_ckpt),
                 "--upto-step", "1", "--bytes", "100"]) == 1
    assert "at most one" in capsys.readouterr().err


def test_rd_codec_small(tiny_model, test_images, tmp_path):
    import json

    from ddpmcodec.analysis.rd_codec import rate_at_rmse
    from ddpmcodec.pipelines.rd_codec import run_rd_codec
    info = run_rd_codec(tiny_model, test_images[:2], tmp_path / "rd", steps=3, chunk_bits=6.0,
                        margin_bits=2.0, recons=("mean", "flow"), recon_steps=2,
                        jpeg=(20, 80), webp=(20, 80))
    res = json.loads((tmp_path / "rd" / "results.json").read_text())
    assert res["summary"]["full_rate"]["bits_per_image"] == pytest.approx(info["full_rate"]["bits_per_image"])
    for name in ("codec_points.csv", "theory.csv", "baselines.csv", "rd_codec.png", "encoded.ddpmc"):
        assert (tmp_path / "rd" / name).is_file()
    import pandas as pd
    pts = pd.read_csv(tmp_path / "rd" / "codec_points.csv")
    if "lpips" in info["skipped"]:  # no backbone weights here: say what to download
        assert "download" in info["skipped"]["lpips"] and pts["lpips"].isna().all()
    else:
        assert pts["lpips"].notna().all()
    assert set(pts["recon"]) == {"mean", "flow"} and len(pts) == 6
    # the mean points are the encoder's own truncation table (a real decode reproduces them):
    # the same encode again (deterministic) gives the same file and that table
    mean = pts[pts["recon"] == "mean"].reset_index(drop=True)
    enc = prog_codec.ProgressiveCodec(tiny_model).encode(test_images[:2], steps=3, chunk_bits=6.0,
                                                 margin_bits=2.0)
    assert enc.data == (tmp_path / "rd" / "encoded.ddpmc").read_bytes()
    table = pd.DataFrame(reconstruct.truncation_table(enc.stats))
    assert list(mean["step"]) == list(table["step"]) == [1, 2, 3]
    for point, row in (("bits_per_image", "payload_bits_per_image"),
                       ("file_bits_per_image", "file_bits_per_image"),
                       ("code_bits_per_image", "code_bits_per_image"),
                       ("kl_bits_per_image", "kl_bits_per_image"), ("overhead", "overhead")):
        assert np.array_equal(mean[point].to_numpy(), table[row].to_numpy()), point
    # and the decoded images are the encoder's reconstructions: same RMSE
    assert np.allclose(mean["rmse"].to_numpy(), table["rmse"].to_numpy(), rtol=1e-9, atol=0)
    assert rate_at_rmse([0, 10], [20, 5], 10) == pytest.approx(5.0)
    assert np.isnan(rate_at_rmse([0, 10], [20, 15], 10))


# -- the default settings ----------------------------------------------------------------------------
# Size bound of a file at the defaults, from documented facts (docs/progressive.md, DESIGN.md):
# PFR with an entropy-coded index costs at most ~3-4 bits per chunk beyond the chunk's KL;
# per coded step and image, the variance level costs ~4-8 bits; per coded step the file
# holds a check of DEFAULT_CHECK_BITS, and the stream's end at most 2 bytes. An index model
# that doubled the file breaks the bound.
INDEX_OVERHEAD_PER_CHUNK = 4.0      # bits, the upper end of "3-4 bits per chunk"
LEVEL_BITS_PER_STEP = 8.0           # bits per image and coded step (s >= 1)
FRAMING_BITS_PER_STEP = prog_params.DEFAULT_CHECK_BITS + 1  # the check, and the "more steps" flag
FLUSH_BITS = 16


def default_size_bound(stats) -> float:
    """Most payload bits a file at the default settings may take: its summed KL, plus
    the per-chunk index overhead and the per-step side information and framing."""
    rows = stats.extra["steps"]
    chunks = sum(im["chunks"] for row in rows for im in row["images"])
    n, K = stats.num_images, stats.num_steps
    return (stats.bound_bits + INDEX_OVERHEAD_PER_CHUNK * chunks
            + LEVEL_BITS_PER_STEP * n * (K - 1) + FRAMING_BITS_PER_STEP * K + FLUSH_BITS)


def test_defaults_size_is_bounded_by_the_kl(embedded_model, test_images):
    """The codec at its default settings (K = 16, B = 12, margin 2, fitted variance) on
    the embedded model, one image: the file decodes bit for bit, and its payload is within
    the documented overheads of the KL the channel conveyed."""
    codec = prog_codec.ProgressiveCodec(embedded_model)
    enc = codec.encode(test_images[5:6], keep_latents=True)
    st = enc.stats
    assert st.num_steps == prog_params.DEFAULT_STEPS and enc.header.timesteps == prog_params.coded_schedule(1000, 16)
    assert enc.header.params == b"" and len(enc.data) - st.payload_bits // 8 == 8
    dec = codec.decode(enc.data, keep_latents=True)
    assert _same_latents(dec.stats.extra["latents"], st.extra["latents"])
    kl, bound = st.bound_bits, default_size_bound(st)
    assert 0.9 * kl <= st.payload_bits <= bound, (st.payload_bits, kl, bound)
    # the bound is tight enough to matter: twice the payload would break it
    assert 2 * st.payload_bits > bound
    assert reconstruct.truncation_table(st)[-1]["rmse"] < 3.0


# -- heavier checks (pytest -m slow) ---------------------------------------------------------------
@pytest.mark.slow
def test_defaults_round_trip_embedded(embedded_model, test_images):
    """The default settings (K = 16, B = 12, margin 2) on the embedded model: every coded
    step bit for bit, and a full-rate reconstruction close to the image."""
    codec = prog_codec.ProgressiveCodec(embedded_model)
    enc = codec.encode(test_images[3:5], batch_size=2, keep_latents=True)
    dec = codec.decode(enc.data, keep_latents=True)
    assert _same_latents(dec.stats.extra["latents"], enc.stats.extra["latents"])
    assert len(dec.stats.extra["latents"]) == prog_params.DEFAULT_STEPS
    rows = reconstruct.truncation_table(enc.stats)
    assert rows[-1]["rmse"] < 2.0 and rows[-1]["overhead"] < 0.4


@pytest.mark.slow
def test_fuzz_many(codec, encoded):
    """1000 more mutations of the tiny file (see test_fuzz)."""
    data = encoded.data
    hsize = _header_bytes(encoded.data)
    right = {s + 1: codec.decode(data, upto_step=s + 1).images for s in range(4)}
    rng = np.random.default_rng(1)
    for trial in range(1000):
        buf = bytearray(data[:int(rng.integers(hsize - 8, len(data) + 1))])
        for _ in range(int(rng.integers(0, 4))):
            if buf:
                buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        try:
            dec = codec.decode(bytes(buf))
        except DDPMCodecError:
            continue
        assert np.array_equal(dec.images, right[dec.stats.extra["steps_decoded"]]), trial


def test_command_line(tiny_ckpt, test_images, tmp_path, capsys):
    import json

    from ddpmcodec.cli import main
    src = tmp_path / "imgs.npz"
    np.savez(src, images=test_images[:1])
    f = tmp_path / "a.ddpm"
    assert main(["encode", str(src), "-o", str(f), "--progressive", "--steps", "3", "--chunk-bits", "6",
                 "--margin", "2", "--ckpt", str(tiny_ckpt), "-q", "--json"]) == 0
    enc = json.loads(capsys.readouterr().out)
    cut = int(enc["truncation_points"][1]["file_bits_per_image"] // 8)
    assert main(["decode", str(f), "-o", str(tmp_path / "d.npz"), "--bytes", str(cut),
                 "--ckpt", str(tiny_ckpt), "-q", "--json"]) == 0
    dec = json.loads(capsys.readouterr().out)
    assert dec["steps_decoded"] == 2 and dec["bytes_used"] == cut
    (tmp_path / "cut.ddpm").write_bytes(f.read_bytes()[:cut + 1])
    assert main(["decode", str(tmp_path / "cut.ddpm"), "-o", str(tmp_path / "e.npz"),
                 "--ckpt", str(tiny_ckpt), "-q", "--json"]) == 1  # not the whole file
    assert f"--bytes {cut + 1}" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "cut.ddpm"), "-o", str(tmp_path / "e.npz"),
                 "--ckpt", str(tiny_ckpt), "-q", "--json", "--bytes", str(cut + 1)]) == 0
    assert json.loads(capsys.readouterr().out)["steps_decoded"] == 2
    g = tmp_path / "l.ddpm"  # a progressive file that ends lossless
    assert main(["encode", str(src), "-o", str(g), "--progressive", "--lossless", "--steps", "3",
                 "--chunk-bits", "6", "--margin", "2", "--ckpt", str(tiny_ckpt), "-q",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lossless"]["file_bytes"] == g.stat().st_size
    assert main(["decode", str(g), "-o", str(tmp_path / "l.npz"), "--ckpt", str(tiny_ckpt),
                 "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lossless"]
    assert np.array_equal(np.load(tmp_path / "l.npz")["images"], test_images[:1])
    assert main(["encode", str(src), "-o", str(f), "--progressive", "--lossless", "--float32",
                 "--ckpt", str(tiny_ckpt), "-q"]) == 1
    assert main(["decode", str(f), "-o", str(tmp_path / "d.npz"), "--recon", "best",
                 "--ckpt", str(tiny_ckpt), "-q"]) == 1
    assert "error" in capsys.readouterr().err


# -- the whole file, or a prefix asked for ------------------------------------------------------
def test_a_whole_file_must_hold_every_step(codec, encoded):
    """Without --bytes a file is the whole file: one cut or damaged so that its stream
    ends early is an error (it used to decode as a shorter prefix without a word); with
    --bytes the same bytes are a prefix and decode to the steps they hold."""
    data, ends = encoded.data, _ends(encoded)
    for cut in (data[:ends[2]], data[:-1], data[:ends[1] + 3]):
        for decode in (codec.decode, codec.decode_every_step):
            with pytest.raises(DDPMCodecError, match="--bytes"):
                decode(cut)
        with pytest.raises(DDPMCodecError, match="--bytes"):
            codec.decode(cut, upto_step=4)
        steps = sum(e <= len(cut) for e in ends)
        assert codec.decode(cut, max_bytes=len(cut)).stats.extra["steps_decoded"] == steps
    assert codec.decode(data[:ends[2]], upto_step=3).stats.extra["steps_decoded"] == 3


def test_forged_thread_counts_start_no_threads(codec, encoded, monkeypatch):
    """A header's thread count is obeyed only up to this machine's CPUs: 256 is refused
    with a clear error before torch is asked for a single thread."""
    import dataclasses
    import os
    asked = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: asked.append(n) or real(n))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    payload = container.unpack(encoded.data)[1]
    for threads in (256, cpus + 1):
        forged = container.pack(dataclasses.replace(encoded.header, num_threads=threads), payload)
        with pytest.raises(DDPMCodecError, match=f"{threads} CPU threads"):
            codec.decode(forged)
    assert all(n <= cpus for n in asked)
