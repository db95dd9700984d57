"""The one wrapper around constriction's entropy coders, with the one error policy.

Both codecs code through here: the lossless codec on an ANS stack (:class:`Stack`), the
progressive codec through a range coder (:class:`QueueWriter` / :class:`QueueReader`).
This module owns the constriction imports, fixes the dtypes at the boundary (symbols
int32, model parameters float64, compressed words uint32, all C-contiguous), and is the
only place where an exception of constriction's becomes a :class:`DDPMCodecError`.

Error policy. A corrupt, truncated or foreign file is a DDPMCodecError, raised where the
condition is detected; anything else (a bug) keeps its own type and traceback. What
constriction 0.5 does with bad *data* was established by decoding thousands of random
word arrays (lengths 0..3000, with and without a zero last word) under every model the
codecs use (QuantizedGaussian, QuantizedLaplace, Uniform up to 2^16, Categorical), see
tests/test_codec_coder.py:

* ``AnsCoder(words)`` raises ValueError when the last word is zero ("ANS compressed data
  never ends in a zero word"). :class:`Stack` checks that condition itself, before
  constriction sees the words, so no exception is converted there.
* ``AnsCoder.decode`` never fails on data: constriction's models are leaky (every symbol
  has probability >= 2^-24), so any bits decode to some symbol, even from an empty stack.
  Nothing is converted there either.
* ``RangeDecoder.decode`` raises AssertionError ("Tried to decode from compressed data
  that is invalid for the employed entropy model") on some invalid streams. That one
  type, from that one call, is converted (:meth:`QueueReader.decode`).

What constriction raises for *programming* errors, which therefore must never be
converted: TypeError (an array of the wrong dtype), ValueError (parameters of unequal
shape, probabilities that do not normalise), KeyError (encoding a symbol outside the
model's support), and pyo3's PanicException (a non-positive std, a Uniform wider than
2^24).
"""
from __future__ import annotations

import numpy as np

from ddpmcodec.errors import DDPMCodecError

try:
    import constriction
    _models = constriction.stream.model
except ImportError:  # pragma: no cover - a dependency of the package
    constriction = None

# The bad-data exceptions of RangeDecoder.decode (see the module docstring); nothing else.
RANGE_DECODER_DATA_ERRORS = (AssertionError,)


def require() -> None:
    """DDPMCodecError unless constriction is importable."""
    if constriction is None:  # pragma: no cover
        raise DDPMCodecError("the codecs need the constriction package (pip install constriction)")


# -- entropy models -------------------------------------------------------------------------
def quantized_gaussian(lo: int, hi: int):
    """Gaussians quantized to the integers lo..hi; mean and std given per symbol."""
    return _models.QuantizedGaussian(int(lo), int(hi))


def quantized_laplace(lo: int, hi: int):
    """Laplace distributions quantized to the integers lo..hi; mean and scale per symbol."""
    return _models.QuantizedLaplace(int(lo), int(hi))


def uniform(size: int):
    """Uniform over 0..size-1 (constriction allows size <= 2^24)."""
    return _models.Uniform(int(size))


def categorical(probs: np.ndarray | None = None):
    """Categorical over 0..len(probs)-1 (leaky: every symbol keeps >= 2^-24); without
    ``probs``, a family whose probabilities are given per symbol as a [n, size] array."""
    if probs is None:
        return _models.Categorical(perfect=False)
    return _models.Categorical(_params(probs), perfect=False)


# -- dtypes at the boundary -----------------------------------------------------------------
def _symbols(symbols) -> np.ndarray:
    return np.ascontiguousarray(symbols, dtype=np.int32)


def _params(p) -> np.ndarray:
    return np.ascontiguousarray(p, dtype=np.float64)


def _words(words) -> np.ndarray:
    return np.ascontiguousarray(words, dtype=np.uint32)


# -- ANS stack (last in, first out) -----------------------------------------------------------
class Stack:
    """constriction's AnsCoder on uint32 words. ``words`` must end in a nonzero word (an
    ANS stack never ends in zero; a payload that does is corrupt: DDPMCodecError)."""

    def __init__(self, words=()):
        require()
        words = _words(words)
        if len(words) and words[-1] == 0:
            raise DDPMCodecError("corrupt file: the stream does not end like an ANS stack "
                                 "(its last word is zero)")
        self.ans = constriction.stream.stack.AnsCoder(words)

    def push(self, symbols, model, *params) -> None:
        """Encode int symbols so that :meth:`pop` returns them first to last (constriction's
        encode_reverse); ``params``: per-symbol model parameters (float64 arrays)."""
        self.ans.encode_reverse(_symbols(symbols), model, *(_params(p) for p in params))

    def pop(self, model, *params) -> np.ndarray:
        """Decode symbols (int32 array): one per entry of ``params``, or, for a model with
        fixed parameters, ``params`` = (count,). Never fails on data (leaky models)."""
        if params and np.isscalar(params[0]):
            return self.ans.decode(model, int(params[0]))
        return self.ans.decode(model, *(_params(p) for p in params))

    def num_words(self) -> int:
        return self.ans.num_words()

    def num_valid_bits(self) -> int:
        return self.ans.num_valid_bits()

    def words(self) -> np.ndarray:
        """The stack as uint32 words (its last word is nonzero)."""
        return self.ans.get_compressed()


def valid_bits(words) -> int:
    """Information content of an ANS stack's words, bits (num_valid_bits)."""
    return Stack(words).num_valid_bits()


# -- range coder (first in, first out) --------------------------------------------------------
class QueueWriter:
    """constriction's RangeEncoder: symbols one model at a time, sealed by :meth:`words`."""

    def __init__(self):
        require()
        self.coder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbol: int, model) -> None:
        self.coder.encode(_symbols([symbol]), model)

    def categorical(self, symbol: int, probs) -> None:
        self.encode(symbol, categorical(probs))

    def raw(self, value: int, nbits: int) -> None:
        """``nbits`` (<= 16) equiprobable bits."""
        self.encode(value, uniform(1 << nbits))

    def words(self) -> np.ndarray:
        """The sealed stream (uint32 words)."""
        return self.coder.get_compressed()


class QueueReader:
    """constriction's RangeDecoder on uint32 words. Garbage in gives garbage integers (or
    a DDPMCodecError where constriction detects an invalid stream), never another error."""

    def __init__(self, words):
        require()
        self.coder = constriction.stream.queue.RangeDecoder(_words(words))

    def decode(self, model) -> int:
        try:
            return int(self.coder.decode(model, 1)[0])
        except RANGE_DECODER_DATA_ERRORS as exc:
            raise DDPMCodecError(f"corrupt file: the coded stream is invalid ({exc})") from None

    def categorical(self, probs) -> int:
        return self.decode(categorical(probs))

    def raw(self, nbits: int) -> int:
        return self.decode(uniform(1 << nbits))
