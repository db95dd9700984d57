"""Compare two full-bound nll results folders pair by pair (e.g. --engine plain vs fast).

    python benchmarks/compare_nll.py runs/nll-test8-full runs/issue7/fast-test8-full

Both must hold the same model, images, chain and seed (the noise is then identical); the
engine and batch layout may differ. Prints per-image totals and the largest differences.
"""
from __future__ import annotations

import sys

import numpy as np

from ddpmcodec.io.results import load_arrays, read_results


def main(a: str, b: str) -> int:
    ra, rb = read_results(a), read_results(b)
    ca, cb = ra["config"], rb["config"]
    for key in ("model", "data", "chain", "seed", "estimator"):
        if ca.get(key, "full") != cb.get(key, "full"):
            print(f"configs differ in {key!r}: not comparable")
            return 1
    x, y = load_arrays(a), load_arrays(b)
    print(f"A: {a}  engine={ca.get('engine', 'plain')}  ({ra['run'].get('compute_seconds', 0):.0f} s)")
    print(f"B: {b}  engine={cb.get('engine', 'plain')}  ({rb['run'].get('compute_seconds', 0):.0f} s)")
    print(f"{'image':>5} {'total A':>12} {'total B':>12} {'|A-B| bits/dim':>15}")
    for i, (ta, tb) in enumerate(zip(x["total"], y["total"])):
        print(f"{i:>5} {ta:>12.6f} {tb:>12.6f} {abs(ta - tb):>15.3e}")
    d = np.abs(x["total"] - y["total"])
    print(f"largest per-image difference of the total: {d.max():.3e} bits/dim "
          f"({'within' if d.max() < 0.002 else 'OUTSIDE'} 0.002)")
    print(f"largest difference of one term vb[i, k]: {np.abs(x['vb'] - y['vb']).max():.3e} bits/dim")
    print(f"largest difference of xstart_mse: {np.abs(x['xstart_mse'] - y['xstart_mse']).max():.3e}, "
          f"eps_mse: {np.abs(x['eps_mse'] - y['eps_mse']).max():.3e}")
    return 0 if d.max() < 0.002 else 2


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
