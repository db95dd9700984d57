"""Lossless compression through the latent chain: bits-back ANS in Bit-Swap order.

For a chain of K steps (``Diffusion.with_steps``: chain step k is original index
``timesteps[k]``; latent x_k for k = 0..K-1) and an image x0 on [-1, 1], the encoder runs,
on one ANS stack (constriction's AnsCoder)::

    pop  x_0 ~ q(x_0 | x0)                  = N(sqrt(1-b_0) x0, b_0)      (bits back)
    push x0 with p(x0 | x_0)                the 256-bin discretized Gaussian decoder
    for k = 1..K-1:
        pop  x_k ~ q(x_k | x_{k-1})         = N(sqrt(1-b_k) x_{k-1}, b_k) (bits back)
        push x_{k-1} with p_theta(x_{k-1} | x_k)   (p_mean_variance, clipped x0-prediction)
    push x_{K-1} with N(0, I)

where b_k are the chain's (respaced) betas, so the kernels compose to q(x_k | x0). The
decoder runs the mirror image, last step first.

Initial bits. A pop before the first push needs bits on the stack, and an image's coding
sinks the stack below its starting size before it rises (its *dip*: the first two pops
come before anything of their size is pushed back; 6.8 bits/dim on the default chain).
Those bits would be a one-off cost that nobody pays back (13.9 bits/dim per image of the
first batch in format 1 files). Three things remove it:

* seeds (HiLLoC, Townsend et al. 2020): the first m images are stored as WebP-lossless
  bitstreams (:mod:`ddpmcodec.codec.classical`), and those bytes *are* the initial stack,
  so the first pops read bits that belong to real images. m is the fewest images whose
  streams cover one image's dip (:func:`dip_bits`); a seed costs its WebP size instead
  of its bits-back size (~0.5 bits/dim), an uncovered dip bit costs a whole bit;
* a growing batch layout: each batch holds as many images as the stack above the seeded
  words can carry through their dips (the dip measured on the batches so far), up to
  ``batch_size``; the layout is recorded in the file;
* coarse latent grids (``grid_log2`` 2: 4..8 points per standard deviation), which make
  every pop 3 bits/dim smaller than 32..64 points and halve the dip (13.0 -> 6.8
  bits/dim on the default chain) without a net-rate change that 8 images resolve
  (benchmarks/results/bench_lossless_grid_K10.json).

Beneath the seeds lie ``W`` seeded pseudo-random words for whatever the seeds do not
cover; only the part of them that the chain consumed is stored, and the decoder, which
regenerates them from the seed, must end with exactly those words and then the seeds'
words -- a free integrity check on top of the pixel checksum. For a file of one image
(nothing to seed with) or a model that codes the images badly, the WebP-lossless file of
the images is shorter: ``method="auto"`` writes whichever file is shorter (the
``webp-lossless`` mode, recorded in the file's mode byte).

Expected net length = the negative ELBO of the chain,
``L_prior + sum_{k>=1} KL(q(x_{k-1}|x_k,x0) || p(x_{k-1}|x_k)) + L_0``, the bound that
``ddpmcodec nll --steps K`` estimates. The encoder also reports that bound along its own
coding path (the same KL formulas at the coded latents: ``bound_bits``) and the sampled
negative ELBO of the path (``elbo_bits``, continuous densities); actual minus ``elbo_bits``
is the coder's own overhead (quantization, leak, escapes, final word).

Discretization, and why it is per latent. constriction's models give every symbol of
their alphabet at least 2^-24 of probability (they are "leaky"): a pop from an alphabet of
R symbols lands on a uniformly drawn symbol with probability about R/2^24, and every
probability is scaled by (1 - R/2^24). Over K*D ~ 3 million pops per image that matters:
with one fine grid for all latents (R ~ 2^16), 0.4% of the latents were drawn far out in
the tails, where the network and the clipped x0-prediction make them expensive (+3% on a
20-step chain). So each latent x_k has its own grid and alphabets, fixed by the schedule
(:func:`latent_grids`):

* grid width ``delta_k``: the power of two at or below ``sigma_lo / 2^grid_log2``, where
  sigma_lo is the smaller std of the two Gaussians that code x_k (the forward kernel that
  pops it, the reverse step or prior that pushes it): 2^grid_log2 .. 2^(grid_log2+1) grid
  points per standard deviation, so discretization changes the bits negligibly (the grid
  width itself cancels: x_k is popped once and pushed once on the same grid);
* alphabets centred on the rounded mean, ``support_sigmas`` (default 5) of the coding
  Gaussian's std on either side: a leaked pop stays within 5 stds, where its cost and
  the bits it gave back balance, and where the pop and the push of x_k have about the
  same width their (1 - R/2^24) factors cancel. Wider supports put more symbols in the
  region where the 2^-24 floor dominates (measured: 6 stds cost 14x more than 5 on a
  100-step chain); narrower ones truncate the Gaussian.

A value the push must code outside its alphabet (a Gaussian tail beyond 5 stds, or a
model that is confidently wrong) is an *escape*: the push alphabet has one extra symbol on
each side, and after it comes the excess beyond the alphabet under a Laplace whose scale
follows the Gaussian's tail (QuantizedLaplace, up to 2^20 grid points), so an escape costs
a few bits more than its Gaussian probability, and nothing is spent when none happens.

Whitening. The bits a pop reads were just written by a push under p, and ANS hands them
over nearly unchanged; where p's spread differs from the truth they are bunched and the
pop would not follow q (measured: +3.5% at K=100). Before every pop but the very first
(which reads the seeded words) the codec XORs the bits that pop will read with seeded
keys (:meth:`_Stack.whiten`: bit-neutral and its own inverse).

All Gaussians are evaluated in float64 from the float32 network output; one constriction
call per step per batch (two when a step has escapes, plus the whitening). The payload is
the final stack minus the leading seeded words it still shares with the initial stack.

The default chain (:func:`default_chain`): 10 steps chosen by dynamic programming on the
model's calibration, with analytic variances, which both sides code with as the file
stores them (round(256 log2 v)). K = 10 is the longest chain that encodes and decodes at
2 images/s on a 2-core CPU (the network is 80% of the time); see benchmarks/results.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.codec import coder, container
from ddpmcodec.codec.base import (
    Codec,
    CodecStats,
    Decoded,
    Encoded,
    Timer,
    chain_for,
    check_chain,
    check_compatible,
    deterministic,
    network_p,
    new_header,
    pack_log2_variances,
    quantized_chain,
    read_log2_variances,
    read_variance_rule,
    start_encode,
    variance_rule_of,
    verify_pixels,
)
from ddpmcodec.codec.container import BlobReader, BlobWriter, Header
from ddpmcodec.core.likelihood import LN2, prior_bpd, vb_terms_bpd
from ddpmcodec.core.rng import stream_keys, uniform_bits
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import to_model_space

PARAMS_VERSION = 3           # 3: compact, WebP seeds and a batch layout; 1 and 2 still decode
DEFAULT_STEPS = 10           # the default chain: K dp-chosen steps with analytic variances
DEFAULT_TRAJECTORY = "dp"
DEFAULT_VARIANCE = "analytic"
DEFAULT_BATCH = 16           # images per network call at most (the CPU's best throughput)
DEFAULT_GRID_LOG2 = 2        # 4..8 grid points per (smaller) standard deviation
DEFAULT_SUPPORT_SIGMAS = 5.0  # alphabet half-width in standard deviations
METHODS = ("auto", "bitsback", "webp")
AUTO_COMPARE_MAX = 64        # method auto weighs the all-WebP file up to this many images
MAX_HALF = (1 << 18) - 1     # largest alphabet half-width
EXCESS_MAX = (1 << 20) - 1   # largest escape excess, in grid points
_INIT_STREAM = 0x1B17        # tag of the initial-words stream (any fixed number)
_WHITEN_STREAM = 0x3A7E      # tag of the whitening keys
_WHITEN_MARGIN = 1.05        # whiten 5% more bits than a pop is expected to read
_CAT_CHUNK = 16384           # pixels per Categorical call (bounds the table's memory)
_PROB_BLOCK = 1024           # pixels per block of decoder_probs' float64 arithmetic
_FLAG_GRID, _FLAG_SUPPORT, _FLAG_SEEDS, _FLAG_LAYOUT, _FLAG_TERMINATOR = 1, 2, 4, 8, 16


# -- parameters in the header ------------------------------------------------------------
@dataclass(frozen=True)
class LosslessParams:
    """The lossless codec's ``params`` blob (see the module docstring for the grid).

    grid_log2: at least 2^grid_log2 grid points per standard deviation.
    support_sigmas: alphabet half-width in standard deviations.
    initial_words: W seeded 32-bit words at the bottom of the encoder's stack.
    prefix_words: P leading words of the final stack that equal the seeded words, so they
        are regenerated instead of stored (P <= W).
    variance_rule, variances: the chain's reverse variance (base.VARIANCE_RULES; explicit
        variances, version 3: quantized to 1/256 of a doubling, the values both sides use).
    seed_lengths: byte lengths of the WebP-lossless streams of images 0..m-1, which sit on
        the stack above the seeded words (empty: no seeds).
    layout: batch sizes of the bits-back images m..N-1 in encoding order (empty: the
        header's batch size throughout).
    terminator: a word 1 follows the seed streams (their last word was zero).
    bound_bits, elbo_bits: the encoder's bound and sampled -ELBO (versions 1 and 2 only;
        version 3 leaves them out of the file: NaN).
    """

    grid_log2: int
    support_sigmas: float  # stored in sixteenths
    initial_words: int
    prefix_words: int
    bound_bits: float = float("nan")
    elbo_bits: float = float("nan")
    variance_rule: str = "model"
    variances: tuple | None = None
    seed_lengths: tuple = ()
    layout: tuple = ()
    terminator: bool = False
    version: int = PARAMS_VERSION

    def pack(self) -> bytes:
        """Version 3: u8 version, u8 flags, [u8 grid_log2], [v support in sixteenths], v W,
        v P, the variance rule (u8; explicit: K signed varints, the first quantized log2
        variance and then differences), [v m, m v seed lengths], [v runs, (v size, v count)
        per run of equal batch sizes]. Fields at their defaults cost nothing but a flag."""
        flags = ((_FLAG_GRID if self.grid_log2 != DEFAULT_GRID_LOG2 else 0)
                 | (_FLAG_SUPPORT if self.support_sigmas != DEFAULT_SUPPORT_SIGMAS else 0)
                 | (_FLAG_SEEDS if self.seed_lengths else 0)
                 | (_FLAG_LAYOUT if self.layout else 0)
                 | (_FLAG_TERMINATOR if self.terminator else 0))
        w = BlobWriter().u8(PARAMS_VERSION).u8(flags)
        if flags & _FLAG_GRID:
            w.u8(self.grid_log2)
        if flags & _FLAG_SUPPORT:
            w.uvar(int(round(self.support_sigmas * 16)))
        w.uvar(self.initial_words).uvar(self.prefix_words)
        pack_log2_variances(w, self.variance_rule, self.variances)
        if flags & _FLAG_SEEDS:
            w.uvar(len(self.seed_lengths))
            for n in self.seed_lengths:
                w.uvar(n)
        if flags & _FLAG_LAYOUT:
            runs = _runs(self.layout)
            w.uvar(len(runs))
            for size, count in runs:
                w.uvar(size).uvar(count)
        return w.getvalue()

    @classmethod
    def unpack(cls, blob: bytes, header: Header) -> "LosslessParams":
        r = BlobReader(blob, "lossless parameters")
        version = r.u8("version")
        if version in (1, 2):
            fields = (r.u8("grid_log2"), r.u16("support_sigmas") / 16, r.u32("initial_words"),
                      r.u32("prefix_words"), r.f64("bound_bits"), r.f64("elbo_bits"))
            rule, values = read_variance_rule(r, header.num_steps) if version == 2 else ("model", None)
            p = cls(*fields, rule, None if values is None else tuple(values), version=version)
        elif version == PARAMS_VERSION:
            flags = r.u8("flags")
            if flags >= 32:
                raise DDPMCodecError(f"lossless parameters: unknown flags {flags}")
            grid = r.u8("grid_log2") if flags & _FLAG_GRID else DEFAULT_GRID_LOG2
            support = (r.bounded("support_sigmas", r.uvar("support_sigmas"), 32, 640) / 16
                       if flags & _FLAG_SUPPORT else DEFAULT_SUPPORT_SIGMAS)
            W, P = r.uvar("initial_words"), r.uvar("prefix_words")
            rule, values = read_log2_variances(r, header.num_steps)
            seeds = ()
            if flags & _FLAG_SEEDS:
                m = r.bounded("seed images", r.uvar("seed images"), 1, header.num_images)
                seeds = tuple(r.bounded("seed length", r.uvar("seed length"), 1, 1 << 30)
                              for _ in range(m))
            layout = ()
            if flags & _FLAG_LAYOUT:
                runs = [(r.bounded("batch size", r.uvar("batch size"), 1, header.num_images),
                         r.bounded("batches", r.uvar("batches"), 1, header.num_images))
                        for _ in range(r.bounded("runs", r.uvar("runs"), 1, header.num_images))]
                layout = tuple(size for size, count in runs for _ in range(count))
            p = cls(grid, support, W, P, variance_rule=rule, variances=values,
                    seed_lengths=seeds, layout=layout,
                    terminator=bool(flags & _FLAG_TERMINATOR), version=version)
        else:
            raise DDPMCodecError(f"lossless parameters version {version} is not supported")
        r.end()
        return p.validate(header)

    def validate(self, header: Header) -> "LosslessParams":
        r = BlobReader(b"", "lossless parameters")
        r.bounded("grid_log2", self.grid_log2, 0, 12)
        if not 2.0 <= self.support_sigmas <= 40.0 or self.support_sigmas * 16 != round(
                self.support_sigmas * 16):
            raise DDPMCodecError(f"support_sigmas must be a multiple of 1/16 in 2..40, "
                                 f"got {self.support_sigmas}")
        r.bounded("initial_words", self.initial_words, 4,
                  max_initial_words(header.batch_size, header.dims))
        r.bounded("prefix_words", self.prefix_words, 0, self.initial_words)
        m = len(self.seed_lengths)
        if m >= header.num_images:
            raise DDPMCodecError("lossless parameters: every image is a seed")
        if self.layout and (sum(self.layout) != header.num_images - m
                            or max(self.layout) > header.batch_size):
            raise DDPMCodecError("lossless parameters: the batch layout does not cover the "
                                 "images")
        if not self.layout and m:
            raise DDPMCodecError("lossless parameters: seeds without a batch layout")
        if self.version < PARAMS_VERSION:
            for name in ("bound_bits", "elbo_bits"):
                if not math.isfinite(getattr(self, name)):
                    raise DDPMCodecError(f"lossless parameters: {name} is not finite")
        return self

    def batches(self, header: Header) -> list[tuple[int, int]]:
        """(start, stop) of the bits-back batches in encoding order (after the seeds)."""
        if not self.layout:
            return header.batches()
        out, a = [], len(self.seed_lengths)
        for size in self.layout:
            out.append((a, a + size))
            a += size
        return out


def _runs(sizes) -> list[tuple[int, int]]:
    runs = []
    for v in sizes:
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs


def max_initial_words(batch_size: int, dims: int) -> int:
    """Upper bound on W: 96 bits per latent of one batch (a pop yields at most 24 bits,
    and the stack never dips by more than a few pops)."""
    return 3 * batch_size * dims + 1024


def initial_words(seed: int, n: int) -> np.ndarray:
    """The seeded words the encoder's stack starts with: uint32 [n], last word nonzero
    (an ANS stack never ends in a zero word)."""
    keys = stream_keys(seed, torch.tensor(_INIT_STREAM))
    raw = uniform_bits(keys, (n + 1) // 2).numpy().view(np.uint64)
    words = np.concatenate([raw & 0xFFFFFFFF, raw >> 32]).astype(np.uint32)[:n]
    words[-1] |= 1
    return words


# -- the per-latent grids ------------------------------------------------------------------
@dataclass(frozen=True)
class LatentGrids:
    """x_k = s * delta[k] with integer s. q(x_k | x_{k-1}) pops x_k on an alphabet of
    2*pop_half[k]+1 symbols, the reverse step (or prior) pushes it on 2*push_half[k]+1.
    All arrays have shape [K]."""

    delta: np.ndarray  # float64, powers of two
    pop_half: np.ndarray  # int64
    push_half: np.ndarray  # int64
    q_std: np.ndarray  # float64: std of q(x_k | x_{k-1})


def p_std_range(diffusion) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest std of p_theta(x_{k-1}|x_k) for k = 0..K-1 (float64 [K];
    equal unless the variance is learned, which interpolates between the two fixed ones)."""
    K = diffusion.num_steps
    k = torch.arange(K)
    x = torch.zeros(K, 1, dtype=torch.float64)
    if diffusion.variance_type == "learned":
        lo = diffusion.p_log_variance(k, x, -torch.ones_like(x))
        hi = diffusion.p_log_variance(k, x, torch.ones_like(x))
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    else:
        lo = hi = diffusion.p_log_variance(k, x)
    return torch.exp(0.5 * lo[:, 0]).numpy(), torch.exp(0.5 * hi[:, 0]).numpy()


def latent_grids(diffusion, grid_log2: int, support_sigmas: float) -> LatentGrids:
    """The grid and alphabets of every latent, a pure function of the schedule.

    The grid resolves the narrower of the two Gaussians that code x_k; each alphabet
    covers ``support_sigmas`` of its own Gaussian's (largest) std. Pop and push alphabets
    differ only where the reverse step is much wider than the forward kernel (coarse
    respaced chains, the prior), and there the unequal leaks cost (R_push - R_pop) / 2^24
    / ln 2 bits per dim of that latent (0.0035 for the first latent of a 2-step chain,
    ~1e-4 on a 100-step chain); with equal widths they cancel."""
    K = diffusion.num_steps
    q_std = np.sqrt(diffusion.betas.numpy())
    p_lo, p_hi = p_std_range(diffusion)
    # x_k is pushed by p(x_k | x_{k+1}) (chain step k+1), the last one by N(0, 1)
    push_lo = np.append(p_lo[1:], 1.0)
    push_hi = np.append(p_hi[1:], 1.0)
    delta = np.exp2(np.floor(np.log2(np.minimum(q_std, push_lo)) - grid_log2))
    pop_half = np.minimum(np.ceil(support_sigmas * q_std / delta), MAX_HALF).astype(np.int64)
    push_half = np.minimum(np.ceil(support_sigmas * push_hi / delta), MAX_HALF).astype(np.int64)
    assert len(delta) == K
    return LatentGrids(delta, pop_half, push_half, q_std)


def whiten_count(g: LatentGrids, k: int, symbols: int) -> int:
    """16-bit words to whiten before popping ``symbols`` latents x_k: the bits the pop is
    expected to read (the entropy of the quantized kernel), plus 5%."""
    entropy = math.log2(float(g.q_std[k] / g.delta[k]) * math.sqrt(2 * math.pi * math.e))
    return int(math.ceil(_WHITEN_MARGIN * symbols * max(entropy, 1.0) / 16)) + 8


# -- the float64 models ------------------------------------------------------------------
def decoder_probs(mean: torch.Tensor, log_scale: torch.Tensor) -> np.ndarray:
    """Probabilities [n, 256] of the 8-bit levels under a Gaussian discretized to bins of
    width 2/255 on [-1, 1], edge bins taking the tails (as likelihood's
    ``discretized_gaussian_log_likelihood`` with cdf="exact"). mean, log_scale: float64 [n].

    Every bin is formed from the smaller tail mass T(z) = Phi(-|z|) at its two edges (no
    cancellation far out): T_lo - T_hi above the mean, T_hi - T_lo below it, and
    (1 - T_hi) - T_lo for the bin that holds the mean; the outer edges are -inf and +inf
    (T = 0). Files depend on these numbers bit for bit. Rows are formed in blocks of
    _PROB_BLOCK, whose [block, 256] arrays stay in the CPU's cache (3x faster than whole
    batches; elementwise, so the numbers are the same)."""
    edges = torch.arange(255, dtype=torch.float64) * (2.0 / 255.0) - 1.0 + 1.0 / 255.0
    out = np.empty((len(mean), 256), dtype=np.float64)
    for a in range(0, len(mean), _PROB_BLOCK):
        m, ls = mean[a:a + _PROB_BLOCK], log_scale[a:a + _PROB_BLOCK]
        z = (edges[None, :] - m[:, None]) * torch.exp(-ls)[:, None]  # [n, 255]
        tail = 0.5 * torch.erfc(z.abs() * math.sqrt(0.5))
        zero = torch.zeros_like(tail[:, :1])
        t_lo, t_hi = torch.cat([zero, tail], 1), torch.cat([tail, zero], 1)  # bin j: edges j-1, j
        inf = torch.full_like(zero, math.inf)
        z_lo, z_hi = torch.cat([-inf, z], 1), torch.cat([z, inf], 1)
        probs = torch.where(z_lo > 0, t_lo - t_hi,
                            torch.where(z_hi < 0, t_hi - t_lo, (1.0 - t_hi) - t_lo))
        out[a:a + len(m)] = probs.clamp(min=0.0).numpy()
    return out


def _normal_logpdf(x, mean, std) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2), nats (std a float or tensor)."""
    std = torch.as_tensor(std, dtype=torch.float64)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def _sum_bits(nats: torch.Tensor) -> torch.Tensor:
    """Per-image sum of elementwise nats, in bits (float64 [B])."""
    return nats.reshape(nats.shape[0], -1).sum(1) / LN2


def _flat(t, n: int) -> np.ndarray:
    """float64 contiguous [n] from a tensor or a scalar."""
    if isinstance(t, torch.Tensor):
        return np.ascontiguousarray(t.reshape(-1).numpy(), dtype=np.float64)
    return np.full(n, float(t), dtype=np.float64)


# -- the stack -----------------------------------------------------------------------------
class _Stack:
    """The ANS stack: latent and pixel codes, escapes, and the encoder's low-water mark.

    Latents travel as integer symbols s (int64 tensors); x = s * delta. A Gaussian
    N(mean, std^2) on grid delta with half-width h is coded as r = s - c on the alphabet
    -h..h, where c = rint(mean / delta), with mean mean/delta - c and std std/delta.
    """

    def __init__(self, words: np.ndarray, seed: int = 0):
        self.ans = coder.Stack(words)
        self.low_water = self.batch_low = self.ans.num_words()
        self.escapes = 0
        self.seed = seed
        self._excess = coder.quantized_laplace(0, EXCESS_MAX)
        self._uniform16 = coder.uniform(1 << 16)
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
        m = _flat(mean, n) / delta
        s = _flat(std, n) / delta
        if not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
            raise DDPMCodecError("the model produced non-finite means or variances; cannot code")
        if np.abs(m).max(initial=0.0) > 2.0 ** 52:
            raise DDPMCodecError("a latent mean is out of range (corrupt stream or model)")
        c = np.rint(m)
        return c.astype(np.int64), np.ascontiguousarray(m - c), np.ascontiguousarray(s)

    def _track(self):
        """The stack's lowest size, over the whole encoding and since ``batch_low`` was set."""
        words = self.ans.num_words()
        self.low_water = min(self.low_water, words)
        self.batch_low = min(self.batch_low, words)

    # q(x_k | x_{k-1}): popped by the encoder, pushed back by the decoder; never escapes
    def pop_q(self, mean: torch.Tensor, std: float, delta: float, half: int) -> torch.Tensor:
        n = mean.numel()
        c, m, s = self._centre(mean, std, delta, n)
        r = self.ans.pop(self._family(half), m, s)
        self._track()
        return torch.from_numpy(c + r.astype(np.int64)).reshape(mean.shape)

    def push_q(self, sym: torch.Tensor, mean: torch.Tensor, std: float, delta: float, half: int):
        n = mean.numel()
        c, m, s = self._centre(mean, std, delta, n)
        r = sym.reshape(-1).numpy() - c
        if np.abs(r).max(initial=0) > half:
            raise DDPMCodecError("corrupt file: a decoded latent is outside its forward kernel's range")
        self.ans.push(r, self._family(half), m, s)

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
            self.ans.push(excess, self._excess, np.full(len(excess), -0.5),
                          self._excess_scale(s[esc], half))
            r = np.clip(r, -half - 1, half + 1)
        self.ans.push(r, self._family(half + 1), m, s)

    def pop_p(self, mean, std, delta: float, half: int, shape) -> torch.Tensor:
        n = math.prod(shape)
        c, m, s = self._centre(mean, std, delta, n)
        r = self.ans.pop(self._family(half + 1), m, s).astype(np.int64)
        esc = np.abs(r) == half + 1
        if esc.any():
            excess = self.ans.pop(self._excess, np.full(int(esc.sum()), -0.5),
                                  self._excess_scale(s[esc], half)).astype(np.int64)
            r[esc] += np.sign(r[esc]) * excess
        return torch.from_numpy(c + r).reshape(shape)

    # the 8-bit pixels under the discretized decoder
    def push_pixels(self, levels: np.ndarray, mean: torch.Tensor, log_scale: torch.Tensor):
        """Encode levels [n] in chunks, first to last (pop_pixels pops last to first)."""
        mean, log_scale = mean.reshape(-1), log_scale.reshape(-1)
        cat = coder.categorical()
        for a in range(0, len(levels), _CAT_CHUNK):
            b = a + _CAT_CHUNK
            self.ans.push(levels[a:b], cat, decoder_probs(mean[a:b], log_scale[a:b]))

    def pop_pixels(self, mean: torch.Tensor, log_scale: torch.Tensor) -> np.ndarray:
        mean, log_scale = mean.reshape(-1), log_scale.reshape(-1)
        n = len(mean)
        out = np.empty(n, dtype=np.int32)
        cat = coder.categorical()
        for a in reversed(range(0, n, _CAT_CHUNK)):
            b = a + _CAT_CHUNK
            out[a:b] = self.ans.pop(cat, decoder_probs(mean[a:b], log_scale[a:b]))
        return out


# -- the codec -------------------------------------------------------------------------------
class BitsBackCodec(Codec):
    """Lossless bits-back codec (see the module docstring).

    encode options: ``chain`` (a Diffusion on the model's schedule; default
    :func:`default_chain`) or ``steps`` (K evenly spaced steps with the model's variance),
    ``batch_size`` (images per network call at most: larger is faster), ``seed`` (of the
    initial words and whitening keys), ``grid_log2`` and ``support_sigmas`` (the latent
    grids), ``method`` (auto: the shorter of bits-back and all-WebP-lossless, the latter
    weighed up to AUTO_COMPARE_MAX images; bitsback; webp) and ``seed_images`` (images
    coded with WebP-lossless as the stack's initial bits; None: as many as the first
    batch's dip needs, see :func:`dip_bits`; 0: none).
    """

    mode = "lossless"

    def __init__(self, model):
        super().__init__(model)
        coder.require()

    def _p(self, diffusion, x: torch.Tensor, k: int):
        """p_theta(x_{k-1} | x_k) for one batch x [B,C,H,W] (one network call): mean, std,
        log-scale (float64 [B,C,H,W]) and the network output (for the bound)."""
        p = network_p(self.model, diffusion, x, k, [(0, x.shape[0])])
        log_scale = 0.5 * p["log_variance"]
        return p["mean"], torch.exp(log_scale), log_scale, p["out"]

    # -- encoding --------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, steps: int | None = None,
               batch_size: int = DEFAULT_BATCH, seed: int = 0, progress: bool = False,
               grid_log2: int = DEFAULT_GRID_LOG2,
               support_sigmas: float = DEFAULT_SUPPORT_SIGMAS, chain=None,
               method: str = "auto", seed_images: int | None = None) -> Encoded:
        """Compress ``images``; see the class docstring for the options."""
        from ddpmcodec.codec import classical
        model = self.model
        images, batch_size = start_encode(images, model, batch_size)
        if method not in METHODS:
            raise DDPMCodecError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        webp_ok = classical.supports(model.image_shape)
        if method == "webp" and not webp_ok:
            raise DDPMCodecError(f"WebP-lossless codes 1 or 3 channels, the model's images "
                                 f"have {model.image_shape[0]}")
        if seed_images is not None and not 0 <= seed_images < len(images):
            raise DDPMCodecError(f"seed_images must be in 0..{len(images) - 1}, got {seed_images}")
        if seed_images and not webp_ok:
            raise DDPMCodecError("seed images are WebP-lossless, which codes 1 or 3 channels")
        n = len(images)
        compare = method == "webp" or (method == "auto" and webp_ok and n <= AUTO_COMPARE_MAX)
        with Timer() as webp_timer:
            streams = [classical.webp_stream(im) for im in images] if compare else []
        if method == "webp":
            return classical.encoded(images, streams, webp_timer.seconds)
        diffusion = self._chain(chain, steps)
        header = new_header("lossless", model, n, batch_size, seed, diffusion.timesteps,
                            container.pixel_checksum(images))
        LosslessParams(grid_log2, support_sigmas, 4, 0).validate(header)
        grids = latent_grids(diffusion, grid_log2, support_sigmas)
        dip = dip_bits(grids, header.dims)
        with Timer() as timer, deterministic(model.device, header.num_threads):
            if seed_images is None:
                seed_images = _seed_count(images, streams, dip) if webp_ok else 0
            for i in range(len(streams), seed_images):
                streams.append(classical.webp_stream(images[i]))
            seeds = streams[:seed_images]
            enc = self._encode_bitsback(images, diffusion, grids, header, seeds, dip,
                                        (grid_log2, support_sigmas), progress)
        enc.stats.seconds = timer.seconds + webp_timer.seconds
        enc.stats.extra["bitsback_file_bytes"] = len(enc.data)
        if compare:
            alt = classical.encoded(images, streams, enc.stats.seconds)
            enc.stats.extra["webp_file_bytes"] = len(alt.data)
            if len(alt.data) < len(enc.data):
                alt.stats.extra.update({k: enc.stats.extra[k] for k in (
                    "bitsback_file_bytes", "webp_file_bytes")})
                return alt
        return enc

    def _chain(self, chain, steps):
        model = self.model
        if chain is not None:
            if steps is not None and steps != chain.num_steps:
                raise DDPMCodecError(f"--steps {steps} disagrees with the {chain.num_steps}-step chain")
            check_chain(chain, model)
        elif steps is not None:
            chain = model.diffusion.with_steps(steps)
        else:
            chain = default_chain(model)
        return quantized_chain(chain, model)  # the file holds explicit variances quantized

    def _encode_bitsback(self, images, diffusion, grids, header, seeds, dip, grid, progress):
        model = self.model
        W = self._initial_estimate(grids, header.batch_size * header.dims)
        W_cap = max_initial_words(header.batch_size, header.dims)
        top, terminator = seed_words(seeds)
        while True:
            W = min(W, W_cap)
            base = initial_words(header.seed, W)
            init = np.concatenate([base, top])
            stack, bound, elbo, layout = self._encode_all(images, diffusion, grids, header, init,
                                                          len(base), len(seeds), dip, progress)
            if stack.low_water >= 3:  # two head words + one untouched word: never ran dry
                break
            if W == W_cap:
                raise DDPMCodecError("the bits-back stack ran dry; cannot encode these images")
            W *= 4
        final = stack.ans.words()
        P = min(_common_prefix(final, base), W)
        m = len(seeds)
        if layout == tuple(b - a for a, b in header.batches()):
            layout = ()  # the header's batch size throughout: nothing to record
        rule, values = variance_rule_of(diffusion, model)
        params = LosslessParams(*grid, W, P, variance_rule=rule, variances=values,
                                seed_lengths=tuple(len(s) for s in seeds), layout=layout,
                                terminator=terminator)
        header = dataclasses.replace(header, params=params.pack())
        params.validate(header)
        payload = np.ascontiguousarray(final[P:], dtype="<u4").tobytes()
        data = container.pack(header, payload)
        net_bits = stack.ans.num_valid_bits() - coder.valid_bits(init)
        stats = _stats(header, params, len(payload), len(data), net_bits, 0.0)
        stats.bound_bits = float(bound[m:].sum())
        stats.extra.update(escapes=stack.escapes, bound_bits_per_image=bound[m:].tolist(),
                           elbo_bits=float(elbo[m:].sum()),
                           elbo_bits_per_image=elbo[m:].tolist(),
                           dip_bits_per_image_estimate=dip,
                           layout=list(params.batches(header)))
        return Encoded(data, header, stats)

    @staticmethod
    def _initial_estimate(grids: LatentGrids, symbols: int) -> int:
        """Words for three pops of one batch from the widest forward kernel (unconsumed
        initial words cost nothing: they are regenerated, not stored)."""
        per = np.log2(grids.q_std / grids.delta * math.sqrt(2 * math.pi * math.e)).max()
        return int(3 * symbols * (max(per, 1.0) + 1.0) / 32) + 1024

    def _encode_all(self, images, diffusion, grids, header, init, W, m, dip, progress):
        """Bits-back code images m..N-1 on the stack ``init`` (W seeded words, then the
        seeds' words). Each batch is as large as the stack above the seeded words can
        carry through its dip (``dip`` bits per image at first, then the dip measured on
        the batches so far), up to the header's batch size; the layout is recorded.
        Returns (stack, bound bits [N], sampled -ELBO bits [N], layout)."""
        from ddpmcodec.progress import progress_bar
        stack = _Stack(init, header.seed)
        base_bits = coder.valid_bits(init[:W])
        n = len(images)
        bound, elbo = np.zeros(n), np.zeros(n)
        layout, a, measured = [], m, 0.0
        with progress_bar((n - m) * diffusion.num_steps, "encode", "img-step",
                          enabled=progress) as bar:
            while a < n:
                above = stack.ans.num_valid_bits() - base_bits
                per = measured or dip
                size = max(1, min(header.batch_size, n - a, int(above // per)))
                before = stack.batch_low = stack.ans.num_words()
                bound[a:a + size], elbo[a:a + size] = self._encode_batch(
                    stack, diffusion, grids, images[a:a + size], a, bar)
                measured = max(measured, 32.0 * (before - stack.batch_low) / size)
                layout.append(size)
                a += size
        return stack, bound, elbo, tuple(layout)

    def _encode_batch(self, stack: _Stack, diffusion, g: LatentGrids, pixels, start: int, bar):
        """Bit-Swap encoding of one batch (images start..); returns (bound, sampled -ELBO)
        bits per image."""
        x0 = to_model_space(pixels)
        B, K = x0.shape[0], diffusion.num_steps
        dims = x0[0].numel()
        kvec = lambda k: torch.full((B,), k, dtype=torch.long)  # noqa: E731
        # step 0: bits back from q(x_0 | x0), then the pixels with the decoder; the very
        # first pop reads the seeded words, which need no whitening
        q_mean = math.sqrt(1.0 - float(diffusion.betas[0])) * x0
        if start > 0:
            stack.whiten(whiten_count(g, 0, B * dims), start, 0)
        s_prev = stack.pop_q(q_mean, g.q_std[0], g.delta[0], int(g.pop_half[0]))
        x_prev = s_prev.to(torch.float64) * g.delta[0]
        elbo = _sum_bits(_normal_logpdf(x_prev, q_mean, g.q_std[0]))
        mean, _, log_scale, out = self._p(diffusion, x_prev, 0)
        levels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).reshape(-1)
        stack.push_pixels(levels, mean, log_scale)
        dec = vb_terms_bpd(diffusion, x0, x_prev, kvec(0), out)["vb"] * dims
        bound = dec.clone()
        elbo += dec
        bar.update(B)
        for k in range(1, K):
            q_mean = math.sqrt(1.0 - float(diffusion.betas[k])) * x_prev
            stack.whiten(whiten_count(g, k, B * dims), start, k)
            s_k = stack.pop_q(q_mean, g.q_std[k], g.delta[k], int(g.pop_half[k]))
            x_k = s_k.to(torch.float64) * g.delta[k]
            mean, std, _, out = self._p(diffusion, x_k, k)
            stack.push_p(s_prev, mean, std, g.delta[k - 1], int(g.push_half[k - 1]))
            bound += vb_terms_bpd(diffusion, x0, x_k, kvec(k), out)["vb"] * dims
            elbo += _sum_bits(_normal_logpdf(x_k, q_mean, g.q_std[k])
                              - _normal_logpdf(x_prev, mean, std))
            s_prev, x_prev = s_k, x_k
            bar.update(B)
        stack.push_p(s_prev, 0.0, 1.0, g.delta[K - 1], int(g.push_half[K - 1]))
        elbo -= _sum_bits(_normal_logpdf(x_prev, 0.0, 1.0))
        bound += prior_bpd(diffusion, x0) * dims
        return bound.numpy(), elbo.numpy()

    # -- decoding --------------------------------------------------------------------------
    def decode(self, data: bytes, *, progress: bool = False) -> Decoded:
        from ddpmcodec.codec import classical
        from ddpmcodec.progress import progress_bar
        header, payload = container.unpack(data)
        if header.mode == "webp-lossless":  # the encoder's fallback: no network needed
            return classical.WebPLosslessCodec(self.model).decode(data)
        check_compatible(header, self.model, self.mode)
        params = LosslessParams.unpack(header.params, header)
        diffusion = chain_for(header, self.model, params.variance_rule, params.variances)
        grids = latent_grids(diffusion, params.grid_log2, params.support_sigmas)
        base = initial_words(header.seed, params.initial_words)
        if len(payload) % 4:
            raise DDPMCodecError("corrupt file: the lossless payload is not a whole number of words")
        stored = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        final = np.concatenate([base[:params.prefix_words], stored])
        if len(final) == 0:  # (a zero last word is refused by coder.Stack)
            raise DDPMCodecError("corrupt file: the lossless payload is empty")
        shape = tuple(header.image_shape)
        batches = params.batches(header)
        m = len(params.seed_lengths)
        decoded = []
        with Timer() as timer, deterministic(self.model.device, header.num_threads):
            stack = _Stack(final, header.seed)
            with progress_bar((header.num_images - m) * diffusion.num_steps, "decode",
                              "img-step", enabled=progress) as bar:
                for a, b in reversed(batches):
                    self._check_enough_bits(stack, grids, (b - a) * header.dims)
                    decoded.append(self._decode_batch(stack, diffusion, grids, b - a, a, shape,
                                                      bar))
            rest = stack.ans.words()
            seeds = _read_seeds(rest, base, params, shape)
        images = verify_pixels(np.concatenate(seeds + decoded[::-1]), header)
        net_bits = coder.valid_bits(final) - coder.valid_bits(rest)
        stats = _stats(header, params, len(payload), len(data), net_bits, timer.seconds)
        return Decoded(images, header, stats)

    @staticmethod
    def _check_enough_bits(stack: _Stack, g: LatentGrids, symbols: int) -> None:
        """Before a batch: the encoder pushed its last latent with N(0, I) on a grid of
        width delta, at least -log2(max probability) bits per symbol, so the stack must
        hold that much. A header that claims more images than the payload can hold fails
        here, before any network runs, so decoding time is bounded by the file's size."""
        sigma = 1.0 / float(g.delta[-1])  # the prior's std in grid units
        per_symbol = -math.log2(min(1.0, 1.0 / (sigma * math.sqrt(2 * math.pi)) + 2.0 ** -23))
        if stack.ans.num_valid_bits() < symbols * per_symbol:
            raise DDPMCodecError("corrupt file: the payload is too short for the images its "
                                 "header announces")

    def _decode_batch(self, stack: _Stack, diffusion, g: LatentGrids, B: int, start: int,
                      shape, bar):
        """The mirror image of _encode_batch (every operation undone in reverse order)."""
        K = diffusion.num_steps
        full = (B, *shape)
        dims = math.prod(shape)
        s_k = stack.pop_p(0.0, 1.0, g.delta[K - 1], int(g.push_half[K - 1]), full)
        x_k = s_k.to(torch.float64) * g.delta[K - 1]
        for k in range(K - 1, 0, -1):
            mean, std, _, _ = self._p(diffusion, x_k, k)
            s_prev = stack.pop_p(mean, std, g.delta[k - 1], int(g.push_half[k - 1]), full)
            x_prev = s_prev.to(torch.float64) * g.delta[k - 1]
            q_mean = math.sqrt(1.0 - float(diffusion.betas[k])) * x_prev
            stack.push_q(s_k, q_mean, g.q_std[k], g.delta[k], int(g.pop_half[k]))
            stack.whiten(whiten_count(g, k, B * dims), start, k)
            s_k, x_k = s_prev, x_prev
            bar.update(B)
        mean, _, log_scale, _ = self._p(diffusion, x_k, 0)
        levels = stack.pop_pixels(mean, log_scale)
        pixels = torch.from_numpy(levels.astype(np.uint8)).reshape(full)
        x0 = to_model_space(pixels.permute(0, 2, 3, 1).numpy())
        q_mean = math.sqrt(1.0 - float(diffusion.betas[0])) * x0
        stack.push_q(s_k, q_mean, g.q_std[0], g.delta[0], int(g.pop_half[0]))
        if start > 0:
            stack.whiten(whiten_count(g, 0, B * dims), start, 0)
        bar.update(B)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _stats(header: Header, params: LosslessParams, payload_bytes: int, file_bytes: int,
           net_bits: float, seconds: float) -> CodecStats:
    """Sizes of a bits-back file: the payload splits into the seeds' streams (side bits),
    the bits-back images' net bits and the rest (initial bits nobody paid back)."""
    payload_bits = 8 * payload_bytes
    side_bits = 8 * sum(params.seed_lengths)
    m = len(params.seed_lengths)
    return CodecStats(
        mode="lossless", num_images=header.num_images, dims=header.dims,
        num_steps=header.num_steps, payload_bits=payload_bits,
        header_bits=8 * (file_bytes - payload_bytes),
        initial_bits=float(payload_bits - net_bits - side_bits), bound_bits=params.bound_bits,
        seconds=seconds, side_bits=float(side_bits), net_images=header.num_images - m,
        extra={"method": "bitsback", "seed_images": m, "grid_log2": params.grid_log2,
               "support_sigmas": params.support_sigmas, "batch_size": header.batch_size,
               "initial_words": params.initial_words, "prefix_words": params.prefix_words,
               "device_kind": header.device_kind, "num_threads": header.num_threads})


def default_chain(model, steps: int | None = None, calibration=None):
    """The lossless codec's default chain: ``steps`` (default DEFAULT_STEPS) steps chosen by
    the DP on the model's calibration (or the ``calibration`` file), with analytic variances
    (the bound that `ddpmcodec nll --steps 10 --trajectory dp --variance analytic`
    reports). DDPMCodecError, saying how to make a calibration or pick another chain, when
    the model has none."""
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    steps = DEFAULT_STEPS if steps is None else steps
    model.diffusion.with_steps(steps)  # a bad --steps is named before the calibration
    try:
        return select_chain(model, ChainOptions(steps, DEFAULT_TRAJECTORY, DEFAULT_VARIANCE,
                                                None, calibration))[0]
    except DDPMCodecError as exc:
        raise DDPMCodecError(f"the default lossless chain ({steps} dp steps, analytic "
                             f"variances) needs the model's calibration: {exc}; or choose "
                             f"a chain without one (--steps K --trajectory even --variance "
                             f"model)") from None


def dip_bits(g: LatentGrids, dims: int) -> float:
    """An upper estimate of one image's dip, bits: how far below its starting size the
    stack sinks while the image is coded. The first two pops (x_0 from q(x_0|x0), x_1 from
    q(x_1|x_0)) come before anything of the same size is pushed back; each reads about
    the entropy of its quantized kernel. (On the default chain: 8.5 bits/dim, against a
    measured dip of 6.8, as the pixels pushed between the pops give some back.)"""
    per = np.log2(g.q_std[:2] / g.delta[:2] * math.sqrt(2 * math.pi * math.e))
    return float(dims * np.maximum(per, 1.0).sum())


def _seed_count(images, streams, dip: float) -> int:
    """The fewest first images whose WebP-lossless streams carry one image's dip (a seed
    costs its WebP size minus its bits-back size, ~0.5 bits/dim; an uncovered dip bit
    costs one bit). At most N - 1."""
    from ddpmcodec.codec.classical import webp_stream
    m, bits = 0, 0
    while m < len(images) - 1 and bits < dip:
        if m == len(streams):
            streams.append(webp_stream(images[m]))
        bits += 8 * len(streams[m])
        m += 1
    return m


def seed_words(streams) -> tuple[np.ndarray, bool]:
    """The seeds' streams as uint32 stack words (zero-padded to whole words) and whether a
    terminating word 1 had to follow (an ANS stack never ends in a zero word)."""
    blob = b"".join(streams)
    blob += bytes(-len(blob) % 4)
    words = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
    if len(words) and words[-1] == 0:
        return np.append(words, np.uint32(1)), True
    return words, False


def _read_seeds(rest: np.ndarray, base: np.ndarray, params: LosslessParams, shape) -> list:
    """What the decoder's stack holds at the end: the seeded words, then the seeds' words.
    Returns the seed images (uint8 [1, H, W, C] each)."""
    from ddpmcodec.codec.classical import webp_image
    W, total = len(base), sum(params.seed_lengths)
    expected = -(-total // 4) + int(params.terminator)
    if len(rest) != W + expected or not np.array_equal(rest[:W], base):
        raise DDPMCodecError("decoding failed: the stream does not end in its initial words "
                             "(corrupt file, or the network was evaluated differently)")
    top = rest[W:]
    if params.terminator and top[-1] != 1:
        raise DDPMCodecError("corrupt file: the seed images' words do not end as recorded")
    blob = np.ascontiguousarray(top[:-1] if params.terminator else top, dtype="<u4").tobytes()
    if any(blob[total:]):
        raise DDPMCodecError("corrupt file: the seed images' padding is not zero")
    out, a = [], 0
    c, h, w = shape
    for n in params.seed_lengths:
        out.append(webp_image(blob[a:a + n], shape).reshape(1, h, w, c))
        a += n
    return out


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n
