"""The importance estimator against the full bound of the same images and noise.

    python benchmarks/estimator_check.py reports/results/nll-test-full --nfe 10,25,50,100 \
        --out runs/estimator --json benchmarks/results/estimator_check.json

For each M, runs `ddpmcodec nll --estimator importance --nfe M` (a results folder beside
FULL, resumable; the model, images, chain and seed are FULL's) and prints the estimate,
its standard errors (total: image + Monte-Carlo; MC: Monte-Carlo only) and the distance
to the full bound in units of each. With --json, the same rows (and the command, the full
run's folder and the proposal) are written to one JSON file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ddpmcodec.io.data import load_images
from ddpmcodec.io.models import load_model
from ddpmcodec.io.results import load_arrays, read_results
from ddpmcodec.pipelines.nll import run_nll


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("full")
    ap.add_argument("--nfe", default="25,50,100")
    ap.add_argument("--proposal", default=None)
    ap.add_argument("--out", default=None, help="folder for the estimator runs")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args()
    res = read_results(args.full)
    cfg = res["config"]
    full = load_arrays(args.full)
    model = load_model(None if cfg["model"]["source"].startswith("embedded:") else cfg["model"]["source"])
    if model.fingerprint != cfg["model"]["fingerprint"]:
        raise SystemExit("the model's fingerprint differs from the full run's")
    data = cfg["data"]
    images = load_images(data["path"], num_images=data["num_images"])
    K = cfg["chain"]["num_steps"]
    steps = None if K == model.diffusion.num_steps else K
    out = Path(args.out or Path(args.full).parent / "estimator")
    print(f"full bound ({len(full['total'])} images, {K} steps): {full['total'].mean():.4f} bits/dim")
    print(f"{'M':>4} {'NFE/img':>8} {'estimate':>9} {'total SE':>9} {'MC SE':>8} {'est-full':>9} "
          f"{'/total SE':>9} {'/MC SE':>7} {'max |est_i-full_i|/mc_sd_i':>26}")
    worst = 0.0
    rows = []
    t_start = time.perf_counter()
    for M in [int(m) for m in args.nfe.split(",")]:
        r = run_nll(model, images, out / f"M{M}", steps, None, cfg["seed"], progress=False,
                    engine="fast", estimator="importance", nfe=M, proposal=args.proposal)
        s = r["summary"]
        a = load_arrays(out / f"M{M}")
        d = s["total_bpd"] - full["total"].mean()
        per = np.abs(a["total"] - full["total"]) / np.sqrt(a["kl_var"])
        worst = max(worst, abs(d) / s["total_mc_se"])
        print(f"{M:>4} {s['nfe_per_image']:>8.1f} {s['total_bpd']:>9.4f} {s['total_se']:>9.4f} "
              f"{s['total_mc_se']:>8.4f} {d:>+9.4f} {d / s['total_se']:>+9.2f} "
              f"{d / s['total_mc_se']:>+7.2f} {per.max():>26.2f}")
        rows.append({"M": M, "nfe_per_image": s["nfe_per_image"], "estimate_bpd": s["total_bpd"],
                     "total_se": s["total_se"], "mc_se": s["total_mc_se"], "est_minus_full": d,
                     "z_total_se": d / s["total_se"], "z_mc_se": d / s["total_mc_se"],
                     "max_per_image_z": float(per.max()),
                     "exact_steps": int(len(a["exact_k"])),
                     "exact_timestep_indices": [int(a["timesteps"][k]) for k in a["exact_k"]],
                     "compute_seconds": r.get("run", {}).get("compute_seconds")})
    print(f"proposal: {r['config']['proposal']}")
    if args.json:
        report = {"benchmark": "estimator_check",
                  "command": "python benchmarks/estimator_check.py " + " ".join(sys.argv[1:]),
                  "full": {"folder": str(args.full), "num_images": int(len(full["total"])),
                           "num_steps": K, "seed": cfg["seed"],
                           "total_bpd": float(full["total"].mean()),
                           "fingerprint": cfg["model"]["fingerprint"]},
                  "proposal": r["config"]["proposal"], "wall_seconds": time.perf_counter() - t_start,
                  "all_within_two_mc_se": bool(worst < 2.0), "rows": rows}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
        os.replace(tmp, path)
        print(f"wrote {args.json}")
    return 0 if worst < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
