"""`ddpmcodec train`: the paper's training recipe on one device, or many under torchrun.

    ddpmcodec train --data train.npz --eval-data test.npz --out runs/train/tiny --config tiny --steps 300
    torchrun --nproc_per_node 8 -m ddpmcodec train --dataset cifar10 --out runs/train/paper

Recipe options left out come from the --config preset, or, with --resume, from the run
being resumed (so `ddpmcodec train --out DIR --resume --data ...` continues it as it was).

The run folder OUT holds each checkpoint (EMA network + exact-resume state) as one unit in
OUT/ckpt-<step>/, and OUT/current, a symlink switched atomically to the latest one. OUT/model
(-> current/model) is the checkpoint to pass as --ckpt to the other commands, and
OUT/train_state.pt (-> current/train_state.pt) what --resume reads; a crash while saving
leaves the previous checkpoint, never a network and a state that disagree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmcodec.cli.common import (
    DataPath,
    Dataset,
    Device,
    Json,
    NumImages,
    Quiet,
    emit,
    resolve_device,
)
from ddpmcodec.errors import DDPMCodecError

STEPS_PRESET = {"paper": 800_000, "small": 10_000, "tiny": 500}
DEFAULT_CONFIG = "paper"
_PRESET_STEPS = ", ".join(f"{name} {steps}" for name, steps in STEPS_PRESET.items())

Opt = typer.Option


def _load_sets(data, dataset, num_images, eval_data, eval_images):
    """Training images, evaluation images (or None) and a JSON-able description of both.

    Without --eval-data: the cifar10 test split for --dataset; for --data, the last
    min(eval_images, N // 10) images are held out of training.
    """
    from ddpmcodec.io.data import images_digest, load_images
    train = load_images(data, dataset, "train", num_images)
    images, held, spec = train.images, None, {"train": dict(train.spec)}
    if eval_images > 0:
        if eval_data is not None or dataset is not None:
            test = load_images(eval_data, None if eval_data is not None else dataset, "test", eval_images)
            held, spec["eval"] = test.images, dict(test.spec)
        elif len(images) // 10 > 0:
            n_hold = min(eval_images, len(images) // 10)
            images, held = images[:-n_hold], images[-n_hold:]
            spec["eval"] = {"kind": "held_out", "last": n_hold, "digest": images_digest(held)}
    spec["train"].update(num_images=int(len(images)), digest=images_digest(images))
    return images, held, spec


def _saved_recipe(out: Path) -> dict | None:
    path = out / "train_state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["recipe"]
    except (OSError, ValueError, KeyError) as exc:
        raise DDPMCodecError(f"unreadable {path}: {exc}") from None


def train(
    out: Annotated[Path, Opt("--out", "-o", help="run folder: ckpt-<step>/ (the latest checkpoint, "
                             "network and training state as one unit), model (a link to its EMA "
                             "network, diffusers format: pass OUT/model as --ckpt), train_state.pt "
                             "(a link to its resume state), log.csv, eval.csv")],
    data: DataPath = None, dataset: Dataset = None, num_images: NumImages = None,
    eval_data: Annotated[Optional[Path], Opt(
        "--eval-data", help="held-out images for the periodic evaluation (default: the cifar10 "
                            "test split with --dataset; with --data its last images are held out)")] = None,
    eval_images: Annotated[int, Opt("--eval-images", help="images in the evaluation (0: none)")] = 256,
    config: Annotated[Optional[str], Opt("--config", help=f"network and recipe preset: paper "
                                         f"(35.7M, Ho et al.), small (ch=64) or tiny (tests); "
                                         f"default {DEFAULT_CONFIG}, or with --resume the "
                                         f"run's")] = None,
    steps: Annotated[Optional[int], Opt("--steps", help=f"train until this many optimizer steps "
                                        f"in total (default: {_PRESET_STEPS})")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", "-b", help="global batch (over all processes)")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="Adam learning rate after warmup")] = None,
    warmup: Annotated[Optional[int], Opt("--warmup", help="linear learning-rate warmup steps")] = None,
    objective: Annotated[Optional[str], Opt("--objective", help="simple (L_simple), vlb or hybrid "
                                            "(the last two learn the variance)")] = None,
    variance: Annotated[Optional[str], Opt("--variance", help="fixedlarge or fixedsmall for simple; "
                                           "learned for vlb/hybrid")] = None,
    hybrid_lambda: Annotated[Optional[float], Opt("--hybrid-lambda", help="weight of L_vlb in hybrid")] = None,
    grad_clip: Annotated[Optional[float], Opt("--grad-clip", help="global gradient-norm clip (0: off)")] = None,
    grad_accum: Annotated[Optional[int], Opt("--grad-accum", help="micro-batches per step and process")] = None,
    ema_decay: Annotated[Optional[float], Opt("--ema-decay", help="EMA decay (its maximum with --ema-warmup)")] = None,
    ema_warmup: Annotated[Optional[bool], Opt("--ema-warmup/--no-ema-warmup",
                                              help="decay min(ema_decay, (1+n)/(10+n))")] = None,
    dropout: Annotated[Optional[float], Opt("--dropout", help="default: the config's")] = None,
    flip: Annotated[Optional[bool], Opt("--flip/--no-flip", help="random horizontal flips")] = None,
    schedule: Annotated[Optional[str], Opt("--schedule", help="linear or cosine")] = None,
    num_timesteps: Annotated[Optional[int], Opt("--num-timesteps", help="T")] = None,
    seed: Annotated[Optional[int], Opt("--seed", help="initial weights, data order, noise")] = None,
    resume: Annotated[bool, Opt("--resume", help="continue the run in --out (start it if there is none)")] = False,
    device: Device = "auto",
    precision: Annotated[str, Opt("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16")] = "auto",
    compile_mode: Annotated[str, Opt("--compile", help="torch.compile mode: none, default, "
                                     "max-autotune, reduce-overhead (CUDA graphs)")] = "none",
    channels_last: Annotated[bool, Opt("--channels-last", help="NHWC memory format (GPU)")] = False,
    fused_adam: Annotated[Optional[bool], Opt("--fused-adam/--no-fused-adam", help="default: on CUDA")] = None,
    deterministic: Annotated[bool, Opt("--deterministic", help="deterministic algorithms (slower on GPU)")] = False,
    log_every: Annotated[int, Opt("--log-every", help="steps between log.csv rows")] = 50,
    eval_every: Annotated[int, Opt("--eval-every", help="steps between evaluations (0: start and end)")] = 1000,
    eval_batch_size: Annotated[int, Opt("--eval-batch-size", help="images per network call in evaluations")] = 256,
    bound_images: Annotated[int, Opt("--bound-images", help="also the bound of this many test images at each evaluation")] = 0,
    bound_steps: Annotated[int, Opt("--bound-steps", "-K", help="... on a chain of this many steps")] = 20,
    save_every: Annotated[int, Opt("--save-every", help="steps between checkpoints (0: only at the end)")] = 5000,
    as_json: Json = False, quiet: Quiet = False,
):
    """Train a DDPM (diffusers UNet2DModel) with the paper's recipe: L_simple (or the
    vlb / hybrid objectives with a learned variance), Adam with warmup, gradient
    clipping, EMA, random flips, dropout; bf16 autocast on CUDA.

    Writes the EMA weights as a diffusers checkpoint (OUT/model, for --ckpt of every
    other command) and the exact-resume state, both in OUT/ckpt-<step>/ and replaced
    together (OUT/model and OUT/train_state.pt are links to the latest), and log.csv and
    eval.csv. For several GPUs or nodes launch it with torchrun (DistributedDataParallel;
    --batch-size is global).
    """
    from ddpmcodec.io.results import check_out_folder
    from ddpmcodec.pipelines.train import PRESETS, RunOptions, TrainConfig
    from ddpmcodec.pipelines.train import train as run_train
    out = check_out_folder(out)
    saved = _saved_recipe(out) if resume else None
    if saved is None and (out / "train_state.pt").exists():
        raise DDPMCodecError(f"{out} already holds a training run; pass --resume to continue "
                             f"it or choose another --out")
    given = dict(model=config, batch_size=batch_size, lr=lr, warmup=warmup, objective=objective,
                 variance=variance, hybrid_lambda=hybrid_lambda, grad_clip=grad_clip,
                 grad_accum=grad_accum, ema_decay=ema_decay, ema_warmup=ema_warmup,
                 dropout=dropout, flip=flip, schedule=schedule, num_timesteps=num_timesteps, seed=seed)
    given = {k: v for k, v in given.items() if v is not None}
    if saved is not None:
        recipe = {**saved, **given}
    else:
        name = given.get("model", DEFAULT_CONFIG)
        if name not in PRESETS:
            raise DDPMCodecError(f"unknown --config {name!r}; choose one of {', '.join(PRESETS)}")
        recipe = {**TrainConfig.preset(name).to_dict(), **given}
    if given.get("objective") and "variance" not in given and saved is None:
        recipe["variance"] = None  # follow the objective
    cfg = TrainConfig.from_dict(recipe)
    steps = STEPS_PRESET[cfg.model] if steps is None else steps
    if steps < 0:
        raise DDPMCodecError(f"--steps must be >= 0, got {steps}")
    opts = RunOptions(device=resolve_device(device), precision=precision, channels_last=channels_last,
                      compile=compile_mode, fused_adam=fused_adam, deterministic=deterministic,
                      log_every=log_every, eval_every=eval_every, eval_batch_size=eval_batch_size,
                      bound_images=bound_images, bound_steps=bound_steps, save_every=save_every,
                      progress=not quiet)
    if eval_images < 0:
        raise DDPMCodecError(f"--eval-images must be >= 0, got {eval_images}")
    images, held, spec = _load_sets(data, dataset, num_images, eval_data, eval_images)
    summary = run_train(cfg, images, out, steps, held, opts, resume=resume, data_spec=spec)
    if not summary.pop("is_main"):
        return
    summary["out"] = str(out)
    lines = [f"trained to step {summary['step']} ({summary['steps_this_run']} this run, "
             f"{summary['world_size']} process(es), {summary['precision']}, "
             f"{summary['num_params']:,} parameters)"]
    if summary.get("train_loss") is not None:
        lines.append(f"  train loss {summary['train_loss']:.5f}   "
                     f"{summary['steps_per_s'] or 0:.2f} steps/s   "
                     f"{summary['elapsed_seconds']:.0f} s of training in all")
    if summary.get("test_mse") is not None:
        line = (f"  test L_simple {summary['test_mse']:.5f} ± {summary['test_mse_se']:.5f}   "
                f"bound estimate {summary['test_bound_est_bpd']:.3f} bits/dim")
        if summary.get("bound_bpd") is not None:
            line += (f"   bound ({summary['bound_images']} images, {summary['bound_steps']} steps) "
                     f"{summary['bound_bpd']:.3f} bits/dim")
        lines.append(line)
    lines.append(f"  model (EMA): {summary['model']}   e.g. ddpmcodec nll --ckpt {summary['model']}")
    emit(summary, as_json, lines)
