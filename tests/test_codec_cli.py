"""`ddpmcodec encode --lossless` and `ddpmcodec decode` end to end: .npz, PNG files and
folders in, .npz and PNG folders out, JSON summaries, and one-line errors."""
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


def test_npz_round_trip_with_json(capsys, tmp_path, tiny_ckpt, test_npz, test_images):
    f = tmp_path / "a.ddpm"
    code, out, _ = run(capsys, "encode", test_npz, "-n", 3, "-o", f, "--lossless", "--steps", 4,
                       "--trajectory", "even", "--method", "bitsback", "--seed-images", 0,
                       "--ckpt", tiny_ckpt, "--batch-size", 2, "--seed", 7, "--json", "-q")
    assert code == 0
    enc = json.loads(out)
    assert enc["num_images"] == 3 and enc["num_steps"] == 4 and enc["mode"] == "lossless"
    assert enc["file_bits"] == 8 * f.stat().st_size
    assert enc["bits_per_dim"] > 0 and enc["bound_bits_per_dim"] > 0 and enc["initial_bits"] > 0
    code, out, _ = run(capsys, "decode", f, "-o", tmp_path / "out.npz", "--ckpt", tiny_ckpt,
                       "--json", "-q")
    assert code == 0
    dec = json.loads(out)
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
    # the default method weighs the WebP-lossless file, shorter for a random network
    code, out, _ = run(capsys, "encode", src, "-o", f2, "--lossless", "--steps", 3,
                       "--trajectory", "even", "--ckpt", tiny_ckpt, "-q")
    assert code == 0 and "WebP-lossless streams" in out
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
    header_fp = json.loads(run(capsys, "encode", test_npz, "-n", 1, "-o", tmp_path / "b.ddpm",
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
    # the default chain of a model without a calibration says how to make one
    code, _, err = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--ckpt", tiny_ckpt)
    assert code == 1 and "ddpmcodec calibrate" in err and err.count("\n") == 1
    code, _, err = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--progressive",
                       "--method", "webp", "--ckpt", tiny_ckpt)
    assert code == 1 and "--lossless" in err


def test_default_encode_of_one_image(capsys, tmp_path, test_npz, test_images):
    """The embedded model's default: one image is written as its WebP-lossless stream."""
    f = tmp_path / "one.ddpm"
    code, out, _ = run(capsys, "encode", test_npz, "-n", 1, "-o", f, "--json", "-q")
    enc = json.loads(out)
    assert code == 0 and enc["method"] == "webp-lossless" and enc["file_bits"] == 8 * f.stat().st_size
    code, out, _ = run(capsys, "decode", f, "-o", tmp_path / "one.npz", "-q")
    assert code == 0 and "webp-lossless" in out
    with np.load(tmp_path / "one.npz", allow_pickle=False) as z:
        assert np.array_equal(z["images"], test_images[:1])
