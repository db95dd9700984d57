"""The lossless codec's defaults and its ``params`` blob (:class:`LosslessParams`).

Torch-free on purpose: the command line reads its defaults from here without starting
torch."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ddpmcodec.codec.container import BlobReader, BlobWriter, Header
from ddpmcodec.codec.container.chains import (
    pack_log2_variances, read_log2_variances, read_variance_rule)
from ddpmcodec.errors import DDPMCodecError

PARAMS_VERSION = 3           # 3: compact, WebP seeds and a batch layout; 1 and 2 still decode
DEFAULT_STEPS = 28           # the default chain: K dp-chosen steps with analytic variances
                             # (files of 16 and 200 images below 0.98x JPEG-XL's, 0.498-0.55
                             # images/s on a 2-core CPU: K table and files in benchmarks/
                             # results/lossless_defaults_test600-799_k28_xeon.json)
DEFAULT_TRAJECTORY = "dp"
DEFAULT_VARIANCE = "analytic"
DEFAULT_BATCH = 16           # images per network call at most (the CPU's best throughput)
DEFAULT_GRID_LOG2 = 2        # 4..8 grid points per (smaller) standard deviation
DEFAULT_SUPPORT_SIGMAS = 5.0  # alphabet half-width in standard deviations
METHODS = ("auto", "bitsback", "classical", "webp")
MAX_HALF = (1 << 18) - 1     # largest alphabet half-width
EXCESS_MAX = (1 << 20) - 1   # largest escape excess, in grid points
# What a payload must hold, checked before any array is made (see LosslessParams.check_payload).
DIMS_PER_PAYLOAD_BIT = 16    # a bits-back image costs at least 1/16 bit per dimension
STACK_SLACK_WORDS = 2        # the final stack is at most this much shorter than the initial
PREFIX_MARGIN_WORDS = 8      # regenerated words below the stored ones that a decoder holds
_FLAG_GRID, _FLAG_SUPPORT, _FLAG_SEEDS, _FLAG_LAYOUT, _FLAG_TERMINATOR = 1, 2, 4, 8, 16
_FLAG_CLASSICAL_SEEDS = 32  # seeds may be JPEG-XL streams (readers before it refuse the file)


# -- parameters in the header ------------------------------------------------------------
@dataclass(frozen=True)
class LosslessParams:
    """The lossless codec's ``params`` blob (see the module docstring for the grid).

    grid_log2: at least 2^grid_log2 grid points per standard deviation.
    support_sigmas: alphabet half-width in standard deviations.
    initial_words: W seeded 32-bit words at the bottom of the encoder's stack.
    prefix_words: P leading words of the final stack that equal the seeded words, so they
        are regenerated instead of stored (P <= W).
    variance_rule, variances: the chain's reverse variance (container.chains.VARIANCE_RULES; explicit
        variances, version 3: quantized to 1/256 of a doubling, the values both sides use).
    seed_lengths: byte lengths of the classical streams of images 0..m-1, which sit on
        the stack above the seeded words (empty: no seeds).
    layout: batch sizes of the bits-back images m..N-1 in encoding order (empty: the
        header's batch size throughout).
    terminator: a word 1 follows the seed streams (their last word was zero).
    classical_seeds: the seeds are stored classical streams (JPEG-XL or WebP-lossless,
        :mod:`.classical`); unset, WebP-lossless streams only (files before JPEG-XL seeds).
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
    classical_seeds: bool = False
    version: int = PARAMS_VERSION

    def pack(self) -> bytes:
        """Version 3: u8 version, u8 flags (the seeds' kind among them), [u8 grid_log2], [v support in sixteenths], v W,
        v P, the variance rule (u8; explicit: K signed varints, the first quantized log2
        variance and then differences), [v m, m v seed lengths], [v runs, (v size, v count)
        per run of equal batch sizes]. Fields at their defaults cost nothing but a flag."""
        flags = ((_FLAG_GRID if self.grid_log2 != DEFAULT_GRID_LOG2 else 0)
                 | (_FLAG_SUPPORT if self.support_sigmas != DEFAULT_SUPPORT_SIGMAS else 0)
                 | (_FLAG_SEEDS if self.seed_lengths else 0)
                 | (_FLAG_LAYOUT if self.layout else 0)
                 | (_FLAG_TERMINATOR if self.terminator else 0)
                 | (_FLAG_CLASSICAL_SEEDS if self.classical_seeds else 0))
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
            if flags >= 64:
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
                    terminator=bool(flags & _FLAG_TERMINATOR),
                    classical_seeds=bool(flags & _FLAG_CLASSICAL_SEEDS), version=version)
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
        if self.classical_seeds and not m:
            raise DDPMCodecError("lossless parameters: classical seeds without seeds")
        if self.version < PARAMS_VERSION:
            for name in ("bound_bits", "elbo_bits"):
                if not math.isfinite(getattr(self, name)):
                    raise DDPMCodecError(f"lossless parameters: {name} is not finite")
        return self

    def check_payload(self, header: Header, stored_words: int) -> "LosslessParams":
        """DDPMCodecError unless a payload of ``stored_words`` words can hold what the
        header and these parameters announce, so that a decoder's memory and time are
        bounded by the file's size before it makes any array (the encoder checks its own
        files the same way, so that it never writes one that a decoder refuses):

        * the stack ends no shorter than it started (the images' net bits are positive),
          up to STACK_SLACK_WORDS of word rounding: stored + P >= W + the seeds' words.
          So the seeds and the initial words the chain consumed (W - P) lie within the
          stored words, and the P regenerated ones, which a decoder never reads below
          (the encoder's stack never sank beneath them), need not be held in memory;
        * every bits-back image costs at least 1/DIMS_PER_PAYLOAD_BIT bit per dimension
          (measured on the embedded model: 1.48 bits/dim for an all-255 image, the
          cheapest seen; a random network: ~8), so the payload bounds the number of
          images, hence the network's work."""
        seed_words = -(-sum(self.seed_lengths) // 4) + int(self.terminator)
        if self.initial_words + seed_words > self.prefix_words + stored_words + STACK_SLACK_WORDS:
            raise DDPMCodecError(
                f"corrupt file: the payload ({stored_words} words) is too short for the "
                f"{self.initial_words - self.prefix_words} initial and {seed_words} seed "
                f"words its parameters announce")
        images = header.num_images - len(self.seed_lengths)
        if images * header.dims > DIMS_PER_PAYLOAD_BIT * 32 * stored_words:
            raise DDPMCodecError(
                f"corrupt file: the payload ({stored_words} words) is too short for the "
                f"{images} bits-back images its header announces")
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


def default_chain(model, steps: int | None = None, calibration=None):
    """The lossless codec's default chain: ``steps`` (default DEFAULT_STEPS) steps chosen by
    the DP on the model's calibration (or the ``calibration`` file), with analytic variances
    (the bound that `ddpmcodec nll --steps 10 --trajectory dp --variance analytic`
    reports). DDPMCodecError, saying how to make a calibration or pick another chain, when
    the model has none; any other error (a bad ``steps``, a damaged calibration file or
    one of another model) keeps its own message."""
    from ddpmcodec.io.chain_choice import ChainOptions, select_chain
    steps = DEFAULT_STEPS if steps is None else steps
    model.diffusion.with_steps(steps)  # a bad --steps is named before the calibration
    try:
        return select_chain(model, ChainOptions(steps, DEFAULT_TRAJECTORY, DEFAULT_VARIANCE,
                                                None, calibration))[0]
    except DDPMCodecError as exc:
        if not calibration_missing(model, calibration):
            raise
        raise DDPMCodecError(f"the default lossless chain ({steps} dp steps, analytic "
                             f"variances) needs the model's calibration: {exc}; or choose "
                             f"a chain without one (--steps K --trajectory even --variance "
                             f"model)") from None


def calibration_missing(model, calibration=None) -> bool:
    """Whether there is no calibration file to read: ``calibration`` names no file, or,
    without it, none of the places :func:`ddpmcodec.io.calibration.find_calibration`
    looks in holds one (the one condition under which it raises "has no calibration",
    and load_calibration "no calibration file at")."""
    from pathlib import Path

    from ddpmcodec.io import calibration as cal
    if calibration is not None:
        return not Path(calibration).is_file()
    folder = cal._checkpoint_folder(model)
    places = ([folder / cal.FILE_NAME] if folder is not None else []) + [
        cal.default_calibration_path(model.fingerprint)]
    return not any(p.is_file() for p in places)
