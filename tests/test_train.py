"""`ddpmcodec train`: objectives, schedules, exact resume, DDP (gloo) against one process,
a short real training run whose checkpoint `ddpmcodec nll` loads, and the benchmark script."""
from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpmcodec.cli import main
from ddpmcodec.core.likelihood import vb_terms_bpd
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.models import build_unet, fingerprint, load_model
from ddpmcodec.pipelines.train import (
    EMA,
    RunOptions,
    TrainConfig,
    Trainer,
    _Objective,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def one_thread():
    """Bitwise comparisons against subprocesses run with OMP_NUM_THREADS=1 need the same
    thread count here (CPU kernels may block their reductions by thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def train_images(train_npz):
    with np.load(train_npz, allow_pickle=False) as f:
        return f["images"]


@pytest.fixture(scope="module")
def eval_images(test_npz):
    with np.load(test_npz, allow_pickle=False) as f:
        return f["images"][:32]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_state(folder):
    return torch.load(Path(folder) / "train_state.pt", map_location="cpu", weights_only=True)


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- recipe pieces: closed forms ------------------------------------------------------------
def test_lr_warmup_and_ema_decay_closed_forms():
    cfg = TrainConfig.preset("tiny", lr=2e-4, warmup=4, ema_decay=0.9995)
    assert [cfg.lr_at(n) for n in range(6)] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])
    assert cfg.ema_decay_at(0) == pytest.approx(0.1)  # (1+0)/(10+0)
    assert cfg.ema_decay_at(90) == pytest.approx(91 / 100)
    assert cfg.ema_decay_at(10 ** 6) == 0.9995  # capped
    const = TrainConfig.preset("tiny", warmup=0, ema_warmup=False, ema_decay=0.9999)
    assert const.lr_at(0) == const.lr and const.ema_decay_at(0) == 0.9999
    paper = TrainConfig.preset("paper")
    assert (paper.batch_size, paper.lr, paper.warmup, paper.grad_clip, paper.variance) == \
        (128, 2e-4, 5000, 1.0, "fixedlarge")


def test_ema_update_is_the_moving_average():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    ema = EMA(net)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update(net, 0.9)
    for e, s, p in zip(ema.module.parameters(), start, net.parameters()):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p, rtol=1e-6, atol=1e-7)
        assert not e.requires_grad


@pytest.mark.parametrize("kwargs", [dict(objective="simple", variance="learned"),
                                    dict(objective="hybrid", variance="fixedlarge"),
                                    dict(objective="nope"), dict(lr=0), dict(ema_decay=1.0),
                                    dict(grad_clip=-1), dict(batch_size=0)])
def test_bad_recipes_are_user_errors(kwargs):
    with pytest.raises(DDPMCodecError):
        TrainConfig.preset("tiny", **kwargs)
    with pytest.raises(DDPMCodecError, match="unknown model config"):
        TrainConfig.preset("huge")


# -- objectives ----------------------------------------------------------------------------
class FixedOutput(torch.nn.Module):
    """A 'network' whose output is one trainable tensor: gradients w.r.t. the output."""

    def __init__(self, out):
        super().__init__()
        self.out = torch.nn.Parameter(out)

    def forward(self, x, t):
        return SimpleNamespace(sample=self.out * 1.0)


def _objective_case(objective, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = TrainConfig.preset("tiny", objective=objective)
    diffusion = cfg.diffusion()
    B = 6
    x0 = torch.randint(0, 256, (B, 3, 8, 8), generator=g).float() / 127.5 - 1
    t = torch.tensor([0, 1, 10, 300, 998, 999])  # both ends: decoder term and the last KL
    noise = torch.randn(B, 3, 8, 8, generator=g)
    c_out = 6 if cfg.variance == "learned" else 3
    net = FixedOutput(0.5 * torch.randn(B, c_out, 8, 8, generator=g))
    return cfg, diffusion, _Objective(net, diffusion, cfg, None, False), net, x0, t, noise


def _x_t(diffusion, x0, t, noise):
    a = diffusion.sqrt_alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    s = diffusion.sqrt_one_minus_alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    return a * x0 + s * noise


def test_simple_objective_is_the_eps_mse():
    cfg, diffusion, obj, net, x0, t, noise = _objective_case("simple")
    loss, mse, vb = obj(x0, t, noise)
    expected = (net.out.detach() - noise).square().mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=0)
    assert float(vb) == 0.0
    loss.backward()
    torch.testing.assert_close(net.out.grad, 2 * (net.out.detach() - noise) / noise.numel(),
                               rtol=1e-5, atol=1e-9)


def test_hybrid_objective_stops_the_vlb_gradient_at_the_mean():
    """L_hybrid = L_simple + lambda T L_t: eps channels get exactly L_simple's gradient, the
    variance channels exactly lambda T dL_t/dv (L_t with the unclipped x0-prediction)."""
    cfg, diffusion, obj, net, x0, t, noise = _objective_case("hybrid")
    loss, mse, vb = obj(x0, t, noise)
    out = net.out.detach()
    x_t = _x_t(diffusion, x0, t, noise)
    ref_vb = vb_terms_bpd(diffusion, x0.double(), x_t.double(), t, out, clip=False)["vb"]
    ref_mse = (out[:, :3] - noise).square().mean(dim=(1, 2, 3))
    lam_T = 0.001 * 1000
    torch.testing.assert_close(loss.detach(), (ref_mse.double() + lam_T * ref_vb).mean(), rtol=1e-6, atol=0)
    loss.backward()
    torch.testing.assert_close(net.out.grad[:, :3], 2 * (out[:, :3] - noise) / noise.numel(),
                               rtol=1e-5, atol=1e-9)
    var = out[:, 3:].clone().requires_grad_(True)
    ref = vb_terms_bpd(diffusion, x0.double(), x_t.double(), t, torch.cat([out[:, :3], var], 1),
                       clip=False)["vb"]
    (lam_T * ref.mean()).backward()
    torch.testing.assert_close(net.out.grad[:, 3:], var.grad, rtol=1e-5, atol=1e-10)
    assert float(var.grad.abs().max()) > 0


def test_vlb_objective_trains_mean_and_variance_through_the_bound():
    cfg, diffusion, obj, net, x0, t, noise = _objective_case("vlb")
    loss, mse, vb = obj(x0, t, noise)
    x_t = _x_t(diffusion, x0, t, noise)
    out = net.out.detach().clone().requires_grad_(True)
    ref = vb_terms_bpd(diffusion, x0.double(), x_t.double(), t, out, clip=False)["vb"].mean()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=0)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(net.out.grad, out.grad, rtol=1e-5, atol=1e-10)
    assert float(net.out.grad[:, :3].abs().max()) > 0  # the mean learns from the bound


# -- data plan ----------------------------------------------------------------------------------
def test_plan_is_a_pure_function_of_seed_and_step(train_images):
    cfg = TrainConfig.preset("tiny", batch_size=8)
    a = Trainer(cfg, train_images[:40], opts=RunOptions(progress=False))
    b = Trainer(cfg, train_images[:40], opts=RunOptions(progress=False))
    for step in (3, 0, 7):  # any order
        for x, y in zip(a.plan(step), b.plan(step)):
            assert torch.equal(x, y)
    assert not torch.equal(a.plan(0)[3], a.plan(1)[3])
    # one epoch (5 steps of 8) visits every image exactly once; the next one reshuffles
    epoch0 = torch.cat([a.plan(s)[0] for s in range(5)])
    epoch1 = torch.cat([a.plan(s)[0] for s in range(5, 10)])
    assert sorted(epoch0.tolist()) == list(range(40)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)


# -- GPU-oriented options, checked on the CPU ----------------------------------------------------
def _steps_agree(train_images, steps=2, **opts):
    """Weights after ``steps`` steps with the given RunOptions against the default options.
    Different kernels reorder float32 sums; as in the DDP test, Adam may amplify that on
    near-zero gradients, so the bound is 1% of the largest possible movement (lr/step)."""
    cfg = TrainConfig.preset("tiny", batch_size=8)
    with one_thread():
        ref = Trainer(cfg, train_images[:32], opts=RunOptions(progress=False))
        other = Trainer(cfg, train_images[:32], opts=RunOptions(progress=False, **opts))
        for _ in range(steps):
            ref.train_step()
            other.train_step()
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(ref.unet.parameters(), other.unet.parameters()))
        moved = max(float((a - b).abs().max()) for a, b in zip(ref.unet.parameters(), ref.ema.module.parameters()))
    assert moved > 0
    assert diff < 0.01 * cfg.lr * steps, diff


def test_channels_last_step_matches_the_default_layout(train_images):
    _steps_agree(train_images, channels_last=True)


@pytest.mark.slow
def test_compiled_step_matches_eager(train_images):
    """torch.compile (inductor on the CPU here; the CUDA path is the same code)."""
    _steps_agree(train_images, compile="default")


# -- exact resume -----------------------------------------------------------------------------
def test_resumed_run_ends_with_the_same_weights(tmp_path, train_images, eval_images):
    """Interrupted at step 5 (mid-epoch, with dropout and flips on) and resumed to 12:
    model, EMA and Adam moments are bitwise those of an uninterrupted run (CPU)."""
    cfg = TrainConfig.preset("tiny", batch_size=8, dropout=0.1, warmup=3)
    opts = RunOptions(log_every=2, eval_every=4, save_every=0, progress=False)
    images, held = train_images[:64], eval_images[:8]
    train(cfg, images, tmp_path / "a", 12, held, opts)
    train(cfg, images, tmp_path / "b", 5, held, opts)
    with pytest.raises(DDPMCodecError, match="--resume"):
        train(cfg, images, tmp_path / "b", 12, held, opts)
    train(cfg, images, tmp_path / "b", 12, held, opts, resume=True)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert a["step"] == b["step"] == 12
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    # the raw and EMA weights really differ, and training really moved them
    assert max_abs_diff(a["model"], a["ema"]) > 0
    la, lb = read_csv(tmp_path / "a" / "log.csv"), read_csv(tmp_path / "b" / "log.csv")
    assert [r["loss"] for r in la if r["step"] in ("8", "10", "12")] == \
        [r["loss"] for r in lb if r["step"] in ("8", "10", "12")]
    steps_b = [int(r["step"]) for r in lb]
    assert steps_b == sorted(steps_b)
    # the checkpoint is the EMA network
    model = load_model(tmp_path / "b" / "model")
    assert all(torch.equal(v, b["ema"][k]) for k, v in model.unet.state_dict().items())


def test_resume_may_change_the_memory_layout(tmp_path, train_images):
    """Run options are free to change on resume: Adam's moments follow the parameters into
    channels_last (fused kernels pair elements by memory position)."""
    cfg = TrainConfig.preset("tiny", batch_size=8)
    with one_thread():
        train(cfg, train_images[:32], tmp_path / "a", 4, None, RunOptions(save_every=0, progress=False))
        train(cfg, train_images[:32], tmp_path / "b", 2, None, RunOptions(save_every=0, progress=False))
        tr = Trainer(cfg, train_images[:32], None, tmp_path / "b", RunOptions(channels_last=True, progress=False))
        tr.load(tmp_path / "b" / "train_state.pt")
        for p in tr.params:
            assert all(v.stride() == p.stride() for v in tr.optimizer.state[p].values() if v.ndim == 4)
        tr.run(4)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert max_abs_diff(a["model"], b["model"]) < 0.01 * cfg.lr * 4


def test_resume_refuses_another_recipe_and_other_data(tmp_path, train_images):
    cfg = TrainConfig.preset("tiny", batch_size=8)
    opts = RunOptions(save_every=0, progress=False)
    train(cfg, train_images[:16], tmp_path, 1, None, opts, data_spec={"digest": "a"})
    with pytest.raises(DDPMCodecError, match="different recipe: lr"):
        train(TrainConfig.preset("tiny", batch_size=8, lr=5e-4), train_images[:16], tmp_path, 2,
              None, opts, resume=True, data_spec={"digest": "a"})
    with pytest.raises(DDPMCodecError, match="different data"):
        train(cfg, train_images[:16], tmp_path, 2, None, opts, resume=True, data_spec={"digest": "b"})
    (tmp_path / "train_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(DDPMCodecError, match="cannot read the training state"):
        train(cfg, train_images[:16], tmp_path, 2, None, opts, resume=True)


def _small_state_file(path):
    """A small torch file shaped like a training state (nested dicts, tensors, rng lists) but
    without its format tag: every corruption of it that still loads is refused as foreign."""
    torch.save({"version": 1, "model": {"w": torch.arange(6.0).reshape(2, 3)},
                "rng": {"torch": torch.zeros(4, dtype=torch.uint8), "python": [3, (1, 2, 3), None]},
                "config": {"objective": "simple", "lr": 2e-4}}, path)
    return path.read_bytes()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a damaged protocol byte
def test_every_damaged_training_state_is_one_line(tmp_path, train_images):
    """torch.load on a damaged file raises what its reader or its unpickler hits first:
    RuntimeError, OSError (EINVAL), UnpicklingError, EOFError, UnicodeDecodeError, but also
    KeyError, TypeError, IndexError, AttributeError, AssertionError, ValueError. Old code
    caught only some of these: the rest were tracebacks for a damaged file."""
    tr = Trainer(TrainConfig.preset("tiny", batch_size=8), train_images[:8], opts=RunOptions(progress=False))
    data = _small_state_file(tmp_path / "ref.pt")
    bad = tmp_path / "bad.pt"
    pkl_end = data.index(b".format_version") if b".format_version" in data else len(data)
    cases = [data[:k] for k in range(0, len(data), 7)]
    cases += [data[:k] + bytes([v]) + data[k + 1:] for k in range(pkl_end)
              for v in {0xFF, data[k] ^ 0x01, data[k] ^ 0x80}]
    kinds = set()
    for case in cases:
        bad.write_bytes(case)
        with pytest.raises(DDPMCodecError) as info:
            tr.load(bad)
        msg = str(info.value)
        assert str(bad) in msg and "\n" not in msg, msg
        kinds.add(re.search(r"not a torch file \((\w+)", msg)[1] if "torch file" in msg else "loads")
    assert {"RuntimeError", "UnpicklingError"} <= kinds  # the zip reader's and the unpickler's
    assert kinds & {"IndexError", "TypeError", "AttributeError"}  # what old code let through


def test_a_bug_inside_load_is_not_called_an_unreadable_state(tmp_path, train_images, monkeypatch):
    """Old code caught RuntimeError, ValueError, KeyError and OSError from anywhere inside
    the read as "cannot read the training state"."""
    cfg = TrainConfig.preset("tiny", batch_size=8)
    opts = RunOptions(save_every=0, progress=False)
    train(cfg, train_images[:16], tmp_path, 1, None, opts)
    tr = Trainer(cfg, train_images[:16], opts=RunOptions(progress=False))
    for exc in (RuntimeError("a bug"), KeyError("a bug"), ValueError("a bug")):
        def buggy(*args, _exc=exc, **kwargs):
            raise _exc
        monkeypatch.setattr(torch, "load", buggy)
        with pytest.raises(type(exc), match="a bug"):
            tr.load(tmp_path / "train_state.pt")
        monkeypatch.undo()
    # a state whose tensors do not fit the network is not "unreadable" either
    state = load_state(tmp_path)
    k = next(iter(state["model"]))
    state["model"][k] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(RuntimeError, match="size mismatch"):
        tr.load(tmp_path / "odd.pt")


def test_a_training_state_the_os_refuses_names_that_cause(tmp_path, train_images, monkeypatch):
    cfg = TrainConfig.preset("tiny", batch_size=8)
    train(cfg, train_images[:16], tmp_path, 1, None, RunOptions(save_every=0, progress=False))
    tr = Trainer(cfg, train_images[:16], opts=RunOptions(progress=False))
    path = tmp_path / "train_state.pt"

    def refused(f, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(f))
    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(DDPMCodecError, match="Permission denied") as info:
        tr.load(path)
    assert "damaged" not in str(info.value) and "\n" not in str(info.value)


# -- DDP ------------------------------------------------------------------------------------------
def test_ddp_gloo_two_processes_equal_one_process_with_the_doubled_batch(tmp_path, train_npz, test_npz):
    """torchrun, 2 CPU processes (gloo), batch 4 each, 3 steps, against one process, batch 8.

    Oracle 1 (exact): DDP averages the two ranks' gradients, (g0 + g1) / 2; one process
    with --grad-accum 2 computes g0 / 2 + g1 / 2 on the same two half-batches. Halving is
    exact in binary floating point and a sum of two terms is commutative, so the weights
    must be bitwise equal.
    Oracle 2 (tolerance): one forward pass over all 8 images sums the batch in another
    order; float32 rounding then differs by ~1e-7 relative in the gradient, which Adam's
    first steps (update g / (|g| + eps)) can amplify up to ~|dg| / (4 eps) per unit of lr on
    coordinates whose gradient is near eps = 1e-8. We require the difference to be below
    1% of the largest possible movement (lr per step) and the whole relative change to be
    < 1e-3; it is the same difference as between the two single-process runs (oracle 1).
    """
    common = ["--data", str(train_npz), "-n", "64", "--eval-data", str(test_npz), "--eval-images", "8",
              "--config", "tiny", "--steps", "3", "--warmup", "2", "--lr", "1e-3", "--log-every", "1",
              "--save-every", "0", "--device", "cpu", "-q", "--json", "-b", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "ddpmcodec", "train", *common,
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"world_size": 2' in proc.stdout and proc.stdout.count('"step": 3') == 1  # rank 0 only
    with one_thread():
        assert main(["train", *common, "--out", str(tmp_path / "accum"), "--grad-accum", "2"]) == 0
        assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    ddp, accum, one = (load_state(tmp_path / n) for n in ("ddp", "accum", "one"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    for key in ("model", "ema"):
        assert all(torch.equal(ddp[key][k], accum[key][k]) for k in ddp[key]), key
    lr, steps = 1e-3, 3
    assert max_abs_diff(ddp["model"], one["model"]) < 0.01 * lr * steps
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    init = build_unet("tiny").state_dict()

    def flat(sd):
        return torch.cat([sd[k].flatten() for k in sorted(sd)])
    moved = (flat(one["model"]) - flat(init)).norm()
    assert float(moved) > 0.1 * lr * steps
    assert float((flat(ddp["model"]) - flat(one["model"])).norm() / moved) < 1e-3


# -- a short real run ---------------------------------------------------------------------------
def _train_and_check(tmp_path, train_npz, test_npz, steps, batch, min_drop):
    out = tmp_path / "run"
    args = ["train", "--data", str(train_npz), "--eval-data", str(test_npz), "--eval-images", "64",
            "--config", "tiny", "--steps", str(steps), "-b", str(batch), "--warmup", "10",
            "--eval-every", str(steps // 2), "--log-every", "10", "--device", "cpu", "-q",
            "--bound-images", "2", "--bound-steps", "4"]
    assert main(args + ["--out", str(out)]) == 0
    evals = read_csv(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [0, steps // 2, steps]
    first, last = float(evals[0]["test_mse"]), float(evals[-1]["test_mse"])
    se = float(evals[-1]["test_mse_se"]) + float(evals[0]["test_mse_se"])
    assert last < first * (1 - min_drop) and first - last > 3 * se, (first, last)
    assert float(evals[-1]["bound_bpd"]) > 0
    logs = read_csv(out / "log.csv")
    assert int(logs[-1]["step"]) == steps and float(logs[-1]["loss"]) < float(logs[0]["loss"])
    # `ddpmcodec nll` loads the checkpoint and identifies it
    res = tmp_path / "nll"
    assert main(["nll", "--ckpt", str(out / "model"), "--data", str(test_npz), "-n", "2", "--steps", "4",
                 "--device", "cpu", "-q", "--out", str(res)]) == 0
    model = load_model(out / "model")
    import json
    summary = json.loads((res / "results.json").read_text())
    assert summary["config"]["model"]["fingerprint"] == fingerprint(model.unet, model.diffusion)
    assert np.isfinite(summary["summary"]["total_bpd"])
    return first, last


def test_tiny_run_lowers_the_test_loss_and_nll_loads_the_checkpoint(tmp_path, train_npz, test_npz):
    _train_and_check(tmp_path, train_npz, test_npz, steps=40, batch=8, min_drop=0.5)


@pytest.mark.slow
def test_tiny_run_of_300_steps(tmp_path, train_npz, test_npz):
    first, last = _train_and_check(tmp_path, train_npz, test_npz, steps=300, batch=16, min_drop=0.8)
    assert last < 0.15


def test_hybrid_run_saves_a_learned_variance_checkpoint(tmp_path, train_npz, test_npz):
    out = tmp_path / "hyb"
    assert main(["train", "--data", str(train_npz), "-n", "64", "--eval-data", str(test_npz),
                 "--eval-images", "8", "--config", "tiny", "--objective", "hybrid", "--steps", "3",
                 "-b", "8", "--device", "cpu", "-q", "--out", str(out)]) == 0
    model = load_model(out / "model")
    assert model.diffusion.variance_type == "learned" and model.unet.config.out_channels == 6
    logs = read_csv(out / "log.csv")
    assert float(logs[-1]["vb_bpd"]) > 0


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_user_errors_are_one_line(tmp_path, train_npz, capsys):
    base = ["train", "--data", str(train_npz), "-n", "16", "--config", "tiny", "--steps", "1",
            "-b", "8", "--device", "cpu", "-q", "--eval-images", "0", "--out", str(tmp_path / "r")]
    assert main(base + ["--precision", "bf16"]) == 1
    assert "bf16" in capsys.readouterr().err
    assert main(base + ["--objective", "simple", "--variance", "learned"]) == 1
    assert main(base + ["-b", "32"]) == 1  # more than the 16 images
    assert main(base + ["--grad-accum", "3"]) == 1  # 8 not divisible by 3
    assert main(base) == 0
    assert main(base) == 1
    assert "--resume" in capsys.readouterr().err
    # --resume takes the saved recipe; a conflicting option is refused
    assert main(base[:-2] + ["--out", str(tmp_path / "r"), "--resume", "--steps", "2"]) == 0
    assert main(base + ["--resume", "--lr", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "different recipe" in err and "Traceback" not in err


# -- benchmark -------------------------------------------------------------------------------------
def test_benchmark_script_runs_and_writes_json(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_train
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    assert bench_train.main(["--device", "cpu", "--config", "tiny", "--batch-size", "4", "--steps", "1",
                             "--warmup-steps", "1", "--json-out", str(out)]) == 0
    import json
    res = json.loads(out.read_text())
    assert [r["variant"] for r in res["rows"]] == ["plain", "trainer"]
    assert all(r["steps_per_s"] > 0 and "error" not in r for r in res["rows"])
    assert res["rows"][1]["clip_ema"] and res["note"]


def test_cli_holds_out_evaluation_images_from_data(tmp_path, train_npz):
    import json
    out = tmp_path / "h"
    assert main(["train", "--data", str(train_npz), "-n", "40", "--eval-images", "4", "--config", "tiny",
                 "--steps", "1", "-b", "8", "--device", "cpu", "-q", "--out", str(out)]) == 0
    data = json.loads((out / "train_state.json").read_text())["data"]
    assert data["eval"] == {"kind": "held_out", "last": 4, "digest": data["eval"]["digest"]}
    assert data["train"]["num_images"] == 36
    assert [r["step"] for r in read_csv(out / "eval.csv")] == ["0", "1"]


# -- checkpoints are replaced as one unit ----------------------------------------------------------
def _ckpt_agrees(out, step):
    """OUT/model (what --ckpt loads) and OUT/train_state.pt (what --resume reads) are the
    same checkpoint: the state's EMA is the network's weights, at the same step."""
    import json
    state = load_state(out)
    model = load_model(out / "model")
    assert state["step"] == step
    assert json.loads((out / "model" / "training.json").read_text())["step"] == step
    assert json.loads((out / "train_state.json").read_text())["step"] == step
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.unet.state_dict().items())


def test_a_crash_between_network_and_state_keeps_the_previous_checkpoint(tmp_path, train_images,
                                                                        monkeypatch):
    """Old code renamed the new model/ into place and then wrote train_state.pt: a crash in
    between left a step-2 network beside a step-1 state."""
    cfg = TrainConfig.preset("tiny", batch_size=8)
    opts = RunOptions(save_every=1, log_every=1, eval_every=0, progress=False)
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def crash_on_second(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", crash_on_second)
    with pytest.raises(OSError, match="No space"):
        train(cfg, train_images[:16], out, 3, None, opts)
    monkeypatch.undo()
    _ckpt_agrees(out, 1)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink()) == ["ckpt-00000001"]
    # the run resumes from that checkpoint and ends where an uninterrupted run ends
    train(cfg, train_images[:16], out, 3, None, opts, resume=True)
    _ckpt_agrees(out, 3)
    train(cfg, train_images[:16], tmp_path / "ref", 3, None, opts)
    ref, got = load_state(tmp_path / "ref"), load_state(out)
    assert all(torch.equal(ref["ema"][k], got["ema"][k]) for k in ref["ema"])
    assert [r["step"] for r in read_csv(out / "log.csv")] == ["1", "2", "3"]
    assert sorted(p.name for p in out.iterdir()) == [
        "ckpt-00000003", "current", "log.csv", "model", "train_state.json", "train_state.pt"]


def test_a_run_saved_in_the_old_layout_resumes_into_the_new_one(tmp_path, train_images):
    """model/ and train_state.pt as a plain folder and file (before ckpt-<step>/)."""
    cfg = TrainConfig.preset("tiny", batch_size=8)
    opts = RunOptions(save_every=0, eval_every=0, progress=False)
    out = tmp_path / "run"
    train(cfg, train_images[:16], out, 1, None, opts)
    for name in ("model", "train_state.pt", "train_state.json"):
        target = (out / name).resolve()
        (out / name).unlink()
        target.rename(out / name)
    for p in out.glob("ckpt-*"):
        import shutil
        shutil.rmtree(p)
    (out / "current").unlink()
    _ckpt_agrees(out, 1)
    train(cfg, train_images[:16], out, 2, None, opts, resume=True)
    _ckpt_agrees(out, 2)
    assert (out / "model").is_symlink() and (out / "train_state.pt").is_symlink()
    assert not list(out.glob(".*"))


def test_train_out_naming_a_file_is_one_line(tmp_path, train_npz, capsys):
    f = tmp_path / "a-file"
    f.write_text("mine")
    for out in (f, f / "sub"):
        code = main(["train", "--data", str(train_npz), "-n", "16", "--config", "tiny", "--steps", "1",
                     "-b", "8", "--device", "cpu", "-q", "--eval-images", "0", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 1 and "is a file" in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == "mine"
    with pytest.raises(DDPMCodecError, match="is a file"):
        train(TrainConfig.preset("tiny", batch_size=8), np.zeros((16, 32, 32, 3), np.uint8), f, 1)
