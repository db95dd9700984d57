"""Exact lossless files decode to the same pixels, and are written as the same bytes, in
other processes with other CPU kernels (ATEN_CPU_CAPABILITY), oneDNN off and other
thread counts (tests/exact_worker.py runs there)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpmcodec.codec.lossless.codec import BitsBackCodec
from ddpmcodec.io.models import load_model

WORKER = Path(__file__).with_name("exact_worker.py")
SETTINGS = [("default", ["--no-mkldnn", "--threads", "1"]), ("avx2", ["--threads", "2"])]


def _worker(capability: str, *args) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    run = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("capability,flags", SETTINGS)
def test_exact_lossless_file_is_the_same_everywhere(tmp_path, test_npz, capability, flags):
    with np.load(test_npz, allow_pickle=False) as f:
        images = f["images"][600:602]
    np.savez(tmp_path / "images.npz", images=images)
    enc = BitsBackCodec(load_model()).encode(images, exact=True, method="bitsback")
    assert enc.header.device_kind == "exact-v1" and enc.header.num_threads == 0
    (tmp_path / "here.ddpm").write_bytes(enc.data)
    out = _worker(capability, *flags, "--decode", str(tmp_path / "here.ddpm"),
                  "--images", str(tmp_path / "images.npz"), "--exact", "--method", "bitsback",
                  "--encode", str(tmp_path / "there.ddpm"))
    assert out["capability"] == capability.upper() or capability == "default"
    assert out["decoded"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert (tmp_path / "there.ddpm").read_bytes() == enc.data
