"""The channel's parameters, its statistics, the layout of a target into chunks and the
encoder's search budget per chunk."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ddpmcodec.codec.progressive.channel.generators import GENERATOR_ID, GENERATORS
from ddpmcodec.errors import DDPMCodecError

MAX_LOG2_CANDIDATES = 40    # the index alphabet: octaves 0..40


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
