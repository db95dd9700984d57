"""Candidate generator v2 ("hash-bmpoly-v2"), numpy and torch.

Candidate n of a chunk (64-bit key k, ``dims`` normals) is made of W = ceil(dims / 2)
64-bit words; word i is splitmix64's finaliser of k + (n W + i) GAMMA (mod 2^64). Each word
gives two normals by Box-Muller computed with integer/bit operations and correctly rounded
IEEE float32 +, -, *, / and sqrt only (every op separate: no fused multiply-add, no
library log/sin/cos), so numpy and torch (CPU or CUDA, eager ops) produce the same bits on
every machine; no device-kind guard is needed. From the word's high 32 bits h and low 32
bits l:

* radius: a = h >> 8 (24 bits) gives u1 = (a' + 1) 2^-24 in (0, 1] (a' a relabelling of
  a; exact in float32); ln u1 = k ln 2 + ln m with u1 = 2^k m, m in [sqrt(1/2), sqrt(2))
  read from the float's bits, ln m = 2 f + f s P(s) with f = (m - 1)/(m + 1), s = f^2 and
  P a minimax quadratic; r = sqrt(-2 ln u1) <= sqrt(48 ln 2) = 5.77, so normals are cut
  at 5.77 (P(|N(0, 1)| > 5.77) = 8e-9).
* angle: bits 31 and 30 of l are the signs of cos and sin, bit 29 the half of the
  quadrant and bits 28..8 the position j: y = (j + 1/2) pi/4 2^-21 in (0, pi/4), reflected
  (pi/4 - y) in the upper half, where |cos| and |sin| swap; sin y by a minimax odd
  polynomial of degree 7 and cos y = sqrt(1 - sin^2 y).

Normal i < W of a candidate is r_i cos(theta_i), normal W + i is r_i sin(theta_i);
the last is dropped when dims is odd. The radius, cos and sin are within 2e-7 (relative)
of their float64 values and every intermediate is a normal float32 (no denormals); the
normals' law differs from N(0, 1) by about 1e-7 in distribution function (the 2^-24
grids and the approximations) plus the tail cut. Blocks of candidates are computed
word-major (all candidates' word 0, then word 1, ...): [W, count] planes of cos and sin
normals, which the search scores without laying them out per candidate.

tests/test_candidates.py checks the bit identity of the backends, the approximations
exhaustively and the law of the normals.
"""
from __future__ import annotations

import math
import sys
import threading
from typing import ClassVar

import numpy as np

from ddpmcodec.core.splitmix import GAMMA as SPLITMIX_GAMMA
from ddpmcodec.core.splitmix import MASK64 as _MASK64
from ddpmcodec.core.splitmix import mix64_numpy, mix64_torch, signed64

GENERATOR_V2 = "hash-bmpoly-v2"
EPS_MAX = math.sqrt(48.0 * math.log(2.0))  # the largest |normal| the generator gives
# float32 constants (every literal is exactly a float32)
_A_OFFSET = 8388609.0             # (h as int32 >> 8) + 2^23 + 1 in [1, 2^24]: a' + 1
_LOG_SHIFT = 0x3F800000 - 0x3F3504F3  # carries mantissas >= sqrt(2) into the next binade
_LOG_BIAS = 127 + 24              # float32 exponent bias, plus the 2^-24 of u1
_SQRT_HALF_BITS = 0x3F3504F3      # bits of float32(sqrt(1/2))
# -2 ln m = f (-4 + s (Q1 + s (Q2 + s Q3))): minimax on s <= 0.0295, relative error 8e-10
_Q1, _Q2, _Q3 = -1.333335518836975, -0.7995508313179016, -0.5974341630935669
_M2LN2 = -1.3862943649291992      # float32(-2 ln 2)
_ANGLE_SCALE = 1.462918119976564e-09  # float32(pi) 2^-31: y = (j 2^8 + 2^7) * scale
# sin y = y + y^3 (S1 + y^2 (S2 + y^2 S3)) on (0, pi/4]: minimax, relative error 4e-9
_S1, _S2, _S3 = -0.16666655242443085, 0.008332177996635437, -0.00019517303735483438
_J_MASK = 0x1FFFFF00              # position bits 28..8
_SIGN = -(1 << 31)                # int32 0x80000000
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of a uint64
BLOCK_WORDS = 1 << 15             # words per numpy block (about 1.5 MB of scratch)
TORCH_CPU_BLOCK_WORDS = 1 << 16   # torch on CPU: per-op overhead against cache
TORCH_BLOCK_WORDS = 1 << 22       # torch on an accelerator: big kernels


def words_per_candidate(dims: int) -> int:
    """W = ceil(dims / 2) 64-bit words per candidate (two normals a word)."""
    return (int(dims) + 1) // 2


def _check(key: int, start: int, count: int, dims: int) -> None:
    if not 0 <= key <= _MASK64:
        raise ValueError(f"the key must be a 64-bit unsigned integer, got {key}")
    if start < 0 or count < 0 or dims < 1:
        raise ValueError(f"bad candidate range: start {start}, count {count}, dims {dims}")


def _hash_inputs(key: int, start: int, w: int) -> tuple[int, int]:
    """Word i of candidate start + n hashes base + i GAMMA + n step (mod 2^64), with
    base = k + start W GAMMA and step = W GAMMA (Python ints < 2^64)."""
    return (key + start * w * SPLITMIX_GAMMA) & _MASK64, (w * SPLITMIX_GAMMA) & _MASK64


# -- numpy -------------------------------------------------------------------------------
class _K:
    """The numpy path's constants as numpy scalars, made once: building a numpy scalar
    costs about as much as a small ufunc call."""

    f32: ClassVar[dict] = {name: np.float32(v) for name, v in {
        "a_offset": _A_OFFSET, "q1": _Q1, "q2": _Q2, "q3": _Q3, "m2ln2": _M2LN2,
        "angle": _ANGLE_SCALE, "s1": _S1, "s2": _S2, "s3": _S3, "one": 1.0,
        "minus_four": -4.0}.items()}
    i32: ClassVar[dict] = {name: np.int32(v) for name, v in {
        "log_shift": _LOG_SHIFT, "log_bias": _LOG_BIAS, "mantissa": 0x7FFFFF,
        "sqrt_half": _SQRT_HALF_BITS, "j_mask": _J_MASK, "half": 128, "sign": _SIGN,
        "s8": 8, "s23": 23, "s31": 31}.items()}
    u32_1, u32_2 = np.uint32(1), np.uint32(2)
    u64: ClassVar[dict] = {name: np.uint64(v) for name, v in {
        "gamma": SPLITMIX_GAMMA}.items()}


class _Scratch:
    """One thread's work arrays for up to ``capacity`` words (48 bytes a word), kept
    between calls (fresh large arrays cost page faults), and their views for the sizes
    in use (slicing and viewing cost per call too)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.z, self.t = (np.empty(capacity, np.uint64) for _ in range(2))
        self.hi, self.lo, self.i1, self.i2 = (np.empty(capacity, np.int32) for _ in range(4))
        # the float arrays reuse the hash's memory (dead once the halves are copied out):
        # a smaller footprint stays in cache
        zf, tf = self.z.view(np.float32), self.t.view(np.float32)
        self.x, self.f2, self.f3, self.r = zf[:capacity], zf[capacity:], tf[:capacity], tf[capacity:]
        # the search's planes of normals and of score terms (2 normals a word)
        self.planes, self.terms = (np.empty(2 * capacity, np.float32) for _ in range(2))
        self._views: dict = {}

    def views(self, n: int) -> dict:
        """The first n words' arrays by name, with int32 views of the float arrays
        (``xi``, ``f2i``, ``f3i``) and uint32 views of ``lo`` and ``i1`` (``lou``, ``i1u``)."""
        v = self._views.get(n)
        if v is None:
            if len(self._views) > 64:
                self._views.clear()
            v = {name: getattr(self, name)[:n] for name in
                 ("z", "t", "hi", "lo", "i1", "i2", "x", "f2", "f3", "r")}
            v.update(xi=v["x"].view(np.int32), f2i=v["f2"].view(np.int32),
                     f3i=v["f3"].view(np.int32), lou=v["lo"].view(np.uint32),
                     i1u=v["i1"].view(np.uint32), hiu=v["hi"].view(np.uint32),
                     halves=v["z"].view(np.uint32).reshape(n, 2))
            self._views[n] = v
        return v

_local = threading.local()


def _scratch(words: int) -> _Scratch:
    """This thread's scratch, grown to ``words`` if needed."""
    sc = getattr(_local, "scratch", None)
    if sc is None or sc.capacity < words:
        sc = _local.scratch = _Scratch(max(words, BLOCK_WORDS))
    return sc


def _mix_numpy(v: dict) -> None:
    """splitmix64's finaliser on v["z"] in place, v["t"] its scratch."""
    mix64_numpy(v["z"], v["t"])


def _words_numpy(key: int, start: int, count: int, w: int, v: dict) -> np.ndarray:
    """The words of candidates start..start+count-1, word-major, into v["z"]: returns it
    viewed uint64 [W, count]."""
    base, step = _hash_inputs(key, start, w)
    z = v["z"].reshape(w, count)
    col = np.arange(w, dtype=np.uint64) * _K.u64["gamma"] + np.uint64(base)
    rows = np.arange(count, dtype=np.uint64) * np.uint64(step)
    np.add(col[:, None], rows[None, :], z)
    _mix_numpy(v)
    return z


def _radius_numpy(v: dict) -> np.ndarray:
    """r = sqrt(-2 ln u1) from the high halves v["hi"] (int32 [n]): float32 [n] (v["r"]).
    The op sequence mirrors :func:`_radius_torch`."""
    hi, i1, x, xi, f2, f3, r = (v[k] for k in ("hi", "i1", "x", "xi", "f2", "f3", "r"))
    f, i = _K.f32, _K.i32
    np.right_shift(hi, i["s8"], i1)
    np.copyto(x, i1, casting="unsafe")
    np.add(x, f["a_offset"], x)                        # u1 = x 2^-24
    np.add(xi, i["log_shift"], xi)
    np.right_shift(xi, i["s23"], i1)
    np.subtract(i1, i["log_bias"], i1)
    np.copyto(r, i1, casting="unsafe")                 # k: u1 = 2^k m
    np.bitwise_and(xi, i["mantissa"], xi)
    np.add(xi, i["sqrt_half"], xi)                     # x = m
    np.add(x, f["one"], f2)
    np.subtract(x, f["one"], x)
    np.divide(x, f2, x)                                # f
    np.multiply(x, x, f2)                              # s
    np.multiply(f2, f["q3"], f3)
    np.add(f3, f["q2"], f3)
    np.multiply(f3, f2, f3)
    np.add(f3, f["q1"], f3)
    np.multiply(f3, f2, f3)
    np.add(f3, f["minus_four"], f3)
    np.multiply(f3, x, f3)                             # -2 ln m
    np.multiply(r, f["m2ln2"], r)
    np.add(r, f3, r)                                   # -2 ln u1 >= 0
    np.sqrt(r, r)
    return r


def _direction_numpy(v: dict) -> tuple[np.ndarray, np.ndarray]:
    """(cos theta, sin theta) from the low halves v["lo"] (int32 [n]): float32 [n] each
    (v["f2"] and v["f3"]). The op sequence mirrors :func:`_direction_torch`. Left shifts
    act on uint32 views (defined wrapping); right shifts on int32 are arithmetic."""
    lo, lou, i1, i1u, i2, x, xi, f2, f2i, f3, f3i = (
        v[k] for k in ("lo", "lou", "i1", "i1u", "i2", "x", "xi", "f2", "f2i", "f3", "f3i"))
    f, i = _K.f32, _K.i32
    np.left_shift(lou, _K.u32_2, i1u)
    np.right_shift(i1, i["s31"], i2)                   # all ones in the quadrant's upper half
    np.bitwise_xor(i2, lo, i1)                         # there the position is reflected
    np.bitwise_and(i1, i["j_mask"], i1)
    np.bitwise_or(i1, i["half"], i1)                   # (2j + 1) 2^7
    np.copyto(x, i1, casting="unsafe")
    np.multiply(x, f["angle"], x)                      # y in (0, pi/4)
    np.multiply(x, x, f2)
    np.multiply(f2, f["s3"], f3)
    np.add(f3, f["s2"], f3)
    np.multiply(f3, f2, f3)
    np.add(f3, f["s1"], f3)
    np.multiply(f3, f2, f3)
    np.multiply(f3, x, f3)
    np.add(f3, x, f3)                                  # sin y
    np.multiply(f3, f3, f2)
    np.subtract(f["one"], f2, f2)
    np.sqrt(f2, f2)                                    # cos y
    np.bitwise_xor(f2i, f3i, xi)
    np.bitwise_and(xi, i2, xi)
    np.bitwise_xor(f2i, xi, f2i)                       # |cos theta|
    np.bitwise_xor(f3i, xi, f3i)                       # |sin theta|
    np.bitwise_and(lo, i["sign"], i1)
    np.bitwise_xor(f2i, i1, f2i)
    np.left_shift(lou, _K.u32_1, i1u)
    np.bitwise_and(i1, i["sign"], i1)
    np.bitwise_xor(f3i, i1, f3i)
    return f2, f3


def _box_muller_numpy(v: dict, out_cos: np.ndarray, out_sin: np.ndarray) -> None:
    """The two normals of each hashed word of v["z"]: r cos into out_cos, r sin into
    out_sin (float32, as many elements as words, any shape)."""
    np.copyto(v["hiu"], v["halves"][:, _HI])
    np.copyto(v["lou"], v["halves"][:, _LO])
    r = _radius_numpy(v).reshape(out_cos.shape)
    cos, sin = _direction_numpy(v)
    np.multiply(r, cos.reshape(out_cos.shape), out_cos)
    np.multiply(r, sin.reshape(out_sin.shape), out_sin)


def _planes_numpy(key: int, start: int, count: int, w: int, out: np.ndarray) -> None:
    """Normals of candidates start..start+count-1 into ``out``, float32 [2, W, count]
    (out[0, i, n] = r cos of word i of candidate start + n, out[1] the sines)."""
    v = _scratch(w * count).views(w * count)
    _words_numpy(key, start, count, w, v)
    _box_muller_numpy(v, out[0], out[1])


def candidate_words_numpy(key: int, start: int, count: int, dims: int) -> np.ndarray:
    """The words of candidates start..start+count-1: uint64 [count, W]."""
    _check(key, start, count, dims)
    w = words_per_candidate(dims)
    return _words_numpy(key, start, count, w, _Scratch(w * count).views(w * count)).T.copy()


def _blocks(count: int, w: int, block_words: int):
    """(offset, size) of the candidate blocks of a range of ``count`` candidates."""
    rows = max(1, block_words // w)
    return ((s, min(rows, count - s)) for s in range(0, count, rows))


def normals_numpy(key: int, start: int, count: int, dims: int) -> np.ndarray:
    """Standard normals of candidates start..start+count-1 of chunk ``key`` (a 64-bit
    int): float32 [count, dims]. Candidate n's values depend on (key, n, dims) only."""
    key, start, count, dims = int(key), int(start), int(count), int(dims)
    _check(key, start, count, dims)
    w = words_per_candidate(dims)
    out = np.empty((count, 2, w), dtype=np.float32)
    for s, c in _blocks(count, w, BLOCK_WORDS):
        planes = np.empty((2, w, c), dtype=np.float32)
        _planes_numpy(key, start + s, c, w, planes)
        out[s:s + c] = planes.transpose(2, 0, 1)
    return out.reshape(count, 2 * w)[:, :dims]


def chunk_normals_numpy(keys, indices, dims) -> np.ndarray:
    """One candidate of each of several chunks at once (what a receiver regenerates):
    candidate indices[j] of chunk keys[j] with dims[j] normals, for j = 0..J-1. Returns
    float32 [sum(dims)], chunk after chunk: the values of
    normals_numpy(keys[j], indices[j], 1, dims[j])[0], with one pass of the generator
    over all the words instead of one per chunk."""
    dims = np.asarray(dims, dtype=np.int64)
    if len(dims) == 0:
        return np.empty(0, dtype=np.float32)
    w = (dims + 1) // 2
    for k, n, d in zip(keys, indices, dims):
        _check(int(k), int(n), 1, int(d))
    bases = np.array([_hash_inputs(int(k), int(n), int(ww))[0] for k, n, ww in zip(keys, indices, w)],
                     dtype=np.uint64)
    word_start = np.cumsum(w) - w                      # chunk j's first word
    total = int(w.sum())
    v = _scratch(total).views(total)
    within = np.arange(total, dtype=np.uint64) - np.repeat(word_start, w).astype(np.uint64)
    np.multiply(within, _K.u64["gamma"], within)
    np.add(np.repeat(bases, w), within, v["z"])        # word i of chunk j: base_j + i GAMMA
    _mix_numpy(v)
    both = np.empty(2 * total, dtype=np.float32)   # every word's cos normal, then its sin
    _box_muller_numpy(v, both[:total], both[total:])
    # output position p of chunk j, at q = p - (its first output): the cos normal of word
    # q (q < W_j) or the sin normal of word q - W_j
    out_start = np.cumsum(dims) - dims
    q = np.arange(int(dims.sum())) - np.repeat(out_start, dims)
    wj, first = np.repeat(w, dims), np.repeat(word_start, dims)
    return both[np.where(q < wj, first + q, total + first + q - wj)]


# -- torch -------------------------------------------------------------------------------
def _words_torch(key: int, start: int, count: int, w: int, device):
    """:func:`_words_numpy` in int64 (multiplication wraps mod 2^64 in two's complement;
    a logical right shift is an arithmetic one then a mask): int64 [W, count]."""
    import torch
    base, step = _hash_inputs(key, start, w)
    col = torch.arange(w, dtype=torch.int64, device=device) * signed64(SPLITMIX_GAMMA) + signed64(base)
    z = col[:, None] + torch.arange(count, dtype=torch.int64, device=device)[None, :] * signed64(step)
    return mix64_torch(z)


def candidate_words_torch(key: int, start: int, count: int, dims: int, device="cpu"):
    """The bits of :func:`candidate_words_numpy` as int64 [count, W] on ``device``."""
    _check(key, start, count, dims)
    return _words_torch(key, start, count, words_per_candidate(dims), device).T


def _sqrt_torch(x):
    """The correctly rounded float32 square root. torch.sqrt on float32 CPU tensors is
    not (torch 2.14, AVX2: about a fifth of the results differ from IEEE in the last bit);
    a float64 root within 2 ulps, rounded to float32, is: the exact root of a float32
    lies at least 2^-27 float32 ulps from any rounding midpoint (a midpoint's square has
    47 or more significant bits, a float32 24), and a float64 ulp is 2^-29 of one."""
    import torch
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def _radius_torch(hi):
    """:func:`_radius_numpy` in torch, op for op (every float op separate: no fusion)."""
    import torch
    f32 = torch.float32
    x = (hi >> 8).to(f32)
    x = x + _A_OFFSET
    xi = x.view(torch.int32) + _LOG_SHIFT
    r = ((xi >> 23) - _LOG_BIAS).to(f32)
    x = ((xi & 0x7FFFFF) + _SQRT_HALF_BITS).view(f32)
    f = (x - 1.0) / (x + 1.0)
    s = f * f
    p = s * _Q3
    p = p + _Q2
    p = p * s
    p = p + _Q1
    p = p * s
    p = p + (-4.0)
    p = p * f
    r = r * _M2LN2
    return _sqrt_torch(r + p)


def _direction_torch(lo):
    """:func:`_direction_numpy` in torch, op for op (torch's int32 left shifts wrap)."""
    import torch
    f32 = torch.float32
    h = (lo << 2) >> 31
    j = ((h ^ lo) & _J_MASK) | 128
    y = j.to(f32) * _ANGLE_SCALE
    y2 = y * y
    p = y2 * _S3
    p = p + _S2
    p = p * y2
    p = p + _S1
    p = p * y2
    p = p * y
    sin = p + y
    cos = _sqrt_torch(1.0 - sin * sin)
    cos_i, sin_i = cos.view(torch.int32), sin.view(torch.int32)
    d = (cos_i ^ sin_i) & h
    cos_i = (cos_i ^ d) ^ (lo & _SIGN)
    sin_i = (sin_i ^ d) ^ ((lo << 1) & _SIGN)
    return cos_i.view(f32), sin_i.view(f32)


def _planes_torch(key: int, start: int, count: int, w: int, out) -> None:
    """:func:`_planes_numpy` in torch; ``out``: float32 [2, W, count] on its device."""
    import torch
    halves = _words_torch(key, start, count, w, out.device).reshape(-1).view(torch.int32).reshape(-1, 2)
    r = _radius_torch(halves[:, _HI]).reshape(w, count)
    cos, sin = _direction_torch(halves[:, _LO])
    torch.mul(r, cos.reshape(w, count), out=out[0])
    torch.mul(r, sin.reshape(w, count), out=out[1])


def _torch_block_words(device) -> int:
    import torch
    return TORCH_CPU_BLOCK_WORDS if torch.device(device).type == "cpu" else TORCH_BLOCK_WORDS


def normals_torch(key: int, start: int, count: int, dims: int, device="cpu"):
    """:func:`normals_numpy` with torch on ``device``: torch.float32 [count, dims], the
    same bits."""
    import torch
    key, start, count, dims = int(key), int(start), int(count), int(dims)
    _check(key, start, count, dims)
    w = words_per_candidate(dims)
    out = torch.empty((count, 2, w), dtype=torch.float32, device=device)
    for s, c in _blocks(count, w, _torch_block_words(device)):
        planes = torch.empty((2, w, c), dtype=torch.float32, device=device)
        _planes_torch(key, start + s, c, w, planes)
        out[s:s + c] = planes.permute(2, 0, 1)
    return out.reshape(count, 2 * w)[:, :dims]
