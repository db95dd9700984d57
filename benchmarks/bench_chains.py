"""Few-step chains: what calibration costs on this machine, and how the dp trajectory's time
grows with K and T.

    python benchmarks/bench_chains.py --json benchmarks/results/bench_chains_cpu.json

1. Calibration: `ddpmcodec calibrate` of the embedded model on N training images at P
   timesteps (a fresh work folder, so nothing is reused): seconds, network evaluations/s.
2. DP: the pairwise cost table (jump_costs) and the dynamic programme (dp_trajectory) for
   T in --T and K in --K, on the linear schedule with the embedded model's calibration
   statistic stretched to T (the cost depends on the numbers only through their shape).
   Each timing is the best of --repeat runs.

Timings depend on the machine and its load: the JSON records both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = ROOT.parent / "shared" / "data" / "cifar10-train-4k.npz"


def time_dp(m_of_fraction, T: int, Ks, repeat: int) -> list[dict]:
    from ddpmcodec.core import chains
    from ddpmcodec.core.diffusion import Diffusion
    abar = Diffusion.from_schedule("linear", T).alphas_cumprod.numpy()
    m = m_of_fraction(np.arange(T) / (T - 1))
    best_table = min(_seconds(lambda: chains.jump_costs(abar, m, "analytic")) for _ in range(repeat))
    cost = chains.jump_costs(abar, m, "analytic")
    rows = []
    for K in Ks:
        if K > T:
            continue
        secs = min(_seconds(lambda: chains.dp_trajectory(cost, K)) for _ in range(repeat))
        rows.append({"T": T, "K": K, "table_seconds": best_table, "dp_seconds": secs})
        print(f"T={T:5d} K={K:4d}  cost table {best_table:.3f} s   dp {secs:.3f} s", flush=True)
    return rows


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16, help="calibration images (0: skip)")
    ap.add_argument("--points", type=int, default=200, help="calibration timesteps")
    ap.add_argument("--train-data", default=str(DEFAULT_TRAIN))
    ap.add_argument("--T", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--K", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from ddpmcodec.io.calibration import find_calibration
    from ddpmcodec.io.data import load_images
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.calibrate import calibrate
    model = load_model(None, "cpu")
    report = {"benchmark": "bench_chains",
              "command": "python benchmarks/bench_chains.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "model": model.fingerprint, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "load_average_start": list(os.getloadavg())}
    if args.images > 0:
        images = load_images(args.train_data, num_images=args.images)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cal = calibrate(model, images, Path(tmp) / "work", args.points, progress=False)
            secs = time.perf_counter() - t0
        nfe = args.images * len(cal.indices)
        report["calibration"] = {"images": args.images, "points": int(len(cal.indices)),
                                 "network_evaluations": nfe, "seconds": secs,
                                 "evaluations_per_second": nfe / secs}
        print(f"calibration: {args.images} images x {len(cal.indices)} timesteps = {nfe} "
              f"network evaluations in {secs:.1f} s ({nfe / secs:.1f}/s)", flush=True)
    shipped = find_calibration(model)
    frac, values = shipped.indices / (shipped.num_timesteps - 1), shipped.xstart_mse

    def m_of_fraction(f):
        return np.exp(np.interp(f, frac, np.log(values)))
    report["dp"] = [row for T in args.T for row in time_dp(m_of_fraction, T, args.K, args.repeat)]
    report["load_average_end"] = list(os.getloadavg())
    if args.json:
        from ddpmcodec.io.atomic import write_json_atomic
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
