"""Progressive lossy compression: the latent chain sent by reverse channel coding (the
paper's Algorithms 3 and 4), decodable from any prefix.

Schedule. A file codes K latents on a chain of K original indices
``0 = t_0 < t_1 < ... < t_{K-1} = T-1`` (:func:`coded_schedule`: geometric in t + 3, so
the coded steps are dense where the rate is spent, near the data). Coded step s = 0 sends
x_{t_{K-1}} ~ q(x_{T-1} | x0) against N(0, I); coded step s >= 1 sends
x_{t_{K-1-s}} ~ q(x_{t_{K-1-s}} | x_{t_{K-s}}, x0) against the model's
p(x_{t_{K-1-s}} | x_{t_{K-s}}), both through :mod:`.channel`. After s coded steps the
receiver holds the latent at chain step K-s and reconstructs x0 from it by the denoised
mean (the clipped x0-prediction), an ancestral sample or the deterministic DDIM path.

Proposal variance. ``variance="model"`` uses the model's reverse variance (fixedlarge,
fixedsmall or learned). ``variance="fit"`` (default) keeps the model's mean but sends,
per image and step, one level l (exp-Golomb) with var_p = var_q * exp(l / 64) (format 3;
exp(l / 256) in formats 1-2), the posterior variance var_q being known to both sides: l
is the quantised optimum var_q + mean((mean_q - mean_p)^2). On the embedded model this
lowers the summed KL to t = 0 by a third at K = 16 (the fixedlarge variance of a
respaced step is far too wide for these jumps). With a fitted variance the KL is, up to
the quantisation of l, dims * l / (2 * 64) nats, which the receiver can compute: the
channel layout uses it as ``kl_hint`` and no KL is sent.

Payload (format 3, :mod:`.container`'s compact header): one arithmetic-coded stream
(:mod:`.arith`) to the end of the file. Per coded step: per image, the variance level
(fit, s >= 1) and the channel symbols; then the low ``check_bits`` bits of the CRC of the
latents after the step (float64 [N, C, H, W], little-endian); then, unless the step is
the chain's last, a flag "more steps follow" (:func:`_end_probs`). Any first bytes of a
file decode the coded steps they determine, and each step's check proves that they are
the encoder's latents (a different device, library or model, or a corrupt byte, is an
error with probability 1 - 2^-check_bits per step, never a silently wrong step beyond
that). Formats 1-2 (one range-coded packet per step: a length, a CRC and the words; a
pixel checksum in the header) are still read.

The network is evaluated in float32 under :func:`base.deterministic`, batch by batch in the
header's layout, and p_theta is formed in float64 (``Diffusion.p_mean_variance``), so encoder
and decoder compute it identically. Candidates come from generator v2
(:mod:`.candidates`: exact IEEE arithmetic, the same bits on every device) in format 3
and from v1 (numpy Philox + Box-Muller, :mod:`.channel`) in formats 1-2.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.codec import arith, coder, container
from ddpmcodec.codec import channel as ch
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
from ddpmcodec.codec.container import BlobReader, BlobWriter
from ddpmcodec.core.metrics import mse_per_image, psnr, rmse_psnr
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import from_model_space, to_model_space

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
_PRIVATE_TAG = 0xA11
DEFAULT_CHECK_BITS = 8     # per coded step: a check of its latents (format 3)
MAX_CHECK_BITS = 32
END_BITS = 12              # what the end of a file stopped early costs
MAX_LATENT_VALUES = 1 << 28  # images x dims held in float64 at once (2 GiB)
_LEB_MAX_BYTES = 5


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
    chain's reverse-variance rule (base.VARIANCE_RULES, explicit variances as K float64)."""

    channel: ch.ChannelParams
    variance: str = "fit"
    generator: str = DEFAULT_GENERATOR
    generator_crc: int = 0
    chain_rule: str = "model"
    chain_variances: tuple | None = None
    coded_steps: int | None = None  # packets in a format 2 file (None: every step)
    version: int = PARAMS_VERSION
    check_bits: int = DEFAULT_CHECK_BITS  # format 3: bits of each coded step's latent check

    def __post_init__(self):
        # the channel simulates with the generator the file names
        if self.channel.generator != self.generator:
            object.__setattr__(self, "channel",
                               dataclasses.replace(self.channel, generator=self.generator))

    def validate(self) -> "ProgressiveParams":
        self.channel.validate()
        if self.variance not in VARIANCES:
            raise DDPMCodecError(f"--variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if not 1 <= self.check_bits <= MAX_CHECK_BITS:
            raise DDPMCodecError(f"--check-bits must be between 1 and {MAX_CHECK_BITS}, "
                                 f"got {self.check_bits}")
        return self

    @property
    def framing(self) -> int:
        """Packet framing of a format 2 file: 1 (u32 word count and CRC-32, params 1-2) or
        2 (version 3). Format 3 files are one stream (:mod:`.arith`)."""
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
        rule (explicit: quantized log2 variances, base.pack_log2_variances), [v coded
        steps (format 2)], [u8 check bits (format 3)]. Fields at their defaults cost
        nothing but a flag."""
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
                 | (16 if self.check_bits != DEFAULT_CHECK_BITS else 0))
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
            if flags >= 32:
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
                       GENERATORS[gen - 1], crc, rule, values, coded, version, check).validate()
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


# -- framing ---------------------------------------------------------------------------------
def _read_leb128(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(value, new position), or None when buf ends inside the number; DDPMCodecError
    for a number longer than 5 bytes."""
    value = 0
    for i in range(_LEB_MAX_BYTES):
        if pos + i >= len(buf):
            return None
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos + i + 1
    raise DDPMCodecError("corrupt file: a packet length is malformed")


def latent_check(x: torch.Tensor, bits: int) -> int:
    """The ``bits``-bit check (format 3) of float64 latents [N, C, H, W]: the low bits of
    their CRC-16 (up to 16 bits) or CRC-32."""
    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f8").tobytes()
    crc = container.crc16(data) if bits <= 16 else container.crc32(data)
    return crc & ((1 << bits) - 1)


def latent_crc(x: torch.Tensor, framing: int = 2) -> int:
    """Check value of float64 latents [N, C, H, W] (little-endian bytes): CRC-32 in
    framing 1, CRC-16 in framing 2 (it tells a decoder that went wrong from one that did
    not; a miss, 2^-16, leaves the pixel checksum at the end)."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f8")
    return container.crc32(arr.tobytes()) if framing == 1 else container.crc16(arr.tobytes())


def stream_words(data: bytes) -> np.ndarray:
    """The uint32 words of a framing-2 packet's stream: its bytes, most significant first,
    without the zero bytes that ended its last word (restored here)."""
    raw = bytes(data) + bytes(-len(data) % 4)
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def _packet_spans(payload: bytes, framing: int = 2) -> tuple[list[tuple[int, int]], str | None]:
    """(offset of the check value, offset just after the packet) of each whole packet from
    the start, and why the walk stopped short of the end (None when every byte is in a
    whole packet). DDPMCodecError for a malformed length."""
    spans, pos = [], 0
    check = 4 if framing == 1 else 2
    while pos < len(payload):
        got = _read_leb128(payload, pos)
        if got is None:
            return spans, "the payload ends inside a packet length"
        n, p = got
        end = p + check + (4 * n if framing == 1 else n)
        if end > len(payload):
            return spans, "a packet runs past the end of the payload"
        spans.append((p, end))
        pos = end
    return spans, None


def split_packets(payload: bytes, complete: bool = True,
                  framing: int = 2) -> list[tuple[int, np.ndarray]]:
    """The whole packets of a payload: [(latent check, uint32 words)]. In a complete
    payload every byte must belong to a packet; a prefix ends at its last whole packet."""
    spans, short = _packet_spans(payload, framing)
    if complete and short:
        raise DDPMCodecError(f"corrupt file: {short}")
    if framing == 1:
        return [(struct.unpack("<I", payload[p:p + 4])[0],
                 np.frombuffer(payload[p + 4:end], dtype="<u4").astype(np.uint32))
                for p, end in spans]
    return [(struct.unpack("<H", payload[p:p + 2])[0], stream_words(payload[p + 2:end]))
            for p, end in spans]


def packet_ends(payload: bytes, framing: int = 2) -> list[int]:
    """Payload byte offset just after each whole packet (for truncation points)."""
    return [end for _, end in _packet_spans(payload, framing)[0]]


# -- per-step math ---------------------------------------------------------------------------
def _kvec(k: int, n: int) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


def _network_p(model, diffusion, x: torch.Tensor, k: int, batches) -> dict:
    """:func:`base.network_p` as this codec has always formed it (on the model's device)."""
    return network_p(model, diffusion, x, k, batches, math_on_model_device=True)


# -- the fitted proposal variance ------------------------------------------------------------
def level_variance(var_q: float, level: int, per_nat: int = LEVELS_PER_NAT) -> float:
    """The proposal variance of a fitted level: var_q * e^(level / per_nat)."""
    return var_q * math.exp(level / per_nat)


def fitted_level(mean_q: np.ndarray, var_q: float, mean_p: np.ndarray,
                 per_nat: int = LEVELS_PER_NAT) -> int:
    """The variance level l >= 0 (var_p = var_q e^{l/per_nat}) that minimises the KL: the
    better of the two levels around the optimum var_q + mean((mean_q - mean_p)^2)."""
    v = float(np.mean((mean_q - mean_p) ** 2))
    x = per_nat * math.log1p(v / var_q)
    best, best_kl = 0, math.inf
    for lvl in {max(0, math.floor(x)), max(0, math.ceil(x))}:
        kl = float(ch.kl_bits(mean_q, var_q, mean_p, level_variance(var_q, lvl, per_nat)).sum())
        if kl < best_kl:
            best, best_kl = lvl, kl
    if best > MAX_LEVEL_NATS * per_nat:
        raise DDPMCodecError("the fitted variance is out of range for this file format")
    return best


def level_octave_probs(previous: int | None) -> np.ndarray:
    """Model of the octave of a variance level given the same image's level at the
    previous coded step (levels grow slowly along the chain): two-sided geometric around
    the previous octave, a little heavier one octave up; uniform without a previous one."""
    n = MAX_LEVEL_EXPONENT + 1
    if previous is None:
        return np.full(n, 1.0 / n)
    c = (previous + 1).bit_length() - 1 + 0.5
    p = np.exp2(-2.0 * np.abs(np.arange(n) - c))
    return p / p.sum()


def level_kl_hint(level: int, dims: int, per_nat: int = LEVELS_PER_NAT) -> float:
    """KL (bits) implied by a fitted level: dims * l / (2 * per_nat) nats."""
    return dims * level / (2.0 * per_nat) / ch.LN2


@dataclass
class _StepPlan:
    """What both sides know at a coded step before any symbol: chain step of the latent
    they produce and the proposal p (float64 numpy [N, dims])."""

    k_out: int
    mean_p: np.ndarray
    var_p: np.ndarray  # [N, dims]
    var_q: float       # posterior variance (scalar) of this step
    pred_x0: torch.Tensor | None  # x0-prediction of the latent coded before (None at s=0)
    kl_hint: float | None = None  # bits, when the receiver can bound the KL itself


def _plan(model, diffusion, s: int, x: torch.Tensor | None, batches, n: int, dims: int) -> _StepPlan:
    K = diffusion.num_steps
    if s == 0:
        k = K - 1
        abar = float(diffusion.alphas_cumprod[k])
        # KL(q(x_T|x0) || N(0, I)) <= dims * -log(1 - abar) / 2 nats for x0 in [-1, 1]: a
        # bound both sides know (about 0.09 bits for CIFAR), so the prior step sends no KL
        hint = -0.5 * dims * math.log1p(-abar) / ch.LN2
        return _StepPlan(k, np.zeros((n, dims)), np.ones((n, dims)), 1.0 - abar, None, hint)
    k = K - s  # chain step of the latent we condition on; we produce k - 1
    p = _network_p(model, diffusion, x, k, batches)
    var_q = float(torch.exp(diffusion.posterior_log_variance_clipped[k]))
    return _StepPlan(k - 1, p["mean"].reshape(n, dims).numpy(),
                     torch.exp(p["log_variance"]).reshape(n, dims).numpy(), var_q, p["pred_x0"])


def _q_target(diffusion, x0: torch.Tensor, x: torch.Tensor | None, s: int):
    """q's mean [N, dims] (float64 numpy) for coded step s."""
    n = x0.shape[0]
    K = diffusion.num_steps
    if s == 0:
        k = K - 1
        mean = float(diffusion.sqrt_alphas_cumprod[k]) * x0
    else:
        mean, _ = diffusion.q_posterior(x0, x, _kvec(K - s, n))
    return mean.reshape(n, -1).numpy()


def _private_rng(seed: int, image: int, step: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), image, step, _PRIVATE_TAG]))


@dataclass(frozen=True)
class _Budget:
    bytes: int | None = None  # the whole file
    psnr: float | None = None


def _budget(n: int, image_shape, max_bytes, bpp, psnr) -> _Budget:
    """The encoder's target from the options (at most one)."""
    given = [name for name, v in (("--max-bytes", max_bytes), ("--bpp", bpp), ("--psnr", psnr))
             if v is not None]
    if len(given) > 1:
        raise DDPMCodecError(f"give at most one target, not {' and '.join(given)}")
    if max_bytes is not None:
        if max_bytes < 1:
            raise DDPMCodecError(f"--max-bytes must be positive, got {max_bytes}")
        return _Budget(bytes=int(max_bytes) * n)
    if bpp is not None:
        if not bpp > 0:
            raise DDPMCodecError(f"--bpp must be positive, got {bpp}")
        _, h, w = image_shape
        return _Budget(bytes=int(math.floor(bpp * h * w * n / 8)))
    if psnr is not None:
        if not 0 < psnr < 200:
            raise DDPMCodecError(f"--psnr must be a PSNR in dB (0..200), got {psnr}")
        return _Budget(psnr=float(psnr))
    return _Budget()


def _end_probs() -> np.ndarray:
    """P(more steps follow), P(the file ends) after a coded step that is not the chain's
    last: a file stopped by a target pays END_BITS once, a full one almost nothing."""
    end = 2.0 ** -END_BITS
    return np.array([1.0 - end, end])


def _write_more(stream: arith.ArithEncoder, more: bool) -> None:
    stream.categorical(0 if more else 1, _end_probs())


def _stopped_size(stream: arith.ArithEncoder, s: int, K: int) -> int:
    """Payload bytes if the file ended after coded step s (its symbols are in ``stream``)."""
    saved = stream.checkpoint()
    if s + 1 < K:
        _write_more(stream, False)
    size = stream.size()
    stream.restore(saved)
    return size


def _psnr_of(pred_x0: torch.Tensor, orig: np.ndarray) -> float:
    """PSNR (dB) of the mean reconstruction over all images of the file."""
    return rmse_psnr(from_model_space(pred_x0), orig)[1]


# -- the codec -------------------------------------------------------------------------------
class ProgressiveCodec(Codec):
    """Lossy, progressive: any whole-packet prefix decodes to the latent of a coded step."""

    mode = "progressive"

    def encode(self, images: np.ndarray, *, steps: int | None = None, batch_size: int = 8,
               seed: int = 0, progress: bool = False, chunk_bits: float = DEFAULT_CHUNK_BITS,
               margin_bits: float = DEFAULT_MARGIN_BITS, max_log2: int = DEFAULT_MAX_LOG2,
               variance: str = "fit", keep_latents: bool = False, chain=None,
               max_bytes: int | None = None, bpp: float | None = None,
               psnr: float | None = None, check_bits: int = DEFAULT_CHECK_BITS,
               generator: str = DEFAULT_GENERATOR, search_device: str | None = None,
               search_workers: int | None = None, budget_rule: str = "layout") -> Encoded:
        """Compress ``images`` (uint8 NHWC). ``steps`` = K coded latents (default 16) on
        :func:`coded_schedule`, or the latents of ``chain`` (a Diffusion on the model's
        schedule from t = 0 to T - 1, whose reverse variance the ``model`` proposal uses).

        stats.bound_bits is the summed KL of the codec's own proposals along the coded path
        (the information the channel had to convey); stats.extra["steps"] has, per coded
        step, the KL, the ideal code lengths, the packet sizes and the distortion of the
        mean reconstruction there (see :func:`truncation_table`).

        Targets (at most one): ``max_bytes`` (whole file, per image) or ``bpp`` (whole
        file, bits per pixel) keep the longest prefix of coded steps within budget;
        ``psnr`` (dB, of the mean reconstruction over the file's images) stops after the
        first coded step that reaches it. Coding stops there: the file holds only those
        steps (``coded_steps`` in its parameters) and its pixel checksum is that of the
        last step's mean reconstruction.

        Encoder-only (the format does not record them): ``search_device`` runs generator
        v2's candidate search in torch there; ``search_workers`` sets how many processes
        search chunks at once on the CPU (None: one per CPU; channel.encode_gaussian);
        ``budget_rule`` ("layout", or "chunk", the rule before) sets each chunk's search
        budget (channel.search_budget).
        """
        from ddpmcodec.progress import progress_bar
        model = self.model
        images, batch_size = start_encode(images, model, batch_size)
        n = len(images)
        if n * images[0].size > MAX_LATENT_VALUES:
            raise DDPMCodecError(f"{n} images are too many for one progressive file (at most "
                                 f"{MAX_LATENT_VALUES // images[0].size}); split them")
        budget = _budget(n, model.image_shape, max_bytes, bpp, psnr)
        T = model.diffusion.num_steps
        if chain is None:
            K = DEFAULT_STEPS if steps is None else int(steps)
            timesteps = coded_schedule(T, min(K, T))
            diffusion = model.diffusion.respace(timesteps)
        else:
            check_chain(chain, model)
            if steps is not None and steps != chain.num_steps:
                raise DDPMCodecError(f"--steps {steps} disagrees with the {chain.num_steps}-step chain")
            if chain.num_steps < 2 or int(chain.timesteps[0]) != 0 or int(chain.timesteps[-1]) != T - 1:
                raise DDPMCodecError("a progressive chain runs from t = 0 to T - 1 in at least "
                                     "2 steps")
            K, diffusion = chain.num_steps, quantized_chain(chain, model)
            timesteps = tuple(int(t) for t in chain.timesteps)
        ch.check_search_device(search_device)
        ch.check_budget_rule(budget_rule)
        search_workers = ch.check_search_workers(search_workers)
        params = ProgressiveParams(ch.ChannelParams(float(chunk_bits), float(margin_bits), int(max_log2)),
                                   variance, generator, ch.generator_check(generator),
                                   *variance_rule_of(diffusion, model),
                                   check_bits=int(check_bits)).validate()
        header = container.compact(new_header("progressive", model, n, batch_size, seed,
                                              timesteps, bytes(container.checksum_bytes()),
                                              params.pack_compact()))
        hsize = container.header_size(header, 0)
        batches = header.batches()
        dims = header.dims
        x0 = to_model_space(images)
        orig = images.astype(np.float64)
        stream = arith.ArithEncoder()
        writer = ch.SymbolWriter(stream)
        checkpoints, step_rows, latents = [], [], []
        x = None
        index_model = ch.IndexModel(params.channel)
        last_level: list = [None] * n
        per_nat = LEVELS_PER_NAT_COMPACT
        plan, reached = None, None
        with Timer() as timer, deterministic(model.device, header.num_threads), \
                progress_bar(n * K, "encode", "img-step", enabled=progress) as bar:
            for s in range(K):
                with Timer() as st_timer:
                    if plan is None:
                        plan = _plan(model, diffusion, s, x, batches, n, dims)
                    mean_q = _q_target(diffusion, x0, x, s)
                    before_step = stream.checkpoint()
                    if s > 0:
                        _write_more(stream, True)
                    x_new = np.empty((n, dims))
                    per = []
                    for i in range(n):
                        stats = ch.ChannelStats()
                        var_p, hint, level = plan.var_p[i], plan.kl_hint, None
                        var_q = plan.var_q
                        before = sum(writer.bits.values())
                        if s > 0 and params.variance == "fit":
                            level = fitted_level(mean_q[i], var_q, plan.mean_p[i], per_nat)
                            writer.exp_golomb(level, "side", MAX_LEVEL_EXPONENT,
                                              level_octave_probs(last_level[i]))
                            last_level[i] = level
                            var_p = np.full(dims, level_variance(var_q, level, per_nat))
                            hint = level_kl_hint(level, dims, per_nat)
                        x_new[i] = ch.encode_gaussian(
                            writer, mean_q[i], var_q, plan.mean_p[i], var_p, params.channel,
                            header.seed, (i, s), _private_rng(header.seed, i, s), stats, hint,
                            index_model, search_device=search_device,
                            search_workers=search_workers, budget_rule=budget_rule)
                        model_kl = float(ch.kl_bits(mean_q[i], var_q, plan.mean_p[i], plan.var_p[i]).sum())
                        per.append({"kl_bits": stats.kl_bits, "model_kl_bits": model_kl,
                                    "code_bits": sum(writer.bits.values()) - before,
                                    "index_bits": float(sum(stats.index_bits)),
                                    "chunks": stats.num_chunks, "searched": stats.searched,
                                    "exact_chunks": stats.exact_chunks,
                                    "saturated_chunks": stats.saturated_chunks,
                                    "chunk_kl_sd": float(np.std(stats.chunk_kl)),
                                    "level": level})
                        bar.update(1)
                    x_next = torch.from_numpy(x_new).reshape(n, *model.image_shape)
                    writer.uniform_bits(latent_check(x_next, params.check_bits),
                                        params.check_bits, "check")
                    checkpoint = stream.checkpoint()
                    stopped = hsize + _stopped_size(stream, s, K)
                if budget.bytes is not None and stopped > budget.bytes:
                    if s == 0:
                        raise DDPMCodecError(
                            f"the target allows {budget.bytes} bytes for the file; its first "
                            f"coded step alone needs {stopped}")
                    stream.restore(before_step)
                    reached = "bytes"
                    break
                x = x_next
                checkpoints.append(checkpoint)
                if keep_latents:
                    latents.append(x.clone())
                if plan.pred_x0 is not None:  # distortion of the previous truncation point
                    step_rows[-1]["rmse"] = _rmse_per_image(plan.pred_x0, orig)
                step_rows.append({"step": s + 1, "t": int(timesteps[plan.k_out]) + 1,
                                  "stopped_bytes": stopped,
                                  "side_bits": writer.bits.get("side", 0.0),
                                  "check_bits": writer.bits.get("check", 0.0),
                                  "seconds": st_timer.seconds, "images": per})
                # the next step's proposal holds this step's reconstruction (x0-prediction)
                plan = _plan(model, diffusion, s + 1, x, batches, n, dims) if s + 1 < K else None
                if budget.psnr is not None and plan is not None and \
                        _psnr_of(plan.pred_x0, orig) >= budget.psnr:
                    reached = "psnr"
                if reached is not None:
                    break
            coded = len(step_rows)
            if coded < K:
                _write_more(stream, False)
            k_last = K - coded
            final = (plan.pred_x0 if plan is not None and plan.pred_x0 is not None
                     and reached is not None else
                     _network_p(model, diffusion, x, k_last, batches)["pred_x0"])
        recon = from_model_space(final)
        step_rows[-1]["rmse"] = _rmse_per_image(final, orig)
        payload = stream.finish()
        prev = 0
        for row, cp in zip(step_rows, checkpoints):
            end = arith.prefix_bytes(payload, cp)
            row["packet_bytes"], row["prefix_bytes"] = end - prev, hsize + end
            prev = end
        data = container.pack(header, payload)
        kl_total = float(sum(im["kl_bits"] for row in step_rows for im in row["images"]))
        stats = CodecStats("progressive", n, dims, K, 8 * len(payload), 8 * hsize, 0.0,
                           kl_total, timer.seconds,
                           {"steps": step_rows, "timesteps": list(timesteps),
                            "coded_steps": coded, "target_reached": reached,
                            "params": dataclasses.asdict(params.channel) | {
                                "variance": variance, "budget_rule": budget_rule,
                                "search_workers": search_workers}})
        if keep_latents:
            stats.extra["latents"] = latents
            stats.extra["reconstruction"] = recon
        return Encoded(data, header, stats)

    def _open(self, data: bytes, upto_step: int | None, max_bytes: int | None) -> "_Source":
        """Parse and check a file or prefix, before any network runs."""
        if max_bytes is not None:
            if max_bytes < 1:
                raise DDPMCodecError(f"--bytes must be positive, got {max_bytes}")
            data = bytes(data)[:max_bytes]
        header, payload, complete = container.unpack_prefix(data)
        check_compatible(header, self.model, "progressive")
        stream = header.version == container.FORMAT_COMPACT
        if stream and not header.params:
            params = ProgressiveParams.defaults()
        else:
            params = ProgressiveParams.unpack(header.params, header.num_steps)
            if not params.generator_matches():
                raise DDPMCodecError(
                    f"this file's candidate generator ({params.generator}) does not reproduce "
                    f"here (numpy or math library differs from the encoder's); decode where it "
                    f"was encoded")
        K = header.num_steps
        if header.num_images * header.dims > MAX_LATENT_VALUES:
            raise DDPMCodecError(f"the file claims {header.num_images} images of {header.dims} values: "
                                 f"more than one progressive file holds (at most {MAX_LATENT_VALUES} values)")
        if header.timesteps[0] != 0 or header.timesteps[-1] != header.num_timesteps - 1:
            raise DDPMCodecError("header: a progressive chain runs from t = 0 to T - 1")
        if upto_step is not None and not 1 <= upto_step <= K:
            raise DDPMCodecError(f"--upto-step must be between 1 and {K}, got {upto_step}")
        hsize = len(data) - len(payload)
        packets = None
        if not stream:
            packets = split_packets(payload, complete, params.framing)
            expected = params.coded_steps or K
            if len(packets) > expected or (complete and len(packets) != expected):
                raise DDPMCodecError(f"corrupt file: {len(packets)} coded steps, the header "
                                     f"announces {expected}")
            packets = packets[:upto_step]
            complete = bool(complete and len(packets) == expected)
            if not packets:
                raise DDPMCodecError(
                    f"the file prefix ({len(data)} bytes) holds no whole coded step; the header "
                    f"alone is {hsize} bytes")
        return _Source(header, params, payload, hsize, upto_step or K, packets, complete)

    def _latents(self, src: "_Source", bar=None):
        """Yield (coded step s, latents x float64 [N, C, H, W], chain step k of x, payload
        bytes that hold the steps so far), each verified against the encoder's check; set
        ``src.complete`` when the file's last step was read. Run inside
        :func:`deterministic`."""
        header, params = src.header, src.params
        model = self.model
        diffusion = chain_for(header, model, params.chain_rule, params.chain_variances)
        n, dims, K = header.num_images, header.dims, header.num_steps
        batches = header.batches()
        index_model = ch.IndexModel(params.channel)
        last_level: list = [None] * n
        per_nat = LEVELS_PER_NAT if src.packets is not None else LEVELS_PER_NAT_COMPACT
        if src.packets is not None:
            ends = packet_ends(src.payload, params.framing)
            readers = ((ch.SymbolReader(coder.QueueReader(words)), crc)
                       for crc, words in src.packets)
        else:
            stream = arith.ArithDecoder(src.payload)
            reader = ch.SymbolReader(stream)
        x = None
        for s in range(src.limit if src.packets is None else len(src.packets)):
            if src.packets is not None:
                reader, crc = next(readers)
            elif s > 0:
                try:
                    more = stream.categorical(_end_probs()) == 0
                except arith.Exhausted:
                    return
                if not more:
                    self._finish(src, stream)
                    return
            plan = _plan(model, diffusion, s, x, batches, n, dims)
            x_new = np.empty((n, dims))
            try:
                for i in range(n):
                    var_p, hint = plan.var_p[i], plan.kl_hint
                    if s > 0 and params.variance == "fit":
                        level = reader.exp_golomb(MAX_LEVEL_EXPONENT, level_octave_probs(last_level[i]))
                        if level > MAX_LEVEL_NATS * per_nat:
                            raise DDPMCodecError(f"corrupt file: a variance level of {level} at coded step {s + 1}")
                        last_level[i] = level
                        var_p = np.full(dims, level_variance(plan.var_q, level, per_nat))
                        hint = level_kl_hint(level, dims, per_nat)
                    x_new[i] = ch.decode_gaussian(reader, plan.mean_p[i], var_p, params.channel,
                                                  header.seed, (i, s), hint, index_model)
                    if bar is not None:
                        bar.update(1)
                if src.packets is None:
                    crc = reader.uniform_bits(params.check_bits)
            except arith.Exhausted:
                return
            x = torch.from_numpy(x_new).reshape(n, *header.image_shape)
            ok = (latent_crc(x, params.framing) == crc if src.packets is not None
                  else latent_check(x, params.check_bits) == crc)
            if not ok:
                raise DDPMCodecError(
                    f"decoding failed at coded step {s + 1}: the latents do not match the "
                    f"encoder's (corrupt file, or a different device, library or model "
                    f"evaluated the network)")
            used = ends[s] if src.packets is not None else stream.bytes_used()
            src.steps, src.used = s + 1, used
            yield s, x, K - 1 - s, used
        if src.packets is None and src.limit == K:
            self._finish(src, stream)

    @staticmethod
    def _finish(src: "_Source", stream: arith.ArithDecoder) -> None:
        """The stream's last symbol is read: the file is complete, and nothing may follow."""
        used = stream.bytes_used()
        if used != len(src.payload):
            raise DDPMCodecError(f"corrupt file: {len(src.payload) - used} byte(s) after the "
                                 f"end of the coded stream")
        src.complete = True

    def _decoded_any(self, src: "_Source", data_len: int) -> None:
        if src.steps == 0:
            raise DDPMCodecError(
                f"the file prefix ({data_len} bytes) holds no whole coded step; the header "
                f"alone is {src.hsize} bytes")

    def decode(self, data: bytes, *, progress: bool = False, upto_step: int | None = None,
               max_bytes: int | None = None, recon: str = "mean",
               recon_steps: int = DEFAULT_RECON_STEPS, keep_latents: bool = False) -> Decoded:
        """Decompress a file, or the first ``max_bytes`` bytes of one, or its first
        ``upto_step`` coded steps; reconstruct x0 by ``recon`` (mean, sample or flow; the
        latter two run ``recon_steps`` network steps from the reached latent to t = 0)."""
        from ddpmcodec.progress import progress_bar
        _check_recons([recon])
        src = self._open(data, upto_step, max_bytes)
        header = src.header
        model = self.model
        n, K = header.num_images, header.num_steps
        latents, x, k = [], None, None
        with Timer() as timer, deterministic(model.device, header.num_threads), \
                progress_bar(n * src.limit, "decode", "img-step", enabled=progress) as bar:
            for s, x, k, _ in self._latents(src, bar):
                if keep_latents:
                    latents.append(x.clone())
            self._decoded_any(src, len(data) if max_bytes is None else min(len(data), max_bytes))
            diffusion = chain_for(header, model, src.params.chain_rule, src.params.chain_variances)
            x0_hat = reconstruct(model, diffusion, x, k, header.batches(), recon, recon_steps,
                                 header.seed)
        images = from_model_space(x0_hat)
        if src.packets is not None and src.complete and recon == "mean":
            verify_pixels(images, header)
        stats = CodecStats("progressive", n, header.dims, K, 8 * src.used, 8 * src.hsize, 0.0,
                           float("nan"), timer.seconds,
                           {"steps_decoded": src.steps, "t": int(header.timesteps[k]) + 1,
                            "bytes_used": src.hsize + src.used, "complete": bool(src.complete),
                            "recon": recon})
        if keep_latents:
            stats.extra["latents"] = latents
        return Decoded(images, header, stats)

    def decode_every_step(self, data: bytes, recons=("mean",),
                          recon_steps: int = DEFAULT_RECON_STEPS, progress: bool = False) -> list:
        """Decode once and reconstruct at every truncation point: a list with one dict per
        coded step: step, t, bytes_used (file prefix), images {recon: uint8 NHWC}."""
        from ddpmcodec.progress import progress_bar
        _check_recons(recons)
        src = self._open(data, None, None)
        header = src.header
        model = self.model
        diffusion = chain_for(header, model, src.params.chain_rule, src.params.chain_variances)
        out = []
        with deterministic(model.device, header.num_threads), \
                progress_bar(header.num_images * src.limit, "decode", "img-step",
                             enabled=progress) as bar:
            for s, x, k, used in self._latents(src, bar):
                images = {r: from_model_space(reconstruct(model, diffusion, x, k, header.batches(),
                                                          r, recon_steps, header.seed))
                          for r in recons}
                out.append({"step": s + 1, "t": int(header.timesteps[k]) + 1,
                            "bytes_used": src.hsize + used, "images": images})
        self._decoded_any(src, len(data))
        return out


@dataclass
class _Source:
    """A parsed file or prefix: its header and parameters, the payload bytes present, the
    header's size, how many coded steps to decode at most, the whole packets of a format
    1-2 file (None: format 3's single stream), and what decoding found out."""

    header: container.Header
    params: ProgressiveParams
    payload: bytes
    hsize: int
    limit: int
    packets: list | None
    complete: bool | None
    steps: int = 0   # coded steps decoded so far
    used: int = 0    # payload bytes that hold them


def _check_recons(recons) -> None:
    """DDPMCodecError for a reconstruction name that is not one of RECONS."""
    for r in recons:
        if r not in RECONS:
            raise DDPMCodecError(f"--recon must be one of {', '.join(RECONS)}, got {r!r}")


def _rmse_per_image(pred_x0: torch.Tensor, orig: np.ndarray) -> list:
    """RMSE on [0, 255] of the uint8 reconstruction of each image."""
    return np.sqrt(mse_per_image(from_model_space(pred_x0), orig)).tolist()


def reconstruct(model, diffusion, x: torch.Tensor, k: int, batches, recon: str = "mean",
                recon_steps: int = DEFAULT_RECON_STEPS, seed: int = 0) -> torch.Tensor:
    """x0 (float64 [N, C, H, W] in [-1, 1]) from the latent x at chain step k of
    ``diffusion``: the clipped x0-prediction (mean), or ``recon_steps`` reverse steps on
    evenly spaced original indices from timesteps[k] down to 0, ancestral (sample) or DDIM
    with eta = 0 (flow)."""
    if recon == "mean" or int(diffusion.timesteps[k]) == 0:
        return _network_p(model, diffusion, x, k, batches)["pred_x0"].clamp(-1.0, 1.0)
    from ddpmcodec.core.sampling import reverse_process
    if recon_steps < 1:
        raise DDPMCodecError(f"--recon-steps must be positive, got {recon_steps}")
    t = int(diffusion.timesteps[k])
    full = model.diffusion
    count = min(recon_steps + 1, t + 1)
    ts = sorted({int(round(v)) for v in np.linspace(0, t, count)})
    chain = full.respace(ts)
    den = model.denoiser()

    def call(xb, tb):
        return den(xb.to(model.device), tb.to(model.device)).cpu()
    outs = []
    for a, b in batches:
        res = reverse_process(call, chain, x[a:b], chain.num_steps - 1, torch.arange(a, b),
                              seed ^ 0x5EED, "ancestral" if recon == "sample" else "ddim")
        outs.append(res["x0"])
    return torch.cat(outs)


def truncation_table(stats: CodecStats, header_bits: int | None = None) -> list[dict]:
    """One row per truncation point (after each coded step) from an encoder's stats:
    cumulative actual bits of the file prefix (header + whole packets) and of the coded
    symbols alone, cumulative KL, per image, and the mean-reconstruction RMSE/PSNR."""
    rows = stats.extra["steps"]
    n, dims = stats.num_images, stats.dims
    hb = stats.header_bits if header_bits is None else header_bits
    out, file_bits, code_bits, kl, model_kl = [], float(hb), 0.0, 0.0, 0.0
    for row in rows:
        file_bits += 8 * row["packet_bytes"]
        code_bits += sum(im["code_bits"] for im in row["images"])
        kl += sum(im["kl_bits"] for im in row["images"])
        model_kl += sum(im["model_kl_bits"] for im in row["images"])
        rmse = np.asarray(row["rmse"])
        mse = float(np.mean(rmse ** 2))
        out.append({
            "step": row["step"], "t": row["t"],
            "file_bits_per_image": file_bits / n,
            "payload_bits_per_image": (file_bits - hb) / n,
            "code_bits_per_image": code_bits / n,
            "kl_bits_per_image": kl / n,
            "model_kl_bits_per_image": model_kl / n,
            "payload_bpd": (file_bits - hb) / (n * dims),
            "kl_bpd": kl / (n * dims),
            "overhead": (file_bits - hb) / kl - 1.0 if kl > 0 else float("nan"),
            "code_overhead": code_bits / kl - 1.0 if kl > 0 else float("nan"),
            "rmse": math.sqrt(mse),
            "psnr": psnr(math.sqrt(mse)),
            "chunks_per_image": sum(im["chunks"] for im in row["images"]) / n,
            "searched_per_image": sum(im["searched"] for im in row["images"]) / n,
            "saturated_frac": (sum(im["saturated_chunks"] for im in row["images"])
                               / max(1, sum(im["chunks"] for im in row["images"]))),
            "seconds": row["seconds"]})
    return out
