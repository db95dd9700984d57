"""The classical lossless codecs' whole files of each image, the numbers a lossless file is
judged against: WebP-lossless (Pillow, method 6, quality 100), PNG (Pillow, optimize) and
JPEG-XL lossless (imagecodecs' libjxl, effort 9), one file per image."""
from __future__ import annotations

import io

import numpy as np


def classical_lossless_bits(images: np.ndarray) -> dict:
    """{codec: [bits of each image's file]} for uint8 [N, H, W, C] images (C = 3, or 1:
    grey); JPEG-XL is left out where imagecodecs has no libjxl."""
    from PIL import Image

    from ddpmcodec.codec.lossless import jxl
    out = {"webp_lossless": [], "png": [], "jpegxl": []}
    use_jxl = jxl.available()
    if use_jxl:
        import imagecodecs
    for im in images:
        arr = np.ascontiguousarray(im[..., 0] if im.shape[-1] == 1 else im)
        b = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(b, "WEBP", lossless=True, method=6, quality=100)
        out["webp_lossless"].append(8 * len(b.getvalue()))
        b = io.BytesIO()
        Image.fromarray(arr).save(b, "PNG", optimize=True)
        out["png"].append(8 * len(b.getvalue()))
        if use_jxl:
            out["jpegxl"].append(8 * len(imagecodecs.jpegxl_encode(arr, lossless=True, effort=9)))
    if not use_jxl:
        out.pop("jpegxl")
    return out
