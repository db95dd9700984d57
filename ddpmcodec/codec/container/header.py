"""The header every file starts with, as one validated dataclass (:class:`Header`), and
what derives from it: the model id and the checksum width of each format."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ddpmcodec.codec.container.fields import BlobReader
from ddpmcodec.codec.container.limits import (
    CHECKSUM_BYTES, CHECKSUM_BYTES_V1, COMPACT_ID_BYTES, COMPACT_MODES, FINGERPRINT_BYTES,
    FORMAT_CLASSICAL, FORMAT_COMPACT, FORMAT_MODEL_FREE, FORMAT_OF_MODEL_FREE, FORMAT_VERSION, MAX_BATCH, MAX_CHANNELS, MAX_DEVICE_CHARS, MAX_DIMS,
    MAX_IMAGES, MAX_PARAMS_BYTES, MAX_SEED, MAX_SIDE, MAX_THREADS, MAX_TIMESTEPS,
    MAX_TOTAL_PIXELS, MODEL_FREE_MODES, MODEL_ID_BYTES, MODES, SUPPORTED_VERSIONS)
from ddpmcodec.errors import DDPMCodecError


# -- the header ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the model and the payload.

    ``timesteps`` are the original indices of the coded chain (chain step k -> original
    index timesteps[k]); ``num_timesteps`` is T of the model's full chain.
    ``fingerprint`` is the model id the file holds: 8 hex digits (format 2), 4 (format 3)
    or the whole 16-digit fingerprint (format 1); ``pixel_checksum`` is 4 (formats 2 and
    4), 16 (format 1) or no bytes (format 3).
    A model-free mode (``webp-lossless``: the classical fallback, decoded without a
    network) uses only ``mode``, ``image_shape``, ``num_images`` and, in format 4, the
    ``pixel_checksum``; its other fields hold the neutral values of
    :func:`model_free_header`.
    """

    mode: str
    fingerprint: str
    image_shape: tuple  # (C, H, W)
    num_images: int
    batch_size: int
    seed: int
    num_timesteps: int
    timesteps: tuple
    device_kind: str
    num_threads: int
    pixel_checksum: bytes
    params: bytes = b""
    version: int = FORMAT_VERSION

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def num_batches(self) -> int:
        return -(-self.num_images // self.batch_size)

    @property
    def model_free(self) -> bool:
        return self.mode in MODEL_FREE_MODES

    def batches(self) -> list[tuple[int, int]]:
        """(start, stop) image ranges of the batch layout, in encoding order."""
        return [(s, min(s + self.batch_size, self.num_images))
                for s in range(0, self.num_images, self.batch_size)]

    def validate(self) -> "Header":
        """Raise DDPMCodecError unless every field is in range (also used before writing)."""
        r = BlobReader(b"", "header")
        if self.mode not in MODES:
            raise DDPMCodecError(f"unknown codec mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.version not in SUPPORTED_VERSIONS:
            raise DDPMCodecError(f"format version {self.version} is not supported")
        if len(self.image_shape) != 3:
            raise DDPMCodecError(f"image shape must be (C, H, W), got {self.image_shape}")
        c, h, w = (int(v) for v in self.image_shape)
        r.bounded("channels", c, 1, MAX_CHANNELS)
        r.bounded("height", h, 1, MAX_SIDE)
        r.bounded("width", w, 1, MAX_SIDE)
        r.bounded("dims per image", c * h * w, 1, MAX_DIMS)
        r.bounded("number of images", self.num_images, 1, MAX_IMAGES)
        r.bounded("total pixels", self.num_images * c * h * w, 1, MAX_TOTAL_PIXELS)
        if self.model_free:
            checked = self.version in (FORMAT_MODEL_FREE, FORMAT_CLASSICAL)
            if checked and len(self.pixel_checksum) != CHECKSUM_BYTES:
                raise DDPMCodecError(f"header: the pixel checksum must be {CHECKSUM_BYTES} bytes")
            if self != model_free_header(self.mode, self.image_shape, self.num_images,
                                         self.pixel_checksum if checked else None):
                raise DDPMCodecError(f"header: a {self.mode} file has no model fields")
            return self
        if self.version in (FORMAT_MODEL_FREE, FORMAT_CLASSICAL):
            raise DDPMCodecError(f"format {self.version} holds only model-free files, "
                                 f"not {self.mode} ones")
        id_bytes = {1: FINGERPRINT_BYTES, FORMAT_COMPACT: COMPACT_ID_BYTES}.get(self.version,
                                                                              MODEL_ID_BYTES)
        if self.version == FORMAT_COMPACT and self.mode not in COMPACT_MODES:
            raise DDPMCodecError(f"format {FORMAT_COMPACT} holds no {self.mode} files")
        if len(self.fingerprint) != 2 * id_bytes or any(
                ch not in "0123456789abcdef" for ch in self.fingerprint):
            raise DDPMCodecError(f"a model id is {2 * id_bytes} lowercase hex digits in format "
                                 f"{self.version}, got {self.fingerprint!r}")
        r.bounded("batch size", self.batch_size, 1, min(MAX_BATCH, self.num_images))
        r.bounded("seed", self.seed, 0, MAX_SEED)
        r.bounded("num_timesteps", self.num_timesteps, 1, MAX_TIMESTEPS)
        r.bounded("num_steps", len(self.timesteps), 1, self.num_timesteps)
        ts = self.timesteps
        if any(not 0 <= t < self.num_timesteps for t in ts) or any(
                b <= a for a, b in zip(ts, ts[1:])):
            raise DDPMCodecError(
                f"header: timesteps must be strictly increasing indices in 0..{self.num_timesteps - 1}")
        if not (0 < len(self.device_kind) <= MAX_DEVICE_CHARS) or not all(
                32 <= ord(ch) < 127 for ch in self.device_kind):
            raise DDPMCodecError(f"header: device kind must be 1..{MAX_DEVICE_CHARS} printable "
                                 f"ASCII characters, got {self.device_kind!r}")
        r.bounded("num_threads", self.num_threads, 0, MAX_THREADS)
        if len(self.pixel_checksum) != checksum_bytes(self.version):
            raise DDPMCodecError(f"header: the pixel checksum must be "
                                 f"{checksum_bytes(self.version)} bytes")
        if len(self.params) > MAX_PARAMS_BYTES:
            raise DDPMCodecError(f"header: params blob of {len(self.params)} bytes "
                                 f"(at most {MAX_PARAMS_BYTES})")
        return self

    def summary(self) -> dict:
        """JSON-able description (for `--json` output and error messages)."""
        if self.model_free:
            out = {"format_version": self.version, "mode": self.mode,
                   "image_shape": list(self.image_shape), "num_images": self.num_images}
            if self.pixel_checksum:
                out["pixel_checksum"] = self.pixel_checksum.hex()
            return out
        return {"format_version": self.version, "mode": self.mode, "model_id": self.fingerprint,
                "image_shape": list(self.image_shape), "num_images": self.num_images,
                "batch_size": self.batch_size, "seed": self.seed,
                "num_timesteps": self.num_timesteps, "num_steps": self.num_steps,
                "device_kind": self.device_kind, "num_threads": self.num_threads,
                "pixel_checksum": self.pixel_checksum.hex(),
                "params_bytes": len(self.params)}


def model_free_header(mode: str, image_shape, num_images: int,
                      pixel_checksum: bytes | None = None) -> Header:
    """The header of a model-free file (neutral values in every model field): with
    ``pixel_checksum`` (what the encoder writes), format 4 for webp-lossless and format 5
    for classical-lossless; else format 2 (webp-lossless files written before format 4,
    whose payload CRC-32 is their only check)."""
    if pixel_checksum is None:
        return Header(mode, "", tuple(int(v) for v in image_shape), int(num_images), 1, 0, 0,
                      (), "", 0, b"", b"", FORMAT_VERSION)
    return Header(mode, "", tuple(int(v) for v in image_shape), int(num_images), 1, 0, 0, (),
                  "", 0, bytes(pixel_checksum), b"", FORMAT_OF_MODEL_FREE.get(mode, FORMAT_MODEL_FREE))


def checksum_bytes(version: int = FORMAT_VERSION) -> int:
    """Bytes of the pixel checksum in a file of ``version`` (none in format 3; formats 2
    and 4 hold CHECKSUM_BYTES, except model-free files of format 2, which hold none)."""
    return {1: CHECKSUM_BYTES_V1, FORMAT_COMPACT: 0}.get(version, CHECKSUM_BYTES)


def model_id(fingerprint: str) -> str:
    """The model id a new file records: the first MODEL_ID_BYTES of the fingerprint
    (:func:`compact` keeps COMPACT_ID_BYTES of it)."""
    return fingerprint[:2 * MODEL_ID_BYTES]


def compact(header: Header) -> Header:
    """``header`` as a format 3 header (compact modes only)."""
    return dataclasses.replace(header, version=FORMAT_COMPACT, pixel_checksum=b"",
                               fingerprint=header.fingerprint[:2 * COMPACT_ID_BYTES]).validate()
