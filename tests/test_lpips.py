"""LPIPS plumbing (`pipelines.rd_codec.lpips_metric`) without the AlexNet ImageNet weights.

Offline the pretrained backbone is absent, so the metric itself is tested with a randomly
initialised AlexNet trunk (`lpips.LPIPS(net="alex", pnet_rand=True)`: builds with no
download; its linear layers ship inside the lpips package). What is checked is everything
the project adds around the network: uint8 NHWC -> NCHW float on [-1, 1], the mean over
image pairs, and that the result reaches the rate-distortion tables. The missing-weights
path must say what to download and where.
"""
from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch

lpips = pytest.importorskip("lpips")

from ddpmcodec.pipelines.rd_codec import baseline_curves, lpips_metric  # noqa: E402

ALEX_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


@pytest.fixture(scope="module")
def random_alex_lpips():
    """LPIPS with a randomly initialised AlexNet trunk (seeded), built with the network cut
    off: any attempt to download fails the test."""
    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS tried to reach the network")
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(torch.hub, "load_state_dict_from_url", no_network)
    mp.setattr(torch.hub, "download_url_to_file", no_network)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    finally:
        mp.undo()
    return net


def images(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_identical_zero_different_positive_symmetric(random_alex_lpips):
    metric, reason = lpips_metric(net=random_alex_lpips)
    assert reason is None and callable(metric)
    a, b = images(0), images(1)
    assert metric(a, a) == 0.0
    d = metric(a, b)
    assert d > 0 and np.isfinite(d)
    # LPIPS squares differences of normalised features: symmetric up to float rounding
    assert metric(b, a) == pytest.approx(d, rel=1e-5)
    # a small perturbation is closer than an unrelated image
    near = np.clip(a.astype(int) + np.random.default_rng(2).integers(-3, 4, a.shape), 0, 255)
    assert 0 < metric(a, near.astype(np.uint8)) < d


def test_scaling_to_minus_one_one_and_mean_over_pairs(random_alex_lpips):
    """The metric equals the network on the [-1, 1]-scaled NCHW tensors (and on [0, 1]
    with LPIPS's own normalize=True), averaged over image pairs. Feeding [0, 1] or [0, 255]
    (a forgotten or wrong rescale) gives a different number."""
    net = random_alex_lpips
    metric, _ = lpips_metric(net=net)
    a, b = images(3), images(4)

    def nchw(x, scale, shift):
        return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2) / scale - shift
    with torch.no_grad():
        per_pair = net(nchw(a, 127.5, 1.0), nchw(b, 127.5, 1.0)).flatten()
        via_normalize = net(nchw(a, 255.0, 0.0), nchw(b, 255.0, 0.0), normalize=True).flatten()
        unit = float(net(nchw(a, 255.0, 0.0), nchw(b, 255.0, 0.0)).mean())
        raw = float(net(nchw(a, 1.0, 0.0), nchw(b, 1.0, 0.0)).mean())
    assert per_pair.shape == (3,) and bool((per_pair > 0).all())
    got = metric(a, b)
    assert got == pytest.approx(float(per_pair.mean()), rel=1e-6)
    assert got == pytest.approx(float(via_normalize.mean()), rel=1e-5)
    for wrong in (unit, raw):
        assert abs(wrong - got) > 1e-3 * got, (wrong, got)
    # one pair at a time gives that pair's distance: the mean is over pairs, in order
    for i in range(3):
        assert metric(a[i:i + 1], b[i:i + 1]) == pytest.approx(float(per_pair[i]), rel=1e-5)


def test_lpips_reaches_the_baseline_table(random_alex_lpips):
    metric, _ = lpips_metric(net=random_alex_lpips)
    imgs = images(5, n=2)
    df = baseline_curves(imgs, jpeg=(10, 90), webp=(), lpips_fn=metric)
    assert df["lpips"].notna().all() and (df["lpips"] > 0).all()
    # higher JPEG quality: closer to the original under any sensible distance
    assert df.loc[df.quality == 90, "lpips"].item() < df.loc[df.quality == 10, "lpips"].item()


def test_missing_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    metric, reason = lpips_metric()
    assert metric is None
    where = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert "download" in reason and ALEX_URL in reason and str(where) in reason, reason
