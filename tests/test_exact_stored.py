"""Exact files written by an earlier ddpmcodec decode to the same pixels, and the encoder
of today writes them again byte for byte: the exact network's integers and the coders'
inputs are part of the file format, so a change of the code that moved one bit would fail
here (the speed changes of the exact network are checked against these files).

tests/data holds, made by revision 3a0269c (before the dense tables and the folded
rounding of the exact network) with the embedded model from images 600-601 of
../shared/data/cifar10-test-800.npz, on an AVX-512 CPU:

* exact-v1-lossless-K10.ddpm: lossless, bits-back, the default chain's kind on 10 steps;
* exact-v1-progressive.ddpm: progressive at the defaults, image 600;
* exact-v1-pixels.npz: the two images, and the progressive file's mean reconstruction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpmcodec.codec.api import decode_bytes, get_codec
from ddpmcodec.codec.lossless.params import default_chain

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def stored():
    with np.load(DATA / "exact-v1-pixels.npz", allow_pickle=False) as f:
        return {"images": f["images"], "mean": f["progressive_mean"],
                "lossless": (DATA / "exact-v1-lossless-K10.ddpm").read_bytes(),
                "progressive": (DATA / "exact-v1-progressive.ddpm").read_bytes()}


def test_stored_exact_files_decode(stored, embedded_model):
    lossless = decode_bytes(embedded_model, stored["lossless"])
    assert lossless.header.device_kind == "exact-v1"
    assert np.array_equal(lossless.images, stored["images"])
    progressive = decode_bytes(embedded_model, stored["progressive"])
    assert progressive.header.device_kind == "exact-v1"
    assert np.array_equal(progressive.images, stored["mean"])


def test_stored_exact_files_are_written_again(stored, embedded_model):
    images = stored["images"]
    lossless = get_codec("lossless")(embedded_model).encode(
        images, method="bitsback", chain=default_chain(embedded_model, 10))
    assert lossless.data == stored["lossless"]
    progressive = get_codec("progressive")(embedded_model).encode(images[:1])
    assert progressive.data == stored["progressive"]
