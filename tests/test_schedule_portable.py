"""The schedule, and so the model fingerprint, are the same bits under every CPU kernel.

``torch.linspace`` gives other last bits under other kernels (with ATEN_CPU_CAPABILITY
default, as on a CPU without AVX2, 216 of the 1000 linear betas differ), and the
fingerprint is hashed from the betas, so a user on such a CPU was told that the shipped
calibration "calibrates another model". The betas are now correctly rounded operations on
exact rationals (:func:`ddpmcodec.core.diffusion.linear_betas`). Checked here in other
processes under the kernels torch picks without AVX2, running the README's main job and a
default encode and decode.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from ddpmcodec.core.diffusion import beta_schedule, cosine_betas, linear_betas
from ddpmcodec.io.data import SAMPLE_IMAGES, load_images

FINGERPRINT = "e93e3137a8737aa2"  # the embedded model (README "The embedded model")
PROBE = ("import hashlib, json; from ddpmcodec.io.models import load_model; m = load_model(); "
         "print(json.dumps({'fingerprint': m.fingerprint, 'betas': hashlib.sha256("
         "m.diffusion.betas.numpy().tobytes()).hexdigest()}))")


def _run(args, cwd, capability="default", **kw):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          **kw)


def _cli(*args):
    return [sys.executable, "-m", "ddpmcodec", *args]


def test_linear_betas_are_correctly_rounded_linspace():
    T, start, end = 1000, 1e-4, 0.02
    betas = linear_betas(start, end, T)
    step = Fraction((end - start) / (T - 1))  # the one rounded step, then one rounding each
    for i in (0, 1, 250, 499, 500, 777, 999):
        exact = Fraction(start) + step * i if i < T // 2 else Fraction(end) - step * (T - 1 - i)
        assert betas[i] == float(exact)
    assert betas[0] == start and betas[-1] == end
    assert all(b > a for a, b in zip(betas, betas[1:]))
    # within an ulp of the exact rational linspace, like any linspace
    for i, b in enumerate(betas):
        ideal = Fraction(start) + (Fraction(end) - Fraction(start)) * i / (T - 1)
        assert abs(Fraction(b) - ideal) <= Fraction(abs(b)) * 2 ** -51


def test_cosine_betas_match_the_float_formula():
    import math
    betas = cosine_betas(1000)

    def abar(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    naive = [min(1 - abar(i + 1) / abar(i), 0.999) for i in range(1000)]
    # the float formula loses digits to cancellation in 1 - ratio; the decimal one does not
    assert max(abs(a - b) / b for a, b in zip(betas, naive)) < 1e-10
    assert betas[-1] == 0.999


def test_schedule_bytes_and_fingerprint_under_other_kernels(tmp_path, embedded_model):
    here = {"fingerprint": embedded_model.fingerprint,
            "betas": hashlib.sha256(embedded_model.diffusion.betas.numpy().tobytes()).hexdigest()}
    assert here["fingerprint"] == FINGERPRINT
    assert torch.equal(beta_schedule("linear", 1000),
                       torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)) or \
        torch.backends.cpu.get_cpu_capability() == "DEFAULT"  # the AVX2/AVX-512 kernels' bits
    for capability in ("default", "avx2"):
        out = _run([sys.executable, "-c", PROBE], tmp_path, capability)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == here, capability


@pytest.mark.parametrize("capability", ["default"])
def test_readme_main_job_and_default_codec_under_other_kernels(tmp_path, capability):
    # the README's main job on one shipped image: it needs the shipped calibration, which
    # names the model by its fingerprint
    nll = _run(_cli("nll", "--steps", "25", "--trajectory", "dp", "--variance", "analytic",
                    "-n", "1", "-o", str(tmp_path / "nll"), "--json"), tmp_path, capability)
    assert nll.returncode == 0, nll.stderr
    assert json.loads(nll.stdout)["fingerprint"] == FINGERPRINT
    # a default (lossless, dp chain from the calibration) encode and decode of two images
    enc = _run(_cli("encode", "-n", "2", "-o", str(tmp_path / "two.ddpm"), "--method",
                    "bitsback"), tmp_path, capability)
    assert enc.returncode == 0, enc.stderr
    dec = _run(_cli("decode", str(tmp_path / "two.ddpm"), "-o", str(tmp_path / "two.npz")),
               tmp_path, capability)
    assert dec.returncode == 0, dec.stderr
    with np.load(tmp_path / "two.npz", allow_pickle=False) as f:
        assert np.array_equal(f["images"], load_images(SAMPLE_IMAGES, num_images=2).images)
