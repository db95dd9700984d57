"""The importance estimator against the full bound of the same images and noise.

    python benchmarks/estimator_check.py runs/nll-test8-full --nfe 25,50,100

For each M, runs `ddpmcodec nll --estimator importance --nfe M` (a results folder beside
FULL, resumable; the model, images, chain and seed are FULL's) and prints the estimate,
its standard errors (total: image + Monte-Carlo; MC: Monte-Carlo only) and the distance
to the full bound in units of each.
"""
from __future__ import annotations

import argparse
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
    print(f"proposal: {r['config']['proposal']}")
    return 0 if worst < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
