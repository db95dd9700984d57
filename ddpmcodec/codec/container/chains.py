"""How a file names its chain: the timesteps (full, evenly spaced, geometric or an
explicit list) and the reverse-variance rule of its steps (the checkpoint's, a named
one, or explicit variances, stored exactly or as quantised log2 values)."""
from __future__ import annotations

import math

from ddpmcodec.codec.container.fields import BlobReader, BlobWriter
from ddpmcodec.codec.container.limits import COMPACT_STEPS, GEOMETRIC_OFFSET
from ddpmcodec.errors import DDPMCodecError

CHAIN_FULL, CHAIN_EVEN, CHAIN_EXPLICIT, CHAIN_GEOMETRIC = 0, 1, 2, 3


def evenly_spaced(num_timesteps: int, steps: int) -> tuple[int, ...]:
    """Diffusion.with_steps' choice of timesteps, without importing torch."""
    if steps == 1:
        return (num_timesteps - 1,)
    stride = (num_timesteps - 1) / (steps - 1)
    return tuple(int(round(k * stride)) for k in range(steps))


def geometric_timesteps(num_timesteps: int, steps: int,
                        offset: float = GEOMETRIC_OFFSET) -> tuple[int, ...]:
    """``steps`` strictly increasing original indices from 0 to T-1, geometric in
    t + offset (2 <= steps <= T): the progressive codec's coded steps."""
    lo, hi = math.log(offset), math.log(num_timesteps - 1 + offset)
    ideal = [math.exp(lo + (hi - lo) * k / (steps - 1)) - offset for k in range(steps)]
    ts = [0]
    for k in range(1, steps):
        # at least one above the previous, and room left for the remaining steps
        t = max(int(round(ideal[k])), ts[-1] + 1)
        ts.append(min(t, num_timesteps - steps + k))
    ts[-1] = num_timesteps - 1
    return tuple(ts)


# -- format 2 ----------------------------------------------------------------------------
def write_chain(w: BlobWriter, T: int, ts: tuple, geometric: bool = False) -> None:
    if ts == tuple(range(T)):
        w.u8(CHAIN_FULL).uvar(len(ts))
    elif ts == evenly_spaced(T, len(ts)):
        w.u8(CHAIN_EVEN).uvar(len(ts))
    elif geometric and 2 <= len(ts) and ts == geometric_timesteps(T, len(ts)):
        w.u8(CHAIN_GEOMETRIC).uvar(len(ts))
    else:  # first index, then each gap minus one: a byte per step on short chains
        w.u8(CHAIN_EXPLICIT).uvar(len(ts)).uvar(ts[0])
        for a, b in zip(ts, ts[1:]):
            w.uvar(b - a - 1)


def read_chain(r: BlobReader, T: int, geometric: bool = False) -> tuple:
    kind = r.u8("chain kind")
    K = r.bounded("num_steps", r.uvar("num_steps"), 1, T)
    if geometric and kind == CHAIN_GEOMETRIC:
        if K < 2:
            raise DDPMCodecError("header: a geometric chain has at least 2 steps")
        return geometric_timesteps(T, K)
    if kind == CHAIN_FULL:
        if K != T:
            raise DDPMCodecError(f"header: a full chain has {T} steps, not {K}")
        return tuple(range(T))
    if kind == CHAIN_EVEN:
        return evenly_spaced(T, K)
    if kind != CHAIN_EXPLICIT:
        raise DDPMCodecError(f"header: unknown chain kind {kind}")
    ts = [r.bounded("timestep", r.uvar("timestep"), 0, T - 1)]
    for _ in range(K - 1):
        ts.append(ts[-1] + 1 + r.bounded("timestep gap", r.uvar("timestep gap"), 0, T))
        if ts[-1] >= T:
            raise DDPMCodecError(f"header: timesteps must be indices in 0..{T - 1}")
    return tuple(ts)


def compact_chain(T: int) -> tuple:
    return geometric_timesteps(T, COMPACT_STEPS) if COMPACT_STEPS <= T else tuple(range(T))

# the reverse-variance rule of a coded chain, as codecs record it in their params blob
VARIANCE_RULES = ("model", "fixedlarge", "fixedsmall", "explicit")


def pack_variance_rule(writer: BlobWriter, rule: str, variances=None) -> BlobWriter:
    """u8 rule (an index of VARIANCE_RULES), then for ``explicit`` K float64 variances
    (stored exactly): the parameters of version 2, which are read, no longer written
    (:func:`pack_log2_variances` is the compact form)."""
    writer.u8(VARIANCE_RULES.index(rule))
    if rule == "explicit":
        for v in variances:
            writer.f64(float(v))
    return writer


def read_variance_rule(reader: BlobReader, num_steps: int) -> tuple[str, list | None]:
    """(rule, variances or None) as :func:`pack_variance_rule` wrote them; the variances
    are checked (positive, finite) when the chain is built."""
    rule = VARIANCE_RULES[reader.bounded("variance rule", reader.u8("variance rule"), 0,
                                         len(VARIANCE_RULES) - 1)]
    if rule != "explicit":
        return rule, None
    values = [reader.f64("reverse variance") for _ in range(num_steps)]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise DDPMCodecError("corrupt file: a reverse variance is not a positive number")
    return rule, values

LOG2_VARIANCE_STEPS = 256  # explicit variances in compact params: round(256 log2 v)


def log2_variance_codes(variances) -> list[int]:
    """round(256 log2 v) of each variance (the stored form of explicit variances)."""
    return [int(round(math.log2(float(v)) * LOG2_VARIANCE_STEPS)) for v in variances]


def variances_of_codes(codes, exact: bool = False) -> tuple:
    """The variances both sides code with: 2^(code / 256) (a relative step of 0.27%,
    which moves a Gaussian KL by ~1e-6 nats per dimension). ``exact``: correctly rounded
    from decimal arithmetic (exact files: no libm pow); else the platform's pow (the
    files of the float32 network were written so)."""
    if exact:
        from ddpmcodec.core.exact.functions import decimal_pow2
        return tuple(decimal_pow2(c / LOG2_VARIANCE_STEPS) for c in codes)
    return tuple(2.0 ** (c / LOG2_VARIANCE_STEPS) for c in codes)


def pack_log2_variances(writer: BlobWriter, rule: str, variances=None) -> BlobWriter:
    """u8 rule (an index of VARIANCE_RULES), then for ``explicit`` the quantized log2
    variances as signed varints: the first, then differences (a byte or two each)."""
    writer.u8(VARIANCE_RULES.index(rule))
    if rule == "explicit":
        q = log2_variance_codes(variances)
        for i, v in enumerate(q):
            writer.svar(v if i == 0 else v - q[i - 1])
    return writer


def read_log2_variances(reader: BlobReader, num_steps: int) -> tuple[str, tuple | None]:
    """(rule, variances or None) as :func:`pack_log2_variances` wrote them."""
    rule = VARIANCE_RULES[reader.bounded("variance rule", reader.u8("variance rule"), 0,
                                         len(VARIANCE_RULES) - 1)]
    if rule != "explicit":
        return rule, None
    q = [reader.svar("log2 variance")]
    for _ in range(num_steps - 1):
        q.append(q[-1] + reader.svar("log2 variance"))
    if any(not -64 * LOG2_VARIANCE_STEPS <= v <= 16 * LOG2_VARIANCE_STEPS for v in q):
        raise DDPMCodecError("corrupt file: a reverse variance is out of range")
    return rule, variances_of_codes(q)
