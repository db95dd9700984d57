"""Training DDPMs with the paper's recipe, on one device or many (torchrun + DDP).

Objectives, per image (t uniform on 0..T-1, eps ~ N(0, I), x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, D = C*H*W):

* ``simple`` (Ho et al., the default): L_simple = ||eps - eps_theta(x_t, t)||^2 / D.
* ``vlb``: the bound term L_t in bits/dim (:func:`likelihood.vb_terms_bpd`; the decoder
  NLL at t=0, a KL elsewhere), an unbiased estimate of (L_vlb - L_prior) / T. Needs a
  learned variance (6 output channels).
* ``hybrid`` (Nichol & Dhariwal): L_simple + lambda * T * L_t, lambda = 0.001, where L_t
  sees the eps channels through a stop-gradient, so the bound trains only the variance.

As in improved DDPM, the training bound terms use the *unclipped* x0-prediction; the
evaluation uses the clipped one (the bound's definition).

The recipe (:class:`TrainConfig`): Adam, linear learning-rate warmup then constant,
gradient clipping by global norm, EMA of the weights (``min(max_decay, (1+n)/(10+n))``
after n updates, or a constant decay), random horizontal flips, the config's dropout.

Randomness. Every random draw of step n is a function of (seed, n): the data order (one
permutation per epoch), the timesteps, flips and noise of the whole *global* batch (each
rank takes its contiguous slice, so two ranks of batch B/2 see exactly the samples one
process of batch B sees), and the global torch generator (dropout) is reseeded from
(seed, n, rank) before each step. Hence an exact resume needs only the step counter and
the tensors; RNG states are saved too, for completeness.

Files written in ``out`` (rank 0 only):

* ``ckpt-<step>/``: one checkpoint, written in full under a temporary name and then
  renamed, holding

  - ``model/``: the EMA weights as a diffusers checkpoint, with ``training.json`` (recipe
    and latest numbers);
  - ``train_state.pt``: model, EMA, optimizer, step, elapsed time and RNG states: tensors
    and plain Python values only, read back with ``torch.load(weights_only=True)``;
  - ``train_state.json``: a readable mirror (step, recipe, data, latest metrics);

* ``current``: a symlink to the latest ``ckpt-<step>``, switched with one ``os.replace``,
  so a checkpoint (network *and* training state) is replaced as one unit: a crash leaves
  the previous one or the new one, never a network and a state that disagree. Older
  ``ckpt-*`` folders are deleted after the switch;
* ``model``, ``train_state.pt``, ``train_state.json``: fixed symlinks into ``current``:
  ``OUT/model`` is the checkpoint path for ``--ckpt`` (``ddpmcodec nll --ckpt OUT/model``),
  ``OUT/train_state.pt`` what a resume reads;
* ``log.csv`` (every ``log_every`` steps) and ``eval.csv`` (every evaluation): a row is
  appended in one write; a resume rewrites them atomically without the rows logged after
  the checkpoint (and without a last line a crash cut short).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import errno
import io
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.core.diffusion import VARIANCE_TYPES, Diffusion
from ddpmcodec.core.likelihood import (
    bound_plain_loop,
    prior_bpd,
    step_terms,
    vb_terms_bpd,
)
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import (
    atomic_path,
    fsync_tree,
    symlink_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from ddpmcodec.io.models import build_unet, save_model, unet_config
from ddpmcodec.io.results import check_out_folder
from ddpmcodec.progress import progress_bar

OBJECTIVES = ("simple", "vlb", "hybrid")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")
STATE_FORMAT = "ddpmcodec-train-state"
STATE_VERSION = 1
STATE_FILE = "train_state.pt"
STATE_JSON = "train_state.json"
MODEL_DIR = "model"
CURRENT = "current"  # symlink to the latest ckpt-<step> folder
EVAL_SEED = 2020  # noise of the fixed test pairs; independent of the training seed

# Defaults per network config: the paper's CIFAR-10 recipe for `paper`, the recipe of the
# shared ddpm-cifar10-4k-ch64 model for `small`, and a fast one for the test-sized `tiny`.
PRESETS = {
    "paper": dict(batch_size=128, lr=2e-4, warmup=5000),
    "small": dict(batch_size=128, lr=2e-4, warmup=1000),
    "tiny": dict(batch_size=32, lr=1e-3, warmup=50),
}


@dataclass
class TrainConfig:
    """Everything the trained weights depend on (a resumed run must match it)."""

    model: str = "tiny"  # models.unet_config name
    dropout: float | None = None  # None: the config's (paper 0.1, small 0.3, tiny 0)
    objective: str = "simple"
    variance: str | None = None  # None: fixedlarge for simple, learned for vlb/hybrid
    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    batch_size: int = 32  # global: summed over ranks and accumulation micro-batches
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50  # linear warmup: lr * min(1, (n+1)/warmup) at step n
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    ema_decay: float = 0.9995
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n))
    flip: bool = True
    hybrid_lambda: float = 0.001
    seed: int = 0

    @classmethod
    def preset(cls, model: str = "paper", **overrides) -> "TrainConfig":
        if model not in PRESETS:
            raise DDPMCodecError(f"unknown model config {model!r}; choose one of {', '.join(PRESETS)}")
        return cls(model=model, **{**PRESETS[model], **overrides})

    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        if self.model not in PRESETS:
            raise DDPMCodecError(f"unknown model config {self.model!r}; choose one of {', '.join(PRESETS)}")
        if self.objective not in OBJECTIVES:
            raise DDPMCodecError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.variance is None:
            self.variance = "fixedlarge" if self.objective == "simple" else "learned"
        if self.variance not in VARIANCE_TYPES:
            raise DDPMCodecError(f"unknown variance {self.variance!r}; choose one of {', '.join(VARIANCE_TYPES)}")
        if (self.objective == "simple") == (self.variance == "learned"):
            raise DDPMCodecError(
                "a learned variance needs the vlb or hybrid objective (L_simple does not train "
                "it), and those objectives need a learned variance")
        for name, lo in (("batch_size", 1), ("grad_accum", 1), ("num_timesteps", 1), ("warmup", 0)):
            if int(getattr(self, name)) < lo:
                raise DDPMCodecError(f"{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise DDPMCodecError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise DDPMCodecError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise DDPMCodecError(f"--grad-clip must be >= 0, got {self.grad_clip}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise DDPMCodecError(f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def diffusion(self) -> Diffusion:
        return Diffusion.from_schedule(self.schedule, self.num_timesteps, self.beta_start,
                                       self.beta_end, self.variance)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if self.warmup == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.warmup)

    def ema_decay_at(self, num_updates: int) -> float:
        """EMA decay of the update that follows ``num_updates`` earlier ones."""
        if not self.ema_warmup:
            return self.ema_decay
        return min(self.ema_decay, (1.0 + num_updates) / (10.0 + num_updates))


@dataclass
class RunOptions:
    """How a run executes (free to change between a run and its resume)."""

    device: str = "cpu"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    channels_last: bool = False
    compile: str = "none"  # torch.compile mode; reduce-overhead = CUDA graphs
    fused_adam: bool | None = None  # None: fused on CUDA
    deterministic: bool = False
    log_every: int = 50
    eval_every: int = 1000  # 0: only at the start and the end
    eval_batch_size: int = 256
    bound_images: int = 0  # >0: also the full bound of this many test images at each eval
    bound_steps: int = 20  # ... on a respaced chain of this many steps
    save_every: int = 5000  # 0: only at the end
    progress: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise DDPMCodecError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise DDPMCodecError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        for name in ("log_every", "eval_every", "save_every", "bound_images"):
            if getattr(self, name) < 0:
                raise DDPMCodecError(f"--{name.replace('_', '-')} must be >= 0")
        if self.eval_batch_size < 1 or self.bound_steps < 1:
            raise DDPMCodecError("--eval-batch-size and --bound-steps must be positive")


# -- distributed ---------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK, if any.

    nccl on CUDA, gloo on the CPU; the rendezvous (MASTER_ADDR/PORT) is torchrun's.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns)


def _step_seed(seed: int, step: int, stream: int, rank: int = 0) -> int:
    """A 63-bit seed for (seed, step, stream, rank) from numpy's SeedSequence hash."""
    return int(np.random.SeedSequence([seed, step, stream, rank]).generate_state(1, np.uint64)[0] >> 1)


# -- pieces --------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a module's parameters (a full copy, in eval mode)."""

    def __init__(self, module: torch.nn.Module):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self._ema = list(self.module.parameters())

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * param, for every parameter."""
        torch._foreach_lerp_(self._ema, list(module.parameters()), 1.0 - decay)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)


class _Objective(torch.nn.Module):
    """The network plus its training loss: (x0, t, noise) -> (loss, mse, vb), all scalars.

    x0: float32 [B,C,H,W] in [-1, 1]; t: long [B] original indices; noise float32 like x0.
    mse is the per-pixel eps MSE (L_simple) and vb the bound term in bits/dim (0 for the
    simple objective), both means over the batch and detached.
    """

    def __init__(self, unet, diffusion: Diffusion, cfg: TrainConfig, autocast_dtype, channels_last):
        super().__init__()
        self.unet = unet
        self.diffusion = diffusion  # full chain, tensors on the training device
        self.objective = cfg.objective
        self.vb_weight = cfg.hybrid_lambda * cfg.num_timesteps
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        # float64 tables rounded once to float32, as the official code does
        self.register_buffer("sqrt_ab", diffusion.sqrt_alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_1mab", diffusion.sqrt_one_minus_alphas_cumprod.float(), persistent=False)

    def forward(self, x0, t, noise):
        shape = (-1, 1, 1, 1)
        x_t = self.sqrt_ab[t].view(shape) * x0 + self.sqrt_1mab[t].view(shape) * noise
        net_in = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        cast = contextlib.nullcontext() if self.autocast_dtype is None else \
            torch.autocast(x0.device.type, dtype=self.autocast_dtype)
        with cast:
            out = self.unet(net_in, t).sample
        out = out.float()
        c = x0.shape[1]
        mse = (out[:, :c] - noise).square().mean(dim=(1, 2, 3))
        if self.objective == "simple":
            return mse.mean(), mse.detach().mean(), torch.zeros_like(mse[0])
        # the vlb's eps enters only through this stop-gradient in the hybrid objective
        vb_out = out if self.objective == "vlb" else torch.cat([out[:, :c].detach(), out[:, c:]], 1)
        vb = vb_terms_bpd(self.diffusion, x0.double(), x_t.double(), t, vb_out, clip=False)["vb"]
        loss = vb if self.objective == "vlb" else mse.double() + self.vb_weight * vb
        return loss.mean(), mse.detach().mean(), vb.detach().mean()


def _diffusion_on(diffusion: Diffusion, device) -> Diffusion:
    """A shallow copy whose tables live on ``device`` (no host copies inside the step)."""
    moved = copy.copy(diffusion)
    for name, value in vars(diffusion).items():
        if isinstance(value, torch.Tensor):
            setattr(moved, name, value.to(device))
    return moved


def _unet_for(cfg: TrainConfig, image_shape) -> dict:
    c, h, w = image_shape
    levels = len(unet_config(cfg.model)["block_out_channels"])
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
        raise DDPMCodecError(f"the {cfg.model} network needs image sides divisible by "
                             f"{2 ** (levels - 1)}, the images are {h}x{w}")
    overrides = dict(sample_size=h if h == w else (h, w), in_channels=c,
                     out_channels=2 * c if cfg.variance == "learned" else c)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    return overrides


def _rng_states() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": list(random.getstate()[1]) + [random.getstate()[0]]}


def _set_rng_states(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = s["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))


def _csv_text(fields: list, rows: list[dict], header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _append_csv(path: Path, row: dict) -> None:
    """One row, in one write (a crash can cut only this last line short, which
    :func:`_read_csv` drops); the file itself is created atomically with its header."""
    if not path.exists():
        write_bytes_atomic(path, _csv_text(list(row), [row]).encode())
        return
    with open(path, "a", newline="") as f:
        f.write(_csv_text(list(row), [row], header=False))


def _read_csv(path: Path) -> tuple[list | None, list[dict]]:
    """Header and rows of a log written by :func:`_append_csv`, without a last line that a
    crash cut short (no line end, or fewer fields than the header)."""
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [r for r in reader if None not in r.values() and None not in r]
    return reader.fieldnames, rows


_TORCH_DIR = Path(torch.__file__).resolve().parent


def _raised_in_torch(exc: BaseException) -> bool:
    """True when ``exc`` was raised by torch's own code (its innermost frame is in torch)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_TORCH_DIR)


def _damaged_state(path, exc: BaseException) -> str:
    """The one line for a training state torch.load could not parse.

    What torch 2.14's torch.load(weights_only=True) raised on 31,000 truncations and
    single-byte corruptions of a real tiny-run state and 40,000 of a small one:
    the zip reader's RuntimeError ("PytorchStreamReader failed ...", "record size ...") and
    OSError EINVAL (a cut file), UnpicklingError (also for content weights_only refuses),
    EOFError, UnicodeDecodeError, ValueError, and whatever the unpickler or the tensor
    rebuild hit in damaged bytes: KeyError, IndexError, TypeError, AttributeError,
    AssertionError, RuntimeError ("Trying to resize storage"). The types say nothing; where
    they were raised does: always inside torch (serialization.py, _weights_only_unpickler.py,
    _utils.py). So damage is "raised inside torch.load", and an error raised by anything
    else (our code, a bug) propagates with its traceback.
    """
    text = " ".join(str(exc).split())[:300]
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"cannot read the training state {path}: it is damaged or not a torch file ({what})"


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (by a run that died before its next save); the
    file is rewritten atomically."""
    if not path.exists():
        return
    fields, rows = _read_csv(path)
    if not fields or "step" not in fields:
        path.unlink()
        return
    keep = [r for r in rows if r["step"].isdigit() and int(r["step"]) <= last_step]
    write_bytes_atomic(path, _csv_text(fields, keep).encode())


class _Clock:
    """Training time only: adds to ``trainer.elapsed`` and to the current log interval."""

    def __init__(self, trainer):
        self.trainer, self.t0, self.interval = trainer, None, 0.0

    def start(self):
        self.t0 = time.perf_counter()

    def stop(self):
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        dt = time.perf_counter() - self.t0
        self.trainer.elapsed += dt
        self.interval += dt

    def stop_interval(self) -> float:
        self.stop()
        out, self.interval = self.interval, 0.0
        return out


# -- the trainer -----------------------------------------------------------------------------
class Trainer:
    """Trains a UNet2DModel on uint8 NHWC images; see the module docstring.

    ``train_images``: uint8 [N,H,W,C]; ``eval_images``: held-out images for the periodic
    evaluation (None: no evaluation); ``out``: where to write (None: nothing is written,
    e.g. for benchmarks); ``data_spec``: JSON-able description of the data (checked on
    resume). Under torchrun, construct it in every rank.
    """

    def __init__(self, cfg: TrainConfig, train_images: np.ndarray, eval_images: np.ndarray | None = None,
                 out: str | os.PathLike | None = None, opts: RunOptions | None = None,
                 data_spec: dict | None = None):
        self.cfg, self.opts = cfg, opts or RunOptions()
        self.out = check_out_folder(out) if out is not None else None
        self.data_spec = data_spec or {}
        device = torch.device(self.opts.device)
        self.dist = init_distributed(device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        try:
            self._build(train_images, eval_images)
        except BaseException:
            self.close()
            raise

    def _build(self, train_images, eval_images) -> None:
        cfg, device = self.cfg, self.device
        self.autocast_dtype = self._autocast_dtype()
        self._setup_determinism()

        if train_images.ndim != 4 or train_images.dtype != np.uint8:
            raise DDPMCodecError("training images must be uint8 [N, H, W, C]")
        n, h, w, c = train_images.shape
        self.image_shape, self._hwc = (c, h, w), (h, w, c)
        world, accum = self.dist.world_size, cfg.grad_accum
        if cfg.batch_size % (world * accum):
            raise DDPMCodecError(f"--batch-size {cfg.batch_size} must be divisible by the number of "
                                 f"processes ({world}) times --grad-accum ({accum})")
        self.local_batch = cfg.batch_size // world
        self.micro_batch = self.local_batch // accum
        self.steps_per_epoch = n // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise DDPMCodecError(f"the training set has {n} images, fewer than --batch-size {cfg.batch_size}")
        # whole data set on the device as uint8 NCHW: no loader, no host copies per step
        self.images = torch.from_numpy(np.ascontiguousarray(train_images)).permute(0, 3, 1, 2) \
            .contiguous().to(device)
        self._perm_epoch, self._perm = None, None
        self._gen = torch.Generator(device=device)

        self.diffusion = cfg.diffusion()
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.unet_overrides = _unet_for(cfg, self.image_shape)
        self.unet = build_unet(cfg.model, **self.unet_overrides).to(device)
        if self.opts.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.unet.train()
        self.ema = EMA(self.unet)
        self.params = list(self.unet.parameters())
        self.num_params = sum(p.numel() for p in self.params)
        fused = self.opts.fused_adam if self.opts.fused_adam is not None else device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr_at(0), betas=cfg.adam_betas,
                                          eps=cfg.adam_eps, fused=fused or None)
        objective = _Objective(self.unet, _diffusion_on(self.diffusion, device), cfg,
                               self.autocast_dtype, self.opts.channels_last).to(device)
        self.ddp = None
        if self.dist.enabled:
            # the buffers are constant schedule tables: no syncing per forward
            import inspect

            from torch.nn.parallel import DistributedDataParallel
            no_sync_buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
                inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
            self.ddp = DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None,
                **no_sync_buffers)
            objective = self.ddp
        if self.opts.compile != "none":
            mode = None if self.opts.compile == "default" else self.opts.compile
            objective = torch.compile(objective, mode=mode)
        self.objective = objective

        self.step = 0
        self.elapsed = 0.0  # training seconds over all runs of this out folder
        self.last_eval: dict = {}
        self._acc = torch.zeros(4, dtype=torch.float64, device=device)  # loss, mse, vb, steps
        self._grad_norm = torch.zeros((), device=device)
        self._eval = self._prepare_eval(eval_images) if eval_images is not None else None

    # -- setup ------------------------------------------------------------------------------
    def _autocast_dtype(self):
        p = self.opts.precision
        if p == "auto":
            p = "bf16" if self.device.type == "cuda" else "fp32"
        if p == "bf16" and self.device.type != "cuda":
            raise DDPMCodecError("--precision bf16 is for CUDA devices; on the CPU train in fp32")
        return torch.bfloat16 if p == "bf16" else None

    def _setup_determinism(self):
        if self.device.type == "cuda":
            if self.opts.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = not self.opts.deterministic
        if self.opts.deterministic:
            torch.use_deterministic_algorithms(True)

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype is not None else "fp32"

    # -- data -------------------------------------------------------------------------------
    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            rng = np.random.default_rng([self.cfg.seed, epoch, 1])
            self._perm = torch.from_numpy(rng.permutation(len(self.images))).to(self.device)
            self._perm_epoch = epoch
        return self._perm

    def plan(self, step: int):
        """This rank's share of the global batch of ``step``: image indices, timesteps,
        flips and noise (long [b], long [b], bool [b], float32 [b,C,H,W]).

        The global batch is a pure function of (seed, step); rank r takes its contiguous
        slice r*b..(r+1)*b, b = batch_size / world_size.
        """
        B, b, r = self.cfg.batch_size, self.local_batch, self.dist.rank
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._epoch_perm(epoch)[pos * B + r * b: pos * B + (r + 1) * b]
        g = self._gen.manual_seed(_step_seed(self.cfg.seed, step, 2))
        dev = self.device
        t = torch.randint(0, self.cfg.num_timesteps, (B,), generator=g, device=dev)
        flip = torch.randint(0, 2, (B,), generator=g, device=dev).bool()
        noise = torch.randn((B, *self.image_shape), generator=g, device=dev)
        sl = slice(r * b, (r + 1) * b)
        return idx, t[sl], flip[sl], noise[sl]

    def _x0(self, idx, flip):
        x0 = self.images[idx].float().div_(127.5).sub_(1.0)
        if self.cfg.flip:
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(3), x0)
        return x0

    # -- one optimizer step ------------------------------------------------------------------
    def train_step(self) -> None:
        """One optimizer step on the global batch of ``self.step``; no host sync."""
        cfg, step = self.cfg, self.step
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_step_seed(cfg.seed, step, 3, self.dist.rank))  # dropout
        if self.opts.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        idx, t, flip, noise = self.plan(step)
        m, accum = self.micro_batch, cfg.grad_accum
        for i in range(accum):
            sl = slice(i * m, (i + 1) * m)
            sync = self.ddp is None or i == accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss, mse, vb = self.objective(self._x0(idx[sl], flip[sl]), t[sl], noise[sl])
                # a power-of-two accum keeps this scaling exact (DDP == accumulation, bitwise)
                (loss / accum).backward()
            self._acc[:3] += torch.stack([v.detach().double() for v in (loss, mse, vb)]) / accum
        self._acc[3] += 1
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unet, cfg.ema_decay_at(step))
        self.step = step + 1

    # -- evaluation ----------------------------------------------------------------------------
    def _prepare_eval(self, images: np.ndarray):
        """Fixed test pairs: image j of n at chain step 1 + floor((j + 1/2)(T - 1) / n)
        (midpoints of n strata of 1..T-1), and every image at step 0 (the decoder term);
        the noise is counter-based (seed EVAL_SEED), so every evaluation sees the same x_t."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self._hwc:
            raise DDPMCodecError(f"the evaluation images are {tuple(images.shape[1:])} (HWC), "
                                 f"the training images {self._hwc}")
        n, T = len(images), self.cfg.num_timesteps
        ids = torch.arange(n)
        t = 1 + ((ids.double() + 0.5) * (T - 1) / n).long() if T > 1 else torch.zeros(n, dtype=torch.long)
        x0 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 127.5 - 1.0
        return {"x0": x0, "t": t.clamp(max=T - 1), "ids": ids}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test metrics of the EMA network in float32 (no autocast) on the fixed pairs.

        ``test_mse``: L_simple (eps MSE) at the stratified steps; ``test_kl_bpd``: the mean
        KL term there; ``test_decoder_bpd``: L_0; ``test_bound_est_bpd`` = prior + L_0 +
        (T - 1) * mean KL term, a midpoint-rule estimate of the whole bound (bits/dim,
        clipped x0-prediction as in the bound's definition). With ``bound_images``, also
        the bound of that many images on a ``bound_steps``-step chain (``bound_bpd``).
        """
        e, unet, diff = self._eval, self.ema.module, self.diffusion
        t0 = time.perf_counter()

        def denoiser(x, t):
            return unet(x, t).sample
        mse, kl, dec = [], [], []
        bs = self.opts.eval_batch_size
        for s in range(0, len(e["ids"]), bs):
            ids = e["ids"][s:s + bs]
            x0 = e["x0"][ids].to(self.device)
            terms = step_terms(denoiser, diff, x0, ids, e["t"][ids], EVAL_SEED)
            mse.append(terms["eps_mse"].cpu())
            kl.append(terms["vb"].cpu())
            dec.append(step_terms(denoiser, diff, x0, ids, torch.zeros_like(ids), EVAL_SEED)["vb"].cpu())
        mse, kl, dec = torch.cat(mse), torch.cat(kl), torch.cat(dec)
        T = diff.num_steps
        est = prior_bpd(diff, e["x0"]) + dec + (T - 1) * (kl if T > 1 else 0 * kl)
        res = {"step": self.step, "test_mse": float(mse.mean()),
               "test_mse_se": float(mse.std() / math.sqrt(len(mse))) if len(mse) > 1 else 0.0,
               "test_kl_bpd": float(kl.mean()) if T > 1 else 0.0, "test_decoder_bpd": float(dec.mean()),
               "test_bound_est_bpd": float(est.mean()),
               "bound_bpd": None, "bound_images": 0, "bound_steps": 0}
        nb = min(self.opts.bound_images, len(e["ids"]))
        if nb:
            chain = diff.with_steps(min(self.opts.bound_steps, T))
            b = bound_plain_loop(denoiser, chain, e["x0"][:nb].to(self.device), torch.arange(nb), EVAL_SEED)
            res.update(bound_bpd=float(b["total"].mean()), bound_images=nb, bound_steps=chain.num_steps)
        res["eval_seconds"] = time.perf_counter() - t0
        return res

    # -- saving and resuming ----------------------------------------------------------------------
    def _export_unet(self):
        """The EMA network as a plain float32 CPU module (contiguous, for safetensors)."""
        return copy.deepcopy(self.ema.module).to("cpu", memory_format=torch.contiguous_format)

    def state_dict(self) -> dict:
        """The exact-resume state: tensors and plain Python values only."""
        def plain(m):
            return {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step,
                "elapsed": self.elapsed, "world_size": self.dist.world_size,
                "config": self.cfg.to_dict(), "data": self.data_spec,
                "model": plain(self.unet), "ema": plain(self.ema.module),
                "optimizer": self.optimizer.state_dict(), "rng": _rng_states(),
                "last_eval": dict(self.last_eval)}

    def info(self) -> dict:
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        return {"step": self.step, "epoch": epoch, "position_in_epoch": pos,
                "images_seen": self.step * self.cfg.batch_size, "elapsed_seconds": self.elapsed,
                "world_size": self.dist.world_size, "precision": self.precision,
                "num_params": self.num_params, "unet_config": self.cfg.model,
                "unet_overrides": self.unet_overrides, "recipe": self.cfg.to_dict(),
                "data": self.data_spec, "last_eval": self.last_eval}

    def save(self) -> None:
        """Checkpoint (EMA weights, diffusers format) and training state as one unit (see
        the module docstring: a new ``ckpt-<step>/``, then ``current`` switched to it);
        rank 0 writes."""
        if self.out is None or not self.dist.is_main:
            return
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        current = out / CURRENT
        live = os.readlink(current) if current.is_symlink() else None
        name = f"ckpt-{self.step:08d}"
        k = 0
        while name == live:  # the same step saved twice: never touch the live one
            k += 1
            name = f"ckpt-{self.step:08d}.{k}"
        stage = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-{name}."))
        try:
            info = self.info()
            save_model(self._export_unet(), self.diffusion, stage / MODEL_DIR,
                       extra={"training.json": info})
            with atomic_path(stage / STATE_FILE) as tmp:
                torch.save(self.state_dict(), tmp)
            write_json_atomic(stage / STATE_JSON, info)
            os.chmod(stage, 0o755)  # mkdtemp makes folders private
            fsync_tree(stage)
            shutil.rmtree(out / name, ignore_errors=True)  # left by a crash before a switch
            os.rename(stage, out / name)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        symlink_atomic(current, name)  # the one switch
        # fixed links into `current`; a run written by an older ddpmcodec has a plain file
        # and folder here: the state is switched first (what a resume reads)
        for fixed in (STATE_FILE, STATE_JSON, MODEL_DIR):
            symlink_atomic(out / fixed, f"{CURRENT}/{fixed}")
        for old in out.iterdir():  # earlier checkpoints and what crashed saves left
            n = old.name
            if n == name or not (n.startswith(("ckpt-", ".tmp-ckpt-", ".old-", ".tmp-"))
                                 or n in (".model.tmp", ".model.old", STATE_FILE + ".tmp")):
                continue
            if old.is_symlink() or (old.is_file() and not n.startswith(".tmp-")):
                old.unlink()  # a half-made link; .tmp-* files are atomic_path's own
            elif old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a saved state (read with weights_only=True: no code runs)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # the OS refuses the file (permissions, I/O)
                raise DDPMCodecError(f"cannot read the training state {path}: "
                                     f"{exc.strerror or exc}") from None
            raise DDPMCodecError(_damaged_state(path, exc)) from None
        except Exception as exc:
            if not _raised_in_torch(exc):
                raise
            raise DDPMCodecError(_damaged_state(path, exc)) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DDPMCodecError(f"{path} is not a ddpmcodec training state")
        if state.get("version") != STATE_VERSION:
            raise DDPMCodecError(f"{path} has training-state version {state.get('version')}, "
                                 f"this ddpmcodec reads version {STATE_VERSION}")
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        diff = [f"{k} ({saved[k]} saved, {v} now)" for k, v in self.cfg.to_dict().items() if saved.get(k) != v]
        if diff:
            raise DDPMCodecError(f"{path} was trained with a different recipe: {'; '.join(diff)}")
        if self.data_spec and state.get("data") and state["data"] != self.data_spec:
            raise DDPMCodecError(f"{path} was trained on different data: {state['data']} "
                                 f"saved, {self.data_spec} now")
        self.unet.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._match_optimizer_layout()
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.last_eval = dict(state.get("last_eval") or {})
        _set_rng_states(state["rng"])
        if self.out is not None and self.dist.is_main:
            for name in ("log.csv", "eval.csv"):
                _truncate_csv(self.out / name, self.step)

    def _match_optimizer_layout(self) -> None:
        """Adam moments in their parameter's memory format (a run saved with another
        --channels-last setting); fused kernels pair elements by memory position."""
        for p in self.params:
            st = self.optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)

    # -- the loop --------------------------------------------------------------------------------
    def _reduce_stats(self) -> torch.Tensor:
        acc = self._acc.clone()
        if self.dist.enabled:
            import torch.distributed as dist
            dist.all_reduce(acc)
            acc[:3] /= self.dist.world_size
            acc[3] /= self.dist.world_size
        self._acc.zero_()
        return acc.cpu()

    def _log(self, acc: torch.Tensor, interval_seconds: float, bar) -> dict:
        n = max(float(acc[3]), 1.0)
        loss, mse, vb = (float(v) / n for v in acc[:3])
        if not math.isfinite(loss):
            raise DDPMCodecError(f"the training loss is not finite at step {self.step}; "
                                 f"lower --lr or keep --grad-clip on")
        epoch = self.step // self.steps_per_epoch
        row = {"step": self.step, "epoch": epoch, "images": self.step * self.cfg.batch_size,
               "lr": self.cfg.lr_at(self.step - 1), "loss": loss, "mse": mse,
               "vb_bpd": vb if self.cfg.objective != "simple" else "",
               "grad_norm": float(self._grad_norm), "ema_decay": self.cfg.ema_decay_at(self.step - 1),
               "steps_per_s": acc[3].item() / interval_seconds if interval_seconds > 0 else "",
               "elapsed_s": self.elapsed}
        if self.dist.is_main and self.out is not None:
            _append_csv(self.out / "log.csv", row)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return row

    def _run_eval(self) -> None:
        if self._eval is not None and self.dist.is_main:
            self.last_eval = self.evaluate()
            if self.out is not None:
                _append_csv(self.out / "eval.csv", {k: ("" if v is None else v) for k, v in self.last_eval.items()})
        self._barrier()

    def _barrier(self):
        if self.dist.enabled:
            import torch.distributed as dist
            dist.barrier()

    def run(self, steps: int) -> dict:
        """Train until ``steps`` optimizer steps in total (resumed runs count theirs), with
        logging, evaluation and saving; returns a summary. Evaluation and saving are not
        counted in ``elapsed_seconds`` nor in steps/s."""
        o = self.opts
        if self.out is not None and self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.step == 0 and steps > 0:
            self._run_eval()  # the untrained network: the baseline of the test loss
        last_row: dict = {}
        start_step = self.step
        clock = _Clock(self)
        with progress_bar(steps, "train", "step", enabled=o.progress and self.dist.is_main) as bar:
            bar.update(self.step)
            clock.start()
            while self.step < steps:
                self.train_step()
                bar.update(1)
                s = self.step
                last = s == steps
                if last or (o.log_every and s % o.log_every == 0):
                    acc = self._reduce_stats()  # syncs the device: the clock reads true time
                    last_row = self._log(acc, clock.stop_interval(), bar)
                    clock.start()
                if last or (o.eval_every and s % o.eval_every == 0):
                    clock.stop()
                    self._run_eval()
                    clock.start()
                if last or (o.save_every and s % o.save_every == 0):
                    clock.stop()
                    self.save()
                    self._barrier()
                    clock.start()
        return {"step": self.step, "steps_this_run": self.step - start_step,
                "train_loss": last_row.get("loss"), "elapsed_seconds": self.elapsed,
                "steps_per_s": last_row.get("steps_per_s") or None,
                "model": str(self.out / "model") if self.out is not None else None,
                **{k: v for k, v in self.last_eval.items() if k != "step"}}

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self.dist.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.dist.owns_group = False


def train(cfg: TrainConfig, train_images: np.ndarray, out: str | os.PathLike, steps: int,
          eval_images: np.ndarray | None = None, opts: RunOptions | None = None,
          resume: bool = False, data_spec: dict | None = None) -> dict:
    """Train (or resume) into ``out`` until ``steps`` steps; returns the summary dict."""
    out = check_out_folder(out)
    state = out / STATE_FILE
    if state.is_symlink() and not state.exists():
        current = out / CURRENT
        target = os.readlink(current) if current.is_symlink() else "nothing"
        raise DDPMCodecError(f"{state} points to a checkpoint that is not there ({current} -> "
                             f"{target}); restore it or choose another --out")
    if state.exists() and not resume:
        raise DDPMCodecError(f"{out} already holds a training run; pass --resume to continue "
                             f"it or choose another --out")
    trainer = Trainer(cfg, train_images, eval_images, out, opts, data_spec)
    if not state.exists() and trainer.dist.is_main:
        for name in ("log.csv", "eval.csv"):  # left by a run that died before its first save
            (out / name).unlink(missing_ok=True)
    try:
        if state.exists():
            trainer.load(state)
        summary = trainer.run(steps)
        summary.update(world_size=trainer.dist.world_size, precision=trainer.precision,
                       num_params=trainer.num_params, is_main=trainer.dist.is_main)
        return summary
    finally:
        trainer.close()
