"""The index code: a selected candidate's index as its octave (an adaptive model with a
prior centred near the chunk's KL) and uniform mantissa bits, and the symbol writer and
reader every channel symbol goes through."""
from __future__ import annotations

import functools
import math

import numpy as np

from ddpmcodec.codec.entropy import coder
from ddpmcodec.codec.progressive.channel.search import LN2
from ddpmcodec.errors import DDPMCodecError

MAX_SIDE_EXPONENT = 31      # exp-Golomb side integers below 2^32 (octave: 5 bits)
_UNIFORM_PIECE = 16         # mantissa bits per Uniform symbol (constriction allows < 2^24)
_FLOOR = 1e-6               # every octave keeps at least this probability (robustness)
# Calibration of the index code (see docs/progressive.md): log2(n*+1) is modelled as
# N(mean_chunk_kl + _IDX_OFFSET, _IDX_VAR_SLOPE * mean_chunk_kl + _IDX_VAR_CONST) in bits.
# The PFR index satisfies log n* ~= log w(z*) + log E, E ~ Exp(1): mean KL - 0.83 bits;
# variance 2*KL nats^2 (information density of a mean shift) + pi^2/6 (log of Exp(1)).
_IDX_OFFSET = -0.83
_IDX_VAR_SLOPE = 2.0 / LN2          # (2 * KL * ln2 nats) / ln2^2 -> bits^2 per bit of KL
_IDX_VAR_CONST = (math.pi * math.pi / 6.0) / (LN2 * LN2)  # products, not pow (libm)


def octave(n: int) -> int:
    """The octave e of a non-negative integer n: 2^e <= n + 1 < 2^(e+1)."""
    return (int(n) + 1).bit_length() - 1


# -- entropy models -------------------------------------------------------------------------
def _normal_cdf(x: np.ndarray, exact: bool = False) -> np.ndarray:
    if exact:  # IEEE operations only: the same bits on every machine
        from ddpmcodec.core.exact.functions import normal_cdf_basic
        return normal_cdf_basic(x)[0]
    from scipy.special import ndtr
    return ndtr(x)


@functools.lru_cache(maxsize=1024)
def index_octave_probs(mean_chunk_bits: float, max_log2: int, margin_bits: float | None = None,
                       exact: bool = False) -> np.ndarray:
    """Static P(octave e), e = 0..max_log2, of the PFR index in a chunk whose expected KL
    is ``mean_chunk_bits``: a Gaussian on log2(n+1) (calibration constants above) whose
    mass above the search budget 2^(mean + margin) is folded into the budget's octave,
    floored so that any octave can be coded. ``exact``: the normal distribution function
    without libm (exact files; float32 files keep scipy's)."""
    mu = mean_chunk_bits + _IDX_OFFSET
    sd = math.sqrt(_IDX_VAR_SLOPE * max(mean_chunk_bits, 0.0) + _IDX_VAR_CONST)
    top = max_log2
    if margin_bits is not None:
        top = int(min(max_log2, max(0, math.ceil(mean_chunk_bits + margin_bits))))
    edges = np.arange(max_log2 + 2, dtype=np.float64)
    cdf = _normal_cdf((edges - mu) / sd, exact)
    cdf[0] = 0.0                      # octave 0 takes the lower tail
    cdf[top + 1:] = 1.0               # the budget's octave takes the upper tail
    probs = np.diff(cdf)
    probs = np.maximum(probs, _FLOOR)
    probs = probs / probs.sum()
    # cached (a stream asks for the same few chunk KLs hundreds of times): read-only
    probs.flags.writeable = False
    return probs


class IndexModel:
    """Adaptive model of the index octave, shared by sender and receiver along a stream.

    P(e) is proportional to ``prior_weight`` times the static prior
    (:func:`index_octave_probs`) plus the counts of the octaves coded so far, counted by
    their offset from floor(mean chunk KL), in two contexts (targets of one chunk, whose
    KL may be far below B, and of several). Both sides update it identically after every
    chunk, so it learns the truncated index law of the actual search settings and data.
    """

    WINDOW = 24

    def __init__(self, params, prior_weight: float = 16.0, exact: bool = False):
        self.params = params
        self.prior_weight = float(prior_weight)
        self.exact = bool(exact)
        self.counts = np.zeros((2, 2 * self.WINDOW + 1))

    def _offsets(self, mean_bits: float) -> np.ndarray:
        return np.arange(self.params.max_log2 + 1) - int(math.floor(mean_bits))

    def probs(self, mean_bits: float, context: int) -> np.ndarray:
        prior = index_octave_probs(mean_bits, self.params.max_log2, self.params.margin_bits,
                                   self.exact)
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
