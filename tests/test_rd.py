"""Rate-distortion of the reverse process (`core.rd`, the paper's Table 4 / Figure 5) on a
hand-computed example: 2 images x a 3-step chain, every expected number written out.

Conventions under test (core/rd.py docstring, README "Rate and distortion"):
    rate(k)  = L_prior + sum_{j >= k, j >= 1} vb_j, mean over images  (column 0 = decoder,
               distortion not rate)
    RMSE(k)  = 127.5 * sqrt(mean over images of xstart_mse_k)  (pooled, [0, 255] scale)
    PSNR(k)  = 20 log10(255 / RMSE(k))
    reverse_step = K - k;   table4 rows at reverse steps K, 0.9K, ..., 0.1K.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddpmcodec.core.rd import rate_distortion, table4

# chain of K = 3 steps: k = 0, 1, 2 at timestep indices 0, 499, 999 (paper t = 1, 500, 1000)
TIMESTEPS = np.array([0, 499, 999])
VB = np.array([[5.0, 0.25, 0.5],     # image 0: decoder 5.0, L_1 0.25, L_2 0.5 (bits/dim)
               [7.0, 0.75, 1.5]])    # image 1: decoder 7.0, L_1 0.75, L_2 1.5
PRIOR = np.array([0.01, 0.03])
MSE = np.array([[0.0, 0.02, 0.10],   # xstart_mse in model space [-1, 1]
                [0.0032, 0.06, 0.40]])


def example():
    return {"vb": VB.copy(), "prior": PRIOR.copy(), "xstart_mse": MSE.copy(), "timesteps": TIMESTEPS}


def test_rate_is_prior_plus_received_kl_terms_by_hand():
    curve = rate_distortion(example())
    assert list(curve["k"]) == [0, 1, 2]
    assert list(curve["reverse_step"]) == [3, 2, 1]        # K - k
    assert list(curve["t"]) == [1, 500, 1000]              # timesteps + 1
    # k = 2 (first reverse step): prior + L_2
    #   image 0: 0.01 + 0.5  = 0.51;  image 1: 0.03 + 1.5  = 1.53;  mean 1.02
    # k = 1: + L_1
    #   image 0: 0.51 + 0.25 = 0.76;  image 1: 1.53 + 0.75 = 2.28;  mean 1.52
    # k = 0: the decoder (5.0, 7.0) is not rate: still 1.52
    # (an off-by-one that drops L_k at step k would give 0.02, 1.02, 1.52;
    #  counting the decoder as rate would give 7.52 at k = 0)
    np.testing.assert_allclose(curve["rate_bpd"], [1.52, 1.52, 1.02], rtol=0, atol=1e-12)
    # standard error of the mean of two values: sd(ddof=1)/sqrt(2) = |a - b| / 2
    #   k = 2: |0.51 - 1.53| / 2 = 0.51;   k = 1, 0: |0.76 - 2.28| / 2 = 0.76
    np.testing.assert_allclose(curve["rate_se"], [0.76, 0.76, 0.51], rtol=0, atol=1e-12)
    # the caller's arrays are not modified (the decoder column is zeroed on a copy)
    np.testing.assert_array_equal(example()["vb"], VB)


def test_distortion_is_pooled_rmse_on_0_255_by_hand():
    arrays = example()
    curve = rate_distortion(arrays)
    np.testing.assert_array_equal(arrays["vb"], VB)
    # mean MSE over images:  k=0: (0 + 0.0032)/2 = 0.0016;  k=1: (0.02 + 0.06)/2 = 0.04;
    #                        k=2: (0.10 + 0.40)/2 = 0.25
    np.testing.assert_allclose(curve["mse"], [0.0016, 0.04, 0.25], rtol=1e-12)
    # pooled RMSE = 127.5 * sqrt(mean MSE):  127.5 * 0.04 = 5.1;  127.5 * 0.2 = 25.5;
    #                                        127.5 * 0.5 = 63.75
    np.testing.assert_allclose(curve["rmse"], [5.1, 25.5, 63.75], rtol=1e-12)
    # PSNR = 20 log10(255 / RMSE):  20 log10(50) = 33.9794;  20 log10(10) = 20;
    #                               20 log10(4) = 12.0412
    np.testing.assert_allclose(curve["psnr"], [20 * math.log10(50), 20.0, 20 * math.log10(4)],
                               rtol=1e-12)
    assert curve["psnr"][1] == pytest.approx(20.0) and curve["psnr"][0] == pytest.approx(33.9794, abs=1e-4)
    # the plausible wrong answers differ from these by far more than rounding:
    # mean of per-image RMSEs: k=0: 127.5 * (0 + sqrt(0.0032)) / 2 = 3.606 (not 5.1),
    #   k=1: 127.5 * (sqrt(0.02) + sqrt(0.06)) / 2 = 24.63, k=2: 127.5 * (0.3162 + 0.6325) / 2 = 60.48;
    # 255 * sqrt(MSE) (the wrong scale): 10.2, 51.0, 127.5
    per_image = 127.5 * np.sqrt(MSE).mean(0)
    np.testing.assert_allclose(per_image, [3.606, 24.631, 60.48], atol=5e-3)
    assert np.all(np.abs(curve["rmse"].to_numpy() - per_image) > 0.8)


def test_one_image_has_zero_standard_error():
    a = example()
    one = {"vb": a["vb"][:1], "prior": a["prior"][:1], "xstart_mse": a["xstart_mse"][:1],
           "timesteps": TIMESTEPS}
    curve = rate_distortion(one)
    np.testing.assert_allclose(curve["rate_bpd"], [0.76, 0.76, 0.51], atol=1e-12)
    assert np.all(curve["rate_se"] == 0)
    # one image: RMSE = 127.5 * sqrt(0.02) = 18.0312 at k = 1
    assert curve["rmse"][1] == pytest.approx(127.5 * math.sqrt(0.02), rel=1e-12)


def test_table4_small_chain_keeps_every_reverse_step():
    rows = table4(rate_distortion(example()))
    # K = 3: round(3, 2.7, 2.4, 2.1, 1.8, 1.5, 1.2, 0.9, 0.6, 0.3), at least 1 -> {3, 2, 1}
    assert list(rows["reverse_step"]) == [3, 2, 1]
    assert list(rows.columns) == ["reverse_step", "t", "rate_bpd", "rate_se", "rmse", "psnr"]
    np.testing.assert_allclose(rows["rate_bpd"], [1.52, 1.52, 1.02], atol=1e-12)


@pytest.mark.parametrize("K", [10, 100, 1000])
def test_table4_rows_at_tenths_of_the_chain(K):
    """Ten rows at reverse steps K, 0.9K, ..., 0.1K; each row is the curve's row with that
    reverse step (chain step k = K - reverse_step, t = timesteps[k] + 1)."""
    rng = np.random.default_rng(K)
    n = 3
    arrays = {"vb": rng.uniform(0.01, 1.0, (n, K)), "prior": rng.uniform(0, 0.01, n),
              "xstart_mse": np.sort(rng.uniform(0, 1, (n, K)), axis=1),
              "timesteps": np.linspace(0, 999, K).round().astype(int)}
    curve = rate_distortion(arrays)
    rows = table4(curve)
    expected_steps = [K * j // 10 for j in range(10, 0, -1)]  # K, 0.9K, ..., 0.1K
    assert list(rows["reverse_step"]) == expected_steps
    for _, row in rows.iterrows():
        k = K - int(row["reverse_step"])
        assert row["t"] == arrays["timesteps"][k] + 1
        # rate by hand: prior + sum of L_j, j >= max(k, 1)
        rate = (arrays["prior"] + arrays["vb"][:, max(k, 1):].sum(1)).mean()
        assert row["rate_bpd"] == pytest.approx(rate, rel=1e-12)
        assert row["rmse"] == pytest.approx(127.5 * math.sqrt(arrays["xstart_mse"][:, k].mean()), rel=1e-12)
    # the first row (reverse step K, k = 0) has paid every KL term but not the decoder;
    # later rows (earlier reverse steps) have paid less
    assert rows["rate_bpd"].iloc[0] == pytest.approx(
        (arrays["prior"] + arrays["vb"][:, 1:].sum(1)).mean(), rel=1e-12)
    assert rows["rate_bpd"].is_monotonic_decreasing
