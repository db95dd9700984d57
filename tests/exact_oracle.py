"""An independent implementation of the exact network (``exact-v1``) in numpy int64.

It shares with :mod:`ddpmcodec.core.exact.unet` only the plan's integers, the two
tables and the timestep features; every operation is written again here, in integer
arithmetic (shifts, floor division, im2col with an int64 matrix product, NCHW layout)
where the network's definition is integer, and in the same correctly rounded float64
operations where it is not (group-norm scales, attention probabilities).
"""
from __future__ import annotations

import numpy as np

from ddpmcodec.core.exact import spec
from ddpmcodec.core.exact.tables import silu_table, softmax_exp_table
from ddpmcodec.core.exact.unet import time_features

F = spec.FRAC_BITS
D = F - spec.TABLE_BITS


def _shift_round(acc: np.ndarray, inv_scale: np.ndarray) -> np.ndarray:
    """floor(acc 2^-k + 1/2) per channel (the last axis of inv_scale broadcasts)."""
    k = -np.frexp(inv_scale)[1] + 1           # inv_scale = 2^-k exactly
    out = np.empty_like(acc)
    for c in range(acc.shape[1]):
        kc = int(k[c])
        a = acc[:, c]
        out[:, c] = (a + (1 << (kc - 1))) >> kc if kc > 0 else a << (-kc)
    return out


def conv(x: np.ndarray, layer) -> np.ndarray:
    """x int64 [B, I, H, W] (or [N, I] for a linear layer)."""
    w = layer.w.astype(np.int64)
    bias = layer.bias.astype(np.int64)
    x = np.clip(x, -layer.act_max, layer.act_max)
    if w.ndim == 2:
        return _shift_round(x @ w.T, layer.inv_scale) + bias
    O, I, kh, kw = w.shape
    if layer.pad_right:
        x = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    p, s = layer.padding, layer.stride
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    B, _, H, W = x.shape
    Ho, Wo = (H - kh) // s + 1, (W - kw) // s + 1
    cols = np.empty((B, Ho, Wo, I, kh, kw), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            cols[..., i, j] = x[:, :, i:i + s * (Ho - 1) + 1:s,
                                j:j + s * (Wo - 1) + 1:s].transpose(0, 2, 3, 1)
    acc = cols.reshape(B * Ho * Wo, -1) @ w.reshape(O, -1).T
    y = _shift_round(acc, layer.inv_scale) + bias
    return y.reshape(B, Ho, Wo, O).transpose(0, 3, 1, 2)


def group_norm(x: np.ndarray, norm) -> np.ndarray:
    x = np.clip(x, -spec.ACT_MAX, spec.ACT_MAX)
    B, C = x.shape[:2]
    G = norm.groups
    xg = x.reshape(B, G, -1)
    N = xg.shape[-1]
    mu = (2 * xg.sum(-1) + N) // (2 * N)
    d = xg - mu[..., None]
    # the exact sum of squares as a Python integer, rounded once to float64
    var = np.array([[float(sum(int(v) * int(v) for v in row)) for row in db] for db in d]) / N
    rstd = 1.0 / np.sqrt(var + norm.eps)
    gamma = norm.gamma.reshape(G, -1)
    beta = norm.beta.reshape(G, -1)
    factor = rstd[:, :, None] * gamma[None]                       # [B, G, C/G]
    df = d.reshape(B, G, C // G, -1).astype(np.float64)
    y = np.floor(df * factor[..., None] + beta[None, :, :, None] + 0.5)
    return y.astype(np.int64).reshape(x.shape)


def _lookup(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    i = u >> D
    f = u & ((1 << D) - 1)
    lo = table[i]
    return lo + (((table[i + 1] - lo) * f + (1 << (D - 1))) >> D)


def silu(x: np.ndarray) -> np.ndarray:
    L = spec.SILU_RANGE << F
    y = _lookup(silu_table(), np.clip(x, -L, L) + L)
    return np.where(x > L, x, y)


def attention(x: np.ndarray, a: dict) -> np.ndarray:
    B, C, H, W = x.shape
    T, heads = H * W, a["heads"]
    h = group_norm(x, a["norm"]).reshape(B, C, T).transpose(0, 2, 1).reshape(B * T, C)
    qkv = []
    for name, lim in (("q", spec.QK_MAX), ("k", spec.QK_MAX),
                      ("v", spec.value_max(T, spec.PROB_BITS + 1))):
        y = np.clip(conv(h, a[name]), -lim, lim)
        qkv.append(y.reshape(B, T, heads, C // heads).transpose(0, 2, 1, 3))
    q, k, v = qkv
    s = (q @ k.transpose(0, 1, 3, 2) + (1 << (F - 1))) >> F
    gap = np.minimum(s.max(-1, keepdims=True) - s, spec.SOFTMAX_EXP_RANGE << F)
    e = _lookup(softmax_exp_table(), gap)
    z = e.sum(-1, keepdims=True)
    p = np.floor((e << spec.PROB_BITS).astype(np.float64) / z.astype(np.float64) + 0.5)
    o = (p.astype(np.int64) @ v + (1 << (spec.PROB_BITS - 1))) >> spec.PROB_BITS
    o = o.transpose(0, 2, 1, 3).reshape(B * T, C)
    o = conv(o, a["out"]).reshape(B, T, C).transpose(0, 2, 1).reshape(B, C, H, W)
    return o + x


def resnet(x, r, temb):
    h = conv(silu(group_norm(x, r["norm1"])), r["conv1"])
    h = h + conv(temb, r["temb"])[:, :, None, None]
    h = conv(silu(group_norm(h, r["norm2"])), r["conv2"])
    if r["shortcut"] is not None:
        x = conv(x, r["shortcut"])
    return x + h


def forward(plan, x: np.ndarray, t: list[int]) -> np.ndarray:
    """Integer input x int64 [B, C, H, W] at 2^-INPUT_FRAC_BITS, timestep indices t:
    integer output at 2^-OUTPUT_FRAC_BITS."""
    tp = plan.time
    feats = np.array([time_features(tp["channels"], tp["shift"], tp["flip"], int(ti))
                      for ti in t], dtype=np.int64)
    temb = silu(conv(silu(conv(feats, tp["l1"])), tp["l2"]))
    h = conv(x, plan.conv_in)
    skips = [h]
    for blk in plan.down:
        for j, r in enumerate(blk["resnets"]):
            h = resnet(h, r, temb)
            if blk["attentions"]:
                h = attention(h, blk["attentions"][j])
            skips.append(h)
        if blk["sampler"] is not None:
            h = conv(h, blk["sampler"])
            skips.append(h)
    if plan.mid is not None:
        h = resnet(h, plan.mid["resnets"][0], temb)
        for a, r in zip(plan.mid["attentions"], plan.mid["resnets"][1:]):
            h = resnet(attention(h, a), r, temb)
    for blk in plan.up:
        for j, r in enumerate(blk["resnets"]):
            h = resnet(np.concatenate([h, skips.pop()], 1), r, temb)
            if blk["attentions"]:
                h = attention(h, blk["attentions"][j])
        if blk["sampler"] is not None:
            h = conv(h.repeat(2, 2).repeat(2, 3), blk["sampler"])
    h = silu(group_norm(h, plan.norm_out))
    return conv(h, plan.conv_out)
