"""A data set coded into shards with the command line, killed once mid-run and resumed,
then every image decoded from its shard and compared with the original:

    python benchmarks/shards_resume.py --count 800 --shard-size 256 \
        --out runs/shards-test800 --json benchmarks/results/shards_test800.json

Runs ``ddpmcodec encode DATA -o OUT --shard-size N -n COUNT`` as a process, kills it
(SIGKILL: no chance to tidy up) as soon as its first shard is done, runs the same command again to
the end, checks that the finished shard was kept (same bytes, same modification time),
decodes every shard and compares its images, and writes the summary (file bits/dim, the
bound, the classical codecs on the same images) with the timings.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-test-800.npz"))
    p.add_argument("--count", type=int, default=800)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--out", required=True, help="the shard folder (made afresh)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("extra", nargs="*", help="more options of ddpmcodec encode (after --)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():  # afresh: the first shard's record must be this run's
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "ddpmcodec", "encode", a.data, "-o", str(out), "--shard-size",
           str(a.shard_size), "-n", str(a.count), "-q", *a.extra]
    t0 = time.perf_counter()
    run = subprocess.Popen(cmd)
    first = out / "shard-00000.json"
    while run.poll() is None and not first.exists():
        time.sleep(0.5)
    killed_after = time.perf_counter() - t0
    run.kill()
    killed_rc = run.wait()
    done_before = sorted(f.name for f in out.glob("shard-*.json"))
    if killed_rc == 0 or len(done_before) >= -(-a.count // a.shard_size):
        raise SystemExit("the run finished before it could be killed; use more images")
    leftovers = sorted(f.name for f in out.iterdir() if f.name.startswith(".") or
                       f.suffix not in (".json", ".ddpm"))
    kept = {f: ((out / f).stat().st_mtime_ns, (out / f).read_bytes())
            for f in (n[:-5] + ".ddpm" for n in done_before)}
    t1 = time.perf_counter()
    resume = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    if resume.returncode != 0:
        raise SystemExit(resume.stderr[-2000:])
    resumed_s = time.perf_counter() - t1
    summary = json.loads(resume.stdout)
    for f, (stamp, data) in kept.items():
        if (out / f).stat().st_mtime_ns != stamp or (out / f).read_bytes() != data:
            raise SystemExit(f"{f} was rewritten by the resumed run")
    from ddpmcodec.codec.api import decode_bytes
    from ddpmcodec.codec.container import read_header
    from ddpmcodec.io.models import load_model
    model = load_model(None, lazy=True)
    images = np.load(a.data)["images"][:a.count]
    manifest = json.loads((out / "manifest.json").read_text())
    t2 = time.perf_counter()
    for s in manifest["shards"]:
        data = (out / s["file"]).read_bytes()
        dec = decode_bytes(None if read_header(data).model_free else model, data)
        if not np.array_equal(dec.images, images[s["first"]:s["first"] + s["count"]]):
            raise SystemExit(f"{s['file']} did not decode to its images")
    decode_s = time.perf_counter() - t2
    result = {"command": shlex.join(cmd), "killed_after_s": killed_after,
              "killed_rc": killed_rc, "shards_done_when_killed": done_before,
              "other_files_when_killed": leftovers,
              "kept_unchanged": sorted(kept), "resumed_s": resumed_s, "decode_s": decode_s,
              "every_image_decoded": True, "summary": summary}
    print(json.dumps(result, indent=1))
    if a.json:
        from ddpmcodec.io.atomic import write_json_atomic
        write_json_atomic(a.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
