"""A whole data set into shard files: ``ddpmcodec encode DATA -o FOLDER --shard-size N``.

The folder holds ``manifest.json`` (what the shards were made from and with: the model,
the images' digest, the codec and its options, the shard plan), ``shard-00000.ddpm``,
... (ordinary files of the codec: each decodes alone) and beside each a
``shard-00000.json`` with its sizes, the bound of its bits-back images and the classical
codecs' bits for the same images, then ``summary.json`` once every shard is there.

Interruptions lose nothing that finished: every file is written atomically, a shard
counts as done when its JSON (written after its file) names the file's size, and a rerun
with the same manifest skips the done shards; another data set, model or codec option in
the same folder is refused (``overwrite`` starts it afresh). Shards go round-robin to
torchrun ranks (a folder every rank sees) and, within a process, to ``workers`` processes
that each load the model once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import write_bytes_atomic, write_json_atomic
from ddpmcodec.pipelines.defaults import SHARD_SIZE as DEFAULT_SHARD_SIZE

SHARDS_FORMAT = "ddpmcodec-shards/1"
MANIFEST, SUMMARY = "manifest.json", "summary.json"


@dataclass(frozen=True)
class ShardJob:
    """What every shard is coded with: the codec mode, its encode options (picklable: a
    chain is a Diffusion), and the checkpoint and device a worker loads."""

    mode: str
    options: dict
    ckpt: str | None
    device: str = "cpu"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.ddpm"


def plan(num_images: int, shard_size: int) -> list[dict]:
    """[{index, first, count}] of consecutive shards of at most ``shard_size`` images."""
    if shard_size < 1:
        raise DDPMCodecError(f"--shard-size must be positive, got {shard_size}")
    return [{"index": i, "first": a, "count": min(shard_size, num_images - a),
             "file": shard_name(i)}
            for i, a in enumerate(range(0, num_images, shard_size))]


def _options_spec(options: dict) -> dict:
    """The encode options as JSON (a chain by its spec)."""
    out = {}
    for k, v in sorted(options.items()):
        out[k] = v.spec() if hasattr(v, "spec") else v
    return json.loads(json.dumps(out, default=str))


def manifest_of(model, images, job: ShardJob, shard_size: int) -> dict:
    return {"format": SHARDS_FORMAT, "model": model.fingerprint, "data": images.spec,
            "mode": job.mode, "options": _options_spec(job.options),
            "shard_size": int(shard_size), "num_images": len(images),
            "image_shape": list(images.images.shape[1:]),
            "shards": plan(len(images), shard_size)}


def read_manifest(folder: Path) -> dict:
    """A shard folder's manifest, with a clear error when the folder holds none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DDPMCodecError(f"{folder} is not a shard folder (no {MANIFEST})")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DDPMCodecError(f"{path} cannot be read ({exc})") from None
    if m.get("format") != SHARDS_FORMAT:
        raise DDPMCodecError(f"{path} is not a {SHARDS_FORMAT} manifest")
    return m


def shard_of_image(manifest: dict, image: int) -> dict:
    """The shard that holds image ``image`` (0-based, in the data set's order)."""
    n = manifest["num_images"]
    if not 0 <= image < n:
        raise DDPMCodecError(f"--image must be in 0..{n - 1}, got {image}")
    return manifest["shards"][image // manifest["shard_size"]]


def record_path(folder: Path, shard: dict) -> Path:
    """The JSON record beside a shard's file."""
    return Path(folder) / (Path(shard["file"]).stem + ".json")


def shard_done(folder: Path, shard: dict) -> bool:
    meta, data = record_path(folder, shard), folder / shard["file"]
    if not (meta.is_file() and data.is_file()):
        return False
    try:
        return json.loads(meta.read_text())["file_bytes"] == data.stat().st_size
    except (OSError, ValueError, KeyError):
        return False


def _open(folder: Path, manifest: dict, overwrite: bool) -> None:
    """Create the folder, or check that it was started with this manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".tmp-shard-*"):  # a killed run's unfinished write (before any
        tmp.unlink()                         # rank starts again: see encode_dataset)
    path = folder / MANIFEST
    if path.exists() and not overwrite:
        old = read_manifest(folder)
        if old != json.loads(json.dumps(manifest)):
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise DDPMCodecError(
                f"{folder} holds shards of another job (differs in: {', '.join(diff)}); "
                f"give another folder, or --overwrite to start afresh")
        return
    if overwrite:
        for p in list(folder.glob("shard-*.ddpm")) + list(folder.glob("shard-*.json")) + [
                folder / SUMMARY]:
            if p.exists():
                p.unlink()
    write_json_atomic(path, manifest)


# -- coding one shard -----------------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(job: ShardJob, threads: int) -> None:
    import torch

    from ddpmcodec.codec.api import get_codec
    from ddpmcodec.io.models import load_model
    torch.set_num_threads(max(1, threads))
    _WORKER["codec"] = get_codec(job.mode)(load_model(job.ckpt, job.device, lazy=True))


def code_shard(codec, job: ShardJob, folder: Path, shard: dict, images: np.ndarray) -> dict:
    """Encode one shard, write it and its JSON (in that order, each atomically)."""
    from ddpmcodec.pipelines.lossless_baselines import classical_lossless_bits
    t0 = time.perf_counter()
    enc = codec.encode(images, **job.options)
    seconds = time.perf_counter() - t0
    write_bytes_atomic(folder / shard["file"], enc.data)
    s = enc.stats
    meta = {**shard, "mode": enc.header.mode, "file_bytes": len(enc.data),
            "dims": int(s.dims) * int(s.num_images), "net_dims": int(s.net_dims or 0),
            "bound_bits": float(s.bound_bits) if s.net_dims else 0.0,
            "net_bits": float(s.actual_bits) if s.net_dims else 0.0,
            "encode_s": seconds, "classical_bits": {
                k: int(sum(v)) for k, v in classical_lossless_bits(images).items()}}
    write_json_atomic(record_path(folder, shard), meta)
    return meta


def _code_in_worker(job: ShardJob, folder: str, shard: dict, images: np.ndarray) -> dict:
    return code_shard(_WORKER["codec"], job, Path(folder), shard, images)


# -- the whole set --------------------------------------------------------------------------
def encode_dataset(model, images, folder, job: ShardJob, shard_size: int = DEFAULT_SHARD_SIZE,
                   workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Code ``images`` (an ImageSet) into shards under ``folder``; returns the summary
    (also ``summary.json``) once every shard exists (on rank 0; other ranks return None)."""
    from ddpmcodec.pipelines.nll import Ranks
    from ddpmcodec.progress import progress_bar
    folder = Path(folder)
    if workers < 1:
        raise DDPMCodecError(f"--workers must be positive, got {workers}")
    manifest = manifest_of(model, images, job, shard_size)
    ranks = Ranks()
    try:
        error = None
        if ranks.rank == 0:
            try:
                _open(folder, manifest, overwrite)
            except DDPMCodecError as exc:
                error = str(exc)
        error = ranks.broadcast(error)
        if error:
            raise DDPMCodecError(error)
        ranks.barrier()
        mine = [s for s in manifest["shards"]
                if s["index"] % ranks.world == ranks.rank and not shard_done(folder, s)]
        todo = sum(s["count"] for s in mine)
        with progress_bar(todo, "encode", "img", enabled=progress) as bar:
            if workers == 1 or len(mine) <= 1:
                from ddpmcodec.codec.api import get_codec
                codec = get_codec(job.mode)(model)
                for s in mine:
                    code_shard(codec, job, folder, s, images.images[s["first"]:s["first"] + s["count"]])
                    bar.update(s["count"])
            else:
                _run_pool(job, folder, mine, images.images, workers, bar)
        ranks.barrier()
        if ranks.rank != 0:
            return None
        return summarise(folder)
    finally:
        ranks.close()


def _run_pool(job: ShardJob, folder: Path, shards: list, images: np.ndarray, workers: int,
              bar) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(job, threads)) as pool:
        futures = {pool.submit(_code_in_worker, job, str(folder), s,
                               images[s["first"]:s["first"] + s["count"]]): s for s in shards}
        for f in as_completed(futures):
            f.result()  # a worker's error is this process's
            bar.update(futures[f]["count"])


def summarise(folder) -> dict:
    """The whole set from its shards' JSON: file bits/dim, the bound of the bits-back
    images, the classical codecs on the same images (written to ``summary.json``)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    missing = [s["file"] for s in manifest["shards"] if not shard_done(folder, s)]
    if missing:
        raise DDPMCodecError(f"{len(missing)} shard(s) are not done yet ({missing[0]}, ...); "
                             f"run the same command again to finish them")
    metas = [json.loads(record_path(folder, s).read_text())
             for s in manifest["shards"]]
    dims = sum(m["dims"] for m in metas)
    net = sum(m["net_dims"] for m in metas)
    out = {"folder": str(folder), "num_images": manifest["num_images"],
           "shards": len(metas), "shard_size": manifest["shard_size"],
           "mode": manifest["mode"], "model": manifest["model"],
           "file_bytes": sum(m["file_bytes"] for m in metas),
           "file_bpd": sum(8 * m["file_bytes"] for m in metas) / dims,
           "net_bpd": sum(m["net_bits"] for m in metas) / net if net else None,
           "bound_bpd": sum(m["bound_bits"] for m in metas) / net if net else None,
           "bitsback_images": net // int(np.prod(manifest["image_shape"])),
           "encode_s": sum(m["encode_s"] for m in metas)}
    for codec in metas[0]["classical_bits"]:
        out[f"{codec}_bpd"] = sum(m["classical_bits"][codec] for m in metas) / dims
    if "jpegxl_bpd" in out:
        out["vs_jpegxl"] = out["file_bpd"] / out["jpegxl_bpd"]
    write_json_atomic(folder / SUMMARY, out)
    return out
