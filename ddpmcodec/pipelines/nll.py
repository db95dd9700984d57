"""`ddpmcodec nll`: the bound of a chain over a set of images, into a results folder.

Two estimators, two engines (``results.json`` config records all three choices:
``estimator``, ``engine``, ``model_dtype``):

* ``estimator="full"``: every term of the chain. Arrays (``arrays.npz``; N images, K chain
  steps, column k = chain step k): ``image_id`` [N], ``vb`` [N,K] bits/dim (column 0 is
  the decoder term L_0), ``xstart_mse`` [N,K] and ``eps_mse`` [N,K] (per-pixel MSE on
  [-1, 1]), ``prior`` [N], ``total`` [N] bits/dim, and ``timesteps`` [K] (original
  indices). Tables: ``per_image.csv`` and ``per_step.csv``.
* ``estimator="importance"``: the unbiased estimate from ``nfe`` network evaluations per
  image (:mod:`ddpmcodec.pipelines.estimator`). Arrays: ``image_id``, ``prior``, ``decoder``,
  ``kl`` (estimate of the sum of the KL terms), ``kl_var`` (its Monte-Carlo variance),
  ``total``, ``nfe`` [N]; ``exact_vb`` [N,E] at chain steps ``exact_k`` [E];
  ``draw_k``, ``draw_vb`` [N,n]; ``timesteps`` [K]. Table: ``per_image.csv``.

``engine="plain"`` is the reference loop (:func:`~ddpmcodec.core.likelihood.bound_plain_loop`,
``batch_size`` images per call); ``engine="fast"`` (:mod:`ddpmcodec.pipelines.engine`) puts
``batch_size`` (image, step) pairs in every call. Both use the same counter-based noise.

Under ``torchrun`` each rank computes a disjoint share of the images into the same results
folder (which must be on a file system all ranks see), and rank 0 merges the shards.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ddpmcodec.core.likelihood import bound_plain_loop
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import to_csv_atomic
from ddpmcodec.io.data import ImageSet, check_fits, to_model_space
from ddpmcodec.io.models import LoadedModel
from ddpmcodec.io.results import ResultsFolder, mean_se, read_results
from ddpmcodec.pipelines.defaults import DEFAULT_NFE, PLAIN_BATCH  # noqa: F401 - re-exported
from ddpmcodec.pipelines.engine import (
    MODEL_DTYPE_NAMES,
    Engine,
    default_batch,
    group_size,
)
from ddpmcodec.progress import progress_bar

ENGINES = ("fast", "plain")
ESTIMATORS = ("full", "importance")


def nll_config(model: LoadedModel, images: ImageSet, steps: int | None, seed: int,
               engine: str = "plain", estimator: str = "full", precision: str = "fp32",
               fp32_timesteps: int = 0, plan=None, proposal=None, chain=None,
               chain_choice: dict | None = None) -> dict:
    """Everything the numbers depend on (a resumed run must match it exactly)."""
    diffusion = model.diffusion.with_steps(steps) if chain is None else chain
    cfg = {"model": {"fingerprint": model.fingerprint, "source": model.source},
           "data": images.spec, "chain": diffusion.spec(), "seed": int(seed),
           "estimator": estimator, "decoder_cdf": "exact",
           "model_dtype": MODEL_DTYPE_NAMES[precision], "engine": engine}
    if precision in ("tf32", "bf16") and fp32_timesteps > 0:
        cfg["fp32_timesteps"] = int(fp32_timesteps)
    if chain_choice:
        cfg["chain_choice"] = dict(chain_choice)
    if estimator == "importance":
        cfg["nfe"] = int(plan.nfe)
        cfg["sampling"] = plan.scheme
        cfg["proposal"] = proposal.describe()
    return cfg


def summarize(arrays: dict) -> dict:
    """Summary numbers (bits/dim, mean and standard error over images)."""
    vb, prior = arrays["vb"], arrays["prior"]
    out = {"num_images": int(len(prior)), "num_steps": int(vb.shape[1])}
    for name, values in (("total_bpd", arrays["total"]), ("prior_bpd", prior),
                         ("kl_bpd", vb[:, 1:].sum(1)), ("rate_bpd", prior + vb[:, 1:].sum(1)),
                         ("decoder_bpd", vb[:, 0])):
        out[name], out[name.replace("_bpd", "_se")] = mean_se(values)
    return out


def tables(arrays: dict, names=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """per_image and per_step tables (pandas)."""
    vb = arrays["vb"]
    ids = arrays["image_id"]
    per_image = pd.DataFrame({
        "image_id": ids, "name": [names[i] if names else f"{i:06d}" for i in ids],
        "total_bpd": arrays["total"], "prior_bpd": arrays["prior"],
        "rate_bpd": arrays["prior"] + vb[:, 1:].sum(1), "decoder_bpd": vb[:, 0]})
    n = len(ids)
    sd = vb.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(vb.shape[1])
    per_step = pd.DataFrame({
        "k": np.arange(vb.shape[1]), "timestep": arrays["timesteps"],
        "t": arrays["timesteps"] + 1, "vb_bpd": vb.mean(0), "vb_se": sd,
        "xstart_mse": arrays["xstart_mse"].mean(0), "eps_mse": arrays["eps_mse"].mean(0)})
    return per_image, per_step


def importance_table(arrays: dict, names=None) -> pd.DataFrame:
    ids = arrays["image_id"]
    return pd.DataFrame({
        "image_id": ids, "name": [names[i] if names else f"{i:06d}" for i in ids],
        "total_bpd": arrays["total"], "prior_bpd": arrays["prior"],
        "rate_bpd": arrays["prior"] + arrays["kl"], "decoder_bpd": arrays["decoder"],
        "kl_bpd": arrays["kl"], "kl_mc_se": np.sqrt(arrays["kl_var"]), "nfe": arrays["nfe"]})


# -- torchrun ------------------------------------------------------------------------------
class Ranks:
    """This process's place in a torchrun job (a single process when not launched by
    torchrun). Barriers and broadcasts go through a gloo process group, which works for
    CPU and GPU ranks alike; it is created here unless one exists."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._owns_group = False
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("gloo")
                self._owns_group = True

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self._owns_group = False


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def _open_folder(ranks: Ranks, out, config: dict, overwrite: bool) -> ResultsFolder:
    """Rank 0 creates (or checks, or clears) the folder; then every other rank opens it.
    A mistake found by rank 0 is raised on every rank, so none waits forever."""
    folder, error = None, None
    if ranks.rank == 0:
        try:
            folder = ResultsFolder(out, "nll", config, overwrite)
        except DDPMCodecError as exc:
            error = str(exc)
    error = ranks.broadcast(error)
    if error is not None:
        raise DDPMCodecError(error)
    if ranks.rank != 0:
        folder = ResultsFolder(out, "nll", config, overwrite=False)
    return folder


# -- the run -------------------------------------------------------------------------------
def run_nll(model: LoadedModel, images: ImageSet, out: str | Path, steps: int | None = None,
            batch_size: int | None = None, seed: int = 0, overwrite: bool = False,
            progress: bool = True, *, engine: str = "plain", estimator: str = "full",
            nfe: int | None = None, proposal=None, precision: str = "fp32",
            fp32_timesteps: int = 0, compile: bool = False, cuda_graphs: bool = False,
            chain=None, chain_choice: dict | None = None) -> dict:
    """Compute (or resume, or just read) the bound of ``images`` under ``model``.

    The chain is ``model.diffusion`` respaced evenly to ``steps``, or ``chain`` (a
    :class:`~ddpmcodec.core.diffusion.Diffusion` on the model's schedule, e.g. from
    :func:`ddpmcodec.core.chains.build_chain`); ``chain_choice`` (JSON-able: trajectory,
    variance, calibration) is recorded beside it.

    ``batch_size``: images per network call for the plain engine (default 64), (image,
    step) pairs per call for the fast one (default 512 on CUDA, 16 on the CPU).
    ``estimator="importance"`` uses ``nfe`` evaluations per image (default 50) and the
    ``proposal`` (a :class:`~ddpmcodec.pipelines.estimator.Proposal`, a proposal.json, or a
    full-bound results folder; default: the model's own, else the Gaussian-data one).
    ``precision``, ``fp32_timesteps``, ``compile`` and ``cuda_graphs`` configure the fast
    engine's network (:func:`ddpmcodec.pipelines.engine.build_network`).

    Returns the results.json content; the folder ``out`` holds the arrays and tables.
    """
    from ddpmcodec.pipelines import estimator as est
    check_fits(images.images, model.image_shape)
    if engine not in ENGINES:
        raise DDPMCodecError(f"--engine must be one of {ENGINES}, got {engine!r}")
    if estimator not in ESTIMATORS:
        raise DDPMCodecError(f"--estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if engine == "plain" and (estimator != "full" or precision != "fp32" or compile
                              or cuda_graphs or fp32_timesteps):
        raise DDPMCodecError("the plain engine computes the full bound in float32 only; "
                             "--estimator importance, --precision, --fp32-timesteps, --compile "
                             "and --cuda-graphs need --engine fast")
    if batch_size is not None and batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    if nfe is not None and estimator != "importance":
        raise DDPMCodecError("--nfe applies to --estimator importance only")
    if chain is not None and steps is not None and steps != chain.num_steps:
        raise DDPMCodecError(f"--steps {steps} disagrees with the {chain.num_steps}-step chain given")
    diffusion = model.diffusion.with_steps(steps) if chain is None else chain
    plan = prop = None
    if estimator == "importance":
        if proposal is None:
            prop = est.default_proposal(model, diffusion)
        elif isinstance(proposal, est.Proposal):
            prop = proposal.for_chain(diffusion)
        else:
            prop = est.Proposal.load(proposal).for_chain(diffusion)
        plan = est.Plan.make(prop, DEFAULT_NFE if nfe is None else nfe)
    config = nll_config(model, images, steps, seed, engine, estimator, precision,
                        fp32_timesteps, plan, prop, diffusion, chain_choice)

    ranks = Ranks()
    try:
        folder = _open_folder(ranks, out, config, overwrite)
        if folder.complete:
            return read_results(folder.path)
        todo = ranks.broadcast(sorted(set(range(len(images))) - folder.done_ids())
                               if ranks.rank == 0 else None)
        mine = todo[ranks.rank::ranks.world]
        show = progress and ranks.rank == 0
        if engine == "plain":
            run_info = _run_plain(model, diffusion, images, folder, mine, batch_size or PLAIN_BATCH,
                                  seed, show)
        else:
            eng = Engine.for_model(model, diffusion, seed,
                                   batch_size or default_batch(model.device), precision,
                                   compile, cuda_graphs, fp32_timesteps)
            run_info = _run_fast(eng, plan, images, folder, mine, seed, show)
        ranks.barrier()  # every rank's shards are written
        if ranks.rank == 0:
            res = _finish(folder, images, diffusion, plan, run_info, ranks.world, model)
        ranks.barrier()  # the merged folder is complete
        return res if ranks.rank == 0 else read_results(folder.path)
    finally:
        ranks.close()


def _run_plain(model, diffusion, images, folder, todo, batch_size, seed, show) -> dict:
    denoiser = model.denoiser()
    with progress_bar(len(todo) * diffusion.num_steps, "nll", "eval", enabled=show) as bar:
        for start in range(0, len(todo), batch_size):
            ids = np.asarray(todo[start:start + batch_size])
            x0 = to_model_space(images.images[ids], model.device)
            t0 = time.perf_counter()
            terms = bound_plain_loop(denoiser, diffusion, x0, torch.from_numpy(ids), seed,
                                     progress=lambda: bar.update(len(ids)))
            folder.write_shard(ids, seconds=np.full(len(ids), (time.perf_counter() - t0) / len(ids)),
                               **{k: v.numpy() for k, v in terms.items()})
    return {"batch_size": batch_size}


def _run_fast(eng: Engine, plan, images, folder, todo, seed, show) -> dict:
    from ddpmcodec.pipelines import estimator as est
    per_image = eng.diffusion.num_steps if plan is None else plan.nfe
    group = group_size(eng.batch, per_image, len(todo), eng.padded)
    with progress_bar(len(todo) * per_image, "nll", "eval", enabled=show) as bar:
        for start in range(0, len(todo), group):
            ids = np.asarray(todo[start:start + group])
            x0 = to_model_space(images.images[ids])
            t0 = time.perf_counter()
            if plan is None:
                arrays = {k: v.numpy() for k, v in eng.bound(x0, torch.from_numpy(ids), bar.update).items()}
            else:
                arrays = est.estimate(eng, plan, x0, ids, seed, bar.update)
            if eng.device.type == "cuda":
                torch.cuda.synchronize(eng.device)
            folder.write_shard(ids, seconds=np.full(len(ids), (time.perf_counter() - t0) / len(ids)),
                               **arrays)
    return {"batch_size": eng.batch, "images_per_group": group, **eng.describe()}


def _finish(folder: ResultsFolder, images: ImageSet, diffusion, plan, run_info: dict,
            world: int, model: LoadedModel) -> dict:
    from ddpmcodec.pipelines import estimator as est
    arrays = folder.merged()
    if len(arrays["image_id"]) != len(images) or \
            not np.array_equal(arrays["image_id"], np.arange(len(images))):
        raise DDPMCodecError(
            f"{folder.path}: the shards hold {len(arrays['image_id'])} of {len(images)} images; "
            f"under torchrun the results folder must be on a file system every rank shares")
    arrays["timesteps"] = diffusion.timesteps.numpy()
    seconds = float(arrays.pop("seconds").sum())
    if plan is None:
        summary = summarize(arrays)
        per_image, per_step = tables(arrays, images.names)
        to_csv_atomic(per_image, folder.path / "per_image.csv")
        to_csv_atomic(per_step, folder.path / "per_step.csv")
    else:
        arrays["exact_k"] = plan.exact_k
        summary = {**est.summarize(arrays), "num_steps": int(diffusion.num_steps),
                   "exact_steps": int(len(plan.exact_k)), "draws_per_image": int(plan.num_draws)}
        to_csv_atomic(importance_table(arrays, images.names), folder.path / "per_image.csv")
    run = {"device": str(model.device), "torch": torch.__version__, "compute_seconds": seconds,
           "images_per_second": len(images) / seconds if seconds > 0 else None,
           "world_size": world, **run_info}
    return folder.finish(arrays, summary, run)
