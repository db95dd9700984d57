"""The header body of format 2 (see :mod:`ddpmcodec.codec.container` for its table)."""
from __future__ import annotations

from ddpmcodec.codec.container.chains import read_chain, write_chain
from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.header import Header, model_free_header
from ddpmcodec.codec.container.host import read_device, write_device
from ddpmcodec.codec.container.limits import (
    CHECKSUM_BYTES, FORMAT_VERSION, MAX_BATCH, MAX_IMAGES, MAX_PARAMS_BYTES, MAX_SEED,
    MAX_SIDE, MAX_THREADS, MAX_TIMESTEPS, MODEL_FREE_MODES, MODEL_ID_BYTES)
from ddpmcodec.errors import DDPMCodecError


def write_body(h: Header) -> bytes:
    w = BlobWriter()
    if not h.model_free:
        w.raw(bytes.fromhex(h.fingerprint))
    for v in h.image_shape:
        w.uvar(v)
    w.uvar(h.num_images)
    if h.model_free:
        return w.getvalue()
    w.uvar(h.batch_size).uvar(h.seed).uvar(h.num_timesteps)
    write_chain(w, h.num_timesteps, tuple(int(t) for t in h.timesteps))
    write_device(w, h.device_kind)
    w.uvar(h.num_threads).raw(h.pixel_checksum).varblob(h.params)
    return w.getvalue()


def read_body(r: BlobReader, mode: str) -> Header:
    if mode == "classical-lossless":
        raise DDPMCodecError(f"header: format {FORMAT_VERSION} holds no {mode} files")
    if mode in MODEL_FREE_MODES:
        shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
        n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
        return model_free_header(mode, shape, n).validate()
    fp = r.raw(MODEL_ID_BYTES, "model id").hex()
    shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
    n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
    batch = r.bounded("batch size", r.uvar("batch size"), 1, min(MAX_BATCH, n))
    seed = r.bounded("seed", r.uvar("seed"), 0, MAX_SEED)
    T = r.bounded("num_timesteps", r.uvar("num_timesteps"), 1, MAX_TIMESTEPS)
    ts = read_chain(r, T)
    dev = read_device(r)
    threads = r.bounded("num_threads", r.uvar("num_threads"), 0, MAX_THREADS)
    checksum = r.raw(CHECKSUM_BYTES, "pixel checksum")
    params = r.varblob("params", MAX_PARAMS_BYTES)
    return Header(mode, fp, shape, n, batch, seed, T, ts, dev, threads, checksum, params,
                  FORMAT_VERSION).validate()
