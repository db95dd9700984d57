"""Channel simulation of diagonal Gaussians under shared randomness.

The sender knows a target q = N(mean_q, var_q) and the receiver knows a proposal
p = N(mean_p, var_p) (both diagonal, float64, shape [d]). The sender transmits a few
integers from which the receiver regenerates a sample whose law is q, up to the
truncation stated below. The method is the Poisson functional representation (PFR, Li &
El Gamal 2018), cut into chunks of bounded KL:

1. Layout. The KL(q||p) of the d dimensions (bits) is rounded up to an integer Q and
   sent (exp-Golomb), or replaced by a ``kl_hint`` the receiver computes itself; the d
   dimensions, shuffled by a permutation both sides draw from the shared seed, are cut
   into J = min(d, max(1, ceil(Q / B))) contiguous groups of equal size (sizes differ by
   at most one). B is the chunk size in bits. The receiver knows Q and B, hence the
   layout; it never needs q. With a random permutation every chunk's KL is Q / J up to
   the chi-square scatter of the per-dimension KL (standard deviation about 2-3 bits at
   B = 12 on CIFAR latents); the search budget follows each chunk's own KL.
2. Candidates. Candidate n of chunk j is ``z_n = mean_p + sqrt(var_p) * eps_n`` with
   eps_n ~ N(0, I) regenerated from (seed, image, step, chunk, n) alone by the generator
   that ChannelParams names: GENERATOR_ID (v1), Philox-4x64 (numpy) keyed by the chunk,
   counter n * words_per_candidate / 4, Box-Muller on the words with the math library's
   log, cos and sin (:func:`candidate_normals`); or GENERATOR_V2, a counter hash and
   Box-Muller in exact IEEE float32 arithmetic, the same bits in numpy and torch on any
   device, and faster (:mod:`ddpmcodec.codec.candidates`). The sender scores
   candidates in blocks and never stores them; the receiver regenerates only the
   selected one.
3. Selection. With encoder-private arrival times T_n = E_1 + ... + E_n (E ~ Exp(1)), PFR
   picks ``n* = argmin_n T_n / w(z_n)``, w = q/p (v1: :func:`pfr_select`, arrivals from
   one generator across the chunks; v2: candidates.pfr_search, float32 scores, arrivals
   from a generator per chunk, so that chunks may be searched in any order). Among
   infinitely many candidates this z_{n*} is an exact sample of q. The sender searches at
   most N = 2^(Q/J + m) candidates in every chunk (Q/J: the layout's mean chunk KL in
   bits, m: the margin; capped at 2^max_log2 and at MAX_CANDIDATE_DIMS normals; before,
   N_j = 2^ceil(D_j + m) from the chunk's own KL D_j: :func:`search_budget`), and
   stops early, exactly, once no later candidate can win (possible when var_q < var_p,
   where w is bounded). The truncation is the only approximation: the selected sample's
   law differs from q only on the event that the exact PFR winner lies beyond N_j; its
   effect is measured in tests/test_channel.py and docs/progressive.md.
4. Index code. n* is sent as its octave e = bit_length(n*+1) - 1, then e uniform
   mantissa bits. The octave's model (:class:`IndexModel`) is adaptive along the stream,
   with a prior: a discretised Gaussian on log2(n*+1) centred near the mean chunk KL Q/J
   (the spread of the PFR index comes from the information density, whose variance is
   about 2*KL nats), truncated at the search budget. With a full search this costs the
   chunk's KL plus about 2-3 bits (PFR's overhead); a short search costs less but biases
   the sample towards p.

All symbols go through one entropy coder, first in, first out (the writer's backend: a
constriction range coder per packet in formats 1-2, :mod:`.arith` in format 3), so a
stream holds steps in the order they were coded. All math here is float64 numpy (but
v2's candidates, float32, and its scores). Only the candidate generator and the integer
layout must agree bit for bit between the two sides; scores are encoder-only.

Units: KL in bits unless a name says nats; d = number of dimensions of one target.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from ddpmcodec.codec import candidates as cand
from ddpmcodec.codec import coder
from ddpmcodec.errors import DDPMCodecError

LN2 = math.log(2.0)
GENERATOR_ID = "philox4x64-boxmuller-v1"
GENERATOR_V2 = cand.GENERATOR_V2  # "hash-bmpoly-v2"
GENERATORS = (GENERATOR_ID, GENERATOR_V2)
_TWO32 = 2.0 ** -32
_TWO24_2PI = np.float32(2.0 ** -24 * 2.0 * math.pi)
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
MAX_LOG2_CANDIDATES = 40    # the index alphabet: octaves 0..40
MAX_SIDE_EXPONENT = 31      # exp-Golomb side integers below 2^32 (octave: 5 bits)
_UNIFORM_PIECE = 16         # mantissa bits per Uniform symbol (constriction allows < 2^24)
_FLOOR = 1e-6               # every octave keeps at least this probability (robustness)

# Calibration of the index code (see docs/progressive.md): log2(n*+1) is modelled as
# N(mean_chunk_kl + _IDX_OFFSET, _IDX_VAR_SLOPE * mean_chunk_kl + _IDX_VAR_CONST) in bits.
# The PFR index satisfies log n* ~= log w(z*) + log E, E ~ Exp(1): mean KL - 0.83 bits;
# variance 2*KL nats^2 (information density of a mean shift) + pi^2/6 (log of Exp(1)).
_IDX_OFFSET = -0.83
_IDX_VAR_SLOPE = 2.0 / LN2          # (2 * KL * ln2 nats) / ln2^2 -> bits^2 per bit of KL
_IDX_VAR_CONST = (math.pi ** 2 / 6.0) / LN2 ** 2


# -- shared randomness ----------------------------------------------------------------------
def _mix64(z: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2^64)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash_path(h: int, *counters: int) -> int:
    """``h`` (a seed's or a path's hash) continued through ``counters``."""
    for c in counters:
        h = _mix64(h ^ _mix64(int(c) + _SPLITMIX_GAMMA))
    return h


def derive_key(seed: int, *counters: int) -> np.ndarray:
    """A 128-bit Philox key (uint64 [2]) for a tuple of non-negative integers."""
    h = _hash_path(_mix64(int(seed) + _SPLITMIX_GAMMA), *counters)
    return np.array([h, _mix64(h + 0x632BE59BD9B4E019)], dtype=np.uint64)


def words_per_candidate(dims: int) -> int:
    """uint64 words one candidate of ``dims`` normals uses: one word per two normals,
    padded to whole Philox blocks (4 words) so that candidate n starts at counter n*w/4."""
    half = (dims + 1) // 2
    return 4 * ((half + 3) // 4)


def candidate_normals(key: np.ndarray, start: int, count: int, dims: int) -> np.ndarray:
    """Standard normals for candidates start..start+count-1: float64 [count, dims].

    Word i of a candidate gives u1 (high 32 bits) and u2 (top 24 of the low 32 bits);
    Box-Muller r = sqrt(-2 ln u1) (float64), angle 2 pi u2 (float32 cos/sin); normal i is
    r_i cos, normal half+i is r_i sin. Tails are cut at 6.66 sigma, angles are on a 2^-24
    grid: the law differs from N(0, 1) by less than 1e-7 in distribution function.
    The result for candidate n depends on (key, n, dims) only, not on start or count.
    """
    wpc = words_per_candidate(dims)
    half = (dims + 1) // 2
    counter = np.array([start * (wpc // 4), 0, 0, 0], dtype=np.uint64)
    words = np.random.Philox(key=key, counter=counter).random_raw(count * wpc)
    # uint32 halves (little-endian: [..., 0] low, [..., 1] high); converting uint32 is
    # much faster than converting uint64
    halves = words.view(np.uint32).reshape(count, wpc, 2)[:, :half]
    r = np.sqrt(-2.0 * np.log((halves[..., 1].astype(np.float64) + 1.0) * _TWO32))
    theta = (halves[..., 0] >> np.uint32(8)).astype(np.float32)
    theta *= _TWO24_2PI
    out = np.empty((count, 2, half))
    np.multiply(r, np.cos(theta), out=out[:, 0])
    np.multiply(r, np.sin(theta), out=out[:, 1])
    out = out.reshape(count, 2 * half)
    return out[:, :dims]


def generator_check(generator: str = GENERATOR_ID) -> int:
    """CRC-32 of a fixed set of candidates of ``generator``, for a file to record: a
    decoder whose candidates differ fails it before any work. v1 depends on numpy's Philox
    and on the math library's log, cos and sin, so the check guards against another
    machine or library; v2 is exact IEEE float32 and integer arithmetic, the same on every
    machine and device (no device-kind guard needed), so its check only catches a broken
    implementation."""
    key = derive_key(12345, 6, 7)
    if generator == GENERATOR_ID:
        data = np.ascontiguousarray(candidate_normals(key, 3, 2, 7), dtype="<f8")
    elif generator == GENERATOR_V2:
        data = np.ascontiguousarray(cand.normals_numpy(int(key[0]), 3, 2, 7), dtype="<f4")
    else:
        raise DDPMCodecError(f"unknown candidate generator {generator!r} (known: "
                             f"{', '.join(GENERATORS)})")
    return zlib.crc32(data.tobytes()) & 0xFFFFFFFF


def shared_permutation(key: np.ndarray, dims: int) -> np.ndarray:
    """A permutation of range(dims) from the key: stable argsort of Philox words (integer
    operations only, so the same on every machine)."""
    words = np.random.Philox(key=key).random_raw(dims)
    return np.argsort(words, kind="stable")


def chunk_slices(dims: int, num_chunks: int) -> list[tuple[int, int]]:
    """[start, stop) of ``num_chunks`` near-equal contiguous groups of range(dims) (the
    first dims % num_chunks groups are one longer), as numpy.array_split cuts."""
    base, extra = divmod(dims, num_chunks)
    out, start = [], 0
    for j in range(num_chunks):
        stop = start + base + (1 if j < extra else 0)
        out.append((start, stop))
        start = stop
    return out


# -- Gaussian algebra -----------------------------------------------------------------------
def kl_bits(mean_q, var_q, mean_p, var_p) -> np.ndarray:
    """Elementwise KL(N(mean_q, var_q) || N(mean_p, var_p)) in bits (float64 arrays)."""
    ratio = var_q / var_p
    return 0.5 * (ratio - 1.0 - np.log(ratio) + (mean_q - mean_p) ** 2 / var_p) / LN2


def score_coefficients(mean_q, var_q, mean_p, var_p):
    """log w(z) for z = mean_p + sqrt(var_p) * eps, as alpha . eps^2 + beta . eps + const
    (nats): alpha = (1 - var_p/var_q)/2, beta = sqrt(var_p) (mean_q - mean_p)/var_q,
    const = sum(-(mean_q - mean_p)^2 / (2 var_q) + log(var_p/var_q)/2)."""
    delta = mean_q - mean_p
    alpha = 0.5 * (1.0 - var_p / var_q)
    beta = np.sqrt(var_p) * delta / var_q
    const = float(np.sum(-0.5 * delta ** 2 / var_q + 0.5 * np.log(var_p / var_q)))
    return alpha, beta, const


def log_weight_bound(alpha, beta, const) -> float:
    """sup_z log w(z) in nats; +inf unless var_q < var_p in every dimension."""
    if not np.all(alpha < 0):
        return math.inf
    return const + float(np.sum(-beta ** 2 / (4.0 * alpha)))


@dataclass
class Selection:
    index: int          # n*, 0-based
    searched: int       # candidates scored
    budget: int         # N_j, the most the search would score
    exact: bool         # stopped because no later candidate could win (exact PFR)
    log_weight: float   # log w(z_{n*}) in nats


def pfr_select(alpha, beta, const, key, budget: int, private_rng: np.random.Generator,
               block_elems: int = 1 << 16) -> Selection:
    """Truncated Poisson functional representation over candidates 0..budget-1.

    alpha, beta: float64 [dims] score coefficients (:func:`score_coefficients`); key: the
    chunk's Philox key; private_rng: the sender's own generator for the arrival times.
    Returns the winner argmax_n (log w_n - log T_n) among the candidates searched.
    """
    dims = len(alpha)
    bound = log_weight_bound(alpha, beta, const)
    rows = max(1, min(budget, block_elems // max(dims, 1)))
    best, best_n, best_lw, t_last, start = -math.inf, 0, -math.inf, 0.0, 0
    exact = False
    while start < budget:
        count = min(rows, budget - start)
        eps = candidate_normals(key, start, count, dims)
        lw = (eps * eps) @ alpha + eps @ beta + const
        arrivals = t_last + np.cumsum(private_rng.standard_exponential(count))
        t_last = float(arrivals[-1])
        score = lw - np.log(arrivals)
        j = int(np.argmax(score))
        if score[j] > best:
            best, best_n, best_lw = float(score[j]), start + j, float(lw[j])
        start += count
        if bound - math.log(t_last) <= best:  # no later candidate can beat the winner
            exact = True
            break
    return Selection(best_n, start, budget, exact, best_lw)


# -- entropy models -------------------------------------------------------------------------
def _normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr
    return ndtr(x)


def index_octave_probs(mean_chunk_bits: float, max_log2: int, margin_bits: float | None = None) -> np.ndarray:
    """Static P(octave e), e = 0..max_log2, of the PFR index in a chunk whose expected KL
    is ``mean_chunk_bits``: a Gaussian on log2(n+1) (calibration constants above) whose
    mass above the search budget 2^(mean + margin) is folded into the budget's octave,
    floored so that any octave can be coded."""
    mu = mean_chunk_bits + _IDX_OFFSET
    sd = math.sqrt(_IDX_VAR_SLOPE * max(mean_chunk_bits, 0.0) + _IDX_VAR_CONST)
    top = max_log2
    if margin_bits is not None:
        top = int(min(max_log2, max(0, math.ceil(mean_chunk_bits + margin_bits))))
    edges = np.arange(max_log2 + 2, dtype=np.float64)
    cdf = _normal_cdf((edges - mu) / sd)
    cdf[0] = 0.0                      # octave 0 takes the lower tail
    cdf[top + 1:] = 1.0               # the budget's octave takes the upper tail
    probs = np.diff(cdf)
    probs = np.maximum(probs, _FLOOR)
    return probs / probs.sum()


class IndexModel:
    """Adaptive model of the index octave, shared by sender and receiver along a stream.

    P(e) is proportional to ``prior_weight`` times the static prior
    (:func:`index_octave_probs`) plus the counts of the octaves coded so far, counted by
    their offset from floor(mean chunk KL), in two contexts (targets of one chunk, whose
    KL may be far below B, and of several). Both sides update it identically after every
    chunk, so it learns the truncated index law of the actual search settings and data.
    """

    WINDOW = 24

    def __init__(self, params: "ChannelParams", prior_weight: float = 16.0):
        self.params = params
        self.prior_weight = float(prior_weight)
        self.counts = np.zeros((2, 2 * self.WINDOW + 1))

    def _offsets(self, mean_bits: float) -> np.ndarray:
        return np.arange(self.params.max_log2 + 1) - int(math.floor(mean_bits))

    def probs(self, mean_bits: float, context: int) -> np.ndarray:
        prior = index_octave_probs(mean_bits, self.params.max_log2, self.params.margin_bits)
        off = self._offsets(mean_bits)
        inside = np.abs(off) <= self.WINDOW
        counts = np.zeros(len(off))
        counts[inside] = self.counts[context, off[inside] + self.WINDOW]
        p = np.maximum(self.prior_weight * prior + counts, _FLOOR)
        return p / p.sum()

    def update(self, octave: int, mean_bits: float, context: int) -> None:
        o = octave - int(math.floor(mean_bits))
        if abs(o) <= self.WINDOW:
            self.counts[context, o + self.WINDOW] += 1.0


def _code_bits(probs: np.ndarray, symbol: int) -> float:
    return -math.log2(float(probs[symbol]))


class SymbolWriter:
    """Entropy-codes the integers of a stream and tallies their ideal code length (bits)
    per label, for the statistics. ``backend``: an object with ``categorical(symbol,
    probs)`` and ``raw(value, nbits)`` (nbits <= 16): :class:`coder.QueueWriter` (the
    default; packets of format 2) or :class:`arith.ArithEncoder` (format 3's stream)."""

    def __init__(self, backend=None):
        self.coder = backend if backend is not None else coder.QueueWriter()
        self.bits: dict[str, float] = {}

    def _tally(self, label: str, bits: float) -> None:
        self.bits[label] = self.bits.get(label, 0.0) + bits

    def categorical(self, symbol: int, probs: np.ndarray, label: str) -> None:
        self.coder.categorical(symbol, probs)
        self._tally(label, _code_bits(probs, symbol))

    def uniform_bits(self, value: int, nbits: int, label: str) -> None:
        """``nbits`` raw bits (value < 2^nbits), in pieces of at most 16 bits."""
        while nbits > 0:
            piece = min(nbits, _UNIFORM_PIECE)
            nbits -= piece
            part = (value >> nbits) & ((1 << piece) - 1)
            self.coder.raw(part, piece)
            self._tally(label, piece)

    def exp_golomb(self, value: int, label: str, max_exponent: int = MAX_SIDE_EXPONENT,
                   octave_probs: np.ndarray | None = None) -> None:
        """A non-negative integer: octave of value+1 (uniform over 0..max_exponent, or
        ``octave_probs`` of that length), then its mantissa bits."""
        v, e = int(value) + 1, octave(value)
        if e > max_exponent:
            raise DDPMCodecError(f"side integer {value} is too large to code")
        probs = octave_probs if octave_probs is not None else np.full(max_exponent + 1, 1.0 / (max_exponent + 1))
        self.categorical(e, probs, label)
        self.uniform_bits(v - (1 << e), e, label)

    def index(self, n: int, octave_probs: np.ndarray, label: str = "index") -> None:
        v, e = int(n) + 1, octave(n)
        if e >= len(octave_probs):
            raise DDPMCodecError(f"candidate index {n} outside the index alphabet")
        self.categorical(e, octave_probs, label)
        self.uniform_bits(v - (1 << e), e, label)

    def words(self) -> np.ndarray:
        """The sealed stream (uint32 words)."""
        return self.coder.words()


class SymbolReader:
    """Mirror of :class:`SymbolWriter` on a backend with ``categorical(probs)`` and
    ``raw(nbits)`` (or a uint32 word array, read by :class:`coder.QueueReader`). Garbage
    in gives garbage integers (or DDPMCodecError where the decoder finds the stream
    invalid, or :class:`arith.Exhausted` where a prefix ends), never another error:
    callers bound every integer they use."""

    def __init__(self, backend):
        self.coder = coder.QueueReader(backend) if isinstance(backend, np.ndarray) else backend

    def categorical(self, probs: np.ndarray) -> int:
        return self.coder.categorical(probs)

    def uniform_bits(self, nbits: int) -> int:
        value = 0
        while nbits > 0:
            piece = min(nbits, _UNIFORM_PIECE)
            nbits -= piece
            part = self.coder.raw(piece)
            value = (value << piece) | part
        return value

    def exp_golomb(self, max_exponent: int = MAX_SIDE_EXPONENT,
                   octave_probs: np.ndarray | None = None) -> int:
        probs = octave_probs if octave_probs is not None else np.full(max_exponent + 1, 1.0 / (max_exponent + 1))
        e = self.categorical(probs)
        return (1 << e) + self.uniform_bits(e) - 1

    def index(self, octave_probs: np.ndarray) -> int:
        e = self.categorical(octave_probs)
        return (1 << e) + self.uniform_bits(e) - 1


# -- one Gaussian through the channel -------------------------------------------------------
@dataclass(frozen=True)
class ChannelParams:
    """Protocol constants both sides share (stored in the file).

    chunk_bits: B, the KL per chunk the layout aims at (bits).
    margin_bits: m; the sender searches about 2^(mean chunk KL + m) candidates per chunk
    (:func:`search_budget`), and the receiver's index model is truncated there.
    max_log2: the search never goes beyond 2^max_log2 candidates; also the index alphabet.
    generator: the candidate generator, one of GENERATORS. The default is v1, the
    generator of every stream made before v2 existed; the progressive codec sets the one
    its file names (v2 in format 3).
    """

    chunk_bits: float = 12.0
    margin_bits: float = 6.0
    max_log2: int = 24
    generator: str = GENERATOR_ID

    def validate(self) -> "ChannelParams":
        if not (1.0 <= self.chunk_bits <= 32.0):
            raise DDPMCodecError(f"--chunk-bits must be between 1 and 32, got {self.chunk_bits}")
        if not (0.0 <= self.margin_bits <= 24.0):
            raise DDPMCodecError(f"the candidate margin must be between 0 and 24 bits, got {self.margin_bits}")
        if not (1 <= self.max_log2 <= MAX_LOG2_CANDIDATES):
            raise DDPMCodecError(f"max log2 candidates must be 1..{MAX_LOG2_CANDIDATES}, got {self.max_log2}")
        if self.generator not in GENERATORS:
            raise DDPMCodecError(f"unknown candidate generator {self.generator!r} "
                                 f"(known: {', '.join(GENERATORS)})")
        return self


@dataclass
class ChannelStats:
    """What one channel-simulated Gaussian cost and how its search went."""

    kl_bits: float = 0.0                 # KL(q||p) summed over dimensions
    num_chunks: int = 0
    chunk_kl: list = field(default_factory=list)      # bits per chunk
    index_bits: list = field(default_factory=list)    # ideal code length per chunk
    side_bits: float = 0.0
    searched: int = 0                    # candidates scored (v2: up to its exact stop)
    exact_chunks: int = 0                # chunks whose search stopped exactly
    saturated_chunks: int = 0            # chunks whose winner lies in the top half of the budget

    @property
    def code_bits(self) -> float:
        return self.side_bits + float(sum(self.index_bits))


def layout(kl_ceil: int, params: ChannelParams, dims: int) -> int:
    """Number of chunks J for ``dims`` dimensions whose KL rounds up to ``kl_ceil`` bits:
    ceil(kl_ceil / B), at least 1 and at most one chunk per dimension."""
    return int(min(dims, max(1, math.ceil(kl_ceil / params.chunk_bits))))


def hint_to_int(kl_hint: float) -> int:
    """The integer KL (bits) a layout is built from, given a receiver-side hint."""
    if not math.isfinite(kl_hint) or kl_hint < 0:
        raise DDPMCodecError(f"channel simulation: bad KL hint {kl_hint}")
    return int(math.ceil(kl_hint))


MAX_CANDIDATE_DIMS = 1 << 27  # the most normals one chunk's search draws (sender's time)


BUDGET_RULES = ("layout", "chunk")


def search_budget(chunk_kl: float, mean_bits: float, params: ChannelParams, dims: int,
                  rule: str = "layout") -> int:
    """Candidates the sender searches in one chunk (encoder-only: the receiver never needs
    it). ``rule`` "layout": round(2^(mean_bits + m)) for every chunk of a layout, where
    ``mean_bits`` is the layout's mean chunk KL, the centre of the receiver's index model;
    "chunk" (every encoder before it): 2^ceil(D_j + m) from the chunk's own KL D_j =
    ``chunk_kl``. Both are capped by the index alphabet and by MAX_CANDIDATE_DIMS (a guard
    on time; a chunk that hits it is truncated harder).

    Why "layout": a search costs budget x dims, and a random layout scatters chunk KLs by
    1-3 bits, so the "chunk" rule spends most of its time on the few chunks of highest KL
    (E[2^D_j] is far above 2^E[D_j]) and on rounding up. The index law of equal budgets
    also matches the receiver's model, which knows only the mean. Its time and rate
    against "chunk": benchmarks/bench_progressive_budget.py, docs/progressive.md.
    """
    cap = min(params.max_log2, max(0, int(math.floor(math.log2(MAX_CANDIDATE_DIMS / max(dims, 1))))))
    if rule == "layout":
        return int(max(1, min(1 << cap, round(2.0 ** max(0.0, mean_bits + params.margin_bits)))))
    check_budget_rule(rule)
    return 1 << int(min(cap, max(0, math.ceil(chunk_kl + params.margin_bits))))


def check_budget_rule(rule: str) -> None:
    """DDPMCodecError unless ``rule`` is one of BUDGET_RULES."""
    if rule not in BUDGET_RULES:
        raise DDPMCodecError(f"unknown search budget rule {rule!r} (known: {', '.join(BUDGET_RULES)})")


def octave(n: int) -> int:
    """The octave e of a non-negative integer n: 2^e <= n + 1 < 2^(e+1)."""
    return (int(n) + 1).bit_length() - 1


@dataclass
class _ChunkPlan:
    """What both sides derive from the integer KL of one Gaussian before any index: the
    chunks (dimension indices of the flattened target, by the shared permutation), the
    mean chunk KL (bits) and context of the index model, the chunks' keys and the
    candidate generator."""

    groups: list            # int64 arrays of dimension indices, one per chunk
    mean_bits: float
    context: int
    model: IndexModel
    key_seed: int
    key_path: tuple
    generator: str
    path_hash: int          # derive_key's hash of (key_seed, *key_path), before the chunk

    @classmethod
    def make(cls, q_int: int, params: ChannelParams, dims: int, key_seed: int, key_path: tuple,
             index_model: IndexModel | None) -> _ChunkPlan:
        J = layout(q_int, params, dims)  # bounded by dims whatever a corrupt stream claims
        perm = shared_permutation(derive_key(key_seed, *key_path, 0xC0FFEE), dims)
        model = index_model if index_model is not None else IndexModel(params)
        path_hash = _hash_path(_mix64(int(key_seed) + _SPLITMIX_GAMMA), *key_path)
        return cls([perm[a:b] for a, b in chunk_slices(dims, J)], q_int / J, int(J > 1),
                   model, key_seed, key_path, params.generator, path_hash)

    def key(self, j: int) -> np.ndarray:
        """The Philox key of chunk j's candidates."""
        return derive_key(self.key_seed, *self.key_path, j + 1)

    def v2_key(self, j: int) -> int:
        """The 64-bit key of chunk j's v2 candidates: the first word of its Philox key
        (derive_key's hash, continued from the path's)."""
        return _hash_path(self.path_hash, j + 1)

    def octave_probs(self) -> np.ndarray:
        return self.model.probs(self.mean_bits, self.context)

    def update(self, index: int) -> None:
        """Both sides, after each chunk's index: the adaptive model learns its octave."""
        self.model.update(octave(index), self.mean_bits, self.context)

    def place(self, out: np.ndarray, indices: list, mp: np.ndarray, vp: np.ndarray) -> None:
        """Write candidate indices[j] of every chunk j (mean_p + sqrt(var_p) * eps) into
        ``out`` (v2: all chunks' normals in one pass of the generator)."""
        if self.generator == GENERATOR_ID:
            for j, (idx, n) in enumerate(zip(self.groups, indices)):
                eps = candidate_normals(self.key(j), n, 1, len(idx))[0]
                out[idx] = mp[idx] + np.sqrt(vp[idx]) * eps
            return
        if not self.groups:
            return
        eps = cand.chunk_normals_numpy([self.v2_key(j) for j in range(len(self.groups))],
                                       indices, [len(idx) for idx in self.groups])
        idx = np.concatenate(self.groups)
        out[idx] = mp[idx] + np.sqrt(vp[idx]) * eps.astype(np.float64)


_POOLS: dict = {}  # this process's search pools by their number of processes
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's pools (and maybe its held lock) are not its own."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def default_search_workers() -> int:
    """The CPUs this process may run on: the encoder's default number of search processes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def check_search_workers(workers: int | None) -> int:
    """``workers`` (None: :func:`default_search_workers`) as a positive int, or a
    DDPMCodecError."""
    if workers is None:
        return default_search_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DDPMCodecError(f"search workers must be a positive integer, got {workers!r}")
    return int(workers)


def _search_pool(workers: int) -> ProcessPoolExecutor | None:
    """The process's pool of ``workers`` search processes (made once), or None where
    processes are forked unsafely or not at all (not Linux), and in a process that
    multiprocessing started (a daemonic one, such as a DataLoader or Pool worker, may
    have no children; another would wait for the pool's processes at its exit, which
    only the interpreter's own exit stops): the search then runs here.

    Forked, because a forked worker starts in milliseconds, needs no picklable model and
    never re-runs the user's main module (spawn and forkserver do, which breaks scripts
    without a ``__main__`` guard). A worker runs numpy only, never torch, so the parent's
    torch threads cannot deadlock it."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.parent_process() is not None:
        return None
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_ignore_interrupts)
            with warnings.catch_warnings():  # Python >= 3.12 warns of any fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pool.submit(int).result()  # the first task forks all the processes
            _POOLS[workers] = pool
        return pool


def close_search_pools() -> None:
    """Stop this process's search processes (they are made again when needed). They
    otherwise live, idle, until the interpreter exits, holding their copy of the memory
    this process had when they were forked."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_interrupts() -> None:
    """A search process leaves Ctrl-C to the encoder's process (which stops the encode)
    instead of printing its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _search_task(task: tuple) -> "Selection":
    """One chunk's v2 search (a search process's unit of work)."""
    return cand.pfr_search(*task)


def _search_backend(search_device: str | None) -> tuple[str, str]:
    """(backend, device) of candidates.pfr_search for ``search_device``: None or "cpu":
    numpy; "torch:DEVICE" (e.g. "torch:cpu"): torch on DEVICE; any other torch device
    ("cuda", "cuda:1", ...): torch on it."""
    if search_device is None or search_device == "cpu":
        return "numpy", "cpu"
    if search_device.startswith("torch:"):
        return "torch", search_device[len("torch:"):]
    return "torch", search_device


def check_search_device(search_device: str | None) -> None:
    """DDPMCodecError unless torch can allocate on the search device (None, cpu: numpy)."""
    backend, device = _search_backend(search_device)
    if backend == "numpy":
        return
    import torch
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise DDPMCodecError(f"--search-device {search_device}: {exc}") from None


def _search_chunks(plan: _ChunkPlan, chunks: list, private_rng: np.random.Generator,
                   search_device: str | None, search_workers: int) -> list:
    """The Selection of every chunk; ``chunks``: (alpha, beta, const, budget) each.

    v1: :func:`pfr_select` in chunk order, the arrival times from ``private_rng`` in
    sequence. v2: chunk j's arrival times come from its own generator, seeded by (one
    draw of ``private_rng``, j), so the chunks may be searched in any order and anywhere:
    with numpy on ``search_workers`` processes, or in torch on ``search_device``."""
    backend, device = _search_backend(search_device)
    if plan.generator == GENERATOR_ID:
        if backend != "numpy":
            raise DDPMCodecError(f"{GENERATOR_ID} candidates are searched with numpy only, "
                                 f"not on {search_device!r}")
        return [pfr_select(a, b, c, plan.key(j), budget, private_rng)
                for j, (a, b, c, budget) in enumerate(chunks)]
    seed = int(private_rng.integers(0, 1 << 63))
    tasks = [(a, b, c, plan.v2_key(j), budget, (seed, j), backend, device)
             for j, (a, b, c, budget) in enumerate(chunks)]
    workers = min(search_workers, len(tasks))
    # numpy holds the GIL between its short array operations, so threads gain nothing
    # (benchmarks/bench_candidates.py); processes do
    pool = _search_pool(workers) if workers > 1 and backend == "numpy" else None
    if pool is not None:
        try:
            # a few batches per process: a message per chunk costs about as much as a
            # small chunk's search
            return list(pool.map(_search_task, tasks, chunksize=-(-len(tasks) // (4 * workers))))
        except BrokenProcessPool:  # a worker died (killed, out of memory): search here
            with _POOLS_LOCK:
                _POOLS.pop(workers, None)
            warnings.warn("a candidate-search process died; searching in this process",
                          RuntimeWarning, stacklevel=2)
    return [_search_task(t) for t in tasks]


def encode_gaussian(writer: SymbolWriter, mean_q, var_q, mean_p, var_p, params: ChannelParams,
                    key_seed: int, key_path: tuple, private_rng: np.random.Generator,
                    stats: ChannelStats | None = None, kl_hint: float | None = None,
                    index_model: IndexModel | None = None, search_device: str | None = None,
                    search_workers: int | None = 1, budget_rule: str = "layout") -> np.ndarray:
    """Send a sample of q = N(mean_q, var_q) to a receiver that knows p = N(mean_p, var_p)
    (float64 arrays of one shape, var_* > 0); return that sample (float64, q's shape),
    exactly as :func:`decode_gaussian` will regenerate it.

    ``key_seed`` and ``key_path`` (a tuple of ints, e.g. (image, step)) name the shared
    randomness; a path must never be reused within a stream. Encoder-only options of a
    v2 generator (the stream does not depend on them): ``search_device`` (None or "cpu":
    numpy; a torch device such as "cuda", or "torch:cpu": torch there) and
    ``search_workers`` (numpy searches: chunks searched at once on that many forked
    processes on Linux; None: one per CPU, :func:`default_search_workers`). ``budget_rule``
    (any generator; it changes the stream, not the format): how many candidates each
    chunk's search may score, :func:`search_budget`.
    """
    shape = np.shape(mean_p)
    mq, vq, mp, vp = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape).reshape(-1)
                      for a in (mean_q, var_q, mean_p, var_p))
    dims = mp.size
    kl = kl_bits(mq, vq, mp, vp)
    total = float(kl.sum())
    if not math.isfinite(total):
        raise DDPMCodecError("channel simulation: non-finite KL (check the variances)")
    start_bits = dict(writer.bits)
    if kl_hint is None:
        q_int = int(math.ceil(total - 1e-9)) if total > 0 else 0
        writer.exp_golomb(q_int, "side")
    else:
        q_int = hint_to_int(kl_hint)
    plan = _ChunkPlan.make(q_int, params, dims, key_seed, key_path, index_model)
    out = np.empty(dims)
    st = stats if stats is not None else ChannelStats()
    st.kl_bits += total
    st.num_chunks += len(plan.groups)
    chunk_kl = [float(kl[idx].sum()) for idx in plan.groups]
    chunks = [(*score_coefficients(mq[idx], vq[idx], mp[idx], vp[idx]),
               search_budget(d_j, plan.mean_bits, params, len(idx), budget_rule))
              for idx, d_j in zip(plan.groups, chunk_kl)]
    selections = _search_chunks(plan, chunks, private_rng, search_device,
                                check_search_workers(search_workers))
    # the indices go to the stream, and the index model learns them, in chunk order
    for sel, d_j, (*_, budget) in zip(selections, chunk_kl, chunks):
        before = writer.bits.get("index", 0.0)
        writer.index(sel.index, plan.octave_probs())
        plan.update(sel.index)
        st.index_bits.append(writer.bits["index"] - before)
        st.chunk_kl.append(d_j)
        st.searched += sel.searched
        st.exact_chunks += int(sel.exact)
        st.saturated_chunks += int(not sel.exact and sel.index >= budget // 2 and budget > 1)
    plan.place(out, [sel.index for sel in selections], mp, vp)
    st.side_bits += writer.bits.get("side", 0.0) - start_bits.get("side", 0.0)
    return out.reshape(shape)


def decode_gaussian(reader: SymbolReader, mean_p, var_p, params: ChannelParams,
                    key_seed: int, key_path: tuple, kl_hint: float | None = None,
                    index_model: IndexModel | None = None) -> np.ndarray:
    """The receiver's half of :func:`encode_gaussian`: the same sample, from p alone
    (``index_model``: the stream's, in the same state as the sender's)."""
    shape = np.shape(mean_p)
    mp = np.asarray(mean_p, dtype=np.float64).reshape(-1)
    vp = np.broadcast_to(np.asarray(var_p, dtype=np.float64), shape).reshape(-1)
    dims = mp.size
    q_int = reader.exp_golomb() if kl_hint is None else hint_to_int(kl_hint)
    plan = _ChunkPlan.make(q_int, params, dims, key_seed, key_path, index_model)
    out = np.empty(dims)
    indices = []
    for _ in plan.groups:
        indices.append(reader.index(plan.octave_probs()))
        plan.update(indices[-1])
    plan.place(out, indices, mp, vp)
    return out.reshape(shape)
