"""The sampling experiments behind Figures 6-8."""
from __future__ import annotations

import numpy as np

from ddpmcodec.io.data import ImageSet
from ddpmcodec.pipelines import experiments


def test_shared_latent_gives_every_t_its_own_reverse_noise(tiny_model, tmp_path, monkeypatch):
    """Figure 7 draws samples from x_t at several t; with one set of reverse-noise ids for
    all t, two nearly pure-noise latents (t = 748 and t = 1000) decoded to the same samples."""
    seen = []
    real = experiments.reverse_process

    def spy(denoiser, chain, x, k, ids, seed, *args, **kwargs):
        seen.append(set(ids.tolist()))
        return real(denoiser, chain, x, k, ids, seed, *args, **kwargs)
    monkeypatch.setattr(experiments, "reverse_process", spy)
    images = np.zeros((1, 32, 32, 3), np.uint8)
    experiments.shared_latent(tiny_model, ImageSet(images, {"kind": "test", "num_images": 1}),
                              tmp_path / "shared", times=(1000, 750, 500), num_samples=2,
                              steps=5, progress=False)
    assert len(seen) == 3
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
