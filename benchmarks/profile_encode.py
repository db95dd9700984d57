"""Where the progressive encoder's time goes: cProfile of one image's file at the defaults.

    python benchmarks/profile_encode.py --image 0 \
        --json benchmarks/results/profile_encode_image0.json

Encodes one image of ../shared/data/cifar10-test-800.npz (after a warm-up on another
image) under cProfile and prints, in seconds under the profiler: the whole encode, the
candidate search (channel._search_chunks: the encoder's own work with one process, its
wait for the search processes with several), the network evaluations and the rest; then
the chunks per coded step, and the functions of highest cumulative time. The profiler
slows Python-level code, so the seconds are larger than a plain run's.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"search": ("channel/pool.py", "search_chunks"),
         "network": ("progressive/steps.py", "network_p_on_device")}


def _cumulative(stats: pstats.Stats, file_suffix: str, name: str) -> float:
    return sum(v[3] for (f, _, fn), v in stats.stats.items()
               if fn == name and f.endswith(file_suffix))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--image", type=int, default=0)
    p.add_argument("--search-workers", type=int, default=None,
                   help="search processes (default: the encoder's, one per CPU)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch

    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.models import load_model
    images = np.load(a.data)["images"]
    codec = ProgressiveCodec(load_model(None))
    warm = (a.image + 1) % len(images)
    codec.encode(images[warm:warm + 1], steps=4, search_workers=a.search_workers)
    prof = cProfile.Profile()
    prof.enable()
    enc = codec.encode(images[a.image:a.image + 1], search_workers=a.search_workers)
    prof.disable()
    st = pstats.Stats(prof)
    total = _cumulative(st, "progressive/codec.py", "encode")
    parts = {k: _cumulative(st, *v) for k, v in PARTS.items()}
    parts["rest"] = total - sum(parts.values())
    st.sort_stats("cumulative")
    top = [{"function": f"{Path(f).name}:{line}({fn})", "calls": v[1], "cumulative_s": v[3]}
           for (f, line, fn), v in sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:a.top]]
    chunks = [row["images"][0]["chunks"] for row in enc.stats.extra["steps"]]
    results = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
               "image": a.image, "threads": torch.get_num_threads(),
               "search_workers": enc.stats.extra["params"]["search_workers"],
               "date": time.strftime("%Y-%m-%d"), "total_s": total, "parts_s": parts,
               "chunks_per_step": chunks, "top": top}
    print(f"image {a.image}, {results['search_workers']} search process(es): "
          f"{total:.2f} s under the profiler")
    for k, v in parts.items():
        print(f"  {k:<8} {v:6.2f} s")
    print(f"chunks per coded step: {chunks}")
    for row in top:
        print(f"  {row['cumulative_s']:7.2f} s {row['calls']:>7}  {row['function']}")
    if a.json:
        write_json_atomic(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
