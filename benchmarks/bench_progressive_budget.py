"""The encoder's search budget: time against rate at equal distortion, in one run.

    python benchmarks/bench_progressive_budget.py --first 0 --count 8 \
        --json benchmarks/results/progressive_budget_test0-7.json

Encodes each image of ../shared/data/cifar10-test-800.npz [first, first+count) as its own
progressive file under each configuration below (interleaved image by image, so that a
drift of the machine's speed hits every configuration alike), decodes every truncation
point from exactly its prefix bytes (latents checked bit for bit) and reports, per
configuration, the encode seconds per image and the whole-file bits per pixel at equal
PSNR as a ratio to the reference configuration (interpolated per image along its
truncation points, then averaged; beside it the ratio of the mean curves):

* before: generator v1 with the "chunk" budget rule (2^ceil(D_j + m) per chunk), the
  encoder when issue 13 was filed;
* v2 chunk: generator v2 with the "chunk" rule, one process (the default of commit
  b27a899);
* v2 layout, one process: generator v2 with the "layout" rule (round(2^(mean chunk KL +
  m)) in every chunk), the default of commit fa4bbb3;
* v2 layout, processes: the same searched on one process per CPU (the default now),
  which must write the very same files (their SHA-256 are compared).

The reference is "v2 chunk" (ratios of 1 by definition). `--render` reprints the table from a results file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_progressive_files import ROOT, bpp_at, encode_file, mean_curve  # noqa: E402

CONFIGS = {
    "before: v1, chunk, m=2": {"generator": "philox4x64-boxmuller-v1", "budget_rule": "chunk",
                               "search_workers": 1},
    "v2, chunk, m=2, 1 process": {"budget_rule": "chunk", "search_workers": 1},
    "v2, layout, m=2, 1 process": {"budget_rule": "layout", "search_workers": 1},
    "v2, layout, m=2, 1 process per CPU (default)": {"budget_rule": "layout"},
}
REFERENCE = "v2, chunk, m=2, 1 process"
SAME_FILES = ("v2, layout, m=2, 1 process", "v2, layout, m=2, 1 process per CPU (default)")
TARGETS = (22, 24, 26, 28, 30, 32, 34, 36, 38)


def _curve(f: dict) -> list:
    return [(r["bpp"], r["psnr"][0]) for r in f["steps"]]


def table(results: dict) -> str:
    runs = results["runs"]
    reference = results.get("reference", list(runs)[1])  # older files: the second config
    ref = runs[reference]
    n = min(len(v) for v in runs.values())
    lines = [f"{n} images, one file each; bpp ratio to '{reference}' at equal PSNR: mean of "
             "per-image ratios (ratio of mean curves)", "",
             "| configuration | encode s/image | speed-up vs before | "
             + " | ".join(f"{t} dB" for t in TARGETS) + " |",
             "|---|---:|---:|" + "---:|" * len(TARGETS)]
    before = np.mean([f["encode_s"] for f in next(iter(runs.values()))[:n]])
    for name, files in runs.items():
        files = files[:n]
        enc = float(np.mean([f["encode_s"] for f in files]))
        cells = []
        for t in TARGETS:
            pairs = [(bpp_at(_curve(a), t), bpp_at(_curve(b), t)) for a, b in zip(files, ref[:n])]
            ratios = [a / b for a, b in pairs if a and b]
            mc, mr = bpp_at(mean_curve([_curve(f) for f in files]), t), \
                bpp_at(mean_curve([_curve(f) for f in ref[:n]]), t)
            cells.append(f"{np.mean(ratios):.3f} ({mc / mr:.3f})" if ratios and mc and mr else "")
        lines.append(f"| {name} | {enc:.1f} | {before / enc:.1f}x | " + " | ".join(cells) + " |")
    a, b = (runs.get(k, [])[:n] for k in SAME_FILES)
    if a and b and all("sha256" in f for f in a + b):
        same = sum(x["sha256"] == y["sha256"] for x, y in zip(a, b))
        lines += ["", f"'{SAME_FILES[0]}' and '{SAME_FILES[1]}': {same} of {n} files "
                      "identical byte for byte"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--json", help="write the results here (after every image)")
    p.add_argument("--render", metavar="JSON", help="only reprint the table from a results file")
    a = p.parse_args(argv)
    if a.render:
        print(table(json.loads(Path(a.render).read_text())))
        return 0
    import torch

    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.models import load_model
    images = np.load(a.data)["images"][a.first:a.first + a.count]
    model = load_model(None)
    codec = ProgressiveCodec(model)
    results = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
               "data": a.data, "first": a.first, "model": model.fingerprint,
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "configs": CONFIGS, "reference": REFERENCE, "runs": {name: [] for name in CONFIGS}}
    for options in CONFIGS.values():  # warm-up of every path before any timing
        codec.decode_every_step(codec.encode(images[:1], steps=3, **options).data)
    for i, im in enumerate(images):
        for name, options in CONFIGS.items():
            f = encode_file(codec, im[None], **options)
            results["runs"][name].append(f)
            print(f"image {a.first + i}, {name}: {f['file_bytes']} bytes, encode "
                  f"{f['encode_s']:.1f} s", flush=True)
        if a.json:
            write_json_atomic(a.json, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
