"""The one compress/decompress contract of every ddpmcodec codec, and what codecs share.

A codec is bound to a loaded model (:class:`~ddpmcodec.io.models.LoadedModel`)::

    codec = get_codec("lossless")(model)
    enc = codec.encode(images, steps=100, batch_size=8, seed=0)   # -> Encoded
    enc.data          # bytes: a complete container file (container.py)
    enc.stats         # CodecStats: actual bits, bits/dim, bound, overhead, initial bits
    dec = codec.decode(enc.data)                                  # -> Decoded
    dec.images        # uint8 [N, H, W, C], verified against the header's pixel checksum

or, without knowing the mode of a file, ``decode_bytes(model, data)``.

``images`` are uint8 NHWC arrays (as :func:`ddpmcodec.io.data.load_images` returns them).
Decoding checks, before any network runs, that the file was made by the same model
(fingerprint), for the same image shape and full-chain length, on the same device kind,
and it evaluates the network and the float64 coding math exactly as the encoder did
(:func:`deterministic`: torch deterministic algorithms, no TF32, the encoder's CPU thread
count; and the header's batch layout).
A decoder must finish with :func:`verify_pixels`, so that a wrong image is never returned.

Bits. The headline is the whole file: ``file_bits`` (header, side information and
initial bits included), ``file_bits_per_dim`` over all N images. Beside it, the net rate
of the images the model coded: ``payload_bits`` is the payload's size (8 per byte);
``initial_bits`` is the one-off part of it that belongs to no image (bits-back's initial
bits that nothing paid back; 0 for codecs without); ``side_bits`` is what the payload
spends on images coded without the model (the lossless codec's WebP-lossless seeds);
``actual_bits = payload_bits - initial_bits - side_bits`` is what the ``net_images``
images coded through the chain cost (default: all N); ``bound_bits`` is the variational
bound (negative ELBO) of the same chain and images, the ideal the codec is measured
against; ``overhead = actual_bits / bound_bits - 1``. The net "per dim" numbers divide by
net_images*C*H*W.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from ddpmcodec.codec import container
from ddpmcodec.codec.container import BlobReader, BlobWriter, Header
from ddpmcodec.errors import DDPMCodecError

# cuBLAS is deterministic only with a fixed workspace; it reads this when CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# mode -> "module:Class"; imported lazily so that a codec's absence is a clear error.
CODECS = {
    "lossless": "ddpmcodec.codec.bitsback:BitsBackCodec",
    "progressive": "ddpmcodec.codec.progressive:ProgressiveCodec",
    "webp-lossless": "ddpmcodec.codec.classical:WebPLosslessCodec",
}


@dataclass
class CodecStats:
    """Sizes and timings of one encode or decode (see the module docstring for the terms).

    ``extra`` holds mode-specific numbers (JSON-able), e.g. per-image bits.
    """

    mode: str
    num_images: int
    dims: int  # C*H*W of one image
    num_steps: int
    payload_bits: int
    header_bits: int
    initial_bits: float
    bound_bits: float
    seconds: float
    extra: dict = field(default_factory=dict)
    side_bits: float = 0.0
    net_images: int | None = None  # images coded through the chain (None: all)

    @property
    def total_dims(self) -> int:
        return self.num_images * self.dims

    @property
    def net_dims(self) -> int:
        return (self.num_images if self.net_images is None else self.net_images) * self.dims

    @property
    def actual_bits(self) -> float:
        return self.payload_bits - self.initial_bits - self.side_bits

    @property
    def file_bits(self) -> int:
        return self.payload_bits + self.header_bits

    @property
    def bits_per_dim(self) -> float:
        return self.actual_bits / self.net_dims if self.net_dims else float("nan")

    @property
    def bound_bits_per_dim(self) -> float:
        return self.bound_bits / self.net_dims if self.net_dims else float("nan")

    @property
    def file_bits_per_dim(self) -> float:
        return self.file_bits / self.total_dims

    @property
    def initial_bits_per_dim(self) -> float:
        return self.initial_bits / self.total_dims

    @property
    def overhead(self) -> float:
        """actual / bound - 1 (NaN when the bound is unknown or zero)."""
        if not self.bound_bits or not math.isfinite(self.bound_bits) or not self.net_dims:
            return float("nan")
        return self.actual_bits / self.bound_bits - 1.0

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("net_dims", "actual_bits", "file_bits", "bits_per_dim", "bound_bits_per_dim",
                     "file_bits_per_dim", "initial_bits_per_dim", "overhead", "images_per_second"):
            d[name] = getattr(self, name)
        return d


@dataclass
class Encoded:
    data: bytes  # the complete file
    header: Header
    stats: CodecStats


@dataclass
class Decoded:
    images: np.ndarray  # uint8 [N, H, W, C], checksum-verified
    header: Header
    stats: CodecStats


class Codec(ABC):
    """Base class: one instance per model. Subclasses set ``mode`` and implement
    :meth:`encode` and :meth:`decode`; the keyword options beyond the shared ones are
    mode-specific."""

    mode: ClassVar[str]

    def __init__(self, model):
        self.model = model

    @abstractmethod
    def encode(self, images: np.ndarray, *, steps: int | None = None, batch_size: int = 8,
               seed: int = 0, progress: bool = False, **options) -> Encoded:
        """Compress uint8 NHWC ``images`` into a container file."""

    @abstractmethod
    def decode(self, data: bytes, *, progress: bool = False, **options) -> Decoded:
        """Decompress a container file made by :meth:`encode` with the same model."""


def get_codec(mode: str) -> type[Codec]:
    """The codec class for a mode ("lossless", "progressive")."""
    if mode not in CODECS:
        raise DDPMCodecError(f"unknown codec mode {mode!r}; known: {', '.join(CODECS)}")
    module, cls = CODECS[mode].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise DDPMCodecError(f"the {mode} codec is not available in this ddpmcodec") from None


def decode_bytes(model, data: bytes, **options) -> Decoded:
    """Decode a container file of any mode with ``model``."""
    header = container.read_header(data)
    return get_codec(header.mode)(model).decode(data, **options)


# -- what every codec checks and shares --------------------------------------------------
def device_kind(device) -> str:
    """Where results are reproducible: "cpu:<ISA>", or "cuda:<GPU name>;cpu:<ISA>" (the
    float64 coding math always runs on the CPU, so its instruction set counts too)."""
    import torch
    device = torch.device(device)
    try:
        isa = f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    except AttributeError:  # pragma: no cover - old torch
        isa = "cpu:unknown"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda:{name[:container.MAX_DEVICE_CHARS - 24]};{isa}"
    if device.type == "cpu":
        return isa
    raise DDPMCodecError(f"codecs run on cpu or cuda devices, not {device.type}")


def coding_threads() -> int:
    """CPU threads to record in a header: float results of the CPU math (and of a CPU
    network) depend on how torch splits work between threads."""
    import torch
    return min(torch.get_num_threads(), container.MAX_THREADS)


def decode_device(header: Header):
    """The torch device a file must be decoded on (its header's device kind)."""
    import torch
    kind = header.device_kind
    if kind.startswith("cpu"):
        here = device_kind("cpu")
        if kind != here:
            raise DDPMCodecError(
                f"this file was encoded on {kind} and must be decoded on the same kind of "
                f"device (this CPU is {here}): numerical results differ between them")
        return torch.device("cpu")
    if kind.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DDPMCodecError(f"this file was encoded on {kind}; decoding it needs that GPU "
                                 f"(no CUDA device is available)")
        here = [device_kind(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        if kind in here:
            return torch.device(f"cuda:{here.index(kind)}")
        raise DDPMCodecError(f"this file was encoded on {kind}; no such device here "
                             f"({', '.join(here)})")
    raise DDPMCodecError(f"unknown device kind {kind!r} in the header")


def check_compatible(header: Header, model, mode: str | None = None) -> None:
    """Clear errors, before any work, when ``model`` cannot decode ``header``'s file."""
    if mode is not None and header.mode != mode:
        raise DDPMCodecError(f"this is a {header.mode} file, not a {mode} one")
    if header.model_free:
        return
    if not model.fingerprint.startswith(header.fingerprint):
        raise DDPMCodecError(
            f"this file was encoded with model {header.fingerprint}, but the model given "
            f"({model.source}) is {model.fingerprint}; pass the encoder's --ckpt")
    if tuple(header.image_shape) != tuple(model.image_shape):
        raise DDPMCodecError(f"the file holds {header.image_shape} images, the model makes "
                             f"{tuple(model.image_shape)}")
    if header.num_timesteps != model.diffusion.num_steps:
        raise DDPMCodecError(f"the file's chain has T={header.num_timesteps}, the model's "
                             f"T={model.diffusion.num_steps}")
    here = device_kind(model.device)
    if header.device_kind != here:
        raise DDPMCodecError(f"this file was encoded on {header.device_kind}, the model is on "
                             f"{here}; decode on the encoder's kind of device")


# the reverse-variance rule of a coded chain, as codecs record it in their params blob
VARIANCE_RULES = ("model", "fixedlarge", "fixedsmall", "explicit")


def chain_for(header: Header, model, rule: str = "model", variances=None):
    """The (respaced) Diffusion of the file's chain, with the file's variance rule
    (``model``: the checkpoint's; ``explicit``: the K variances the file holds)."""
    if header.timesteps == tuple(range(model.diffusion.num_steps)):
        chain = model.diffusion
    else:
        chain = model.diffusion.respace(header.timesteps)
    if rule == "model":
        return chain
    return chain.with_variance(rule, variances)


def check_chain(chain, model):
    """A chain given to an encoder must be the model's schedule (respaced): anything else
    could not be rebuilt by the decoder from the header's timesteps."""
    import torch
    full = model.diffusion
    ts = chain.timesteps
    if int(ts[-1]) >= full.num_steps or not torch.allclose(
            chain.alphas_cumprod, full.alphas_cumprod[ts], rtol=1e-12, atol=0):
        raise DDPMCodecError("the chain is not a respacing of the model's schedule")


def variance_rule_of(chain, model) -> tuple[str, tuple | None]:
    """(rule, explicit variances or None) of a chain on ``model``'s schedule."""
    if chain.variance_type == model.diffusion.variance_type:
        return "model", None
    if chain.variance_type == "explicit":
        return "explicit", tuple(chain.reverse_variance.tolist())
    return chain.variance_type, None


def pack_variance_rule(writer: BlobWriter, rule: str, variances=None) -> BlobWriter:
    """u8 rule (an index of VARIANCE_RULES), then for ``explicit`` K float64 variances
    (stored exactly): the parameters of version 2, which are read, no longer written
    (:func:`pack_log2_variances` is the compact form)."""
    writer.u8(VARIANCE_RULES.index(rule))
    if rule == "explicit":
        for v in variances:
            writer.f64(float(v))
    return writer


def read_variance_rule(reader: BlobReader, num_steps: int) -> tuple[str, list | None]:
    """(rule, variances or None) as :func:`pack_variance_rule` wrote them; the variances
    are checked (positive, finite) when the chain is built."""
    rule = VARIANCE_RULES[reader.bounded("variance rule", reader.u8("variance rule"), 0,
                                         len(VARIANCE_RULES) - 1)]
    if rule != "explicit":
        return rule, None
    values = [reader.f64("reverse variance") for _ in range(num_steps)]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise DDPMCodecError("corrupt file: a reverse variance is not a positive number")
    return rule, values


LOG2_VARIANCE_STEPS = 256  # explicit variances in compact params: round(256 log2 v)


def log2_variance_codes(variances) -> list[int]:
    """round(256 log2 v) of each variance (the stored form of explicit variances)."""
    return [int(round(math.log2(float(v)) * LOG2_VARIANCE_STEPS)) for v in variances]


def variances_of_codes(codes) -> tuple:
    """The variances both sides code with: 2^(code / 256) (a relative step of 0.27%,
    which moves a Gaussian KL by ~1e-6 nats per dimension)."""
    return tuple(2.0 ** (c / LOG2_VARIANCE_STEPS) for c in codes)


def quantized_chain(chain, model):
    """``chain`` with explicit variances replaced by what a compact file stores (the
    encoder codes with exactly what the decoder will read)."""
    rule, values = variance_rule_of(chain, model)
    if rule != "explicit":
        return chain
    return chain.with_variance("explicit", variances_of_codes(log2_variance_codes(values)))


def pack_log2_variances(writer: BlobWriter, rule: str, variances=None) -> BlobWriter:
    """u8 rule (an index of VARIANCE_RULES), then for ``explicit`` the quantized log2
    variances as signed varints: the first, then differences (a byte or two each)."""
    writer.u8(VARIANCE_RULES.index(rule))
    if rule == "explicit":
        q = log2_variance_codes(variances)
        for i, v in enumerate(q):
            writer.svar(v if i == 0 else v - q[i - 1])
    return writer


def read_log2_variances(reader: BlobReader, num_steps: int) -> tuple[str, tuple | None]:
    """(rule, variances or None) as :func:`pack_log2_variances` wrote them."""
    rule = VARIANCE_RULES[reader.bounded("variance rule", reader.u8("variance rule"), 0,
                                         len(VARIANCE_RULES) - 1)]
    if rule != "explicit":
        return rule, None
    q = [reader.svar("log2 variance")]
    for _ in range(num_steps - 1):
        q.append(q[-1] + reader.svar("log2 variance"))
    if any(not -64 * LOG2_VARIANCE_STEPS <= v <= 16 * LOG2_VARIANCE_STEPS for v in q):
        raise DDPMCodecError("corrupt file: a reverse variance is out of range")
    return rule, variances_of_codes(q)


def network_p(model, diffusion, x, k: int, batches, *, math_on_model_device: bool = False) -> dict:
    """p_theta(x_{k-1} | x_k) of chain step k of ``diffusion`` for latents x (float64
    [N, C, H, W]), the network called once per (start, stop) range of ``batches`` (the
    file's batch layout: results depend on it). The network runs in float32 on the model's
    device; p is formed in float64 (``Diffusion.p_mean_variance``, clipped x0-prediction).

    Returns dict(mean, log_variance, pred_x0, out) of float64 CPU tensors, ``out`` being
    the network output itself (eps, plus the variance channels of a learned variance).

    ``math_on_model_device``: form p on the model's device instead of the CPU. The
    progressive codec (and its theory curve) always did so and the lossless codec never
    did; on a GPU the float64 results may differ in the last bit, so each keeps its own
    choice, or files made before would not decode. On a CPU model both are the same.
    """
    import torch
    den = model.denoiser()
    math_dev = model.device if math_on_model_device else torch.device("cpu")
    parts = []
    for a, b in batches:
        xb = x[a:b]
        kk = torch.full((b - a,), k, dtype=torch.long)
        net = den(xb.to(device=model.device, dtype=torch.float32),
                  diffusion.timesteps[kk].to(model.device))
        o = diffusion.p_mean_variance(xb.to(math_dev), kk.to(math_dev), net.to(math_dev))
        o["out"] = net
        parts.append({n: o[n].to("cpu", torch.float64) for n in _P_KEYS})
    return {n: torch.cat([p[n] for p in parts]) for n in _P_KEYS}


_P_KEYS = ("mean", "log_variance", "pred_x0", "out")


def start_encode(images: np.ndarray, model, batch_size: int) -> tuple[np.ndarray, int]:
    """What every encoder does first: check the images (:func:`check_images`) and the batch
    size, which is clamped to the number of images and the format's maximum.
    Returns (images, batch size)."""
    images = check_images(images, model)
    if batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    return images, min(batch_size, len(images), container.MAX_BATCH)


def new_header(mode: str, model, num_images: int, batch_size: int, seed: int, timesteps,
               pixel_checksum: bytes, params: bytes = b"") -> Header:
    """The validated header of a file this machine encodes now with ``model``: its
    fingerprint, image shape and full chain length, this device kind and the CPU threads
    (:func:`coding_threads`) under which the encoder must run (``header.num_threads``)."""
    return Header(mode, container.model_id(model.fingerprint), tuple(model.image_shape),
                  num_images, batch_size,
                  int(seed), model.diffusion.num_steps, tuple(int(t) for t in timesteps),
                  device_kind(model.device), coding_threads(), pixel_checksum,
                  params).validate()


def check_images(images: np.ndarray, model) -> np.ndarray:
    """uint8 NHWC images that fit the model, contiguous."""
    from ddpmcodec.io.data import check_fits
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DDPMCodecError(f"codecs take uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DDPMCodecError("no images to encode")
    check_fits(images, model.image_shape)
    return np.ascontiguousarray(images)


def verify_pixels(images: np.ndarray, header: Header) -> np.ndarray:
    """Return ``images`` if they match the header's checksum, else DDPMCodecError."""
    if container.pixel_checksum(images, len(header.pixel_checksum)) != header.pixel_checksum:
        raise DDPMCodecError(
            "decoding failed: the decoded pixels do not match the file's checksum (corrupt "
            "file, or a different torch/library version or device evaluated the network)")
    return images


@contextlib.contextmanager
def deterministic(device, num_threads: int = 0):
    """Torch settings under which the network gives the same bits on every run of the same
    device kind: deterministic algorithms, cuDNN without benchmarking, no TF32, and (on
    ``num_threads`` CPU threads (0: leave as is). The previous settings are restored."""
    import torch
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved[2:6]
        torch.set_num_threads(saved[6])


class Timer:
    """with Timer() as t: ...; t.seconds"""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
