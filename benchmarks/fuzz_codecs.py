"""The decoders of all three modes fuzzed at scale: plain mutations, every truncation and
forged files (header, parameters or payload changed behind recomputed CRCs) of small files
made with a random tiny model (tests/conftest.py) on real CIFAR-10 images, counted per
codec (files tried, how many got past the container's header checks, errors, right and
wrong images), the largest extra peak RSS of any one decode, and the time and peak memory
of the forged files whose headers claim far more images than their payloads hold:

    python benchmarks/fuzz_codecs.py --json benchmarks/results/codec_fuzz_counts.json

The fuzz itself (mutations, forgeries, the outcome check) is tests/test_codec_fuzz.py's;
its default-suite test runs the same at small counts.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_codec_fuzz as fz  # noqa: E402  (the fuzz of the test suite)
from conftest import make_tiny_ckpt  # noqa: E402


class PeakRSS:
    """The largest resident set size (MB) above its value at the call's start, of each
    decode: sampled every half millisecond by a thread, worst call kept per codec."""

    def __init__(self):
        import os
        import threading
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.now()
        self.worst = {}
        self.running = True
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.0005)

    def wrap(self, name: str, decode):
        def measured(data):
            self.base = self.peak = self.now()
            error = None
            try:
                return decode(data)
            except Exception as exc:
                error = str(exc)
                raise
            finally:
                self.peak = max(self.peak, self.now())
                extra = (self.peak - self.base) / 2 ** 20
                if extra > self.worst.get(name, {}).get("extra_peak_mb", -1):
                    self.worst[name] = {"extra_peak_mb": extra, "file_bytes": len(data),
                                        "error": error}
        return measured


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--seed", type=int, default=fz.SEED + 7)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every count")
    p.add_argument("--json", help="write the counts here")
    a = p.parse_args(argv)
    import torch

    from ddpmcodec.io.atomic import write_json_atomic
    from ddpmcodec.io.models import load_model
    images = np.load(a.data)["images"][:16]
    out = {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
           "seed": a.seed, "codecs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_ckpt(Path(tmp) / "tiny")
        model = load_model(ckpt)
        cases = {"lossless": fz.lossless_cases(model, images),
                 "progressive": fz.progressive_cases(model, images),
                 "webp-lossless": fz.webp_cases(images)}
        print("| codec | plain | forged | truncated | past the header (plain / forged) | "
              "errors | right | wrong | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rss = PeakRSS()
        for name, (plain, forged, cuts) in fz.LARGE_COUNTS.items():
            t0 = time.perf_counter()
            t = fz.fuzz(name, model, cases[name], int(plain * a.scale), int(forged * a.scale),
                        a.seed, cuts=None if cuts is None else int(cuts * a.scale), strict=False,
                        wrap=lambda decode, name=name: rss.wrap(name, decode))
            d = dict(t.to_dict(), seconds=time.perf_counter() - t0,
                     files=[len(data) for data, _ in cases[name]],
                     worst_extra_peak_rss=rss.worst.get(name))
            out["codecs"][name] = d
            print(f"| {name} | {t.tried['plain']} | {t.tried['forged']} | {t.tried['truncated']} "
                  f"| {t.past_header['plain']} / {t.past_header['forged']} | "
                  f"{t.outcomes_of('error')} | {t.outcomes_of('right')} | "
                  f"{t.outcomes_of('wrong')} | {d['seconds']:.0f} |", flush=True)
        out["forged_image_counts"] = fz.measure_forged_counts(ckpt, cases, Path(tmp))
    for name, d in out["codecs"].items():
        w = d["worst_extra_peak_rss"]
        print(f"{name}: the decode of largest extra peak RSS: {w['extra_peak_mb']:.1f} MB "
              f"({w['file_bytes']} bytes; {w['error'] or 'decoded'})")
    for name, r in out["forged_image_counts"].items():
        print(f"{name}: a {r['bytes']}-byte forged file: {r['error']!r} after "
              f"{1000 * r['seconds']:.2f} ms, {r['extra_peak_mb']:.1f} MB of extra peak RSS")
    if a.json:
        write_json_atomic(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
