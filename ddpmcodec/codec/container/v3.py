"""The compact header of format 3 (progressive files): flags and presets, so that a
single-image file at the defaults has 8 bytes of header."""
from __future__ import annotations

from ddpmcodec.codec.container.chains import compact_chain, read_chain, write_chain
from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.header import Header
from ddpmcodec.codec.container.host import device_code, device_of_code, read_device, write_device
from ddpmcodec.codec.container.limits import (
    COMPACT_ID_BYTES, COMPACT_MODES, COMPACT_SHAPE, COMPACT_TIMESTEPS, EXACT_NETWORK, FORMAT_COMPACT,
    MAX_BATCH, MAX_IMAGES, MAX_PARAMS_BYTES, MAX_SEED, MAX_SIDE, MAX_THREADS, MAX_TIMESTEPS)
from ddpmcodec.errors import DDPMCodecError

# -- format 3 (compact) -------------------------------------------------------------------
_F_SHAPE, _F_IMAGES, _F_SEED, _F_T, _F_CHAIN, _F_PARAMS = 1, 2, 4, 8, 16, 32
_F_HOST = 64           # device code and thread count share one byte
_HOST_THREAD_BITS = 5  # that byte: code << 5 | threads


def write_body(h: Header) -> bytes:
    ts = tuple(int(t) for t in h.timesteps)
    fields = BlobWriter()
    flags = 0
    if tuple(h.image_shape) != COMPACT_SHAPE:
        flags |= _F_SHAPE
        for v in h.image_shape:
            fields.uvar(v)
    if (h.num_images, h.batch_size) != (1, 1):
        flags |= _F_IMAGES
        fields.uvar(h.num_images).uvar(h.batch_size)
    if h.seed:
        flags |= _F_SEED
        fields.uvar(h.seed)
    if h.num_timesteps != COMPACT_TIMESTEPS:
        flags |= _F_T
        fields.uvar(h.num_timesteps)
    if ts != compact_chain(h.num_timesteps):
        flags |= _F_CHAIN
        write_chain(fields, h.num_timesteps, ts, geometric=True)
    if h.params:
        flags |= _F_PARAMS
        fields.varblob(h.params)
    # host code 0 (never written before exact-v2, whose one-byte code, 8, does not fit in
    # the byte's 3 bits) stands for exact-v2
    exact = h.device_kind == EXACT_NETWORK
    code = 0 if exact else device_code(h.device_kind)
    fits = exact or 0 < code < 1 << (8 - _HOST_THREAD_BITS)
    host = fits and h.num_threads < 1 << _HOST_THREAD_BITS
    w = BlobWriter().raw(bytes.fromhex(h.fingerprint)).u8(flags | (_F_HOST if host else 0))
    w.raw(fields.getvalue())
    if host:
        return w.u8(code << _HOST_THREAD_BITS | h.num_threads).getvalue()
    write_device(w, h.device_kind)
    return w.uvar(h.num_threads).getvalue()


def read_body(r: BlobReader, mode: str) -> Header:
    if mode not in COMPACT_MODES:
        raise DDPMCodecError(f"header: format {FORMAT_COMPACT} holds no {mode} files")
    fp = r.raw(COMPACT_ID_BYTES, "model id").hex()
    flags = r.u8("flags")
    if flags >= 128:
        raise DDPMCodecError(f"header: unknown flags {flags}")
    shape = COMPACT_SHAPE
    if flags & _F_SHAPE:
        shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
    n = batch = 1
    if flags & _F_IMAGES:
        n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
        batch = r.bounded("batch size", r.uvar("batch size"), 1, min(MAX_BATCH, n))
    seed = r.bounded("seed", r.uvar("seed"), 0, MAX_SEED) if flags & _F_SEED else 0
    T = (r.bounded("num_timesteps", r.uvar("num_timesteps"), 1, MAX_TIMESTEPS)
         if flags & _F_T else COMPACT_TIMESTEPS)
    ts = read_chain(r, T, geometric=True) if flags & _F_CHAIN else compact_chain(T)
    params = r.varblob("params", MAX_PARAMS_BYTES) if flags & _F_PARAMS else b""
    if flags & _F_HOST:
        host = r.u8("device kind and threads")
        code, threads = host >> _HOST_THREAD_BITS, host & ((1 << _HOST_THREAD_BITS) - 1)
        dev = EXACT_NETWORK if code == 0 else device_of_code(code)
    else:
        dev = read_device(r)
        threads = r.bounded("num_threads", r.uvar("num_threads"), 0, MAX_THREADS)
    return Header(mode, fp, shape, n, batch, seed, T, ts, dev, threads, b"", params,
                  FORMAT_COMPACT).validate()
