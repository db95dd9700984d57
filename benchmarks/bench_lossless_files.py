"""Whole lossless files beside the classical codecs, on images the project never used.

    python benchmarks/bench_lossless_files.py --first 600 --count 200 --sizes 200,16,1 \
        --limit 16=96 --progressive-lossless 8 --k-table 10,25,32,50 --k-images 32 \
        --json benchmarks/results/lossless_defaults_test600-799.json

Encodes the images of ../shared/data/cifar10-test-800.npz [first, first+count) with the
embedded model and the codec's defaults (`ddpmcodec encode --lossless`) as one file of all
of them, as files of 16 (``--limit 16=96``: of the first 96 only) and as single-image
files; decodes every file and checks the pixels; and prints, per file size, the whole-file
bits/dim (header, seeds and initial bits included) beside WebP-lossless (Pillow, method 6,
quality 100), PNG (Pillow, optimize) and JPEG-XL lossless (imagecodecs, effort 9) of the
same images, with the net bits/dim and the bound of the bits-back images and the encode
and decode speed. ``--progressive-lossless N``: the first N images also as one-image
progressive files that end lossless. ``--k-table``: files of the first ``--k-images``
images on K-step dp/analytic chains (encoded only), the size and speed a user trades with
--steps. The results file is rewritten after every part. Run it alone: the speeds are
those of this machine's cores.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_files(codec, images: np.ndarray, per_file: int, label: str, chain=None) -> dict:
    from ddpmcodec.codec.api import decode_bytes
    rows = []
    for a in range(0, len(images), per_file):
        x = images[a:a + per_file]
        enc = codec.encode(x, chain=chain)
        dec = decode_bytes(codec.model, enc.data)
        if not np.array_equal(dec.images, x):
            raise SystemExit(f"{label}: images {a}.. did not round-trip")
        s = enc.stats
        rows.append({"first": a, "images": len(x), "file_bytes": len(enc.data),
                     "mode": enc.header.mode,
                     "header_bytes": s.header_bits // 8, "method": s.extra["method"],
                     "seed_images": s.extra.get("seed_images", 0), "net_images": s.net_dims // s.dims,
                     "net_bits": s.actual_bits if s.net_dims else 0.0,
                     "bound_bits": s.bound_bits if s.net_dims else 0.0,
                     "initial_bits": s.initial_bits, "encode_s": s.seconds,
                     "decode_s": dec.stats.seconds,
                     "bitsback_file_bytes": s.extra.get("bitsback_file_bytes"),
                     "classical_file_bytes": s.extra.get("classical_file_bytes")})
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
           "classical_files": sum(r.get("mode", r["method"]) != "lossless" for r in rows),
           "encode_images_per_s": n / sum(r["encode_s"] for r in rows),
           "decode_images_per_s": n / sum(r["decode_s"] for r in rows)}
    if res["per_file"] == 1:
        out["file_bpd_mean_of_files"] = float(np.mean([8 * r["file_bytes"] / dims for r in rows]))
    for name, bits in base.items():
        out[f"{name}_bpd"] = sum(bits) / (n * dims)
    out["vs_webp_lossless"] = out["file_bpd"] / out["webp_lossless_bpd"] - 1
    if "jpegxl_bpd" in out:
        out["vs_jpegxl"] = out["file_bpd"] / out["jpegxl_bpd"]
    return out


def run_progressive_lossless(model, images: np.ndarray, count: int, base: dict) -> dict:
    """One-image progressive files that end lossless, each decoded whole."""
    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    codec, rows = ProgressiveCodec(model), []
    for i in range(count):
        x = images[i:i + 1]
        enc = codec.encode(x, lossless=True)
        dec = codec.decode(enc.data)
        if not np.array_equal(dec.images, x):
            raise SystemExit(f"progressive-lossless image {i} did not round-trip")
        layer = enc.stats.extra["lossless"]
        rows.append({"image": i, "file_bytes": len(enc.data), "layer_bytes": layer["bytes"],
                     "last_step_prefix_bytes": enc.stats.extra["steps"][-1]["prefix_bytes"],
                     "encode_s": enc.stats.seconds, "decode_s": dec.stats.seconds,
                     "jpegxl_bytes": base["jpegxl"][i] // 8})
        print(f"  progressive-lossless {i}: {len(enc.data)} bytes (JPEG-XL "
              f"{rows[-1]['jpegxl_bytes']}) enc {enc.stats.seconds:.1f}s "
              f"dec {dec.stats.seconds:.1f}s", flush=True)
    dims = int(np.prod(images.shape[1:]))
    return {"images": count, "files": rows,
            "file_bpd": sum(8 * r["file_bytes"] for r in rows) / (count * dims),
            "jpegxl_bpd": sum(base["jpegxl"][:count]) / (count * dims),
            "encode_images_per_s": count / sum(r["encode_s"] for r in rows),
            "decode_images_per_s": count / sum(r["decode_s"] for r in rows)}


def run_k_table(codec, images: np.ndarray, ks, base: dict) -> list:
    """One bits-back file of ``images`` per K-step dp/analytic chain (encoded only), beside
    the classical file that method auto weighs against it."""
    from ddpmcodec.codec.lossless import classical
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    dims, n, out = int(np.prod(images.shape[1:])), len(images), []
    classical_bytes = len(classical.ClassicalLosslessCodec(None).encode(images).data)
    for K in ks:
        chain = select_chain(codec.model, ChainOptions(K, "dp", "analytic"))[0]
        enc = codec.encode(images, chain=chain, method="bitsback")
        s = enc.stats
        row = {"steps": K, "images": n, "bitsback_bpd": 8 * len(enc.data) / (n * dims),
               "classical_bpd": 8 * classical_bytes / (n * dims),
               "bound_bpd": s.bound_bits / s.net_dims,
               "jpegxl_bpd": sum(base["jpegxl"][:n]) / (n * dims),
               "encode_images_per_s": n / s.seconds}
        row["file_bpd"] = min(row["bitsback_bpd"], row["classical_bpd"])  # what auto writes
        row["mode"] = "lossless" if row["bitsback_bpd"] <= row["classical_bpd"] else \
            "classical-lossless"
        row["vs_jpegxl"] = row["file_bpd"] / row["jpegxl_bpd"]
        row["bitsback_vs_jpegxl"] = row["bitsback_bpd"] / row["jpegxl_bpd"]
        out.append(row)
        print(f"  K={K}: bits-back {row['bitsback_bpd']:.4f} bits/dim "
              f"({row['bitsback_vs_jpegxl']:.4f}x JPEG-XL), classical "
              f"{row['classical_bpd']:.4f}, {row['encode_images_per_s']:.2f} images/s",
              flush=True)
    return out


def codec_default_steps() -> int:
    from ddpmcodec.codec.lossless.params import DEFAULT_STEPS
    return DEFAULT_STEPS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--first", type=int, default=600)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--sizes", default="200,16,1", help="images per file, comma-separated")
    p.add_argument("--limit", action="append", default=[], metavar="SIZE=N",
                   help="files of SIZE images from the first N images only (repeatable)")
    p.add_argument("--steps", type=int, default=None,
                   help="a K-step dp/analytic chain instead of the codec's default")
    p.add_argument("--progressive-lossless", type=int, default=0, metavar="N",
                   help="the first N images also as progressive files that end lossless")
    p.add_argument("--k-table", default="", help="K values of the size/speed table")
    p.add_argument("--k-images", type=int, default=32, help="images of the K table's file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--render", metavar="JSON", help="only draw the table of a results file")
    p.add_argument("--markdown", help="write the table as a markdown page here")
    a = p.parse_args(argv)
    if a.render:
        results = json.loads(Path(a.render).read_text())
        print(table(results))
        if a.markdown:
            write_markdown(a.markdown, results, a.render)
        return 0
    import torch

    from ddpmcodec.codec.lossless.codec import BitsBackCodec
    from ddpmcodec.io.models import load_model
    if a.threads:
        torch.set_num_threads(a.threads)
    images = np.load(a.data)["images"][a.first:a.first + a.count]
    model = load_model(None)
    codec = BitsBackCodec(model)
    chain = None
    if a.steps is not None:
        from ddpmcodec.io.chain_choice import ChainOptions, select_chain
        chain = select_chain(model, ChainOptions(a.steps, "dp", "analytic"))[0]
    dims = int(np.prod(images.shape[1:]))
    from ddpmcodec.pipelines.bench import _device_name
    from ddpmcodec.pipelines.lossless_baselines import classical_lossless_bits
    base = classical_lossless_bits(images)
    results = {"command": "python " + shlex.join([sys.argv[0]] + (argv or sys.argv[1:])),
               "data": a.data, "first": a.first, "count": len(images),
               "model": model.fingerprint, "threads": torch.get_num_threads(),
               "cpu": _device_name("cpu"),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "steps": a.steps or codec_default_steps(),
               "date": time.strftime("%Y-%m-%d"), "classical_bits": base, "runs": {}, "table": []}
    limits = {int(k): int(v) for k, v in (item.split("=") for item in a.limit)}

    def save():
        if a.json:
            from ddpmcodec.io.atomic import write_json_atomic
            write_json_atomic(a.json, results)
    for size in (int(v) for v in a.sizes.split(",") if v):
        res = run_files(codec, images[:limits.get(size, len(images))], size,
                        f"{size}-image files", chain)
        results["runs"][str(size)] = res
        results["table"].append(summarise(res, dims, {k: v[:limits.get(size, len(images))]
                                                      for k, v in base.items()}))
        save()
    if a.progressive_lossless:
        results["progressive_lossless"] = run_progressive_lossless(
            model, images, a.progressive_lossless, base)
        save()
    if a.k_table:
        results["k_table"] = run_k_table(codec, images[:a.k_images],
                                         [int(v) for v in a.k_table.split(",")], base)
        save()
    print(table(results) + extra_tables(results))
    if a.markdown and a.json:
        write_markdown(a.markdown, results, a.json)
    return 0


COLUMNS = [("images_per_file", "images per file"), ("files", "files"), ("images", "images"),
           ("file_bpd", "whole file bits/dim"), ("webp_lossless_bpd", "WebP-lossless"),
           ("png_bpd", "PNG"), ("jpegxl_bpd", "JPEG-XL lossless"),
           ("vs_webp_lossless", "vs WebP-lossless"), ("vs_jpegxl", "vs JPEG-XL"),
           ("larger_than_webp", "files larger than WebP-lossless of their images"), ("net_bpd", "net bits/dim (bits-back images)"),
           ("bound_bpd", "bound (same images)"), ("webp_fallback_files", "files written as WebP"),
           ("classical_files", "files written classically"),
           ("encode_images_per_s", "encode images/s"), ("decode_images_per_s", "decode images/s")]


def larger_than_webp(results: dict, per_file: int) -> int:
    """Files larger than the WebP-lossless files of their own images (whole files both)."""
    webp = results["classical_bits"]["webp_lossless"]
    files = results["runs"][str(per_file)]["files"]
    return sum(8 * f["file_bytes"] > sum(webp[f["first"]:f["first"] + f["images"]]) for f in files)


def table(results: dict) -> str:
    if not results["table"]:  # a run of the K table alone
        return ""
    for row in results["table"]:
        row["larger_than_webp"] = larger_than_webp(results, row["images_per_file"])
    cols = [(k, name) for k, name in COLUMNS if any(k in row for row in results["table"])]
    lines = ["| " + " | ".join(name for _, name in cols) + " |", "|" + "---:|" * len(cols)]
    for row in results["table"]:
        cells = []
        for k, _ in cols:
            v = row.get(k)
            cells.append("" if v is None else f"{100 * v:+.1f}%" if k == "vs_webp_lossless"
                         else f"{v:.4f}x" if k == "vs_jpegxl"
                         else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def extra_tables(results: dict) -> str:
    """The K table and the progressive-lossless files, when measured."""
    out = []
    if results.get("k_table"):
        out += ["", "| K (--steps) | images | bits-back file bits/dim | vs JPEG-XL | bound | "
                    "classical file | auto writes | encode images/s (bits-back) |",
                "|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in results["k_table"]:
            out.append(f"| {r['steps']} | {r['images']} | {r['bitsback_bpd']:.4f} | "
                       f"{r['bitsback_vs_jpegxl']:.4f}x | {r['bound_bpd']:.4f} | "
                       f"{r['classical_bpd']:.4f} | {r['mode']} | "
                       f"{r['encode_images_per_s']:.2f} |")
    pl = results.get("progressive_lossless")
    if pl:
        out += ["", f"Progressive files that end lossless, one image each ({pl['images']} "
                    f"images): {pl['file_bpd']:.4f} bits/dim against JPEG-XL's "
                    f"{pl['jpegxl_bpd']:.4f} ({pl['file_bpd'] / pl['jpegxl_bpd']:.3f}x); "
                    f"encode {pl['encode_images_per_s']:.2f}, decode "
                    f"{pl['decode_images_per_s']:.2f} images/s."]
    return "\n".join(out)


def write_markdown(path: str, results: dict, source: str) -> None:
    from ddpmcodec.io.atomic import write_text_atomic
    single = next((r for r in results["table"] if r["images_per_file"] == 1), None)
    checked = ("Every file was decoded and compared with the images." if results["table"] else
               "The K table's files were encoded only, without being decoded (the codec's "
               "round trips are checked by the tests and the other runs).")
    title = (f"{results['steps']}-step chain" if results["table"]
             else "against the chain's length K")
    text = [f"# Lossless files beside the classical codecs ({title})", "",
            f"CIFAR-10 test images {results['first']}..{results['first'] + results['count'] - 1} "
            f"of `{Path(results['data']).name}` (never used to train or calibrate the model), "
            f"embedded model `{results['model']}`, {results['threads']} CPU threads, "
            f"measured {results['date']}. {checked}",
            "", "    " + results["command"], "",
            f"Results: [`{source}`](../{source}); this page: `python "
            f"benchmarks/bench_lossless_files.py --render {source} --markdown {path}`.", "",
            table(results) + extra_tables(results), "",
            "Whole file: everything a user stores (header, classical seeds, initial bits), "
            "per dimension of all the images. The classical codecs are Pillow's WebP-lossless "
            "(method 6, quality 100) and PNG (optimize), and imagecodecs' JPEG-XL lossless "
            "(effort 9), one file per image, their whole files. Net bits/dim and the bound "
            "(the variational bound of the same chain along the coded path) cover the images "
            "coded bits-back, i.e. not the seeds."]
    if single is not None:
        text += ["", f"Single-image files: mean of the per-file bits/dim "
                     f"{single['file_bpd_mean_of_files']:.4f}; each is the shorter of the "
                     "bits-back file and the classical file (JPEG-XL or WebP-lossless per image; "
                     "the classical file always for one image)."]
        jxl = results["classical_bits"].get("jpegxl")
        if jxl:
            over = [f["file_bytes"] - jxl[f["first"]] // 8 for f in results["runs"]["1"]["files"]]
            text[-1] += (f" Against libjxl's effort-9 stream of the same image: at most "
                         f"{max(over):+d} bytes, {sum(over) / len(over):+.1f} on average.")
    if "k_table" not in results and "--k-table" in results["command"]:
        text += ["", "This run was stopped before its K table (`--k-table`), which was "
                     "measured in a run of its own: "
                     "[`lossless_k_table.md`](lossless_k_table.md)."]
    write_text_atomic(path, "\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
