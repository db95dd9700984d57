"""Seconds per image of one network evaluation: the exact network with its convolutions
in row blocks (the default), the same network unblocked (every tap's product on all rows
at once, as before blocking), and the float32 network, in one run on this machine:

    python benchmarks/bench_exact_network.py --batches 1 8 16 --repeats 3 \
        --json benchmarks/results/exact_network_blocks_cpu.json

The blocked and unblocked outputs are checked to be the same bits. Median of
``--repeats`` after one warm-up call; the results file is rewritten after each row.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import ddpmcodec.core.exact.unet as exact_unet
from ddpmcodec.core.exact.unet import ExactUNet, plan_of_model
from ddpmcodec.io.models import load_model


def seconds(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    model = load_model()
    net = ExactUNet(plan_of_model(model))
    unet = model.unet.eval()
    blocked = exact_unet.ROW_BLOCK
    rows = []
    torch.manual_seed(0)
    for B in a.batches:
        x = torch.randn(B, 3, 32, 32, dtype=torch.float64)
        t = torch.arange(B) * 37 % 1000
        res, outputs = {}, []
        for name, block in (("unblocked", 1 << 40), ("blocked", blocked)):
            exact_unet.ROW_BLOCK = block
            res[name] = seconds(lambda: net(x, t), a.repeats) / B
            outputs.append(net(x, t))
        exact_unet.ROW_BLOCK = blocked
        same = torch.equal(*outputs)
        with torch.no_grad():
            xf = x.float()
            res["float32"] = seconds(lambda: unet(xf, t).sample, a.repeats) / B
        rows.append({"batch": B, "exact_unblocked_s": res["unblocked"],
                     "exact_blocked_s": res["blocked"], "float32_s": res["float32"],
                     "same_bits": same})
        print(f"batch {B:3d}: exact unblocked {res['unblocked']:.4f} s/img, blocked "
              f"{res['blocked']:.4f} (unblocked/blocked {res['unblocked'] / res['blocked']:.2f}x), "
              f"float32 {res['float32']:.4f} (exact/float32 {res['blocked'] / res['float32']:.1f}x)"
              f", same bits: {same}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "row_block": blocked,
                           "repeats": a.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
