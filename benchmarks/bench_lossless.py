"""Lossless bits-back codec: speed and size against the bound.

    python benchmarks/bench_lossless.py --steps 100 --num-images 16 --batch-size 8
    python benchmarks/bench_lossless.py --steps 100 --num-images 64 --compare-nll
    python benchmarks/bench_lossless.py --steps 20 100 -n 16 --compare-nll \
        --json benchmarks/results/bench_lossless_cpu.json

Encodes the first N test images (../shared/data/cifar10-test-800.npz by default), decodes
them, checks the round trip, and prints one table row per chain length:

* encode / decode speed in images per second (wall clock, network included);
* the actual net size in bits/dim (payload minus the one-off initial bits), the bound
  along the coding path, the sampled negative ELBO of the path, the coder's overhead
  (actual / sampled ELBO - 1, a nearly noise-free number), and the initial bits;
* with --compare-nll, the bound that `ddpmcodec nll --steps K` (with the same
  --trajectory and --variance) computes for the same images (bound_plain_loop, seed 0), the relative difference actual / nll - 1, and its
  standard error. The codec's size and the nll estimate are two Monte-Carlo estimates of
  the same expectation with independent noise; the standard error of their difference is
  estimated from the per-image differences (sampled -ELBO of the path minus nll).

With --json, everything (the command line, machine, model, and one row per K) is written
to one JSON file, replaced atomically after every row, so the numbers quoted in the docs
can point at a committed file in benchmarks/results/.

Timings depend on the machine and its load: say which when you quote them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-test-800.npz"


def nll_bound(model, images: np.ndarray, diffusion, batch_size: int) -> np.ndarray:
    """Per-image bound in bits/dim of the chain ``diffusion``, as `ddpmcodec nll` computes
    it (seed 0)."""
    from ddpmcodec.core.likelihood import bound_plain_loop
    from ddpmcodec.io.data import to_model_space
    out = []
    for a in range(0, len(images), batch_size):
        x0 = to_model_space(images[a:a + batch_size], model.device)
        ids = torch.arange(a, a + len(x0))
        out.append(bound_plain_loop(model.denoiser(), diffusion, x0, ids, seed=0)["total"].numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100], help="chain lengths K (0: full)")
    ap.add_argument("--num-images", "-n", type=int, default=8)
    ap.add_argument("--batch-size", "-b", type=int, default=8)
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the embedded model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-nll", action="store_true", help="also compute the nll bound")
    ap.add_argument("--trajectory", default="even", help="even, quadratic or dp (as `encode`)")
    ap.add_argument("--variance", default="model", help="model, fixedlarge, fixedsmall or analytic")
    ap.add_argument("--grid-log2", type=int, nargs="+", default=[2],
                    help="latent grids to measure (2^G..2^(G+1) points per std; default 2)")
    ap.add_argument("--skip-decode", action="store_true", help="encode only (no round trip)")
    ap.add_argument("--save", default=None, help="write the rows as JSON lines to this file")
    ap.add_argument("--json", default=None, help="write the command, set-up and all rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpmcodec.codec.lossless.codec import BitsBackCodec
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    from ddpmcodec.io.data import load_images
    from ddpmcodec.io.models import load_model
    model = load_model(args.ckpt, args.device)
    images = load_images(args.data, num_images=args.num_images).images
    codec = BitsBackCodec(model)
    dims = int(np.prod(model.image_shape))
    print(f"# model {model.fingerprint} ({model.source}), {len(images)} images, batch "
          f"{args.batch_size}, device {args.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}", flush=True)
    cols = ["K", "G", "enc img/s", "dec img/s", "actual", "path bound", "sampled ELBO", "coder ovh",
            "initial b/d"]
    if args.compare_nll:
        cols += ["nll", "actual/nll-1", "SE", "nll s"]
    print(" | ".join(cols), flush=True)
    report = {"benchmark": "bench_lossless",
              "command": "python benchmarks/bench_lossless.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": {"fingerprint": model.fingerprint, "source": str(model.source)},
              "data": {"path": os.path.relpath(args.data, ROOT), "num_images": len(images)},
              "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
              "trajectory": args.trajectory, "variance": args.variance,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "cpu_count": os.cpu_count(), "load_average_start": list(os.getloadavg()),
              "rows": []}
    t_start = time.perf_counter()
    for K, grid in [(K, g) for K in args.steps for g in args.grid_log2]:
        steps = None if K == 0 else K
        chain, _ = select_chain(model, ChainOptions(steps, args.trajectory, args.variance))
        t0 = time.perf_counter()
        # the coder alone: every image bits-back, no WebP seeds (bench_lossless_files.py
        # measures whole files with the defaults)
        enc = codec.encode(images, chain=chain, batch_size=args.batch_size, seed=args.seed,
                           method="bitsback", seed_images=0, grid_log2=grid)
        t_enc = time.perf_counter() - t0
        t_dec = float("nan")
        if not args.skip_decode:
            t0 = time.perf_counter()
            dec = codec.decode(enc.data)
            t_dec = time.perf_counter() - t0
            if not np.array_equal(dec.images, images):
                print("ROUND TRIP FAILED", file=sys.stderr)
                return 1
        s = enc.stats
        elbo = np.array(s.extra["elbo_bits_per_image"]) / dims
        row = {"K": s.num_steps, "grid_log2": grid, "timesteps": chain.timesteps.tolist(),
               "variance_type": chain.variance_type,
               "num_images": len(images), "batch_size": args.batch_size,
               "encode_images_per_s": len(images) / t_enc, "decode_images_per_s": len(images) / t_dec,
               "actual_bpd": s.bits_per_dim, "path_bound_bpd": s.bound_bits_per_dim,
               "elbo_bpd": float(elbo.mean()), "coder_overhead": s.actual_bits / elbo.sum() / dims - 1,
               "initial_bits_per_dim": s.initial_bits_per_dim, "initial_bits": s.initial_bits,
               "payload_bits": s.payload_bits, "header_bits": s.header_bits, "file_bytes": len(enc.data),
               "encode_seconds": t_enc, "decode_seconds": t_dec,
               "escapes": s.extra["escapes"]}
        cells = [f"{s.num_steps}", f"{grid}", f"{row['encode_images_per_s']:.3f}",
                 f"{row['decode_images_per_s']:.3f}", f"{s.bits_per_dim:.5f}",
                 f"{s.bound_bits_per_dim:.5f}", f"{row['elbo_bpd']:.5f}",
                 f"{100 * row['coder_overhead']:+.4f}%", f"{s.initial_bits_per_dim:.3f}"]
        if args.compare_nll:
            t0 = time.perf_counter()
            ref = nll_bound(model, images, chain, args.batch_size)
            t_nll = time.perf_counter() - t0
            d = elbo - ref
            se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            rel = s.bits_per_dim / ref.mean() - 1
            row.update(nll_bpd=float(ref.mean()), rel_diff=rel, rel_se=se / ref.mean(),
                       per_image_diff_sd=float(d.std(ddof=1)) if len(d) > 1 else None,
                       nll_seconds=t_nll)
            cells += [f"{ref.mean():.5f}", f"{100 * rel:+.3f}%", f"{100 * se / ref.mean():.3f}%",
                      f"{t_nll:.0f}"]
        print(" | ".join(cells), flush=True)
        if args.save:
            with open(args.save, "a") as f:
                f.write(json.dumps(row) + "\n")
        if args.json:
            report["rows"].append(row)
            report["wall_seconds"] = time.perf_counter() - t_start
            report["load_average_end"] = list(os.getloadavg())
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
            os.replace(tmp, path)
    if args.json:
        print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
