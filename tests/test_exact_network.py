"""The exact network: its integers equal an independent numpy int64 implementation
(tests/exact_oracle.py), do not depend on batch size or layout, stay close to the float
network, and its tables and elementary functions are the pinned machine-independent
numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import exact_oracle
from ddpmcodec.core.exact import spec
from ddpmcodec.core.exact.functions import (
    decimal_exp, decimal_log2, decimal_pow2, decimal_sin_cos, exp_basic, normal_cdf_basic)
from ddpmcodec.core.exact.quantize import build_plan
from ddpmcodec.core.exact.tables import silu_table, softmax_exp_table, tables_digest
from ddpmcodec.core.exact.unet import ExactUNet, plan_of_model, quantize_input, time_features

# sha256 of both tables, computed on an AVX-512 CPU: any machine must build the same
TABLES_DIGEST = "55476ce5146367de"


def _tiny_plan(seed: int = 0, **overrides):
    from ddpmcodec.io.models import build_unet
    torch.manual_seed(seed)
    unet = build_unet("tiny", **overrides)
    # random norms too (a fresh UNet has gamma 1, beta 0, which would test little)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return unet, build_plan(cfg, {k: v.detach().numpy() for k, v in unet.state_dict().items()})


def _inputs(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64) * 1.5


def test_tables_are_the_pinned_integers():
    assert tables_digest() == TABLES_DIGEST
    s, e = silu_table(), softmax_exp_table()
    x = (np.arange(len(s)) - (len(s) - 2) // 2) * 2.0 ** -spec.TABLE_BITS
    assert np.abs(s - x / (1 + np.exp(-x)) * 2 ** spec.FRAC_BITS).max() <= 0.5 + 1e-6
    y = np.arange(len(e)) * 2.0 ** -spec.TABLE_BITS
    assert np.abs(e - np.exp(-y) * 2 ** spec.SOFTMAX_EXP_BITS).max() <= 0.5 + 1e-3


def test_basic_functions_are_accurate():
    from scipy.special import ndtr
    x = np.linspace(-60, 5, 20001)
    assert np.abs(exp_basic(x) / np.exp(x) - 1).max() < 1e-15
    z = np.linspace(-35, 35, 20001)
    lower, upper = normal_cdf_basic(z)
    ok = ndtr(z) > 1e-280
    assert np.abs(lower[ok] / ndtr(z[ok]) - 1).max() < 1e-8
    assert np.abs(upper[ok[::-1]] / ndtr(-z[ok[::-1]]) - 1).max() < 1e-8
    assert decimal_exp(1.0) == math.e and decimal_pow2(0.5) == math.sqrt(2.0)
    assert decimal_log2(10.0) == math.log2(10.0)
    s, c = decimal_sin_cos(123)
    assert abs(float(s) - math.sin(123)) < 1e-15 and abs(float(c) - math.cos(123)) < 1e-15


def test_time_features_are_the_sinusoids():
    emb = np.array(time_features(64, 1, False, 321)) * 2.0 ** -spec.FRAC_BITS
    freqs = np.exp(-math.log(10000) * np.arange(32) / 31)
    ref = np.concatenate([np.sin(321 * freqs), np.cos(321 * freqs)])
    assert np.abs(emb - ref).max() <= 2.0 ** -spec.FRAC_BITS


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_network_equals_the_int64_oracle(seed):
    _, plan = _tiny_plan(seed)
    x = quantize_input(_inputs(2, seed))
    t = [3, 977]
    got = ExactUNet(plan).forward_int(x, torch.tensor(t)).numpy()
    want = exact_oracle.forward(plan, x.numpy().astype(np.int64), t)
    assert np.array_equal(got.astype(np.int64), want)
    assert np.abs(got).max() > 1000  # not trivially zero


def test_embedded_network_equals_the_int64_oracle():
    from ddpmcodec.io.models import load_model
    plan = plan_of_model(load_model())
    x = quantize_input(_inputs(2))
    got = ExactUNet(plan).forward_int(x, torch.tensor([0, 500])).numpy()
    want = exact_oracle.forward(plan, x.numpy().astype(np.int64), [0, 500])
    assert np.array_equal(got.astype(np.int64), want)


def test_silu_and_group_norm_equal_the_oracle_at_their_limits():
    """Both branches of each: silu wholly inside its table (no clamp) and beyond both of
    its ends; group norm with small deviations (the direct sum of squares) and with
    inputs beyond the clamp (the split sum), on a non-contiguous input as the shared-pad
    convolutions give."""
    _, plan = _tiny_plan()
    net = ExactUNet(plan)
    rng = np.random.default_rng(3)
    L = spec.SILU_RANGE << spec.FRAC_BITS
    for scale in (L // 8, 4 * L):
        x = rng.integers(-scale, scale, (2, 4, 4, 32))
        got = net.silu(torch.from_numpy(x.astype(np.float64)))
        assert np.array_equal(got.numpy().astype(np.int64), exact_oracle.silu(x)), scale
    norm = plan.norm_out
    C = len(norm.gamma)
    for scale in (1 << 20, 4 * spec.ACT_MAX):
        x = rng.integers(-scale, scale, (2, 5, 5, C))
        view = torch.from_numpy(x.astype(np.float64))[:, :4, :4]
        got = net.group_norm(view, norm).numpy().astype(np.int64)
        want = exact_oracle.group_norm(x[:, :4, :4].transpose(0, 3, 1, 2), norm)
        assert np.array_equal(got, want.transpose(0, 2, 3, 1)), scale


def test_output_does_not_depend_on_batch_size_or_threads():
    _, plan = _tiny_plan(2)
    net = ExactUNet(plan)
    x = _inputs(5, 3)
    t = torch.tensor([10, 10, 500, 999, 0])
    together = net(x, t)
    alone = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(5)])
    assert torch.equal(together, alone)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = net(x, t)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, one)
    mkl = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        assert torch.equal(net(x, t), together)
    finally:
        torch.backends.mkldnn.enabled = mkl


def test_exact_network_is_close_to_the_float_network():
    unet, plan = _tiny_plan(3)
    x = _inputs(2, 4)
    t = torch.tensor([5, 600])
    with torch.no_grad():
        ref = unet.double()(x, t).sample
    got = ExactUNet(plan)(x, t)
    assert float((got - ref).abs().max()) < 2e-3 * float(ref.abs().max())
    assert not torch.equal(got, ref)  # it is a different (integer) function


def test_weights_are_quantized_within_their_bits():
    _, plan = _tiny_plan(0)
    layer = plan.conv_in
    assert np.all(np.abs(layer.w) < 2.0 ** spec.WEIGHT_BITS)
    assert np.all(layer.w == np.rint(layer.w))
    # a bound that always holds: the largest sum of products stays below 2^52
    for blk in plan.down:
        for r in blk["resnets"]:
            c = r["conv1"]
            assert c.terms * np.abs(c.w).max() * (c.act_max + 1) < 2.0 ** spec.SUM_BITS


def test_unsupported_configs_are_refused():
    from ddpmcodec.errors import DDPMCodecError
    _, plan = _tiny_plan(0)
    with pytest.raises(DDPMCodecError, match="act_fn"):
        build_plan(dict(plan.config, act_fn="gelu"), {})
