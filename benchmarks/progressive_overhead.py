"""Overhead of the progressive codec against the information it conveys, on real images.

For N real CIFAR-10 test images (../shared/data/cifar10-test-800.npz) and the embedded
model, encodes the N images into one progressive file per chunk size B and prints:

1. an overhead table against chunk size, at full rate (t = 1): actual payload bits per
   image, the file's bits per image (container header shared by the N images), the coded
   symbols alone, the summed KL of the codec's proposals along its path, overhead =
   payload / KL - 1, RMSE, and the bits the codec needs to reach RMSE 8 and 2 beside an
   exact-sample channel (the same schedule and proposals, no channel: "theory"), which
   also counts what the truncation of the search costs in distortion;
2. for the default chunk size: actual bits against summed KL at every truncation point.

Usage (the numbers in docs/progressive.md: `--chunk-bits 12 --num-images 4 --json
benchmarks/results/progressive_overhead_b12_n4.json`; the JSON also records the command,
the machine's load, the encoding and decoding time):

    OMP_NUM_THREADS=1 python benchmarks/progressive_overhead.py [--num-images 16]
        [--chunk-bits 6,8,10,12,14] [--steps K] [--margin M] [--json OUT.json]

Timings are for one CPU thread and depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-test-800.npz"


def main(argv=None) -> int:
    from ddpmcodec.analysis.rd_codec import rate_at_rmse
    from ddpmcodec.pipelines.rd_codec import theory_curve
    from ddpmcodec.codec.progressive import codec as prog_codec
    from ddpmcodec.codec.progressive import params as prog_params
    from ddpmcodec.codec.progressive import reconstruct
    from ddpmcodec.io.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--num-images", type=int, default=16)
    ap.add_argument("--first", type=int, default=0, help="index of the first image")
    ap.add_argument("--steps", type=int, default=prog_params.DEFAULT_STEPS)
    ap.add_argument("--chunk-bits", default="6,8,10,12,14")
    ap.add_argument("--margin", type=float, default=prog_params.DEFAULT_MARGIN_BITS)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.data.is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    with np.load(args.data, allow_pickle=False) as f:
        images = f["images"][args.first:args.first + args.num_images]
    model = load_model()
    codec = prog_codec.ProgressiveCodec(model)
    chunk_sizes = [float(b) for b in args.chunk_bits.split(",")]
    n = len(images)
    dims = images[0].size

    t0 = time.time()
    theory = theory_curve(model, images, prog_params.coded_schedule(model.diffusion.num_steps, args.steps),
                          args.seed, args.batch_size)
    th_bits, th_rmse = theory["kl_bits_per_image"], theory["rmse"]
    print(f"{n} images from {args.data.name}, K={args.steps} coded steps "
          f"{list(prog_params.coded_schedule(model.diffusion.num_steps, args.steps))}, margin {args.margin} bits; "
          f"theory (exact samples) computed in {time.time() - t0:.0f} s")
    print(f"theory at full rate: KL {th_bits.iloc[-1]:.0f} bits/image "
          f"({th_bits.iloc[-1] / dims:.3f} bits/dim), RMSE {th_rmse.iloc[-1]:.3f}")
    print()
    header = ("   B  | payload b/img | file b/img | coded b/img |  KL b/img | overhead | coded ovh | "
              "RMSE  | b@RMSE8 (theory) | b@RMSE2 (theory) | chunks/img | s/img")
    print(header)
    print("-" * len(header))
    results = {"benchmark": "progressive_overhead",
               "command": "python benchmarks/progressive_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "model": {"fingerprint": model.fingerprint, "source": str(model.source)},
               "data": {"path": os.path.relpath(args.data, ROOT), "first": args.first},
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.machine(), "cpu_count": os.cpu_count(),
               "load_average_start": list(os.getloadavg()), "theory_seconds": time.time() - t0,
               "num_images": n, "steps": args.steps, "margin_bits": args.margin,
               "theory": theory.to_dict(orient="list"), "configs": []}
    tables = {}
    for B in chunk_sizes:
        t = time.time()
        enc = codec.encode(images, steps=args.steps, chunk_bits=B, margin_bits=args.margin,
                           batch_size=args.batch_size, seed=args.seed)
        secs = time.time() - t
        rows = reconstruct.truncation_table(enc.stats)
        tables[B] = rows
        last = rows[-1]
        bits = [r["payload_bits_per_image"] for r in rows]
        rmse = [r["rmse"] for r in rows]
        at8, at2 = rate_at_rmse(bits, rmse, 8.0), rate_at_rmse(bits, rmse, 2.0)
        th8, th2 = rate_at_rmse(th_bits, th_rmse, 8.0), rate_at_rmse(th_bits, th_rmse, 2.0)
        print(f"{B:5.1f} | {last['payload_bits_per_image']:13.0f} | {last['file_bits_per_image']:10.0f} | "
              f"{last['code_bits_per_image']:11.0f} | {last['kl_bits_per_image']:9.0f} | "
              f"{100 * last['overhead']:7.1f}% | {100 * last['code_overhead']:8.1f}% | "
              f"{last['rmse']:5.3f} | {at8:6.0f} ({th8:6.0f}) | {at2:6.0f} ({th2:6.0f}) | "
              f"{sum(r['chunks_per_image'] for r in rows):10.0f} | "
              f"{secs / n:5.1f}", flush=True)
        results["configs"].append({"chunk_bits": B, "seconds_per_image": secs / n,
                                   "bits_at_rmse8": at8, "bits_at_rmse2": at2,
                                   "theory_bits_at_rmse8": th8, "theory_bits_at_rmse2": th2,
                                   "file_bytes": len(enc.data), "rows": rows})
        if B == chunk_sizes[-1] or B == prog_params.DEFAULT_CHUNK_BITS:
            t = time.time()
            dec = codec.decode(enc.data)
            results["configs"][-1]["decode_seconds_per_image"] = (time.time() - t) / n
            assert np.array_equal(dec.images, codec.decode(enc.data).images)
    default = prog_params.DEFAULT_CHUNK_BITS if prog_params.DEFAULT_CHUNK_BITS in tables else chunk_sizes[-1]
    print()
    print(f"B = {default}: actual bits against summed KL at every truncation point (per image)")
    print(" step |    t | payload bits |  KL bits | overhead | KL theory | RMSE  | RMSE theory | PSNR")
    for r, (_, th) in zip(tables[default], theory.iterrows()):
        print(f"{r['step']:5d} | {r['t']:4d} | {r['payload_bits_per_image']:12.0f} | "
              f"{r['kl_bits_per_image']:8.0f} | "
              f"{(100 * r['overhead']) if r['kl_bits_per_image'] > 50 else float('nan'):7.1f}% | "
              f"{th['kl_bits_per_image']:9.0f} | {r['rmse']:5.2f} | {th['rmse']:11.2f} | {r['psnr']:5.2f}")
    if args.json:
        results["load_average_end"] = list(os.getloadavg())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=float))
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
