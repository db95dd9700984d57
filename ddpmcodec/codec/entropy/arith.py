"""An exact arithmetic coder whose every prefix says which symbols it determines.

The progressive codec's format 3 writes one stream for all coded steps; a file cut after
any byte must decode the steps it holds, bit for bit, and know which those are, without
per-step lengths or padding. constriction's range coder does not expose the state a
decoder needs for that, so this module keeps the interval itself:

* State: the interval [L, L + R) * 2^-P of [0, 1) (L, P: Python ints of any size; R is
  renormalised into [2^40, 2^48) by whole bytes, so quantising a probability to
  PROB_BITS costs at most 2^-16 of a symbol's interval).
* A categorical symbol with integer frequencies f (summing to 2^PROB_BITS, every f >= 1,
  :func:`frequencies`) narrows the interval to r * [cum, cum + f), r = R >> PROB_BITS.
* k raw bits refine the scale (L <- L * 2^k + v * R, P <- P + k): they cost exactly k bits.
* The stream is the shortest byte string b such that every number that starts with b lies
  in the final interval (:meth:`ArithEncoder.finish`).

Prefixes. A decoder holding N bytes reads zeros beyond them. After any symbol, it is
*certain* when every continuation of its N bytes lies in the current interval: then the
symbols so far are the encoder's, whatever follows. Certainty can only be lost as the
interval shrinks, so a decoder stops at the first uncertain symbol (:class:`Exhausted`),
and the bytes a checkpoint needs (:func:`prefix_bytes`) are the same number for encoder
and decoder. There is no per-symbol or per-step framing: a prefix pays about one byte for
being a prefix, once.

Everything is integer arithmetic; the float64 probabilities of a categorical symbol are
turned into integers by :func:`frequencies` on both sides, so they must be the same
float64 numbers there (the codecs compute them from what both sides hold).
"""
from __future__ import annotations

import math

import numpy as np

from ddpmcodec.errors import DDPMCodecError

PROB_BITS = 24
_ONE = 1 << PROB_BITS
_RANGE_MIN = 1 << 40
MAX_RAW_BITS = 64  # per uniform call (callers split wider integers)


class Exhausted(Exception):
    """The prefix a decoder holds does not determine the next symbol (not an error: the
    file was cut there)."""


def frequencies(probs) -> np.ndarray:
    """Cumulative integer frequencies (int64 [n + 1], 0 .. 2^PROB_BITS) of float64
    probabilities: floor(p * (2^24 - n)) + 1 each (so none is zero), the remainder to the
    most probable symbol. Deterministic integer function of the float64 input."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    if n == 0 or n >= _ONE or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"bad probabilities for a categorical symbol: {p}")
    p = p / p.sum()
    f = np.floor(p * (_ONE - n)).astype(np.int64) + 1
    f[int(np.argmax(f))] += _ONE - int(f.sum())
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(f, out=cum[1:])
    return cum


def _fits(prefix: int, nbytes: int, low: int, width: int, scale: int) -> bool:
    """Whether every number beginning with the ``nbytes`` bytes ``prefix`` lies in
    [low, low + width) * 2^-scale."""
    pad = scale - 8 * nbytes
    if pad >= 0:
        lo = prefix << pad
        return lo >= low and lo + (1 << pad) <= low + width
    lo, top = low << -pad, (low + width) << -pad
    return lo <= prefix < top


def prefix_bytes(data: bytes, checkpoint: tuple) -> int:
    """The fewest first bytes of ``data`` that determine every symbol up to
    ``checkpoint`` (an :meth:`ArithEncoder.checkpoint`). ValueError if even all of
    ``data`` does not (it is not this stream)."""
    low, width, scale = checkpoint
    n = max(0, (scale - width.bit_length()) // 8)
    while n <= len(data):
        if _fits(int.from_bytes(data[:n], "big"), n, low, width, scale):
            return n
        n += 1
    raise ValueError("the data does not determine the checkpoint")


class ArithEncoder:
    """Encoder half. Symbols go in first to last; :meth:`finish` returns the bytes."""

    def __init__(self):
        self.low, self.width, self.scale = 0, 1, 0
        self._renorm()

    def _renorm(self) -> None:
        while self.width < _RANGE_MIN:
            self.width <<= 8
            self.low <<= 8
            self.scale += 8

    def categorical(self, symbol: int, probs) -> float:
        """Symbol ``symbol`` under float64 probabilities (quantised by :func:`frequencies`);
        returns its ideal code length in bits under the quantised probabilities."""
        cum = frequencies(probs)
        if not 0 <= symbol < len(cum) - 1:
            raise ValueError(f"symbol {symbol} outside 0..{len(cum) - 2}")
        r = self.width >> PROB_BITS
        f = int(cum[symbol + 1] - cum[symbol])
        self.low += r * int(cum[symbol])
        self.width = r * f
        self._renorm()
        return PROB_BITS - math.log2(f)

    def raw(self, value: int, nbits: int) -> None:
        """``nbits`` equiprobable bits (0 <= value < 2^nbits): exactly nbits of stream."""
        if not 0 <= nbits <= MAX_RAW_BITS or not 0 <= value < 1 << nbits:
            raise ValueError(f"raw value {value} does not fit in {nbits} bits")
        self.low = (self.low << nbits) + value * self.width
        self.scale += nbits

    def checkpoint(self) -> tuple:
        """The state after the symbols so far, for :func:`prefix_bytes` and :meth:`restore`."""
        return self.low, self.width, self.scale

    def restore(self, checkpoint: tuple) -> None:
        """Forget every symbol after ``checkpoint`` (one of this encoder's)."""
        self.low, self.width, self.scale = checkpoint

    def size(self) -> int:
        """Bytes :meth:`finish` would return now."""
        return len(self.finish())

    def finish(self) -> bytes:
        """The shortest byte string all of whose continuations lie in the interval."""
        low, width, scale = self.low, self.width, self.scale
        n = max(0, (scale - width.bit_length()) // 8)
        while True:
            pad = scale - 8 * n
            b = -((-low) >> pad) if pad >= 0 else low << -pad  # smallest start >= low
            if b < 1 << (8 * n) and _fits(b, n, low, width, scale):
                return b.to_bytes(n, "big")
            n += 1


class ArithDecoder:
    """Decoder half, on the first bytes of a stream (all of it, or a prefix). Every
    decode either returns the encoder's symbol or raises :class:`Exhausted` (the prefix
    ends before the symbol is determined) or DDPMCodecError (the bytes are no stream)."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.nbits = 8 * len(self.data)
        self.low, self.width, self.scale = 0, 1, 0
        self.offset = 0  # (the data read at self.scale bits, zeros beyond) - low
        self._renorm()

    def _bits(self, pos: int, k: int) -> int:
        """Bits pos .. pos + k - 1 of the data, most significant first, zeros beyond."""
        first, last = pos >> 3, (pos + k + 7) >> 3
        chunk = self.data[first:last]
        val = int.from_bytes(chunk + bytes(last - first - len(chunk)), "big")
        return (val >> (8 * (last - first) - (pos - 8 * first) - k)) & ((1 << k) - 1)

    def _renorm(self) -> None:
        while self.width < _RANGE_MIN:
            self.offset = (self.offset << 8) | self._bits(self.scale, 8)
            self.width <<= 8
            self.low <<= 8
            self.scale += 8

    def _padded(self) -> bool:
        return self.scale > self.nbits

    def _check(self) -> None:
        pad = self.scale - self.nbits
        if pad > 0 and self.offset + (1 << pad) > self.width:
            raise Exhausted

    def _invalid(self) -> None:
        if self._padded():
            raise Exhausted
        raise DDPMCodecError("corrupt file: the coded stream is invalid")

    def categorical(self, probs) -> int:
        cum = frequencies(probs)
        r = self.width >> PROB_BITS
        c = self.offset // r
        if c >= _ONE:
            self._invalid()
        s = int(np.searchsorted(cum, c, side="right")) - 1
        start = r * int(cum[s])
        self.offset -= start
        self.low += start
        self.width = r * int(cum[s + 1] - cum[s])
        self._renorm()
        self._check()
        return s

    def raw(self, nbits: int) -> int:
        if not 0 <= nbits <= MAX_RAW_BITS:
            raise ValueError(f"raw width {nbits} outside 0..{MAX_RAW_BITS}")
        full = (self.offset << nbits) | self._bits(self.scale, nbits)
        value = full // self.width
        if value >= 1 << nbits:
            self._invalid()
        self.offset = full - value * self.width
        self.low = (self.low << nbits) + value * self.width
        self.scale += nbits
        self._check()
        return value

    def checkpoint(self) -> tuple:
        return self.low, self.width, self.scale

    def bytes_used(self) -> int:
        """The fewest first bytes that determine every symbol decoded so far."""
        return prefix_bytes(self.data, self.checkpoint())
