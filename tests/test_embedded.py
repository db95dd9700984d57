"""Pins the embedded model: its full fingerprint, and one committed bound recomputed.

`reports/results/nll-test-K100` was written by `ddpmcodec report` (fast engine, fp32,
seed 0, 100 evenly spaced steps, the first 16 images of ../shared/data/cifar10-test-800.npz,
64 pairs per network call). Noise is a counter-based function of (seed, image index,
timestep), so the first images of the same data, seed and chain reproduce their per-image
totals whatever the batch size; only the float32 network's rounding in other batch
compositions may differ.

Measured (this CPU, images 0 and 1 at 64, 16 and 200 pairs per call): |recomputed -
committed| <= 1.7e-8 bits/dim per image; the fast engine and the plain loop agree to
2.1e-8 per image on a 20-step chain (benchmarks/results/bench_engine_cpu_K20.json, quoted in
docs/engine.md). Tolerance 1e-6 bits/dim: about 50x the committed and 60x the measured
disagreement, and 560x below what a change of noise alone does to
one image's total (measured: seed 1 instead of 0 moves image 0 by 5.6e-4 bits/dim).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "results" / "nll-test-K100"
FINGERPRINT = "e93e3137a8737aa2"  # README "The embedded model"; 16 hex digits of SHA-256
TOLERANCE = 1e-6                  # bits/dim per image; see the module docstring


def test_embedded_fingerprint(embedded_model):
    import torch

    from ddpmcodec.io.calibration import load_calibration
    from ddpmcodec.io.models import DEFAULT_CHECKPOINT, fingerprint
    fp = embedded_model.fingerprint
    assert fp == FINGERPRINT
    assert embedded_model.diffusion.variance_type == "fixedlarge"
    assert embedded_model.diffusion.num_steps == 1000
    # what ships with the model and every committed result were made by this very model
    assert load_calibration(DEFAULT_CHECKPOINT / "calibration.json", fp).fingerprint == fp
    assert json.loads((DEFAULT_CHECKPOINT / "proposal.json").read_text())["source"]["fingerprint"] == fp
    committed = sorted((ROOT / "reports" / "results").glob("*/results.json"))
    assert COMMITTED / "results.json" in committed
    for res in committed:
        assert json.loads(res.read_text())["config"]["model"]["fingerprint"] == fp, res
    # and it is a hash of these weights: recomputed it agrees, the last bit of one weight changes it
    unet, diffusion = embedded_model.unet, embedded_model.diffusion
    assert fingerprint(unet, diffusion) == fp
    w = dict(unet.named_parameters())["mid_block.resnets.0.conv1.weight"]
    with torch.no_grad():
        before = w.view(-1)[0].clone()
        w.view(-1)[0] = torch.nextafter(before, torch.tensor(float("inf")))
        try:
            assert fingerprint(unet, diffusion) != fp
        finally:
            w.view(-1)[0] = before
    assert fingerprint(unet, diffusion) == fp


def test_committed_k100_bound_is_reproduced(embedded_model, test_npz, tmp_path):
    """Image 0 recomputed with 48 pairs per call (the committed run used 64): 100 network
    evaluations, about 25 s on a 2-core CPU (more under load)."""
    from ddpmcodec.io.data import load_images
    from ddpmcodec.pipelines.nll import run_nll
    res = json.loads((COMMITTED / "results.json").read_text())
    cfg = res["config"]
    assert cfg["data"]["path"].endswith("cifar10-test-800.npz") and cfg["seed"] == 0
    assert cfg["chain"]["num_steps"] == 100 and cfg["estimator"] == "full"
    assert cfg["model_dtype"] == "float32" and cfg["decoder_cdf"] == "exact"
    with np.load(COMMITTED / "arrays.npz", allow_pickle=False) as f:
        committed = {k: f[k] for k in ("image_id", "total", "vb", "prior")}
    assert committed["image_id"][0] == 0

    images = load_images(test_npz, num_images=1)
    out = run_nll(embedded_model, images, tmp_path / "k100", steps=100, batch_size=48,
                  seed=cfg["seed"], progress=False, engine="fast")
    assert out["config"]["chain"]["timesteps"] == cfg["chain"]["timesteps"]
    with np.load(tmp_path / "k100" / "arrays.npz", allow_pickle=False) as f:
        total, vb, prior = f["total"], f["vb"], f["prior"]
    diff = np.abs(total - committed["total"][:1])
    assert np.all(diff < TOLERANCE), diff
    # term by term too (the prior is closed form: float64 rounding only)
    assert float(np.abs(vb - committed["vb"][:1]).max()) < TOLERANCE
    np.testing.assert_allclose(prior, committed["prior"][:1], rtol=1e-12, atol=1e-15)
