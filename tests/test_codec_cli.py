"""`ddpmcodec encode --lossless` and `ddpmcodec decode` end to end: .npz, PNG files and
folders in, .npz and PNG folders out, strict JSON summaries, and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_ckpt
from PIL import Image

from ddpmcodec.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refuse(name):
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str):
    """json.loads, but NaN and Infinity (which json.loads accepts) are errors."""
    return json.loads(text, parse_constant=_refuse)


def test_json_helper_writes_null_for_values_that_do_not_apply():
    from ddpmcodec.cli.common import dumps_json
    text = dumps_json({"nan": float("nan"), "inf": [np.float64("inf"), -np.inf],
                       "np": (np.float32(0.5), np.int64(3), np.array([1.0, np.nan])),
                       "ok": 1.25, 7: True})
    assert strict_json(text) == {"nan": None, "inf": [None, None], "np": [0.5, 3, [1.0, None]],
                                 "ok": 1.25, "7": True}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strict_json(json.dumps(float("nan")))  # the checker itself refuses what json allows


def test_npz_round_trip_with_json(capsys, tmp_path, tiny_ckpt, test_npz, test_images):
    f = tmp_path / "a.ddpm"
    code, out, _ = run(capsys, "encode", test_npz, "-n", 3, "-o", f, "--lossless", "--steps", 4,
                       "--trajectory", "even", "--method", "bitsback", "--seed-images", 0,
                       "--ckpt", tiny_ckpt, "--batch-size", 2, "--seed", 7, "--json", "-q")
    assert code == 0
    enc = strict_json(out)
    assert enc["num_images"] == 3 and enc["num_steps"] == 4 and enc["mode"] == "lossless"
    assert enc["file_bits"] == 8 * f.stat().st_size
    assert enc["bits_per_dim"] > 0 and enc["bound_bits_per_dim"] > 0 and enc["initial_bits"] > 0
    code, out, _ = run(capsys, "decode", f, "-o", tmp_path / "out.npz", "--ckpt", tiny_ckpt,
                       "--json", "-q")
    assert code == 0
    dec = strict_json(out)
    assert dec["bits_per_dim"] == pytest.approx(enc["bits_per_dim"])
    assert dec["file_bits"] == enc["file_bits"] and dec["initial_bits"] == enc["initial_bits"]
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8
        assert np.array_equal(z["images"], test_images[:3])


def test_png_files_and_folders(capsys, tmp_path, tiny_ckpt, test_images):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        Image.fromarray(test_images[i]).save(src / f"img{i}.png")
    f1, f2 = tmp_path / "files.ddpm", tmp_path / "folder.ddpm"
    code, out, _ = run(capsys, "encode", src / "img0.png", src / "img1.png", "-o", f1,
                       "--steps", 3, "--trajectory", "even", "--method", "bitsback",
                       "--ckpt", tiny_ckpt, "-q")
    assert code == 0 and "bits/dim" in out and "bound" in out and "time" in out
    # the default method weighs the classical file, shorter for a random network
    code, out, _ = run(capsys, "encode", src, "-o", f2, "--lossless", "--steps", 3,
                       "--trajectory", "even", "--ckpt", tiny_ckpt, "-q")
    assert code == 0 and "as classical streams" in out
    for f in (f1, f2):
        code, out, _ = run(capsys, "decode", f, "-o", tmp_path / f.stem, "--ckpt", tiny_ckpt, "-q")
        assert code == 0 and "verified" in out
        pngs = sorted((tmp_path / f.stem).glob("*.png"))
        assert len(pngs) == 2
        for i, p in enumerate(pngs):
            assert np.array_equal(np.asarray(Image.open(p)), test_images[i])


def test_errors_are_one_line(capsys, tmp_path, tiny_ckpt, test_npz):
    f = tmp_path / "a.ddpm"
    assert run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--steps", 2, "--ckpt", tiny_ckpt,
               "--trajectory", "even", "--method", "bitsback", "-q")[0] == 0
    other = make_tiny_ckpt(tmp_path / "other", seed=9)
    code, _, err = run(capsys, "decode", f, "-o", tmp_path / "x.npz", "--ckpt", other, "-q")
    assert code == 1 and err.count("\n") == 1 and "encoded with model" in err
    header_fp = strict_json(run(capsys, "encode", test_npz, "-n", 1, "-o", tmp_path / "b.ddpm",
                               "--steps", 2, "--ckpt", tiny_ckpt, "--trajectory", "even",
                               "--json", "-q")[1])["fingerprint"]
    assert header_fp[:8] in err  # the file holds the model id, the fingerprint's first 8 digits
    cut = tmp_path / "cut.ddpm"
    cut.write_bytes(f.read_bytes()[:-5])
    code, _, err = run(capsys, "decode", cut, "-o", tmp_path / "x.npz", "--ckpt", tiny_ckpt)
    assert code == 1 and "truncated" in err and err.count("\n") == 1
    junk = tmp_path / "junk.ddpm"
    junk.write_bytes(b"hello world" * 10)
    code, _, err = run(capsys, "decode", junk, "-o", tmp_path / "x.npz")
    assert code == 1 and "not a ddpmcodec file" in err
    code, _, err = run(capsys, "decode", tmp_path / "missing.ddpm", "-o", tmp_path / "x.npz")
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--steps", 0,
                       "--ckpt", tiny_ckpt)
    assert code == 1 and "--steps" in err
    code, _, err = run(capsys, "encode", tmp_path / "nope.npz", "-o", f, "--ckpt", tiny_ckpt,
                       "--trajectory", "even")
    assert code == 1 and "no such file" in err
    # the default chain of a model without a calibration says how to make one (two
    # images: one alone is its classical file, which needs no chain)
    code, _, err = run(capsys, "encode", test_npz, "-n", 2, "-o", f, "--ckpt", tiny_ckpt)
    assert code == 1 and "ddpmcodec calibrate" in err and err.count("\n") == 1
    code, _, err = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--progressive",
                       "--method", "webp", "--ckpt", tiny_ckpt)
    assert code == 1 and "--lossless" in err


def test_default_encode_of_one_image(capsys, tmp_path, test_npz, test_images):
    """The embedded model's default: one image is written as its classical stream.
    Its JSON is strict: the net rate, the bound and the overhead do not apply (null; old
    code printed NaN, which no JSON parser has to accept)."""
    f = tmp_path / "one.ddpm"
    code, out, _ = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--json", "-q")
    enc = strict_json(out)
    assert code == 0 and enc["method"] == "classical-lossless"
    assert enc["file_bits"] == 8 * f.stat().st_size
    assert enc["bits_per_dim"] is None and enc["bound_bits"] is None and enc["overhead"] is None
    assert enc["file_bits_per_dim"] > 0
    code, out, _ = run(capsys, "decode", f, "-o", tmp_path / "one.npz", "-q")
    assert code == 0 and "classical-lossless" in out and "JPEG-XL" in out
    with np.load(tmp_path / "one.npz", allow_pickle=False) as z:
        assert np.array_equal(z["images"], test_images[:1])
    code, out, _ = run(capsys, "decode", f, "-o", tmp_path / "again.npz", "--json", "-q")
    dec = strict_json(out)
    assert code == 0 and dec["mode"] == "classical-lossless" and dec["bits_per_dim"] is None
    assert dec["file_bits"] == enc["file_bits"]


def test_progressive_json_is_strict(capsys, tmp_path, test_npz):
    """encode --progressive and decode --json on the embedded model, stopped after the
    first coded step by --max-bytes so that it takes a few seconds."""
    f = tmp_path / "p.ddpm"
    code, out, err = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--progressive",
                         "--steps", 4, "--max-bytes", 60, "--json", "-q")
    assert code == 0, err
    enc = strict_json(out)
    assert enc["mode"] == "progressive" and enc["num_steps"] == 4
    assert enc["target_reached"] == "bytes"
    assert len(enc["truncation_points"]) == enc["coded_steps"] >= 1
    code, out, err = run(capsys, "decode", f, "-o", tmp_path / "p.npz", "--json", "-q")
    assert code == 0, err
    dec = strict_json(out)
    assert dec["steps_decoded"] == enc["coded_steps"] and dec["recon"] == "mean"
    assert dec["bytes_used"] == f.stat().st_size


def test_chain_options_without_steps_use_the_codecs_k(tiny_model):
    """`--trajectory even` alone is an even chain of the codec's K steps, as --help says
    (old code fell back to the codec's own default chain: dp/analytic for lossless, the
    geometric schedule for progressive)."""
    from ddpmcodec.cli.encode import _chain
    from ddpmcodec.codec.lossless.params import DEFAULT_STEPS as LOSSLESS_STEPS
    from ddpmcodec.codec.progressive.params import DEFAULT_STEPS as PROGRESSIVE_STEPS
    even = tiny_model.diffusion.with_steps
    for progressive, k in ((False, LOSSLESS_STEPS), (True, PROGRESSIVE_STEPS)):
        chain = _chain(tiny_model, progressive, None, "even", None, None, None)
        assert list(chain.timesteps) == list(even(k).timesteps)
    assert _chain(tiny_model, True, None, None, None, None, None) is None  # the codec's own
