"""Format 5: the compact model-free file (classical-lossless; see
:mod:`ddpmcodec.codec.container` for its table). Presets leave a one-image CIFAR-sized
file with 8 bytes of container, and the payload runs to the end of the file."""
from __future__ import annotations

from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.header import Header, model_free_header
from ddpmcodec.codec.container.limits import (
    CHECKSUM_BYTES, COMPACT_SHAPE, FORMAT_CLASSICAL, MAX_IMAGES, MAX_SIDE)
from ddpmcodec.errors import DDPMCodecError

_F_SHAPE, _F_IMAGES = 1, 2


def write_body(h: Header) -> bytes:
    fields, flags = BlobWriter(), 0
    if tuple(h.image_shape) != COMPACT_SHAPE:
        flags |= _F_SHAPE
        for v in h.image_shape:
            fields.uvar(v)
    if h.num_images != 1:
        flags |= _F_IMAGES
        fields.uvar(h.num_images)
    return BlobWriter().u8(flags).raw(fields.getvalue()).raw(h.pixel_checksum).getvalue()


def read_body(r: BlobReader, mode: str) -> Header:
    """Only the canonical form is read (a field is written exactly when it is not its
    preset), so every file has one header and a damaged flag cannot pass unnoticed."""
    if mode != "classical-lossless":
        raise DDPMCodecError(f"header: format {FORMAT_CLASSICAL} holds no {mode} files")
    flags = r.u8("flags")
    if flags & ~(_F_SHAPE | _F_IMAGES):
        raise DDPMCodecError(f"header: unknown flags {flags}")
    shape, n = COMPACT_SHAPE, 1
    if flags & _F_SHAPE:
        shape = tuple(r.bounded(k, r.uvar(k), 1, MAX_SIDE) for k in ("channels", "height", "width"))
        if shape == COMPACT_SHAPE:
            raise DDPMCodecError("header: the image shape is written but is its preset")
    if flags & _F_IMAGES:
        n = r.bounded("number of images", r.uvar("number of images"), 2, MAX_IMAGES)
    return model_free_header(mode, shape, n, r.raw(CHECKSUM_BYTES, "pixel checksum")).validate()
