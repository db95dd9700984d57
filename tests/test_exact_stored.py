"""Exact files written by an earlier ddpmcodec, on another machine, decode to the same
pixels here, and the encoder of today writes them again byte for byte: the exact network's
integers, the chain's constants and the coders' inputs are part of the file format, so a
change of the code (or a processor) that moved one bit fails here.

tests/data holds, made with the embedded model from images 600-601 of
../shared/data/cifar10-test-800.npz:

* exact-v2-*: by revision ffbb117 (the first exact-v2 encoder) on an AMD EPYC (AVX-512,
  MKL's AMD code path): lossless bits-back on the default chain's kind in 10 steps
  (``-lossless-K10``), progressive at the defaults of image 600 (``-progressive``), and
  the two images with the progressive file's mean reconstruction (``-pixels.npz``). Test
  runs on an Intel CPU decode them across processor vendors.
* exact-v1-*: the same by revision 3a0269c on an Intel Xeon (AVX-512), whose chains took
  torch.sqrt's roots. Its progressive file needs one root that Intel's MKL rounds below
  the correctly rounded value (sqrt(1/abar - 1) at chain step 4): it decodes exactly with
  those roots on any machine, and with this machine's torch.sqrt only where that gives
  them (elsewhere the decoder says why it cannot).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ddpmcodec.codec.progressive.decoder as progressive_decoder
from ddpmcodec.codec.api import decode_bytes, get_codec
from ddpmcodec.codec.lossless.params import default_chain
from ddpmcodec.codec.network import chain_for
from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.errors import DDPMCodecError

DATA = Path(__file__).parent / "data"


def _stored(version: str) -> dict:
    with np.load(DATA / f"{version}-pixels.npz", allow_pickle=False) as f:
        return {"images": f["images"], "mean": f["progressive_mean"],
                "lossless": (DATA / f"{version}-lossless-K10.ddpm").read_bytes(),
                "progressive": (DATA / f"{version}-progressive.ddpm").read_bytes()}


@pytest.fixture(scope="module")
def v2():
    return _stored("exact-v2")


@pytest.fixture(scope="module")
def v1():
    return _stored("exact-v1")


def test_stored_exact_v2_files_decode(v2, embedded_model):
    lossless = decode_bytes(embedded_model, v2["lossless"])
    assert lossless.header.device_kind == "exact-v2"
    assert np.array_equal(lossless.images, v2["images"])
    progressive = decode_bytes(embedded_model, v2["progressive"])
    assert progressive.header.device_kind == "exact-v2"
    assert np.array_equal(progressive.images, v2["mean"])


def test_stored_exact_v2_files_are_written_again(v2, embedded_model):
    images = v2["images"]
    lossless = get_codec("lossless")(embedded_model).encode(
        images, method="bitsback", chain=default_chain(embedded_model, 10))
    assert lossless.data == v2["lossless"]
    progressive = get_codec("progressive")(embedded_model).encode(images[:1])
    assert progressive.data == v2["progressive"]


def _correctly_rounded_sqrt(values) -> list[float]:
    """float64 square roots rounded once from exact rationals (no floating point)."""
    from fractions import Fraction
    from math import isqrt
    out = []
    for v in values:
        f = Fraction(float(v))
        # r = floor(sqrt(f) 2^e), e large enough for 120 significant bits
        e = 124 - (f.numerator.bit_length() - f.denominator.bit_length()) // 2
        scaled = f * (1 << (2 * e))
        r = isqrt(scaled.numerator // scaled.denominator)
        # the root lies in [r, r + 1) 2^-e; the root of a double is never within 2^-110
        # (relative) of a rounding midpoint, so rounding that interval's middle is exact
        out.append(float(Fraction(2 * r + 1, 2 << e)))
    return out


def test_chain_constants_are_correctly_rounded(embedded_model):
    """The roots of every chain an exact file can hold (the full schedule and respaced
    ones) equal square roots rounded once from exact rationals; torch.sqrt's do not on
    every processor (MKL's vector math), which is what broke exact-v1 files."""
    full = embedded_model.diffusion
    for chain in (full, full.respace(range(0, 1000, 37)), full.respace([0, 1, 4, 7, 11, 999])):
        ac, prev = chain.alphas_cumprod, chain.alphas_cumprod_prev
        pairs = [(chain.sqrt_alphas_cumprod, ac), (chain.sqrt_one_minus_alphas_cumprod, 1.0 - ac),
                 (chain.sqrt_recip_alphas_cumprod, 1.0 / ac),
                 (chain.sqrt_recipm1_alphas_cumprod, 1.0 / ac - 1.0)]
        for got, arg in pairs:
            assert got.tolist() == _correctly_rounded_sqrt(arg.tolist())
        coef1 = chain.betas * torch.tensor(_correctly_rounded_sqrt(prev.tolist()),
                                           dtype=torch.float64) / (1.0 - ac)
        assert torch.equal(chain.posterior_mean_coef1, coef1)


def _writers_chain(*args, **kwargs) -> Diffusion:
    """The exact-v1 progressive file's chain as its writer computed it: correctly rounded
    roots but sqrt(1/abar - 1) at chain step 4, which Intel's MKL rounded one ulp low."""
    chain = chain_for(*args, **kwargs).with_roots("ieee")
    root = chain.sqrt_recipm1_alphas_cumprod
    root[4] = float(np.nextafter(float(root[4]), -np.inf))
    return chain


def test_stored_exact_v1_files_decode_with_their_writers_roots(v1, embedded_model, monkeypatch):
    lossless = decode_bytes(embedded_model, v1["lossless"])  # its chain has no such root
    assert lossless.header.device_kind == "exact-v1"
    assert np.array_equal(lossless.images, v1["images"])
    header = get_codec("progressive")(embedded_model).decode(v1["progressive"], upto_step=1).header
    assert header.device_kind == "exact-v1"
    here = chain_for(header, embedded_model).sqrt_recipm1_alphas_cumprod  # torch.sqrt's
    if torch.equal(here, _writers_chain(header, embedded_model).sqrt_recipm1_alphas_cumprod):
        assert np.array_equal(decode_bytes(embedded_model, v1["progressive"]).images, v1["mean"])
    else:  # this processor's MKL rounds it otherwise: a clear refusal, not other pixels
        with pytest.raises(DDPMCodecError, match="exact-v1 file.*decodes where those roots"):
            decode_bytes(embedded_model, v1["progressive"])
    monkeypatch.setattr(progressive_decoder, "chain_for", _writers_chain)
    assert np.array_equal(decode_bytes(embedded_model, v1["progressive"]).images, v1["mean"])


def test_exact_decode_does_not_load_torchs_compiler():
    """An exact file needs no deterministic-algorithms switch, whose first use imports
    torch's compiler (1.6 s of a cold one-image decode): a fresh process decodes the
    stored progressive file without it."""
    import json
    import subprocess
    import sys
    script = (
        "import json, sys\n"
        "from ddpmcodec.codec.api import decode_bytes\n"
        "from ddpmcodec.io.models import load_model\n"
        f"data = open({str(DATA / 'exact-v2-progressive.ddpm')!r}, 'rb').read()\n"
        "decode_bytes(load_model(lazy=True), data)\n"
        "print(json.dumps([m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
