"""The bits-back ANS stack: one push/pop pair per kind of symbol the chain codes (the
forward kernel's latents, p_theta's latents with escapes, the decoder's pixels) and the
whitening of the bits a pop will read."""
from __future__ import annotations

import math

import numpy as np
import torch

from ddpmcodec.codec.entropy import coder
from ddpmcodec.codec.entropy.exact_models import gaussian_rows, pixel_rows
from ddpmcodec.codec.lossless.grids import decoder_probs, flat_float64
from ddpmcodec.codec.lossless.params import EXCESS_MAX
from ddpmcodec.core.rng import stream_keys, uniform_bits
from ddpmcodec.errors import DDPMCodecError

_WHITEN_STREAM = 0x3A7E      # tag of the whitening keys
_CAT_CHUNK = 16384           # pixels per Categorical call (bounds the table's memory)


# -- the stack -----------------------------------------------------------------------------
class ChainStack:
    """The ANS stack: latent and pixel codes, escapes, and the encoder's low-water mark.

    Latents travel as integer symbols s (int64 tensors); x = s * delta. A Gaussian
    N(mean, std^2) on grid delta with half-width h is coded as r = s - c on the alphabet
    -h..h, where c = rint(mean / delta), with mean mean/delta - c and std std/delta.
    """

    def __init__(self, words: np.ndarray, seed: int = 0, exact: bool = False):
        self.ans = coder.Stack(words)
        self.low_water = self.batch_low = self.ans.num_words()
        self.escapes = 0
        self.seed = seed
        self.exact = exact  # Categorical rows from exact_models, excesses uniform
        self._excess = coder.quantized_laplace(0, EXCESS_MAX)
        self._excess_exact = coder.uniform(EXCESS_MAX + 1)
        self._uniform16 = coder.uniform(1 << 16)
        self._categorical = coder.categorical()
        self._families = {}

    def whiten(self, n: int, batch: int, step: int) -> None:
        """Pop n 16-bit words, XOR them with seeded keys, push them back (bit-neutral, and
        its own inverse). Bits that the push of x_{k-1} under p just wrote are not uniform
        (a reverse step wider or narrower than the truth leaves its quantiles bunched),
        and ANS hands them to the next pop nearly unchanged: a pop from q(x_k | x_{k-1})
        would then draw x_k with the wrong spread (measured: variance 0.87 instead of 1
        at early steps, +4% on the file at K=100). Whitening the bits that the pop will
        read makes its draws follow q again."""
        if n <= 0:
            return
        keys = stream_keys(self.seed, torch.tensor(_WHITEN_STREAM), torch.tensor(batch),
                           torch.tensor(step))
        raw = uniform_bits(keys, (n + 3) // 4).numpy().view(np.uint64)
        key = np.stack([(raw >> (16 * j)) & 0xFFFF for j in range(4)], 1).reshape(-1)[:n]
        v = self.ans.pop(self._uniform16, n)
        self._track()
        self.ans.push(v ^ key.astype(np.int32), self._uniform16)

    def _family(self, half: int):
        if half not in self._families:
            self._families[half] = coder.quantized_gaussian(-half, half)
        return self._families[half]

    @staticmethod
    def _centre(mean, std, delta: float, n: int):
        m = flat_float64(mean, n) / delta
        s = flat_float64(std, n) / delta
        if not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
            raise DDPMCodecError("the model produced non-finite means or variances; cannot code")
        if np.abs(m).max(initial=0.0) > 2.0 ** 52:
            raise DDPMCodecError("a latent mean is out of range (corrupt stream or model)")
        c = np.rint(m)
        return c.astype(np.int64), np.ascontiguousarray(m - c), np.ascontiguousarray(s)

    def _push_gauss(self, r, half: int, m, s_):
        if self.exact:
            self.ans.push(r + half, self._categorical, gaussian_rows(m, s_, half))
        else:
            self.ans.push(r, self._family(half), m, s_)

    def _pop_gauss(self, half: int, m, s_) -> np.ndarray:
        if self.exact:
            return self.ans.pop(self._categorical, gaussian_rows(m, s_, half)).astype(np.int64) - half
        return self.ans.pop(self._family(half), m, s_).astype(np.int64)

    def _push_excess(self, excess, s_esc, half):
        if self.exact:
            self.ans.push(excess, self._excess_exact)
        else:
            self.ans.push(excess, self._excess, np.full(len(excess), -0.5),
                          self._excess_scale(s_esc, half))

    def _pop_excess(self, count: int, s_esc, half) -> np.ndarray:
        if self.exact:
            return self.ans.pop(self._excess_exact, count).astype(np.int64)
        return self.ans.pop(self._excess, np.full(count, -0.5),
                            self._excess_scale(s_esc, half)).astype(np.int64)

    def _track(self):
        """The stack's lowest size, over the whole encoding and since ``batch_low`` was set."""
        words = self.ans.num_words()
        self.low_water = min(self.low_water, words)
        self.batch_low = min(self.batch_low, words)

    # q(x_k | x_{k-1}): popped by the encoder, pushed back by the decoder; never escapes
    def pop_q(self, mean: torch.Tensor, std: float, delta: float, half: int) -> torch.Tensor:
        n = mean.numel()
        c, m, s = self._centre(mean, std, delta, n)
        r = self._pop_gauss(half, m, s)
        self._track()
        return torch.from_numpy(c + r).reshape(mean.shape)

    def push_q(self, sym: torch.Tensor, mean: torch.Tensor, std: float, delta: float, half: int):
        n = mean.numel()
        c, m, s = self._centre(mean, std, delta, n)
        r = sym.reshape(-1).numpy() - c
        if np.abs(r).max(initial=0) > half:
            raise DDPMCodecError("corrupt file: a decoded latent is outside its forward kernel's range")
        self._push_gauss(r, half, m, s)

    # p(x_{k-1} | x_k) and the prior: pushed by the encoder, popped by the decoder. The
    # alphabet is -h-1..h+1; the two outer symbols are escapes, followed by the excess
    # beyond them under a Laplace that follows the Gaussian's tail (rate ~ (h+1) / std^2).
    @staticmethod
    def _excess_scale(s: np.ndarray, half: int) -> np.ndarray:
        return np.ascontiguousarray(np.maximum(s * s / (half + 1), 1e-3))

    def push_p(self, sym: torch.Tensor, mean, std, delta: float, half: int):
        n = sym.numel()
        c, m, s = self._centre(mean, std, delta, n)
        r = sym.reshape(-1).numpy().astype(np.int64) - c
        hi, lo = r > half, r < -half
        esc = hi | lo
        if esc.any():
            excess = np.where(hi, r - half - 1, -r - half - 1)[esc]
            if excess.max() > EXCESS_MAX:
                raise DDPMCodecError("a latent is too far from the model's prediction to code; "
                                     "the model is unusable on these images")
            self.escapes += int(esc.sum())
            self._push_excess(excess, s[esc], half)
            r = np.clip(r, -half - 1, half + 1)
        self._push_gauss(r, half + 1, m, s)

    def pop_p(self, mean, std, delta: float, half: int, shape) -> torch.Tensor:
        n = math.prod(shape)
        c, m, s = self._centre(mean, std, delta, n)
        r = self._pop_gauss(half + 1, m, s)
        esc = np.abs(r) == half + 1
        if esc.any():
            excess = self._pop_excess(int(esc.sum()), s[esc], half)
            r[esc] += np.sign(r[esc]) * excess
        return torch.from_numpy(c + r).reshape(shape)

    # the 8-bit pixels under the discretized decoder
    def push_pixels(self, levels: np.ndarray, mean: torch.Tensor, log_scale: torch.Tensor,
                    std: torch.Tensor | None = None):
        """Encode levels [n] in chunks, first to last (pop_pixels pops last to first);
        the exact path reads ``std`` (its rows need no log or exp)."""
        probs = self._pixel_probs(mean, log_scale, std)
        for a in range(0, len(levels), _CAT_CHUNK):
            self.ans.push(levels[a:a + _CAT_CHUNK], self._categorical, probs(a))

    def pop_pixels(self, mean: torch.Tensor, log_scale: torch.Tensor,
                   std: torch.Tensor | None = None) -> np.ndarray:
        n = mean.numel()
        probs = self._pixel_probs(mean, log_scale, std)
        out = np.empty(n, dtype=np.int32)
        for a in reversed(range(0, n, _CAT_CHUNK)):
            out[a:a + _CAT_CHUNK] = self.ans.pop(self._categorical, probs(a))
        return out

    def _pixel_probs(self, mean: torch.Tensor, log_scale, std):
        """chunk start -> the decoder's [chunk, 256] probabilities of those pixels."""
        mean = mean.reshape(-1)
        if self.exact:
            mean, std = flat_float64(mean, len(mean)), flat_float64(std, len(mean))
            return lambda a: pixel_rows(mean[a:a + _CAT_CHUNK], std[a:a + _CAT_CHUNK])
        log_scale = log_scale.reshape(-1)
        return lambda a: decoder_probs(mean[a:a + _CAT_CHUNK], log_scale[a:a + _CAT_CHUNK])
