"""The time cost of the exact network: encode and decode seconds per image of both codecs
with the exact network against the float32 path, on this machine, measured in one run,
in-process (the model loaded, one warm-up call each, then the median of ``--repeats``)
and as whole `ddpmcodec` processes (cold start included: interpreter, imports, model):

    python benchmarks/bench_exact_time.py --image 600 --repeats 3 \
        --json benchmarks/results/exact_time_cpu.json

The lossless codec codes with method bitsback (one image alone would be stored as its
classical stream by method auto); the defaults' one-image file, the classical one, is
timed as whole processes too. The results file is rewritten after every measurement.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {"lossless": {"method": "bitsback"}, "progressive": {}}


def _timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up: tables, plan and caches built once per process
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _cli(args: list, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "ddpmcodec", *args], capture_output=True,
                             text=True)
        times.append(time.perf_counter() - t0)
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-2000:])
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--image", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    import torch
    from PIL import Image

    from ddpmcodec.codec.api import get_codec
    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.models import load_model
    from ddpmcodec.pipelines.bench import _device_name
    image = np.load(a.data)["images"][a.image:a.image + 1]
    model = load_model(None)
    out = {"command": "python benchmarks/bench_exact_time.py " + " ".join(argv or sys.argv[1:]),
           "image": a.image, "threads": torch.get_num_threads(), "cpu": _device_name("cpu"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "in_process": {},
           "cli": {}}

    def save():
        if a.json:
            write_json_atomic(a.json, out)
    for mode, opts in MODES.items():
        codec = get_codec(mode)(model)
        for exact in (True, False):
            enc_s, enc = _timed(lambda: codec.encode(image, exact=exact, **opts), a.repeats)
            dec_s, dec = _timed(lambda: codec.decode(enc.data), a.repeats)
            assert mode != "lossless" or np.array_equal(dec.images, image)
            out["in_process"][f"{mode}/{'exact' if exact else 'float32'}"] = {
                "encode_s": enc_s, "decode_s": dec_s, "bytes": len(enc.data)}
            save()
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "image.png")
        Image.fromarray(image[0]).save(png)
        for mode in MODES:
            for exact in (True, False):
                f = os.path.join(tmp, f"{mode}-{exact}.ddpm")
                extra = ["--method", "bitsback"] if mode == "lossless" else []
                enc_args = ["encode", png, "-o", f, f"--{mode}", "--quiet", *extra] + (
                    [] if exact else ["--float32"])
                enc_s = _cli(enc_args, a.repeats)
                dec_s = _cli(["decode", f, "-o", os.path.join(tmp, "out.npz"), "--quiet"],
                             a.repeats)
                out["cli"][f"{mode}/{'exact' if exact else 'float32'}"] = {
                    "encode_s": enc_s, "decode_s": dec_s}
                save()
        # what `ddpmcodec encode --lossless` writes of one image: its classical file
        f = os.path.join(tmp, "default.ddpm")
        enc_s = _cli(["encode", png, "-o", f, "--lossless", "--quiet"], a.repeats)
        dec_s = _cli(["decode", f, "-o", os.path.join(tmp, "out.npz"), "--quiet"], a.repeats)
        out["cli"]["lossless/defaults (the classical file)"] = {
            "encode_s": enc_s, "decode_s": dec_s, "bytes": os.path.getsize(f)}
        save()
    print("| codec / network | in-process encode s | decode s | CLI encode s | CLI decode s |"
          " file bytes |\n|---|---|---|---|---|---|")
    for key, r in out["in_process"].items():
        c = out["cli"].get(key, {})
        print(f"| {key} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | "
              f"{c.get('encode_s', float('nan')):.2f} | {c.get('decode_s', float('nan')):.2f} | "
              f"{r['bytes']} |")
    for key, c in out["cli"].items():
        if key not in out["in_process"]:
            print(f"| {key} | | | {c['encode_s']:.2f} | {c['decode_s']:.2f} | {c['bytes']} |")
    for mode in MODES:
        e, f = out["in_process"][f"{mode}/exact"], out["in_process"][f"{mode}/float32"]
        print(f"{mode}: exact / float32 in-process: encode {e['encode_s'] / f['encode_s']:.2f}x, "
              f"decode {e['decode_s'] / f['decode_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
