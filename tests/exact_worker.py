"""Run in another process by tests/test_exact_portable.py: set the numeric environment
(threads, oneDNN) from the arguments, then encode, decode or evaluate the exact network,
and print one JSON line. ``ATEN_CPU_CAPABILITY`` comes from the parent's environment."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np
import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-mkldnn", action="store_true")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--images", help="npz of uint8 images to encode")
    ap.add_argument("--mode", choices=["lossless", "progressive"], default="lossless")
    ap.add_argument("--encode", help="write the file here")
    ap.add_argument("--decode", help="decode this file")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--exact", action="store_true", help="encode with the exact network")
    ap.add_argument("--method", help="lossless: auto, bitsback or webp")
    ap.add_argument("--net", action="store_true", help="hash the exact network's output")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    from ddpmcodec.codec.api import decode_bytes, get_codec
    from ddpmcodec.io.models import load_model
    model = load_model(a.ckpt)
    out = {"capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.enabled}
    if a.net:
        from ddpmcodec.codec.network import exact_net
        g = torch.Generator().manual_seed(7)
        x = torch.randn(3, *model.image_shape, generator=g, dtype=torch.float64)
        y = exact_net(model)(x, torch.tensor([0, 40, 900]))
        out["net"] = hashlib.sha256(y.numpy().tobytes()).hexdigest()
    if a.encode:
        with np.load(a.images, allow_pickle=False) as f:
            images = f["images"]
        options = {"exact": True} if a.exact else {}
        if a.method:
            options["method"] = a.method
        enc = get_codec(a.mode)(model).encode(images, batch_size=a.batch_size, **options)
        with open(a.encode, "wb") as f:
            f.write(enc.data)
        out["encoded"] = hashlib.sha256(enc.data).hexdigest()
    if a.decode:
        with open(a.decode, "rb") as f:
            dec = decode_bytes(model, f.read())
        out["decoded"] = hashlib.sha256(np.ascontiguousarray(dec.images).tobytes()).hexdigest()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
