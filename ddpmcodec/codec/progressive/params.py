"""The progressive codec's defaults, its coded schedule and its ``params`` blob.

Torch-free on purpose: the command line reads its defaults from here without starting
torch."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ddpmcodec.codec import container
from ddpmcodec.codec.container import BlobReader, BlobWriter
from ddpmcodec.codec.container.chains import (
    pack_log2_variances, read_log2_variances, read_variance_rule)
from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.errors import DDPMCodecError

PARAMS_VERSION = 3   # 3: compact fields, compact packets, coded_steps; 1 and 2 still decode
GENERATORS = ch.GENERATORS  # version 3 names the generator by its index + 1
DEFAULT_GENERATOR = ch.GENERATOR_V2  # format 3; formats 1-2 were written with v1
DEFAULT_STEPS = 16
DEFAULT_CHUNK_BITS = 12.0
DEFAULT_MARGIN_BITS = 2.0
DEFAULT_MAX_LOG2 = 20
SCHEDULE_OFFSET = container.GEOMETRIC_OFFSET
VARIANCES = ("fit", "model")
RECONS = ("mean", "sample", "flow")
DEFAULT_RECON_STEPS = 20
LEVELS_PER_NAT = 256        # formats 1-2: the KL implied by a level is within ~4 bits
# Format 3: a quarter of that. Half a level's error in log var_p adds at most
# dims / 4 * (1 / 128)^2 nats of KL (0.07 bits for CIFAR, 0.02 on average) and saves two
# mantissa bits per image and step; the implied KL is then within ~17 bits, which only
# moves the chunk layout by a chunk or so.
LEVELS_PER_NAT_COMPACT = 64
MAX_LEVEL_EXPONENT = 13     # exp-Golomb octaves of variance levels
MAX_LEVEL_NATS = 40         # var_p / var_q <= e^40: far beyond any real step
DEFAULT_CHECK_BITS = 8     # per coded step: a check of its latents (format 3)
MAX_CHECK_BITS = 32
END_BITS = 12              # what the end of a file stopped early costs
PIXEL_CHECK_BYTES = 4      # exact files end with a check of the last step's mean pixels
MAX_LATENT_VALUES = 1 << 28  # images x dims held in float64 at once (2 GiB)


# -- schedule --------------------------------------------------------------------------------
def coded_schedule(num_timesteps: int, steps: int, offset: float = SCHEDULE_OFFSET) -> tuple:
    """K strictly increasing original indices from 0 to T-1, geometric in t + offset
    (dense near the data, where most of the rate is spent):
    :func:`container.geometric_timesteps`, which format 3 names in two bytes."""
    if not 2 <= steps <= num_timesteps:
        raise DDPMCodecError(f"--steps must be between 2 and {num_timesteps} for progressive "
                             f"coding, got {steps}")
    return container.geometric_timesteps(num_timesteps, steps, offset)


# -- parameters in the header ---------------------------------------------------------------
@dataclass(frozen=True)
class ProgressiveParams:
    """The progressive codec's ``params`` blob: channel constants, the proposal's variance
    rule (``fit`` per image and step, or ``model``: the chain's), the generator, and the
    chain's reverse-variance rule (container.chains.VARIANCE_RULES, explicit variances as K float64)."""

    channel: ch.ChannelParams
    variance: str = "fit"
    generator: str = DEFAULT_GENERATOR
    generator_crc: int = 0
    chain_rule: str = "model"
    chain_variances: tuple | None = None
    coded_steps: int | None = None  # packets in a format 2 file (None: every step)
    version: int = PARAMS_VERSION
    check_bits: int = DEFAULT_CHECK_BITS  # format 3: bits of each coded step's latent check
    lossless: bool = False  # format 3, exact files: the pixels follow the last coded step

    def __post_init__(self):
        # the channel simulates with the generator the file names
        if self.channel.generator != self.generator:
            object.__setattr__(self, "channel",
                               dataclasses.replace(self.channel, generator=self.generator))

    def validate(self) -> "ProgressiveParams":
        self.channel.validate()
        if self.variance not in VARIANCES:
            raise DDPMCodecError(f"--variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if self.lossless and self.coded_steps is not None:
            raise DDPMCodecError("progressive parameters: a lossless file codes every step")
        if not 1 <= self.check_bits <= MAX_CHECK_BITS:
            raise DDPMCodecError(f"--check-bits must be between 1 and {MAX_CHECK_BITS}, "
                                 f"got {self.check_bits}")
        return self

    @property
    def framing(self) -> int:
        """Packet framing of a format 2 file: 1 (u32 word count and CRC-32, params 1-2) or
        2 (version 3). Format 3 files are one stream (:mod:`ddpmcodec.codec.entropy.arith`)."""
        return 1 if self.version < 3 else 2

    @classmethod
    def defaults(cls) -> "ProgressiveParams":
        """What an empty params blob means in format 3."""
        return cls(ch.ChannelParams(DEFAULT_CHUNK_BITS, DEFAULT_MARGIN_BITS, DEFAULT_MAX_LOG2))

    def pack_compact(self) -> bytes:
        """The params blob of a format 3 file: empty at the defaults, else :meth:`pack`."""
        same = dataclasses.replace(self, generator_crc=0) == self.defaults()
        return b"" if same else self.pack()

    def generator_matches(self) -> bool:
        """Whether this machine's candidate generator is the file's (version 3 keeps 16
        bits of the check: a miss is still caught by the first step's latent check)."""
        if self.generator not in GENERATORS:
            return False
        check = ch.generator_check(self.generator)
        return self.generator_crc == (check if self.version < 3 else check & 0xFFFF)

    def pack(self) -> bytes:
        """Version 3: u8 version, u8 flags, [v chunk bits x4], [v margin x4], [u8 max_log2],
        u8 proposal variance, u8 generator code, u16 generator check, the chain's variance
        rule (explicit: quantized log2 variances, container.chains.pack_log2_variances), [v coded
        steps (format 2)], [u8 check bits (format 3)]; flag 32: the file ends lossless.
        Fields at their defaults cost nothing but a flag."""
        c = self.channel
        quarter = lambda v: int(round(4 * v))  # noqa: E731
        if abs(quarter(c.chunk_bits) / 4 - c.chunk_bits) > 1e-12 or \
                abs(quarter(c.margin_bits) / 4 - c.margin_bits) > 1e-12:
            raise DDPMCodecError("--chunk-bits and the margin must be multiples of 0.25")
        if self.generator not in GENERATORS:
            raise DDPMCodecError(f"unknown candidate generator {self.generator!r}")
        flags = ((1 if c.chunk_bits != DEFAULT_CHUNK_BITS else 0)
                 | (2 if c.margin_bits != DEFAULT_MARGIN_BITS else 0)
                 | (4 if c.max_log2 != DEFAULT_MAX_LOG2 else 0)
                 | (8 if self.coded_steps is not None else 0)
                 | (16 if self.check_bits != DEFAULT_CHECK_BITS else 0)
                 | (32 if self.lossless else 0))
        w = BlobWriter().u8(PARAMS_VERSION).u8(flags)
        if flags & 1:
            w.uvar(quarter(c.chunk_bits))
        if flags & 2:
            w.uvar(quarter(c.margin_bits))
        if flags & 4:
            w.u8(c.max_log2)
        w.u8(VARIANCES.index(self.variance)).u8(GENERATORS.index(self.generator) + 1)
        w.u16(self.generator_crc & 0xFFFF)
        pack_log2_variances(w, self.chain_rule, self.chain_variances)
        if flags & 8:
            w.uvar(self.coded_steps)
        if flags & 16:
            w.u8(self.check_bits)
        return w.getvalue()

    @classmethod
    def unpack(cls, blob: bytes, num_steps: int = 0) -> "ProgressiveParams":
        r = BlobReader(blob, "progressive parameters")
        version = r.u8("params version")
        if version == PARAMS_VERSION:
            flags = r.u8("flags")
            if flags >= 64:
                raise DDPMCodecError(f"progressive parameters: unknown flags {flags}")
            chunk = r.bounded("chunk bits", r.uvar("chunk bits"), 0, 1 << 16) / 4 if flags & 1 \
                else DEFAULT_CHUNK_BITS
            margin = r.bounded("margin", r.uvar("margin"), 0, 1 << 16) / 4 if flags & 2 \
                else DEFAULT_MARGIN_BITS
            max_log2 = r.u8("max log2 candidates") if flags & 4 else DEFAULT_MAX_LOG2
            var = r.bounded("variance rule", r.u8("variance rule"), 0, len(VARIANCES) - 1)
            gen = r.bounded("generator", r.u8("generator"), 1, len(GENERATORS))
            crc = r.u16("generator check")
            rule, values = read_log2_variances(r, num_steps)
            coded = (r.bounded("coded steps", r.uvar("coded steps"), 1, max(num_steps, 1))
                     if flags & 8 else None)
            check = (r.bounded("check bits", r.u8("check bits"), 1, MAX_CHECK_BITS)
                     if flags & 16 else DEFAULT_CHECK_BITS)
            r.end()
            return cls(ch.ChannelParams(chunk, margin, max_log2), VARIANCES[var],
                       GENERATORS[gen - 1], crc, rule, values, coded, version, check,
                       bool(flags & 32)).validate()
        if version not in (1, 2):
            raise DDPMCodecError(f"progressive parameters version {version} is not supported")
        chunk = r.u16("chunk bits") / 4
        margin = r.u16("margin") / 4
        max_log2 = r.u8("max log2 candidates")
        var = r.bounded("variance rule", r.u8("variance rule"), 0, len(VARIANCES) - 1)
        gen = r.raw(r.u8("generator id length"), "generator id")
        crc = r.u32("generator check")
        rule, values = read_variance_rule(r, num_steps) if version >= 2 else ("model", None)
        r.end()
        try:
            gen_id = gen.decode("ascii")
        except UnicodeDecodeError:
            raise DDPMCodecError("progressive parameters: generator id is not ASCII") from None
        return cls(ch.ChannelParams(chunk, margin, max_log2), VARIANCES[var], gen_id, crc, rule,
                   None if values is None else tuple(values), None, version).validate()
