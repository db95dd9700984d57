"""Whole lossless files beside the classical codecs, on images the project never used.

    python benchmarks/bench_lossless_files.py --first 600 --count 200 \
        --json benchmarks/results/lossless_files_test600-799.json

Encodes the images of ../shared/data/cifar10-test-800.npz [first, first+count) with the
embedded model and the codec's defaults (`ddpmcodec encode --lossless`) as one file of all
of them, as files of 8 and as single-image files; decodes every file and checks the pixels;
and prints, per file size, the whole-file bits/dim (header, seeds and initial bits
included) beside WebP-lossless (Pillow, method 6, quality 100), PNG (Pillow, optimize) and
JPEG-XL lossless (imagecodecs, effort 9, when installed) of the same images, with the
net bits/dim and the bound of the bits-back images and the encode and decode speed. Run it
alone: the speeds are those of this machine's cores.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def classical_bits(images: np.ndarray) -> dict:
    from PIL import Image
    out = {"webp_lossless": [], "png": [], "jpegxl": []}
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    for im in images:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "WEBP", lossless=True, method=6, quality=100)
        out["webp_lossless"].append(8 * len(b.getvalue()))
        b = io.BytesIO()
        Image.fromarray(im).save(b, "PNG", optimize=True)
        out["png"].append(8 * len(b.getvalue()))
        if imagecodecs is not None:
            out["jpegxl"].append(8 * len(imagecodecs.jpegxl_encode(im, lossless=True, effort=9)))
    if imagecodecs is None:
        out.pop("jpegxl")
    return out


def run_files(codec, images: np.ndarray, per_file: int, label: str) -> dict:
    from ddpmcodec.codec.base import decode_bytes
    rows = []
    for a in range(0, len(images), per_file):
        x = images[a:a + per_file]
        enc = codec.encode(x)
        dec = decode_bytes(codec.model, enc.data)
        if not np.array_equal(dec.images, x):
            raise SystemExit(f"{label}: images {a}.. did not round-trip")
        s = enc.stats
        rows.append({"first": a, "images": len(x), "file_bytes": len(enc.data),
                     "header_bytes": s.header_bits // 8, "method": s.extra["method"],
                     "seed_images": s.extra.get("seed_images", 0), "net_images": s.net_dims // s.dims,
                     "net_bits": s.actual_bits if s.net_dims else 0.0,
                     "bound_bits": s.bound_bits if s.net_dims else 0.0,
                     "initial_bits": s.initial_bits, "encode_s": s.seconds,
                     "decode_s": dec.stats.seconds,
                     "bitsback_file_bytes": s.extra.get("bitsback_file_bytes"),
                     "webp_file_bytes": s.extra.get("webp_file_bytes")})
        print(f"  {label} {a}: {rows[-1]['file_bytes']} bytes {rows[-1]['method']} "
              f"enc {s.seconds:.1f}s dec {dec.stats.seconds:.1f}s", flush=True)
    return {"per_file": per_file, "files": rows}


def summarise(res: dict, dims: int, base: dict) -> dict:
    rows = res["files"]
    n = sum(r["images"] for r in rows)
    net_images = sum(r["net_images"] for r in rows)
    out = {"images_per_file": res["per_file"], "files": len(rows), "images": n,
           "file_bpd": sum(8 * r["file_bytes"] for r in rows) / (n * dims),
           "net_bpd": sum(r["net_bits"] for r in rows) / (net_images * dims) if net_images else None,
           "bound_bpd": sum(r["bound_bits"] for r in rows) / (net_images * dims) if net_images else None,
           "bitsback_images": net_images,
           "webp_fallback_files": sum(r["method"] == "webp-lossless" for r in rows),
           "encode_images_per_s": n / sum(r["encode_s"] for r in rows),
           "decode_images_per_s": n / sum(r["decode_s"] for r in rows)}
    if res["per_file"] == 1:
        out["file_bpd_mean_of_files"] = float(np.mean([8 * r["file_bytes"] / dims for r in rows]))
    for name, bits in base.items():
        out[f"{name}_bpd"] = sum(bits) / (n * dims)
    out["vs_webp_lossless"] = out["file_bpd"] / out["webp_lossless_bpd"] - 1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--first", type=int, default=600)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--sizes", default="200,8,1", help="images per file, comma-separated")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    from ddpmcodec.codec.bitsback import BitsBackCodec
    from ddpmcodec.io.models import load_model
    if a.threads:
        torch.set_num_threads(a.threads)
    images = np.load(a.data)["images"][a.first:a.first + a.count]
    model = load_model(None)
    codec = BitsBackCodec(model)
    dims = int(np.prod(images.shape[1:]))
    base = classical_bits(images)
    results = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
               "data": a.data, "first": a.first, "count": len(images),
               "model": model.fingerprint, "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d"), "classical_bits": base, "runs": {}, "table": []}
    for size in (int(v) for v in a.sizes.split(",")):
        res = run_files(codec, images, size, f"{size}-image files")
        results["runs"][str(size)] = res
        results["table"].append(summarise(res, dims, base))
        if a.json:
            from ddpmcodec.io.atomic import write_json_atomic
            write_json_atomic(a.json, results)
    cols = ["images_per_file", "files", "file_bpd", "webp_lossless_bpd", "png_bpd"]
    cols += ["jpegxl_bpd"] if "jpegxl" in base else []
    cols += ["vs_webp_lossless", "net_bpd", "bound_bpd", "webp_fallback_files",
             "encode_images_per_s", "decode_images_per_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---:|" * len(cols))
    for row in results["table"]:
        print("| " + " | ".join("" if row.get(c) is None else
                                (f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]))
                                for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
