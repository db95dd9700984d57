"""Format 4: the model-free file with a pixel checksum (see :mod:`ddpmcodec.codec.container`
for its table). Its header body is format 2's model-free body and the 4-byte checksum of
the decoded pixels, which takes the place of the payload's CRC-32."""
from __future__ import annotations

from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.header import Header, model_free_header
from ddpmcodec.codec.container.limits import (
    CHECKSUM_BYTES, FORMAT_MODEL_FREE, MAX_IMAGES, MAX_SIDE)
from ddpmcodec.errors import DDPMCodecError


def write_body(h: Header) -> bytes:
    w = BlobWriter()
    for v in h.image_shape:
        w.uvar(v)
    return w.uvar(h.num_images).raw(h.pixel_checksum).getvalue()


def read_body(r: BlobReader, mode: str) -> Header:
    if mode != "webp-lossless":
        raise DDPMCodecError(f"header: format {FORMAT_MODEL_FREE} holds no {mode} files")
    shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
    n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
    return model_free_header(mode, shape, n, r.raw(CHECKSUM_BYTES, "pixel checksum")).validate()
