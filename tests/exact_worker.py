"""Run in another process by tests/test_exact_portable.py: set the numeric environment
(threads, oneDNN, the exact network's batch) from the arguments, then decode and encode
files or evaluate the exact network, and print one JSON line. ``ATEN_CPU_CAPABILITY``
comes from the parent's environment."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys

import numpy as np
import torch


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-mkldnn", action="store_true")
    ap.add_argument("--network-batch", type=int, default=None,
                    help="evaluate the exact network this many images at a time")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--jobs", default="[]",
                    help="JSON list of {mode, decode, images, encode, options}: decode the "
                         "file 'decode', encode the npz 'images' into 'encode'")
    ap.add_argument("--net", action="store_true", help="hash the exact network's output")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    from ddpmcodec.codec.api import decode_bytes, get_codec
    from ddpmcodec.codec.network import network_batch
    from ddpmcodec.errors import DDPMCodecError
    from ddpmcodec.io.models import load_model
    model = load_model(a.ckpt)
    out = {"capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.enabled,
           "jobs": []}
    batch = (network_batch(model, a.network_batch) if a.network_batch
             else contextlib.nullcontext())
    with batch:
        if a.net:
            from ddpmcodec.codec.network import exact_net
            g = torch.Generator().manual_seed(7)
            x = torch.randn(3, *model.image_shape, generator=g, dtype=torch.float64)
            out["net"] = _sha(exact_net(model)(x, torch.tensor([0, 40, 900])).numpy().tobytes())
        for job in json.loads(a.jobs):
            got = {}
            if job.get("decode"):
                with open(job["decode"], "rb") as f:
                    data = f.read()
                try:
                    dec = decode_bytes(model, data)
                    got["decoded"] = _sha(np.ascontiguousarray(dec.images).tobytes())
                except DDPMCodecError as e:  # a refusal is an answer too
                    got["error"] = str(e)
            if job.get("encode"):
                with np.load(job["images"], allow_pickle=False) as f:
                    images = f["images"]
                enc = get_codec(job["mode"])(model).encode(images,
                                                            **encode_options(model, job))
                with open(job["encode"], "wb") as f:
                    f.write(enc.data)
                got["encoded"] = _sha(enc.data)
            out["jobs"].append(got)
    print(json.dumps(out))
    sys.stdout.flush()


def encode_options(model, job: dict) -> dict:
    """A job's encode options; ``chain_steps`` K names the lossless codec's default chain
    of K steps (dp, analytic), which JSON cannot carry."""
    opts = dict(job.get("options", {}))
    if "chain_steps" in opts:
        from ddpmcodec.codec.lossless.params import default_chain
        opts["chain"] = default_chain(model, opts.pop("chain_steps"))
    return opts


if __name__ == "__main__":
    main()
