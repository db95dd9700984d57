"""Decode time of progressive files made with candidate generators v1 and v2, measured
back to back on the same image (alternating, after a warm-up) so that the two differ in
nothing but the generator:

    python benchmarks/bench_progressive_decode.py --image 0 --repeats 3 \
        --json benchmarks/results/progressive_decode_v1_v2.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--image", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    from ddpmcodec.codec.progressive.channel import GENERATOR_ID, GENERATOR_V2
    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.models import load_model
    image = np.load(a.data)["images"][a.image:a.image + 1]
    codec = ProgressiveCodec(load_model(None))
    files = {g: codec.encode(image, generator=g).data for g in (GENERATOR_ID, GENERATOR_V2)}
    for data in files.values():  # warm-up
        codec.decode_every_step(data)
    times = {g: {"decode_s": [], "decode_every_step_s": []} for g in files}
    for _ in range(a.repeats):
        for g, data in files.items():
            t0 = time.perf_counter()
            codec.decode(data)
            times[g]["decode_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            codec.decode_every_step(data)
            times[g]["decode_every_step_s"].append(time.perf_counter() - t0)
    print("| generator | decode s (min) | decode every prefix s (min) | file bytes |")
    print("|---|---:|---:|---:|")
    for g, t in times.items():
        print(f"| {g} | {min(t['decode_s']):.2f} | {min(t['decode_every_step_s']):.2f} | "
              f"{len(files[g])} |")
    if a.json:
        write_json_atomic(a.json, {
            "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
            "image": a.image, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "generators": {g: dict(t, file_bytes=len(files[g])) for g, t in times.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
