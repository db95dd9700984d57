"""Exact files (both codecs) decode to the same pixels, and are written as the same bytes,
in other processes with other CPU kernels (ATEN_CPU_CAPABILITY default, avx2, avx512),
oneDNN off, 1 and 2 threads and the exact network evaluated one image at a time
(tests/exact_worker.py runs there). A float32 file under other kernels is refused: the
control that shows the settings do change the float32 network's numbers' contract."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmcodec.codec.api import get_codec
from ddpmcodec.io.models import load_model
from exact_worker import encode_options

WORKER = Path(__file__).with_name("exact_worker.py")
SETTINGS = [("default", ["--no-mkldnn", "--threads", "1", "--network-batch", "1"]),
            ("avx2", ["--threads", "2"]),
            ("avx512", ["--no-mkldnn", "--threads", "1"])]
# the default chain's kind (dp steps, analytic variances) but 10 of its steps: fast enough
OPTIONS = {"lossless": {"method": "bitsback", "chain_steps": 10}, "progressive": {}}


def _worker(capability: str, *args) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    run = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory, test_npz):
    """Per codec: (images npz, exact file, sha of the images) made in this process, and a
    float32 lossless file."""
    tmp = tmp_path_factory.mktemp("portable")
    with np.load(test_npz, allow_pickle=False) as f:
        images = f["images"][600:602]
    model = load_model()
    out = {}
    for mode, imgs in (("lossless", images), ("progressive", images[:1])):
        np.savez(tmp / f"{mode}.npz", images=imgs)
        enc = get_codec(mode)(model).encode(imgs, **encode_options(model,
                                                                   {"options": OPTIONS[mode]}))
        assert enc.header.device_kind == "exact-v2" and enc.header.num_threads == 0
        (tmp / f"{mode}.ddpm").write_bytes(enc.data)
        recon = (imgs if mode == "lossless"
                 else get_codec(mode)(model).decode(enc.data).images)
        out[mode] = (tmp / f"{mode}.npz", tmp / f"{mode}.ddpm", enc.data,
                     hashlib.sha256(np.ascontiguousarray(recon).tobytes()).hexdigest())
    f32 = get_codec("lossless")(model).encode(images, method="bitsback", exact=False)
    (tmp / "float32.ddpm").write_bytes(f32.data)
    return tmp, out


@pytest.mark.parametrize("capability,flags", SETTINGS)
def test_exact_files_are_the_same_everywhere(files, capability, flags):
    if capability == "avx512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU has no AVX-512")
    tmp, made = files
    jobs = [{"mode": mode, "decode": str(path), "images": str(npz),
             "encode": str(tmp / f"{mode}-{capability}.ddpm"), "options": OPTIONS[mode]}
            for mode, (npz, path, _, _) in made.items()]
    jobs.append({"decode": str(tmp / "float32.ddpm")})
    out = _worker(capability, *flags, "--jobs", json.dumps(jobs))
    assert out["capability"] == ("DEFAULT" if capability == "default" else capability.upper())
    assert out["mkldnn"] == ("--no-mkldnn" not in flags)
    for job, (mode, (_, _, data, pixels)) in zip(out["jobs"], made.items()):
        assert job["decoded"] == pixels, mode
        assert (tmp / f"{mode}-{capability}.ddpm").read_bytes() == data, mode
    float32 = out["jobs"][-1]  # the control: the float32 file does not survive the change
    assert "error" in float32, float32
    if capability != "avx512":  # refused by its header, before any network runs
        assert "encoded on cpu:" in float32["error"], float32
