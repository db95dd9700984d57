"""The sampling experiments of the paper's Figures 6-8, each into a results folder.

* progressive generation (Fig. 6): the x0-prediction along one reverse chain from x_T;
* shared latents (Fig. 7): several samples of x0 from one x_t of a real image, at several t;
* interpolation (Fig. 8): two real images diffused to x_t with shared noise, mixed as
  (1 - lambda) x_t + lambda x'_t and decoded by the reverse process with shared noise.

Arrays hold uint8 NHWC images so that figures are drawn from the folders alone.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ddpmcodec.core.rng import counter_normal
from ddpmcodec.core.sampling import diffuse, nearest_step, reverse_process, sample
from ddpmcodec.io.data import ImageSet, check_fits, from_model_space, to_model_space
from ddpmcodec.io.models import LoadedModel
from ddpmcodec.io.results import ResultsFolder, read_results
from ddpmcodec.progress import progress_bar


def _folder(out, kind: str, model: LoadedModel, config: dict, overwrite: bool):
    cfg = {"model": {"fingerprint": model.fingerprint, "source": model.source}, **config}
    folder = ResultsFolder(out, kind, cfg, overwrite)
    return folder, folder.complete


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return from_model_space(x.clamp(-1, 1))


def progressive_generation(model: LoadedModel, out, num_samples: int = 8, steps: int = 100,
                           num_snapshots: int = 10, seed: int = 0, overwrite: bool = False,
                           progress: bool = True) -> dict:
    """x0-predictions at ``num_snapshots`` reverse steps of ancestral sampling."""
    chain = model.diffusion.with_steps(steps)
    snaps = sorted({int(round(k)) for k in np.linspace(chain.num_steps - 1, 0, num_snapshots)},
                   reverse=True)
    folder, done = _folder(out, "progressive_generation", model,
                           {"num_samples": num_samples, "chain": chain.spec(), "seed": seed,
                            "snapshots": snaps, "method": "ancestral"}, overwrite)
    if done:
        return read_results(out)
    t0 = time.perf_counter()
    with progress_bar(chain.num_steps, "progressive generation", "step", progress) as bar:
        r = sample(model.denoiser(), chain, num_samples, model.image_shape, seed, "ancestral",
                   snaps, on_step=bar.update, device=model.device)
    pred = np.stack([_to_uint8(r["pred_x0"][k]) for k in snaps], axis=1)  # [N, S, H, W, C]
    arrays = {"pred_x0": pred, "samples": _to_uint8(r["x0"]),
              "t": np.asarray([int(chain.timesteps[k]) + 1 for k in snaps])}
    return folder.finish(arrays, {"num_samples": num_samples},
                         {"seconds": time.perf_counter() - t0, "device": str(model.device)})


def shared_latent(model: LoadedModel, images: ImageSet, out, times=(1000, 750, 500, 250),
                  num_samples: int = 5, steps: int = 100, seed: int = 0,
                  overwrite: bool = False, progress: bool = True) -> dict:
    """For each image and each t: x_t ~ q(x_t|x0) once, then ``num_samples`` draws of
    x0 ~ p_theta(x0|x_t) with independent reverse noise."""
    check_fits(images.images, model.image_shape)
    chain = model.diffusion.with_steps(steps)
    ks = [nearest_step(chain, t) for t in times]
    folder, done = _folder(out, "shared_latent", model,
                           {"data": images.spec, "chain": chain.spec(), "seed": seed,
                            "steps_k": ks, "num_samples": num_samples,
                            "reverse_noise": "per-t"}, overwrite)
    if done:
        return read_results(out)
    t0 = time.perf_counter()
    n = len(images)
    x0 = to_model_space(images.images, model.device)
    result = np.zeros((n, len(ks), num_samples + 1) + images.images.shape[1:], np.uint8)
    with progress_bar(sum(k + 1 for k in ks), "shared latents", "step", progress) as bar:
        for j, k in enumerate(ks):
            noise = counter_normal(seed, torch.arange(n), chain.timesteps[k], x0.shape[1:])
            x_t = diffuse(chain, x0, k, noise.to(x0.device))
            result[:, j, 0] = _to_uint8(x_t)
            # all images x samples in one batch; sample s of image i at the j-th t has noise
            # id (j*n + i)*S + s: every t gets reverse noise of its own (with one id set for
            # all t, nearly pure x_t such as t=748 and t=1000 gave the same samples)
            xs = x_t.repeat_interleave(num_samples, 0)
            ids = j * n * num_samples + torch.arange(n * num_samples)
            r = reverse_process(model.denoiser(), chain, xs, k, ids, seed + 1, on_step=bar.update)
            result[:, j, 1:] = _to_uint8(r["x0"]).reshape(n, num_samples, *result.shape[3:])
    arrays = {"grid": result, "originals": images.images,
              "t": np.asarray([int(chain.timesteps[k]) + 1 for k in ks])}
    return folder.finish(arrays, {"num_images": n},
                         {"seconds": time.perf_counter() - t0, "device": str(model.device)})


def interpolation(model: LoadedModel, images: ImageSet, out, times=(250, 500, 750),
                  num_lambdas: int = 9, steps: int = 100, seed: int = 0,
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Pairs (images 2i, 2i+1): decode (1-lambda) x_t + lambda x'_t for each t and lambda."""
    check_fits(images.images, model.image_shape)
    if len(images) < 2:
        from ddpmcodec.errors import DDPMCodecError
        raise DDPMCodecError("interpolation needs at least two images")
    chain = model.diffusion.with_steps(steps)
    ks = [nearest_step(chain, t) for t in times]
    lambdas = np.linspace(0.0, 1.0, num_lambdas)
    pairs = len(images) // 2
    folder, done = _folder(out, "interpolation", model,
                           {"data": images.spec, "chain": chain.spec(), "seed": seed,
                            "steps_k": ks, "lambdas": lambdas.tolist()}, overwrite)
    if done:
        return read_results(out)
    t0 = time.perf_counter()
    x0 = to_model_space(images.images[: 2 * pairs], model.device)
    a, b = x0[0::2], x0[1::2]
    grid = np.zeros((pairs, len(ks), num_lambdas) + images.images.shape[1:], np.uint8)
    lam = torch.tensor(lambdas, dtype=torch.float64, device=x0.device).reshape(1, -1, 1, 1, 1)
    with progress_bar(sum(k + 1 for k in ks), "interpolation", "step", progress) as bar:
        for j, k in enumerate(ks):
            noise = counter_normal(seed, torch.arange(pairs), chain.timesteps[k], x0.shape[1:])
            noise = noise.to(x0.device)  # shared by both images of a pair
            xa, xb = diffuse(chain, a, k, noise), diffuse(chain, b, k, noise)
            mix = ((1 - lam) * xa[:, None] + lam * xb[:, None]).reshape(-1, *x0.shape[1:])
            ids = torch.arange(pairs).repeat_interleave(num_lambdas)  # same reverse noise per pair
            r = reverse_process(model.denoiser(), chain, mix, k, ids, seed + 1, on_step=bar.update)
            grid[:, j] = _to_uint8(r["x0"]).reshape(pairs, num_lambdas, *grid.shape[3:])
    arrays = {"grid": grid, "originals": images.images[: 2 * pairs], "lambdas": lambdas,
              "t": np.asarray([int(chain.timesteps[k]) + 1 for k in ks])}
    return folder.finish(arrays, {"pairs": pairs},
                         {"seconds": time.perf_counter() - t0, "device": str(model.device)})
