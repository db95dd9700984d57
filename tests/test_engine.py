"""The fast engine equals the plain loop pair by pair, on the same counter-based noise.

* With an exact float64 denoiser (the analytic oracle) the two are bitwise equal, on the
  full chain and a respaced one: same noise, same float64 term math.
* With real networks in float32 the only difference is the network's rounding in other
  batch compositions: a micro UNet on the full chain, the embedded model on a 25-step
  chain of 4 test images.
* Fixed-shape padding, precision routing, results folders, resume and torchrun sharding.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.likelihood import bound_plain_loop
from ddpmcodec.core.oracle import DiscretePixels
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import to_model_space
from ddpmcodec.io.models import LoadedModel, build_unet, fingerprint
from ddpmcodec.io.results import load_arrays, read_results
from ddpmcodec.pipelines.engine import (
    Engine,
    Network,
    build_network,
    group_size,
    precision_context,
)

FULL = Diffusion.from_schedule("linear", 1000)


def four_level_law() -> DiscretePixels:
    probs = torch.zeros(256, dtype=torch.float64)
    probs[[0, 70, 160, 255]] = torch.tensor([0.2, 0.3, 0.4, 0.1], dtype=torch.float64)
    return DiscretePixels(probs)


def micro_model(seed: int = 0, variance_type: str = "fixedlarge") -> LoadedModel:
    """A UNet small enough for full-chain tests (8x8 images, 8 channels, no attention)."""
    torch.manual_seed(seed)
    unet = build_unet("tiny", sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                      down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"),
                      out_channels=6 if variance_type == "learned" else 3).eval()
    diffusion = Diffusion.from_schedule("linear", 1000, variance_type=variance_type)
    return LoadedModel(unet, diffusion, fingerprint(unet, diffusion), "micro", torch.device("cpu"))


@pytest.mark.parametrize("steps,variance_type", [(None, "fixedlarge"), (40, "fixedsmall")])
def test_engine_equals_plain_loop_bitwise_with_exact_denoiser(steps, variance_type):
    full = Diffusion.from_schedule("linear", 1000, variance_type=variance_type)
    chain = full.with_steps(steps)
    law = four_level_law()
    x0 = to_model_space(law.sample(3, (2, 4, 4), torch.Generator().manual_seed(0)))
    ids = torch.tensor([4, 17, 2])
    den = law.denoiser(full)
    ref = bound_plain_loop(den, chain, x0, ids, seed=5, model_dtype=torch.float64)
    eng = Engine.for_denoiser(den, chain, seed=5, batch=61, model_dtype=torch.float64)
    got = eng.bound(x0, ids)
    for name in ("vb", "xstart_mse", "eps_mse", "prior", "total"):
        assert torch.equal(got[name], ref[name]), name
    # another batch size and pair order give the very same numbers
    eng2 = Engine.for_denoiser(den, chain, seed=5, batch=7, model_dtype=torch.float64)
    K = chain.num_steps
    perm = torch.randperm(3 * K, generator=torch.Generator().manual_seed(1))
    img, k = torch.arange(3).repeat_interleave(K)[perm], torch.arange(K).repeat(3)[perm]
    terms = eng2.pair_terms(x0, ids, img, k)
    assert torch.equal(terms["vb"], ref["vb"][img, k])


@pytest.mark.parametrize("steps,variance_type", [(None, "fixedlarge"), (50, "learned")])
def test_engine_equals_plain_loop_micro_unet(steps, variance_type):
    model = micro_model(1, variance_type)
    chain = model.diffusion.with_steps(steps)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    x0 = (torch.round((x0 + 1) * 127.5) / 127.5 - 1)
    ids = torch.tensor([0, 1])
    ref = bound_plain_loop(model.denoiser(), chain, x0, ids, seed=3)
    eng = Engine.for_model(model, chain, seed=3, batch=96)
    got = eng.bound(x0, ids)
    # float32 network rounding may differ with the batch composition, nothing else
    np.testing.assert_allclose(got["vb"].numpy(), ref["vb"].numpy(), rtol=1e-4, atol=1e-7)
    assert float((got["total"] - ref["total"]).abs().max()) < 1e-4


def test_embedded_model_fast_equals_plain_25_steps(embedded_model, test_images):
    """A 25-step chain (not the full chain, to keep it fast), 4 test images, seed 0.

    Tolerance 1e-6 bits/dim, per image and per term: the committed bench
    (benchmarks/results/bench_engine_cpu_K20.json, docs/engine.md) measured the fast
    engine against the plain loop on a 20-step chain of test images 0-1 at 2.1e-8 per
    image; on this 25-step chain (images 0-7, batch 48) the two were bitwise equal.
    1e-6 leaves 50x the committed difference for float32
    rounding on other CPUs and batch layouts, and is far below any real difference in
    noise or term math: with noise seed 1 instead of 0 in the fast engine the four totals
    here move by 2.5e-2, 2.4e-2, 4.1e-4 and 9.0e-5 bits/dim (the former tolerance, 0.002,
    passed the last two)."""
    chain = embedded_model.diffusion.with_steps(25)
    x0 = to_model_space(test_images[:4])
    ids = torch.arange(4)
    ref = bound_plain_loop(embedded_model.denoiser(), chain, x0, ids, seed=0)
    got = Engine.for_model(embedded_model, chain, seed=0, batch=48).bound(x0, ids)
    diff = (got["total"] - ref["total"]).abs()
    assert float(diff.max()) < 1e-6, diff
    assert float((got["vb"] - ref["vb"]).abs().max()) < 1e-6
    # the x0-prediction's MSE (not bits): the prediction multiplies eps by up to
    # sqrt(1/abar - 1) = 157, so float32 rounding of eps moves it relatively; measured on an
    # AVX-512 CPU (where oneDNN rounds batches of 48 and of 1 differently): 4.2e-6 of the
    # value, against an MSE range of 5.9e-5..1.6. A real difference (another noise draw)
    # moves it by percents.
    np.testing.assert_allclose(got["xstart_mse"].numpy(), ref["xstart_mse"].numpy(), rtol=1e-5, atol=0)


def test_fixed_shape_padding_changes_nothing():
    law = four_level_law()
    chain = FULL.with_steps(30)
    x0 = to_model_space(law.sample(2, (1, 4, 4), torch.Generator().manual_seed(3)))
    seen = []

    def den(x, t):
        seen.append(x.shape[0])
        return law.denoiser(FULL)(x, t)
    plain = Engine.for_denoiser(law.denoiser(FULL), chain, 1, batch=16, model_dtype=torch.float64)
    padded = Engine(Network(den, 16, torch.float64, fixed_shape=True), chain, 1)
    assert padded.padded and not plain.padded
    a, b = plain.bound(x0, [0, 1]), padded.bound(x0, [0, 1])
    assert torch.equal(a["vb"], b["vb"])
    assert set(seen) == {16}  # 60 pairs: 4 calls, the last padded from 12 to 16


def test_low_timesteps_go_to_the_fp32_network():
    """Routing for --fp32-timesteps: each network sees only its timesteps, and the terms
    are those of a single network when both compute the same function."""
    law = four_level_law()
    chain = FULL.with_steps(50)
    x0 = to_model_space(law.sample(2, (1, 4, 4), torch.Generator().manual_seed(4)))
    exact = law.denoiser(FULL)
    seen = {"low": [], "main": []}

    def recording(name):
        def den(x, t):
            seen[name].append(t.clone())
            return exact(x, t)
        return den
    routed = Engine(Network(recording("main"), 8, torch.float64), chain, 2,
                    fp32_network=Network(recording("low"), 8, torch.float64), fp32_timesteps=300)
    single = Engine.for_denoiser(exact, chain, 2, batch=8, model_dtype=torch.float64)
    assert torch.equal(routed.bound(x0, [0, 1])["vb"], single.bound(x0, [0, 1])["vb"])
    low, main = torch.cat(seen["low"]), torch.cat(seen["main"])
    assert bool((low < 300).all()) and bool((main >= 300).all())
    assert len(low) + len(main) == 2 * chain.num_steps


def test_bf16_autocast_is_applied_and_close():
    model = micro_model(2)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 10, 100, 900])
    f32 = build_network(model.unet, "cpu", "fp32")(x.double(), t)
    bf16 = build_network(model.unet, "cpu", "bf16")(x.double(), t)
    err = float((f32.float() - bf16.float()).abs().max())
    assert 0 < err < 0.1  # bf16 rounding is there, and small
    with precision_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_fp64_network_is_a_copy_and_tf32_graphs_need_cuda():
    model = micro_model(3)
    net = build_network(model.unet, "cpu", "fp64")
    assert next(model.unet.parameters()).dtype == torch.float32
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([3, 500])
    assert net(x, t).dtype == torch.float64
    if not torch.cuda.is_available():
        with pytest.raises(DDPMCodecError, match="CUDA"):
            build_network(model.unet, "cpu", "tf32")
        with pytest.raises(DDPMCodecError, match="CUDA"):
            build_network(model.unet, "cpu", "fp32", cuda_graph=True)


def test_group_size():
    assert group_size(64, 1000, 10, padded=False) == 1
    assert group_size(512, 100, 1000, padded=False) == 6
    g = group_size(512, 100, 1000, padded=True)  # 128 images * 100 pairs = 25 * 512
    assert (g * 100) % 512 == 0
    g = group_size(512, 1000, 3, padded=True)
    assert 1 <= g <= 3
    assert group_size(512, 1000, 0, padded=True) == 1


# -- results folders through run_nll ---------------------------------------------------------
def _images(n, seed=0):
    from ddpmcodec.io.data import ImageSet, images_digest
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return ImageSet(arr, {"kind": "test", "num_images": n, "digest": images_digest(arr)})


def test_run_nll_fast_equals_plain_and_records_engine(tmp_path):
    from ddpmcodec.pipelines.nll import run_nll
    model, images = micro_model(4), _images(3)
    plain = run_nll(model, images, tmp_path / "plain", steps=20, progress=False)
    fast = run_nll(model, images, tmp_path / "fast", steps=20, batch_size=7, progress=False,
                   engine="fast")
    assert plain["config"]["engine"] == "plain" and fast["config"]["engine"] == "fast"
    assert fast["config"]["estimator"] == "full" and fast["config"]["model_dtype"] == "float32"
    a, b = load_arrays(tmp_path / "plain"), load_arrays(tmp_path / "fast")
    assert set(a) == set(b)
    for name in ("vb", "xstart_mse", "eps_mse", "total"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-7)
    assert fast["run"]["batch_size"] == 7 and fast["run"]["network"]["precision"] == "fp32"
    with pytest.raises(DDPMCodecError, match="different"):  # another engine: another run
        run_nll(model, images, tmp_path / "fast", steps=20, progress=False)
    with pytest.raises(DDPMCodecError, match="need --engine fast"):
        run_nll(model, images, tmp_path / "x", steps=20, progress=False, estimator="importance")


def test_fast_run_resumes_after_a_crash(tmp_path, monkeypatch):
    from ddpmcodec.pipelines import nll as nll_mod
    model, images = micro_model(5), _images(5)
    ref = nll_mod.run_nll(model, images, tmp_path / "ref", steps=10, batch_size=10,
                          progress=False, engine="fast")
    real, calls, crash_on = Engine.bound, [], [3]

    def flaky(self, x0, ids, progress=None):
        calls.append(len(ids))
        if len(calls) == crash_on[0]:
            raise RuntimeError("simulated crash")
        return real(self, x0, ids, progress)
    monkeypatch.setattr(Engine, "bound", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        nll_mod.run_nll(model, images, tmp_path / "run", steps=10, batch_size=10,
                        progress=False, engine="fast")
    assert read_results(tmp_path / "run")["status"] == "running"
    calls.clear()
    crash_on[0] = None
    res = nll_mod.run_nll(model, images, tmp_path / "run", steps=10, batch_size=10,
                          progress=False, engine="fast")
    assert sum(calls) == 3  # 1 image per group; the first two were not recomputed
    np.testing.assert_array_equal(load_arrays(tmp_path / "run")["vb"], load_arrays(tmp_path / "ref")["vb"])
    assert res["summary"] == ref["summary"]


@pytest.mark.slow
def test_torchrun_shards_and_merges(tmp_path):
    """Two CPU ranks under torchrun write one results folder equal to a single process's
    (three Python processes start: about a minute on a loaded 2-core machine)."""
    from ddpmcodec.io.models import save_model
    model = micro_model(6)
    save_model(model.unet, model.diffusion, tmp_path / "ckpt")
    images = _images(5, seed=1)
    np.savez(tmp_path / "data.npz", images=images.images)
    args = ["nll", "--ckpt", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data.npz"),
            "--steps", "12", "--device", "cpu", "-b", "8", "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "ddpmcodec", *args, "-o", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "2", "-m", "ddpmcodec", *args,
                            "-o", str(tmp_path / "two")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    lines = [ln for ln in multi.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    res = read_results(tmp_path / "two")
    assert res["status"] == "complete" and res["run"]["world_size"] == 2
    a, b = load_arrays(tmp_path / "one"), load_arrays(tmp_path / "two")
    np.testing.assert_array_equal(b["image_id"], np.arange(5))
    np.testing.assert_allclose(b["vb"], a["vb"], rtol=1e-4, atol=1e-7)
    assert json.loads(lines[0])["num_images"] == 5


@pytest.mark.slow
def test_compiled_network_equals_eager():
    """torch.compile (inductor, CPU) on fixed-shape chunks: same terms as eager. ~2 min."""
    model = micro_model(7)
    chain = FULL.with_steps(30)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    eager = Engine.for_model(model, chain, seed=1, batch=16).bound(x0, [0, 1])
    comp = Engine.for_model(model, chain, seed=1, batch=16, compile=True)
    assert comp.padded
    got = comp.bound(x0, [0, 1])
    np.testing.assert_allclose(got["vb"].numpy(), eager["vb"].numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile,graphs", [(False, False), (False, True), (True, False)])
def test_cuda_engine_equals_cpu_plain_loop(embedded_model, test_images, compile, graphs):
    from ddpmcodec.io.models import load_model
    gpu = load_model(None, "cuda")
    chain = gpu.diffusion.with_steps(50)
    x0 = to_model_space(test_images[:8])
    ref = bound_plain_loop(embedded_model.denoiser(), chain, x0, torch.arange(8), seed=0)
    got = Engine.for_model(gpu, chain, seed=0, batch=128, compile=compile,
                           cuda_graph=graphs).bound(x0, torch.arange(8))
    assert float((got["total"] - ref["total"]).abs().max()) < 0.002


def test_bench_table_and_json(tmp_path, capsys):
    from ddpmcodec.cli import main
    from ddpmcodec.io.models import save_model
    model = micro_model(8)
    save_model(model.unet, model.diffusion, tmp_path / "ckpt")
    np.savez(tmp_path / "data.npz", images=_images(3, seed=2).images)
    out = tmp_path / "bench"
    code = main(["bench", "--ckpt", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data.npz"),
                 "-n", "3", "--steps", "12", "--nfe", "4,8", "--device", "cpu", "-b", "16",
                 "--reference-images", "2", "-o", str(out), "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    s = json.loads(captured.out)
    rows = {(r["engine"], r["precision"]): r for r in s["full_bound"]}
    assert set(rows) == {("plain", "fp32"), ("fast", "fp32"), ("fast", "bf16"), ("fast", "fp64")}
    assert rows[("fast", "fp32")]["max_diff_vs_plain"] < 1e-4
    assert rows[("fast", "fp32")]["max_diff_vs_fp64"] < 1e-3
    assert rows[("fast", "fp64")]["max_diff_vs_fp64"] == 0.0
    assert all(r["images_per_s"] > 0 and r["x_plain"] > 0 for r in s["full_bound"])
    est = s["estimator"]
    assert [e["nfe"] for e in est] == [4, 8] and all(e["nfe_per_image"] <= e["nfe"] for e in est)
    saved = read_results(out)
    assert saved["kind"] == "bench" and saved["summary"]["estimator"][1]["nfe"] == 8
    md = (out / "bench.md").read_text()
    assert "| plain | fp32 |" in md and "NFE/image" in md
