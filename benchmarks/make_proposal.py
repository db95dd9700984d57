"""Compute and store the embedded model's timestep proposal for the importance estimator.

    python benchmarks/make_proposal.py ../shared/data/cifar10-test-800.npz

Full-chain bound (fast engine, seed 1) of test images 8..11 -- disjoint from the first
eight, on which the estimator is checked -- then scale_k = sqrt(mean_i vb[i, k]^2) into
ddpmcodec/checkpoints/ddpm-cifar10-4k-ch64/proposal.json. About 4,000 network evaluations.
"""
from __future__ import annotations

import sys
import time

import torch

from ddpmcodec.io.data import load_images, to_model_space
from ddpmcodec.io.models import DEFAULT_CHECKPOINT, load_model
from ddpmcodec.pipelines.engine import Engine
from ddpmcodec.pipelines.estimator import PROPOSAL_FILE, Proposal

FIRST, COUNT, SEED = 8, 4, 1


def main(data: str) -> None:
    model = load_model()
    images = load_images(data, num_images=FIRST + COUNT).images[FIRST:]
    ids = torch.arange(FIRST, FIRST + COUNT)
    t0 = time.perf_counter()
    out = Engine.for_model(model, seed=SEED).bound(to_model_space(images), ids)
    prop = Proposal.from_terms(out["vb"].numpy(), model.diffusion.timesteps.numpy(), source={
        "kind": "terms", "fingerprint": model.fingerprint, "images": f"{data} [{FIRST}:{FIRST + COUNT}]",
        "seed": SEED, "command": "python benchmarks/make_proposal.py " + data})
    prop.save(DEFAULT_CHECKPOINT / PROPOSAL_FILE)
    print(f"{COUNT} images in {time.perf_counter() - t0:.0f} s; total bound "
          f"{out['total'].mean():.4f} bits/dim; wrote {DEFAULT_CHECKPOINT / PROPOSAL_FILE}")


if __name__ == "__main__":
    main(sys.argv[1])
