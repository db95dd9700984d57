"""Which of torch's CPU elementwise operations give the correctly rounded IEEE 754 result
on this machine: each operation on random float64 and float32 tensors against numpy's
(numpy runs the processor's IEEE instructions for these), and the chain constants'
square roots of the embedded model by torch.sqrt against correctly rounded ones. An
operation whose count is not zero must not decide bits in an exact file.

    python benchmarks/bench_torch_ieee.py --json benchmarks/results/torch_ieee_cpu_epyc.json

Prints a table; the results file records the processor, torch and MKL.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def op_table(n: int, seed: int) -> list[dict]:
    """Per operation and dtype: how many of n results differ from numpy's."""
    import torch
    g = torch.Generator().manual_seed(seed)
    rows = []
    for dt in (torch.float64, torch.float32):
        x = torch.randn(n, dtype=dt, generator=g) * 1000
        a = x.abs() + torch.finfo(dt).tiny
        xn, an = x.numpy(), a.numpy()
        three = np.array(3, dtype=xn.dtype)
        ops = {"floor": (x.floor(), np.floor(xn)), "ceil": (x.ceil(), np.ceil(xn)),
               "round": (x.round(), np.rint(xn)), "trunc": (x.trunc(), np.trunc(xn)),
               "abs": (x.abs(), np.abs(xn)), "mul": (x * x, xn * xn),
               "div": (x / 3, xn / three), "reciprocal": (a.reciprocal(), 1 / an),
               "rsqrt": (a.rsqrt(), 1 / np.sqrt(an)), "sqrt": (a.sqrt(), np.sqrt(an))}
        for name, (got, want) in ops.items():
            rows.append({"op": name, "dtype": str(dt).replace("torch.", ""), "n": n,
                         "differ": int((got.numpy() != want).sum())})
    return rows


def chain_roots() -> dict:
    """The embedded model's full schedule: sqrt(abar) etc. by torch.sqrt against the
    correctly rounded roots the chain now uses."""
    import torch
    from ddpmcodec.io.models import load_model
    full = load_model().diffusion
    ac = full.alphas_cumprod
    args = {"abar": ac, "1-abar": 1.0 - ac, "1/abar": 1.0 / ac, "1/abar-1": 1.0 / ac - 1.0}
    return {k: int((torch.sqrt(v).numpy() != np.sqrt(v.numpy())).sum()) for k, v in args.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4_000_000, help="values per operation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch
    sys.path.insert(0, str(ROOT))
    rows = op_table(a.n, a.seed)
    roots = chain_roots()
    print(f"{'op':<11} {'dtype':<8} {'differ':>9} {'of':>9}")
    for r in rows:
        print(f"{r['op']:<11} {r['dtype']:<8} {r['differ']:>9} {r['n']:>9}")
    print("torch.sqrt against correctly rounded, embedded model's 1000-step schedule:",
          ", ".join(f"sqrt({k}) {v}" for k, v in roots.items()))
    if a.json:
        out = {"processor": _processor(), "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "mkl": torch.backends.mkl.is_available(), "numpy": np.__version__,
               "ops": rows, "schedule_roots_differ": roots,
               "command": "python benchmarks/bench_torch_ieee.py " + " ".join(argv or sys.argv[1:])}
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
