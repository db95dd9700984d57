"""Progressive files of one image each, every truncation point, beside the classical codecs.

    python benchmarks/bench_progressive_files.py --first 0 --count 32 --shared-file \
        --before 4 --json benchmarks/results/progressive_files_test0-31.json \
        --figure reports/progressive_files.png

Encodes each image of ../shared/data/cifar10-test-800.npz [first, first+count) as its own
file with the codec's defaults (`ddpmcodec encode --progressive`), decodes every truncation
point's prefix (each checked bit for bit against the encoder's latents) and records, per
coded step, the whole-file bits per pixel of that prefix (bpp = 3 x bits/dim; the
prefix's header included), the summed KL of the steps sent, and the PSNR of the mean
reconstruction. ``--shared-file`` also codes all the images as one file (bpp per image).
Beside them, the same images through WebP, JPEG and AVIF (Pillow, quality 1 to 100) and
JPEG-XL (imagecodecs, when installed, distances 0.1 to 15), whole files. ``--before N``
times the first N images with the encoder as it was when issue 13 was filed (generator
v1 and the "chunk" search budget rule) in the same run. The table compares the mean curves at
equal PSNR; `--render` redraws table and figure from a results file.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUALITIES = list(range(1, 101, 3)) + [100]
JXL_DISTANCES = [15, 12, 10, 8, 6, 5, 4, 3, 2.5, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.45, 0.3, 0.2, 0.1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def classical(image: np.ndarray) -> dict:
    """{codec: [(bpp, psnr)]} of one image over each codec's quality range."""
    from PIL import Image, features
    pixels = image.shape[0] * image.shape[1]
    out = {}
    formats = [("webp", "WEBP"), ("jpeg", "JPEG")] + ([("avif", "AVIF")] if features.check("avif") else [])
    for name, fmt in formats:
        pts = []
        for q in QUALITIES:
            b = io.BytesIO()
            Image.fromarray(image).save(b, fmt, quality=q)
            data = b.getvalue()
            rec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            pts.append((8 * len(data) / pixels, psnr(rec, image)))
        out[name] = pts
    try:
        import imagecodecs
    except ImportError:
        return out
    pts = []
    for d in JXL_DISTANCES:
        data = imagecodecs.jpegxl_encode(image, distance=d, effort=7)
        pts.append((8 * len(data) / pixels, psnr(imagecodecs.jpegxl_decode(data), image)))
    out["jpegxl"] = pts
    return out


def encode_file(codec, images: np.ndarray, **options) -> dict:
    """One progressive file of ``images``: per coded step, bpp of the prefix (per image),
    summed KL bpp and PSNR of each image's mean reconstruction, each prefix decoded from
    exactly its bytes."""
    from ddpmcodec.codec import container
    n, h, w, _ = images.shape
    t0 = time.perf_counter()
    enc = codec.encode(images, **options)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps = codec.decode_every_step(enc.data)  # latents checked bit for bit
    t_dec = time.perf_counter() - t0
    hsize = container.header_size(enc.header, 0)
    coded = enc.stats.extra["steps"]
    ends = [row["prefix_bytes"] for row in coded]
    assert [st["bytes_used"] for st in steps] == ends and ends[-1] == len(enc.data)
    kl = np.cumsum([sum(im["kl_bits"] for im in row["images"]) for row in coded])
    rows, index_bits, side_bits = [], 0.0, 0.0
    for s, (st, row) in enumerate(zip(steps, coded)):
        rec = st["images"]["mean"]
        index_bits += sum(im["index_bits"] for im in row["images"]) / n
        side_bits += sum(im["code_bits"] - im["index_bits"] for im in row["images"]) / n
        if s in (0, len(steps) // 2, len(steps) - 1):  # the prefix alone gives the same image
            assert np.array_equal(codec.decode(enc.data, max_bytes=ends[s]).images, rec)
        rows.append({"step": s + 1, "t": st["t"], "file_bytes": ends[s],
                     "bpp": 8 * ends[s] / (n * h * w), "kl_bpp": kl[s] / (n * h * w),
                     # per image, cumulative: ideal bits of the PFR indices and of the side
                     # symbols (variance levels), and the steps' latent checks
                     "index_bits": index_bits, "side_bits": side_bits,
                     "check_bits": row["check_bits"] / n,
                     "psnr": [psnr(rec[i], images[i]) for i in range(n)]})
    return {"images": n, "header_bytes": hsize, "file_bytes": len(enc.data),
            "sha256": hashlib.sha256(enc.data).hexdigest(),
            "search_workers": enc.stats.extra["params"]["search_workers"],
            "encode_s": t_enc, "decode_every_step_s": t_dec, "steps": rows}


def mean_curve(points: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Mean bpp and mean PSNR at each setting over images (settings aligned by index)."""
    arr = np.array(points, dtype=np.float64)  # [images, settings, 2]
    return [tuple(v) for v in arr.mean(0)]


def bpp_at(curve: list[tuple[float, float]], target: float) -> float | None:
    """bpp where a (bpp, psnr) curve reaches ``target`` dB (linear interpolation along the
    curve sorted by bpp, first crossing); None when it never does."""
    pts = sorted(curve)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if p0 < target <= p1:
            return b0 + (b1 - b0) * (target - p0) / (p1 - p0)
    if pts and pts[0][1] >= target:
        return pts[0][0]
    return None


def summarise(results: dict) -> dict:
    files = results["files"]
    ours = mean_curve([[(r["bpp"], r["psnr"][0]) for r in f["steps"]] for f in files])
    kl = mean_curve([[(r["kl_bpp"], r["psnr"][0]) for r in f["steps"]] for f in files])
    base = {name: mean_curve([c[name] for c in results["classical"]])
            for name in results["classical"][0]}
    shared = results.get("shared_file")
    shared_curve = ([(r["bpp"], float(np.mean(r["psnr"]))) for r in shared["steps"]]
                    if shared else None)
    rows = []
    for target in range(22, 41, 2):
        row = {"psnr": target, "ddpmcodec": bpp_at(ours, target), "summed_kl": bpp_at(kl, target)}
        if shared_curve:
            row["shared_file"] = bpp_at(shared_curve, target)
        row.update({name: bpp_at(c, target) for name, c in base.items()})
        rows.append(row)
    # whole file over summed KL at each truncation point (mean bits over the files)
    over = [{"step": s + 1, "bpp": float(np.mean([f["steps"][s]["bpp"] for f in files])),
             "kl_bpp": float(np.mean([f["steps"][s]["kl_bpp"] for f in files])),
             "psnr": float(np.mean([f["steps"][s]["psnr"][0] for f in files]))}
            for s in range(min(len(f["steps"]) for f in files))]
    for o in over:
        o["file_over_kl"] = o["bpp"] / o["kl_bpp"] if o["kl_bpp"] > 0 else None
    if all("index_bits" in r for f in files for r in f["steps"]):  # results since the split
        pixels = results.get("pixels", 32 * 32)
        for s, o in enumerate(over):
            def mean(key, s=s):
                return float(np.mean([f["steps"][s][key] for f in files]))
            header = 8 * float(np.mean([f["header_bytes"] for f in files]))
            o["split"] = {"file": o["bpp"] * pixels, "header": header,
                          "checks": mean("check_bits"), "levels": mean("side_bits"),
                          "index": mean("index_bits"), "kl": o["kl_bpp"] * pixels}
            sp = o["split"]
            sp["rest"] = sp["file"] - sp["header"] - sp["checks"] - sp["levels"] - sp["index"]
    return {"ours": ours, "kl": kl, "shared": shared_curve, "classical": base, "at_psnr": rows,
            "over_kl": over}


def _processes(files: list) -> str:
    """", N search processes" when the files say how many searched (newer results)."""
    counts = {f.get("search_workers") for f in files}
    if len(counts) != 1 or None in counts:
        return ""
    n = counts.pop()
    return f", {n} search process{'es' if n > 1 else ''}"


def table(results: dict) -> str:
    s = summarise(results)
    names = ["ddpmcodec", "summed_kl"] + (["shared_file"] if s["shared"] else []) + list(s["classical"])
    lines = ["| PSNR (dB) | " + " | ".join(f"{n} bpp" for n in names) + " | ddpmcodec / webp |",
             "|" + "---:|" * (len(names) + 2)]
    for row in s["at_psnr"]:
        cells = ["" if row[n] is None else f"{row[n]:.3f}" for n in names]
        ratio = ("" if row["ddpmcodec"] is None or row.get("webp") is None
                 else f"{row['ddpmcodec'] / row['webp']:.2f}")
        lines.append(f"| {row['psnr']} | " + " | ".join(cells) + f" | {ratio} |")
    files = results["files"]
    lines += ["", f"{len(files)} single-image files: header {np.mean([f['header_bytes'] for f in files]):.1f} "
                  f"bytes, encode {np.mean([f['encode_s'] for f in files]):.1f} s per image, "
                  f"decode of every prefix {np.mean([f['decode_every_step_s'] for f in files]):.1f} s."]
    shared = results.get("shared_file")
    if shared:
        lines.append(f"One file of the {shared['images']} images: {shared['file_bytes']} bytes, "
                     f"header {shared['header_bytes']} bytes, encode "
                     f"{shared['encode_s'] / shared['images']:.1f} s per image, decode of every "
                     f"prefix {shared['decode_every_step_s'] / shared['images']:.2f} s per image.")
    lines += ["", "| step | file bpp | summed KL bpp | file / KL | PSNR (dB) |", "|---:|---:|---:|---:|---:|"]
    for o in s["over_kl"]:
        ratio = "" if o["file_over_kl"] is None else f"{o['file_over_kl']:.2f}"
        lines.append(f"| {o['step']} | {o['bpp']:.3f} | {o['kl_bpp']:.3f} | {ratio} | {o['psnr']:.2f} |")
    if "split" in s["over_kl"][0]:
        lines += ["", "Where a file's bits go, mean bits per file at each truncation point: header; "
                      "latent checks; variance levels; PFR indices (ideal bits) and their excess "
                      "over the KL; rest (the arithmetic coder's ends and the end flag).", "",
                  "| step | file | header | checks | levels | indices | KL | indices - KL | rest |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for o in s["over_kl"]:
            sp = o["split"]
            lines.append(f"| {o['step']} | {sp['file']:.0f} | {sp['header']:.0f} | {sp['checks']:.0f} | "
                         f"{sp['levels']:.0f} | {sp['index']:.0f} | {sp['kl']:.0f} | "
                         f"{sp['index'] - sp['kl']:.0f} | {sp['rest']:.0f} |")
    before = results.get("before")
    if before:
        n = len(before["encode_s"])
        after = [f["encode_s"] for f in files[:n]]
        after_dec = [f["decode_every_step_s"] for f in files[:n]]
        lines += ["", "| images 0..%d, one file each | encode s/image | decode every prefix s/image |" % (n - 1),
                  "|---|---:|---:|",
                  f"| before: {before['generator']} | {np.mean(before['encode_s']):.1f} | "
                  f"{np.mean(before['decode_every_step_s']):.2f} |",
                  f"| after: {results.get('generator', 'default')}"
                  f"{', layout budget rule' if 'budget' in before['generator'] else ''}"
                  f"{_processes(files[:n])} | "
                  f"{np.mean(after):.1f} | "
                  f"{np.mean(after_dec):.2f} |",
                  f"| speed-up | {np.mean(before['encode_s']) / np.mean(after):.1f}x | "
                  f"{np.mean(before['decode_every_step_s']) / np.mean(after_dec):.1f}x |"]
    return "\n".join(lines)


def figure(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpmcodec.io.atomic import savefig_atomic
    s = summarise(results)
    fig, ax = plt.subplots(figsize=(7, 5))
    for f in results["files"]:
        ax.plot([r["bpp"] for r in f["steps"]], [r["psnr"][0] for r in f["steps"]],
                color="tab:blue", alpha=0.15, lw=0.8)
    ax.plot(*zip(*s["ours"]), "o-", color="tab:blue", label="ddpmcodec progressive (whole file)")
    ax.plot(*zip(*s["kl"]), "--", color="tab:blue", label="summed KL of the coded steps")
    if s["shared"]:
        ax.plot(*zip(*s["shared"]), "s-", color="tab:purple", ms=4,
                label=f"ddpmcodec, one file of all {results['shared_file']['images']} images")
    colors = {"webp": "tab:orange", "jpeg": "tab:brown", "avif": "tab:green", "jpegxl": "tab:red"}
    for name, c in s["classical"].items():
        ax.plot(*zip(*sorted(c)), ".-", label=name, color=colors.get(name))
    ax.set_xlim(0, 6)
    ax.set_ylim(15, 45)
    ax.set_xlabel("bits per pixel (mean over single-image files)")
    ax.set_ylabel("PSNR (dB, mean)")
    ax.set_title(f"{len(results['files'])} CIFAR-10 test images, one file each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    savefig_atomic(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--shared-file", action="store_true",
                   help="also code all the images as one file")
    p.add_argument("--before", type=int, default=0, metavar="N",
                   help="also time the first N images with the encoder before issue 13 "
                        "(generator v1, chunk budget rule)")
    p.add_argument("--json", help="write the results here (after every image)")
    p.add_argument("--figure", help="draw the curves here")
    p.add_argument("--render", metavar="JSON", help="only redraw table and figure from a results file")
    a = p.parse_args(argv)
    if a.render:
        results = json.loads(Path(a.render).read_text())
    else:
        import torch

        from ddpmcodec.codec.progressive.codec import ProgressiveCodec
        from ddpmcodec.codec.progressive.params import ProgressiveParams
        from ddpmcodec.io.atomic import write_json_atomic
        from ddpmcodec.io.models import load_model
        images = np.load(a.data)["images"][a.first:a.first + a.count]
        model = load_model(None)
        codec = ProgressiveCodec(model)
        results = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
                   "data": a.data, "first": a.first, "model": model.fingerprint,
                   "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                   "pixels": int(images.shape[1] * images.shape[2]),
                   "generator": ProgressiveParams.defaults().generator,
                   "files": [], "classical": []}
        # warm up (imports, first network calls, numpy's first passes) before any timing
        codec.decode_every_step(codec.encode(images[:1], steps=3).data)
        for i, im in enumerate(images):
            results["files"].append(encode_file(codec, im[None]))
            results["classical"].append(classical(im))
            f = results["files"][-1]
            print(f"image {a.first + i}: {f['file_bytes']} bytes, {len(f['steps'])} steps, "
                  f"encode {f['encode_s']:.1f} s", flush=True)
            if a.json:
                write_json_atomic(a.json, results)
        if a.shared_file:
            results["shared_file"] = encode_file(codec, images)
            print(f"one file of {len(images)} images: {results['shared_file']['file_bytes']} bytes",
                  flush=True)
        if a.before:
            from ddpmcodec.codec.progressive.channel import GENERATOR_ID
            runs = [encode_file(codec, im[None], generator=GENERATOR_ID, budget_rule="chunk")
                    for im in images[:a.before]]
            results["before"] = {"generator": GENERATOR_ID + ", chunk budget rule",
                                 "encode_s": [r["encode_s"] for r in runs],
                                 "decode_every_step_s": [r["decode_every_step_s"] for r in runs]}
        if a.json:
            write_json_atomic(a.json, results)
    print(table(results))
    if a.figure:
        figure(results, a.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
