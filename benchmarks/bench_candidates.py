"""Speed of the candidate generators and of the PFR searches (v1 against v2).

    python benchmarks/bench_candidates.py [--repeats 7] [--gaussian-repeats 2] [--json PATH]

Table 1: nanoseconds per normal of v1 channel.candidate_normals, v2 normals_numpy and v2
normals_torch on the CPU with 1 and 2 torch threads, for dims 4, 16, 256 and 1536
(2^19 normals a call). Table 2: one chunk's search, budget 2^14, var_q = var_p (unbounded
weights: no early stop, every candidate scored), dims 16 and 1536: v1 channel.pfr_select
against v2 candidates.pfr_search (numpy) in nanoseconds per candidate, and a Gaussian of
4 such chunks searched one after the other, on a pool of 2 threads, or on the
encoder's pool of 2 forked processes (what encode_gaussian does with search_workers=2). Table 3: one CIFAR-sized Gaussian through channel.encode_gaussian and
decode_gaussian (3072 dims, about 1900 bits, chunk_bits 12, margin 2, max_log2 20: the
progressive codec's defaults) with each generator, in seconds. Every time is the minimum
over the repeats, the runs of the contenders interleaved (this machine may share its
cores: the minimum is the least disturbed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ddpmcodec.codec.progressive.channel import generator_v2, search
from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.channel import pool as search_pool

DIMS = (4, 16, 256, 1536)
SEARCH_DIMS = (16, 1536)
NORMALS = 1 << 19
BUDGET = 1 << 14
POOL_CHUNKS = 4


def _min_time(fns: dict, repeats: int) -> dict:
    """Seconds of each callable: the minimum over ``repeats`` interleaved runs."""
    for fn in fns.values():  # warm up (allocations, torch's first calls)
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _with_torch_threads(n: int, fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(before)
    return run


def _generator_calls(dims: int) -> dict:
    """One call of each generator for NORMALS normals of ``dims`` dimensions."""
    key = ch.derive_key(1, 2, 3)
    k2, count = int(key[0]), NORMALS // dims
    return {
        "v1": lambda: ch.candidate_normals(key, 0, count, dims),
        "v2_numpy": lambda: generator_v2.normals_numpy(k2, 0, count, dims),
        "v2_torch_1": _with_torch_threads(1, lambda: generator_v2.normals_torch(k2, 0, count, dims)),
        "v2_torch_2": _with_torch_threads(2, lambda: generator_v2.normals_torch(k2, 0, count, dims)),
    }


def bench_generators(repeats: int) -> list:
    rows = []
    for dims in DIMS:
        t = _min_time(_generator_calls(dims), repeats)
        normals = (NORMALS // dims) * dims
        rows.append({"dims": dims, **{k: 1e9 * v / normals for k, v in t.items()}})
    return rows


def _chunk(dims: int, j: int):
    """Score coefficients of a chunk with var_q = var_p and a mean shift of about 8 bits."""
    rng = np.random.default_rng(100 + j)
    mp, vp = rng.normal(size=dims), rng.uniform(0.5, 1.5, dims)
    mq = mp + np.sqrt(vp) * rng.normal(size=dims) * np.sqrt(2 * 8 * np.log(2) / dims)
    return ch.score_coefficients(mq, vp, mp, vp)


def _search_calls(dims: int, pool: ThreadPoolExecutor) -> dict:
    """One chunk's search with v1 and v2, and POOL_CHUNKS chunks one after the other, on
    the thread pool or on the encoder's process pool."""
    chunks = [_chunk(dims, j) for j in range(POOL_CHUNKS)]
    keys = [ch.derive_key(7, dims, j) for j in range(POOL_CHUNKS)]

    def v1(j=0):
        a, b, c = chunks[j]
        return ch.pfr_select(a, b, c, keys[j], BUDGET, np.random.default_rng(j))

    def v2(j=0):
        a, b, c = chunks[j]
        return search.pfr_search(a, b, c, int(keys[j][0]), BUDGET, (5, j))

    tasks = [(*chunks[j], int(keys[j][0]), BUDGET, (5, j)) for j in range(POOL_CHUNKS)]
    procs = search_pool._search_pool(2)
    if procs is None:
        raise SystemExit("the process pool needs Linux (fork)")
    list(procs.map(search_pool._search_task, tasks))  # start the workers before timing

    return {"v1_chunk": v1, "v2_chunk": v2,
            "v1_gaussian": lambda: [v1(j) for j in range(POOL_CHUNKS)],
            "v2_gaussian": lambda: [v2(j) for j in range(POOL_CHUNKS)],
            "v2_gaussian_pool2": lambda: list(pool.map(v2, range(POOL_CHUNKS))),
            "v2_gaussian_procs2": lambda: list(procs.map(search_pool._search_task, tasks))}


def bench_searches(repeats: int) -> list:
    rows = []
    with ThreadPoolExecutor(2) as pool:
        for dims in SEARCH_DIMS:
            t = _min_time(_search_calls(dims, pool), repeats)
            per = {k: 1e9 * v / (BUDGET * (POOL_CHUNKS if "gaussian" in k else 1)) for k, v in t.items()}
            rows.append({"dims": dims, "budget": BUDGET, **per,
                         "speedup_chunk": t["v1_chunk"] / t["v2_chunk"],
                         "speedup_pool2": t["v1_gaussian"] / t["v2_gaussian_pool2"],
                         "speedup_procs2": t["v1_gaussian"] / t["v2_gaussian_procs2"]})
    return rows


def _gaussian_calls() -> dict:
    """Encode (v1, v2) and decode (v1, v2) of one CIFAR-sized Gaussian."""
    rng = np.random.default_rng(0)
    mp, vp = rng.normal(size=3072), np.full(3072, 0.5)
    mq, vq = mp + 0.9 * np.sqrt(vp) * rng.normal(size=3072), 0.7 * vp
    calls, words = {}, {}
    for name, gen in (("v1", ch.GENERATOR_ID), ("v2", ch.GENERATOR_V2)):
        params = ch.ChannelParams(12.0, 2.0, 20, gen)

        def encode(params=params, name=name):
            w = ch.SymbolWriter()
            ch.encode_gaussian(w, mq, vq, mp, vp, params, 5, (0, 0), np.random.default_rng(1))
            words[name] = w.words()

        def decode(params=params, name=name):
            ch.decode_gaussian(ch.SymbolReader(words[name]), mp, vp, params, 5, (0, 0))

        calls[f"{name}_encode"], calls[f"{name}_decode"] = encode, decode
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--gaussian-repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the tables to this JSON file")
    args = ap.parse_args()
    gen = bench_generators(args.repeats)
    print("ns per normal        " + "".join(f"{f'dims {d}':>11}" for d in DIMS))
    for name, label in (("v1", "v1 candidate_normals"), ("v2_numpy", "v2 numpy"),
                        ("v2_torch_1", "v2 torch CPU 1 thr"), ("v2_torch_2", "v2 torch CPU 2 thr")):
        print(f"{label:<21}" + "".join(f"{r[name]:>11.2f}" for r in gen))
    search = bench_searches(args.repeats)
    print(f"\nPFR search, budget {BUDGET}, ns per candidate (per normal in brackets)")
    print(f"{'dims':>5} {'v1 chunk':>16} {'v2 chunk':>16} {'speedup':>8} "
          f"{'v1 4 chunks':>16} {'v2 4 chunks':>16} {'v2 2 threads':>16} {'speedup':>8} "
          f"{'v2 2 processes':>16} {'speedup':>8}")
    for r in search:
        d = r["dims"]
        cells = [f"{r[k]:>8.0f} ({r[k] / d:>5.2f})" for k in ("v1_chunk", "v2_chunk")]
        pooled = [f"{r[k]:>8.0f} ({r[k] / d:>5.2f})" for k in
                  ("v1_gaussian", "v2_gaussian", "v2_gaussian_pool2", "v2_gaussian_procs2")]
        print(f"{d:>5} {cells[0]:>16} {cells[1]:>16} {r['speedup_chunk']:>7.2f}x "
              f"{pooled[0]:>16} {pooled[1]:>16} {pooled[2]:>16} {r['speedup_pool2']:>7.2f}x "
              f"{pooled[3]:>16} {r['speedup_procs2']:>7.2f}x")
    gauss = _min_time(_gaussian_calls(), args.gaussian_repeats)
    print("\none Gaussian, 3072 dims, about 1900 bits (seconds)")
    print(f"{'':>8}{'v1':>10}{'v2':>10}{'speedup':>9}")
    for op in ("encode", "decode"):
        v1, v2 = gauss[f"v1_{op}"], gauss[f"v2_{op}"]
        print(f"{op:>8}{v1:>10.3f}{v2:>10.3f}{v1 / v2:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"generators_ns_per_normal": gen, "searches_ns_per_candidate": search,
                       "gaussian_seconds": gauss,
                       "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "numpy": np.__version__, "torch": torch.__version__},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
