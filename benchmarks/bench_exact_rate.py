"""The rate cost of the exact network: the negative ELBO (bits/dim) of the exact integer
network beside the float32 network's, on the same images, the same chain and the same
noise (one seed), paired per image with the standard error of the mean difference:

    python benchmarks/bench_exact_rate.py --first 600 --count 200 --long-count 32 \
        --json benchmarks/results/exact_rate_test600-799.json

Chains: the lossless codec's default (DEFAULT_STEPS dp steps, analytic variances) on all
``--count`` images, and a ``--long-steps``-step dp/analytic chain on the first
``--long-count``. The results file is rewritten after every group of images, so an
interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def paired(exact: list, fp32: list) -> dict:
    """Mean bounds, their paired difference (exact - fp32) and its standard error."""
    e, f = np.asarray(exact), np.asarray(fp32)
    d = e - f
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"images": len(d), "exact_bpd": float(e.mean()), "fp32_bpd": float(f.mean()),
            "diff_bpd": float(d.mean()), "diff_se_bpd": se,
            "diff_rel": float(d.mean() / f.mean()), "diff_rel_se": se / float(f.mean()),
            "max_abs_diff_bpd": float(np.abs(d).max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--first", type=int, default=600)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--long-steps", type=int, default=100)
    p.add_argument("--long-count", type=int, default=32)
    p.add_argument("--group", type=int, default=16, help="images per engine call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here (rewritten after every group)")
    p.add_argument("--resume", action="store_true",
                   help="keep the images an earlier run measured in --json and go on from there")
    a = p.parse_args(argv)
    import torch

    from ddpmcodec.codec.lossless.params import DEFAULT_STEPS, default_chain
    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    from ddpmcodec.io.data import to_model_space
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.engine import Engine
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(None)
    images = np.load(a.data)["images"][a.first:a.first + a.count]
    chains = [("default", f"lossless default: {DEFAULT_STEPS} dp steps, analytic",
               default_chain(model), len(images)),
              (f"dp{a.long_steps}", f"{a.long_steps} dp steps, analytic",
               select_chain(model, ChainOptions(a.long_steps, "dp", "analytic", None, None))[0],
               min(a.long_count, len(images)))]
    out = {"command": "python benchmarks/bench_exact_rate.py " + " ".join(argv or sys.argv[1:]),
           "model": model.fingerprint, "images": f"{a.data} [{a.first}, {a.first + a.count})",
           "seed": a.seed, "threads": torch.get_num_threads(), "chains": {}}
    done = {}
    if a.resume and a.json and Path(a.json).exists():
        import json
        before = json.loads(Path(a.json).read_text())
        if (before.get("model"), before.get("images"), before.get("seed")) != (
                out["model"], out["images"], out["seed"]):
            raise SystemExit(f"--resume: {a.json} was measured on another model, images or seed")
        done = before["chains"]
        out["chains"].update(done)
    for name, label, chain, count in chains:
        engines = {prec: Engine.for_model(model, chain, a.seed, batch=a.group, precision=prec)
                   for prec in ("fp32", "exact")}
        per = {"fp32": [], "exact": []}
        seconds = {"fp32": 0.0, "exact": 0.0}
        if name in done:  # an earlier run's images, in order from the first
            per = {k: list(v)[:count] for k, v in done[name]["per_image"].items()}
            seconds = dict(done[name]["seconds"])
        start = len(per["fp32"])  # whole groups only: a partial one is written last
        for g in range(start, count, a.group):
            x0 = to_model_space(images[g:min(g + a.group, count)])
            ids = torch.arange(a.first + g, a.first + g + x0.shape[0])
            for prec, eng in engines.items():
                t0 = time.perf_counter()
                per[prec] += eng.bound(x0, ids)["total"].tolist()
                seconds[prec] += time.perf_counter() - t0
            row = paired(per["exact"], per["fp32"])
            row.update(label=label, steps=chain.num_steps, timesteps=chain.timesteps.tolist(),
                       seconds=seconds, per_image={k: list(v) for k, v in per.items()})
            out["chains"][name] = row
            if a.json:
                write_json_atomic(a.json, out)
            print(f"{name}: {len(per['fp32'])}/{count} images, diff "
                  f"{row['diff_bpd']:+.2e} +- {row['diff_se_bpd']:.1e} bits/dim", flush=True)
    print("\n| chain | images | fp32 bits/dim | exact bits/dim | exact - fp32 | SE | relative |"
          "\n|---|---|---|---|---|---|---|")
    for name, r in out["chains"].items():
        print(f"| {r['label']} | {r['images']} | {r['fp32_bpd']:.5f} | {r['exact_bpd']:.5f} | "
              f"{r['diff_bpd']:+.2e} | {r['diff_se_bpd']:.1e} | {100 * r['diff_rel']:+.4f}% "
              f"+- {100 * r['diff_rel_se']:.4f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
