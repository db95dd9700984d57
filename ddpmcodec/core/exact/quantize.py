"""The exact network's integers: a diffusers UNet2DModel's config and float32 weights
turned into a plan of integer layers (the same integers on every machine: only exact
scalings by powers of two and correctly rounded IEEE operations are involved).

The plan mirrors UNet2DModel's blocks; :mod:`~ddpmcodec.core.exact.unet` evaluates it in
float64 carriers and ``tests/exact_oracle.py`` in numpy int64.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ddpmcodec.core.exact import spec
from ddpmcodec.core.exact.tables import tables_digest
from ddpmcodec.errors import DDPMCodecError

_SUPPORTED = {"act_fn": "silu", "time_embedding_type": "positional",
              "resnet_time_scale_shift": "default", "center_input_sample": False,
              "class_embed_type": None, "num_class_embeds": None,
              "downsample_type": "conv", "upsample_type": "conv"}


@dataclass
class IntLinear:
    """y = round(x @ w^T 2^-s) + b per output channel (a convolution when w is 4-D).
    w: float64 integers [O, I(, kh, kw)]; inv_scale: float64 2^-s [O]; bias: float64
    integers [O] at 2^-FRAC_BITS."""

    w: np.ndarray
    inv_scale: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: int = 0
    pad_right: bool = False  # Downsample2D with padding 0: pad right and bottom by one
    act_max: int = spec.ACT_MAX  # inputs are clamped to +-act_max

    @property
    def terms(self) -> int:
        return int(np.prod(self.w.shape[1:]))


@dataclass
class IntNorm:
    """GroupNorm: gamma and beta scaled by 2^FRAC_BITS (float64), eps by 2^(2 FRAC_BITS)."""

    groups: int
    gamma: np.ndarray
    beta: np.ndarray
    eps: float


@dataclass
class Plan:
    """The exact network: blocks of integer layers, and its digest."""

    config: dict
    time: dict
    conv_in: IntLinear
    down: list
    mid: dict | None
    up: list
    norm_out: IntNorm
    conv_out: IntLinear
    digest: str = field(default="")


def _quantize_weight(w: np.ndarray, b: np.ndarray | None, *, in_frac: int = spec.FRAC_BITS,
                     out_frac: int = spec.FRAC_BITS, **kw) -> IntLinear:
    w = np.asarray(w, dtype=np.float64)
    O = w.shape[0]
    bits = spec.weight_bits_for(int(np.prod(w.shape[1:])), kw.get("act_max", spec.ACT_MAX))
    mx = np.abs(w.reshape(O, -1)).max(1)
    e = np.frexp(mx)[1]                      # mx < 2^e (exact)
    s = np.where(mx > 0, bits - e, 0).astype(np.int64)
    shape = (O,) + (1,) * (w.ndim - 1)
    wq = np.rint(np.ldexp(w, s.reshape(shape)))
    bias = np.zeros(O) if b is None else np.asarray(b, dtype=np.float64)
    # the sum is at 2^-(in_frac + s); the output at 2^-out_frac
    return IntLinear(wq, np.ldexp(1.0, -(s + in_frac - out_frac)),
                     np.rint(np.ldexp(bias, out_frac)), **kw)


def _norm(sd: dict, name: str, groups: int, eps: float) -> IntNorm:
    g = np.asarray(sd[f"{name}.weight"], dtype=np.float64)
    b = np.asarray(sd[f"{name}.bias"], dtype=np.float64)
    return IntNorm(groups, np.ldexp(g, spec.FRAC_BITS), np.ldexp(b, spec.FRAC_BITS),
                   float(eps) * 2.0 ** (2 * spec.FRAC_BITS))


def _lin(sd: dict, name: str, **kw) -> IntLinear:
    return _quantize_weight(sd[f"{name}.weight"], sd.get(f"{name}.bias"), **kw)


def _resnet(sd, name, groups, eps) -> dict:
    return {"norm1": _norm(sd, f"{name}.norm1", groups, eps),
            "conv1": _lin(sd, f"{name}.conv1", padding=1),
            "temb": _lin(sd, f"{name}.time_emb_proj"),
            "norm2": _norm(sd, f"{name}.norm2", groups, eps),
            "conv2": _lin(sd, f"{name}.conv2", padding=1),
            "shortcut": (_lin(sd, f"{name}.conv_shortcut")
                         if f"{name}.conv_shortcut.weight" in sd else None)}


def _attention(sd, name, groups, eps, head_dim) -> dict:
    channels = int(np.asarray(sd[f"{name}.to_q.weight"]).shape[0])
    head_dim = head_dim or channels
    if channels % head_dim:
        raise DDPMCodecError(f"{name}: {channels} channels do not split into heads of {head_dim}")
    scale = 1.0 / math.sqrt(head_dim)        # folded into the queries (one rounding)
    q_w = np.asarray(sd[f"{name}.to_q.weight"], dtype=np.float64) * scale
    q_b = np.asarray(sd[f"{name}.to_q.bias"], dtype=np.float64) * scale
    return {"norm": _norm(sd, f"{name}.group_norm", groups, eps),
            "q": _quantize_weight(q_w, q_b), "k": _lin(sd, f"{name}.to_k"),
            "v": _lin(sd, f"{name}.to_v"), "out": _lin(sd, f"{name}.to_out.0"),
            "heads": channels // head_dim}


def _count(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(found) + 1 if found else 0


def _check_config(config: dict) -> None:
    for key, want in _SUPPORTED.items():
        if config.get(key, want) != want:
            raise DDPMCodecError(f"the exact network does not support {key}={config[key]!r} "
                                 f"(only {want!r}); use the float32 network (--float32)")
    if float(config.get("mid_block_scale_factor", 1)) != 1.0:
        raise DDPMCodecError("the exact network supports mid_block_scale_factor 1 only")


def build_plan(config: dict, state_dict: dict) -> Plan:
    """The integer plan of a UNet2DModel (config dict, name -> float32 array)."""
    _check_config(config)
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    groups = int(config.get("norm_num_groups", 32))
    attn_groups = int(config.get("attn_norm_num_groups") or groups)
    eps = float(config.get("norm_eps", 1e-5))
    head_dim = config.get("attention_head_dim")
    time = {"channels": int(np.asarray(sd["time_embedding.linear_1.weight"]).shape[1]),
            "shift": int(config.get("freq_shift", 0)),
            "flip": bool(config.get("flip_sin_to_cos", True)),
            "l1": _lin(sd, "time_embedding.linear_1"), "l2": _lin(sd, "time_embedding.linear_2")}

    def block(prefix: str, sampler: str) -> dict:
        out = {"resnets": [_resnet(sd, f"{prefix}.resnets.{j}", groups, eps)
                           for j in range(_count(sd, f"{prefix}.resnets"))],
               "attentions": [_attention(sd, f"{prefix}.attentions.{j}", attn_groups, eps, head_dim)
                              for j in range(_count(sd, f"{prefix}.attentions"))]}
        name = f"{prefix}.{sampler}.0.conv"
        out["sampler"] = None
        if f"{name}.weight" in sd:
            pad = int(config.get("downsample_padding", 1)) if sampler == "downsamplers" else 1
            kw = ({"stride": 2, "padding": pad, "pad_right": pad == 0}
                  if sampler == "downsamplers" else {"padding": 1})
            out["sampler"] = _lin(sd, name, **kw)
        return out

    down = [block(f"down_blocks.{i}", "downsamplers") for i in range(_count(sd, "down_blocks"))]
    up = [block(f"up_blocks.{i}", "upsamplers") for i in range(_count(sd, "up_blocks"))]
    mid = block("mid_block", "none") if "mid_block.resnets.0.conv1.weight" in sd else None
    plan = Plan(dict(config), time, _lin(sd, "conv_in", padding=1, in_frac=spec.INPUT_FRAC_BITS,
                     act_max=spec.INPUT_MAX), down, mid, up,
                _norm(sd, "conv_norm_out", groups, eps), _lin(sd, "conv_out", padding=1, out_frac=spec.OUTPUT_FRAC_BITS))
    plan.digest = plan_digest(plan)
    return plan


def plan_digest(plan: Plan) -> str:
    """16 hex digits of SHA-256 over the format version, the tables and every integer."""
    h = hashlib.sha256(f"{spec.VERSION};{tables_digest()}".encode())

    def walk(node):
        if isinstance(node, IntLinear):
            for a in (node.w, node.inv_scale, node.bias):
                h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
            h.update(f"{node.stride},{node.padding},{node.pad_right},{node.act_max}".encode())
        elif isinstance(node, IntNorm):
            h.update(f"{node.groups},{node.eps!r}".encode())
            h.update(np.ascontiguousarray(node.gamma, dtype="<f8").tobytes())
            h.update(np.ascontiguousarray(node.beta, dtype="<f8").tobytes())
        elif isinstance(node, dict):
            for k in sorted(node):
                h.update(k.encode())
                walk(node[k])
        elif isinstance(node, list):
            for x in node:
                walk(x)
        elif node is not None:
            h.update(repr(node).encode())
    for part in (plan.time, plan.conv_in, plan.down, plan.mid, plan.up, plan.norm_out,
                 plan.conv_out):
        walk(part)
    return h.hexdigest()[:16]
