"""Both codecs on few-step chains with explicit (analytic) variances and dp timesteps: exact
round trips, the chain in the file (decoding needs no calibration), and the lossless size
beside the bound of the same chain."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ddpmcodec.cli import main
from ddpmcodec.codec.api import get_codec
from ddpmcodec.codec.container import read_header
from ddpmcodec.core import chains


@pytest.fixture(scope="module")
def calibrated(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cc")
    rng = np.random.default_rng(3)
    np.savez(tmp / "train.npz", images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert main(["calibrate", "--ckpt", str(tiny_ckpt), "--data", str(tmp / "train.npz"),
                 "--points", "10", "-o", str(tmp / "cal.json"), "--work", str(tmp / "w"),
                 "--device", "cpu", "-q"]) == 0
    return tmp / "cal.json"


def _dp_analytic_chain(model, cal_path, K):
    from ddpmcodec.io.calibration import load_calibration
    cal = load_calibration(cal_path)
    ts = chains.chain_timesteps(model.diffusion, K, "dp", "analytic", cal.m())
    return chains.build_chain(model.diffusion, ts, "analytic", cal.m(), cal.decoder_variance())


def test_lossless_on_an_analytic_dp_chain(tiny_model, calibrated, test_images):
    chain = _dp_analytic_chain(tiny_model, calibrated, 4)
    codec = get_codec("lossless")(tiny_model)
    enc = codec.encode(test_images[:2], chain=chain, batch_size=2, seed=1, method="bitsback")
    assert tuple(enc.header.timesteps) == tuple(chain.timesteps.tolist())
    dec = codec.decode(enc.data)  # no calibration needed: the variances are in the file
    assert np.array_equal(dec.images, test_images[:2])
    # the same chain with the model's variance is another file (the variances matter)
    plain = codec.encode(test_images[:2], chain=chain.with_variance("fixedlarge"), batch_size=2,
                         seed=1, method="bitsback")
    assert plain.data != enc.data and np.array_equal(codec.decode(plain.data).images, test_images[:2])


def test_progressive_on_an_analytic_chain(tiny_model, calibrated, test_images):
    chain = _dp_analytic_chain(tiny_model, calibrated, 3)
    codec = get_codec("progressive")(tiny_model)
    enc = codec.encode(test_images[:1], chain=chain, batch_size=1, chunk_bits=6.0,
                       variance="model", keep_latents=True)
    dec = codec.decode(enc.data, keep_latents=True)
    for a, b in zip(enc.stats.extra["latents"], dec.stats.extra["latents"]):
        assert np.array_equal(a.numpy(), b.numpy())


def test_encode_cli_dp_analytic_round_trip(tiny_ckpt, calibrated, tmp_path, capsys, test_npz,
                                           monkeypatch):
    out = tmp_path / "a.ddpm"
    assert main(["encode", str(test_npz), "-n", "2", "-o", str(out), "--ckpt", str(tiny_ckpt),
                 "--lossless", "--steps", "4", "--trajectory", "dp", "--variance", "analytic",
                 "--calibration", str(calibrated), "--method", "bitsback", "-q", "--json"]) == 0
    capsys.readouterr()
    header = read_header(out.read_bytes())
    assert header.num_steps == 4
    monkeypatch.setenv("DDPMCODEC_CACHE", str(tmp_path / "empty"))  # no calibration anywhere
    assert main(["decode", str(out), "-o", str(tmp_path / "d.npz"), "--ckpt", str(tiny_ckpt),
                 "-q", "--json"]) == 0
    with np.load(tmp_path / "d.npz") as f, np.load(test_npz) as g:
        assert np.array_equal(f["images"], g["images"][:2])
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_steps"] == 4
