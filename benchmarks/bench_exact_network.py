"""Seconds per image of one network evaluation: the exact network as it is, the exact
network of an earlier revision (``--baseline REV``: its ``ddpmcodec/core/exact/unet.py``
from git, on the same plan), and the float32 network, in one run on this machine:

    python benchmarks/bench_exact_network.py --batches 1 8 16 --repeats 3 \
        --baseline 528821e --json benchmarks/results/exact_network_cpu.json

The two exact networks' outputs are checked to be the same bits. Median of
``--repeats`` after one warm-up call; the results file is rewritten after each row.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpmcodec.core.exact.unet import ExactUNet, plan_of_model
from ddpmcodec.io.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def seconds(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def baseline_class(rev: str):
    """ExactUNet as it was at git revision ``rev`` (a module of its own)."""
    src = subprocess.run(["git", "show", f"{rev}:ddpmcodec/core/exact/unet.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"exact_unet_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module.ExactUNet


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", help="a git revision whose exact network to time beside")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    model = load_model()
    plan = plan_of_model(model)
    nets = {"exact": ExactUNet(plan)}
    if a.baseline:
        nets["baseline"] = baseline_class(a.baseline)(plan)
    unet = model.unet.eval()
    rows = []
    torch.manual_seed(0)
    for B in a.batches:
        x = torch.randn(B, 3, 32, 32, dtype=torch.float64)
        t = torch.arange(B) * 37 % 1000
        row, outputs = {"batch": B}, []
        for name, net in nets.items():
            row[f"{name}_s"] = seconds(lambda: net(x, t), a.repeats) / B
            outputs.append(net(x, t))
        with torch.no_grad():
            xf = x.float()
            row["float32_s"] = seconds(lambda: unet(xf, t).sample, a.repeats) / B
        row["exact_vs_float32"] = row["exact_s"] / row["float32_s"]
        line = f"batch {B:3d}: exact {row['exact_s']:.4f} s/img"
        if a.baseline:
            row["same_bits"] = torch.equal(*outputs)
            row["baseline_vs_exact"] = row["baseline_s"] / row["exact_s"]
            line += (f", baseline {row['baseline_s']:.4f} ({row['baseline_vs_exact']:.2f}x), "
                     f"same bits: {row['same_bits']}")
        rows.append(row)
        print(f"{line}, float32 {row['float32_s']:.4f} (exact/float32 "
              f"{row['exact_vs_float32']:.1f}x)", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "baseline": a.baseline,
                           "repeats": a.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
