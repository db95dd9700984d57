"""The codecs' command lines load a checkpoint without diffusers when its fingerprint is
known for its exact file contents (remembered after one full load), and the fingerprint
of a lazy model is the full load's: checked in fresh processes, where "diffusers" in
sys.modules tells the truth."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
from ddpmcodec.cli import main
ckpt, images, out = sys.argv[1:4]
codes = [main(["encode", images, "-o", out, "--ckpt", ckpt, "--method", "bitsback",
               "--steps", "2", "--trajectory", "even", "-q"]),
         main(["decode", out, "-o", out + ".npz", "--ckpt", ckpt, "-q"])]
print(json.dumps({"codes": codes, "diffusers": any(m.split(".")[0] == "diffusers"
                                                   for m in sys.modules)}))
"""


def _run(env, *args) -> dict:
    run = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_known_checkpoints_code_without_diffusers(tmp_path, tiny_ckpt, test_images):
    from ddpmcodec.io.models import load_model
    env = dict(os.environ, DDPMCODEC_CACHE=str(tmp_path / "cache"))
    src = tmp_path / "x.npz"
    np.savez(src, images=test_images[:2])
    first = _run(env, tiny_ckpt, src, tmp_path / "a.ddpm")  # unknown: a full load, remembered
    assert first == {"codes": [0, 0], "diffusers": True}
    again = _run(env, tiny_ckpt, src, tmp_path / "b.ddpm")
    assert again == {"codes": [0, 0], "diffusers": False}
    assert (tmp_path / "a.ddpm").read_bytes() == (tmp_path / "b.ddpm").read_bytes()
    assert np.array_equal(np.load(str(tmp_path / "b.ddpm") + ".npz")["images"], test_images[:2])
    assert load_model(tiny_ckpt).fingerprint == json.loads(
        next((tmp_path / "cache").rglob("*.json")).read_text()).popitem()[1]
