"""The one compress/decompress contract of every ddpmcodec codec, and its registry.

A codec is bound to a loaded model (:class:`~ddpmcodec.io.models.LoadedModel`)::

    codec = get_codec("lossless")(model)
    enc = codec.encode(images, steps=100, batch_size=8, seed=0)   # -> Encoded
    enc.data          # bytes: a complete container file (ddpmcodec.codec.container)
    enc.stats         # CodecStats: actual bits, bits/dim, bound, overhead, initial bits
    dec = codec.decode(enc.data)                                  # -> Decoded
    dec.images        # uint8 [N, H, W, C], verified against the file's checks

or, without knowing the mode of a file, ``decode_bytes(model, data)``.

``images`` are uint8 NHWC arrays (as :func:`ddpmcodec.io.data.load_images` returns them).
A decoder checks the file against the model before any network runs
(:func:`ddpmcodec.codec.checks.check_compatible`) and must finish with
:func:`ddpmcodec.codec.checks.verify_pixels`, so that a wrong image is never returned.

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

import importlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from ddpmcodec.codec import container
from ddpmcodec.codec.container import Header
from ddpmcodec.errors import DDPMCodecError

# mode -> "module:Class"; imported lazily so that a codec's absence is a clear error.
CODECS = {
    "lossless": "ddpmcodec.codec.lossless.codec:BitsBackCodec",
    "progressive": "ddpmcodec.codec.progressive.codec:ProgressiveCodec",
    "webp-lossless": "ddpmcodec.codec.lossless.webp:WebPLosslessCodec",
    "classical-lossless": "ddpmcodec.codec.lossless.classical:ClassicalLosslessCodec",
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


class Timer:
    """with Timer() as t: ...; t.seconds"""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
