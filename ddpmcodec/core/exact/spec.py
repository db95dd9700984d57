"""The exact network's number formats (version ``exact-v1``), recorded in every exact file.

Every activation is an integer a standing for a * 2^-FRAC_BITS. Weights are integers
with a power-of-two scale per output channel, at most WEIGHT_BITS bits, fewer where a
layer's sums would otherwise pass 2^52 (see :func:`weight_bits_for`). Integers travel in
float64 tensors: a sum of integer products is exact in any order while it stays below
2^53, so every BLAS, convolution implementation, thread count and device gives the same
bits. Inputs of convolutions, linear layers and group norms are clamped to +-ACT_MAX,
which bounds every sum by construction (the embedded model's largest activation is 38.2,
ACT_MAX stands for 256).
"""
from __future__ import annotations

import math

VERSION = "exact-v1"
FRAC_BITS = 16                  # activations: a * 2^-16
ACT_BITS = 24
ACT_MAX = (1 << ACT_BITS) - 1   # |activation| < 256 at the inputs of every layer
INPUT_FRAC_BITS = 20            # the latent x_t: x * 2^20 (at t = 1 the network divides its
INPUT_MAX = (1 << 24) - 1       # noise of std 0.01 by 0.01), |x| < 16
OUTPUT_FRAC_BITS = 20           # the prediction: eps * 2^20
WEIGHT_BITS = 16                # |weight integer| < 2^16 per output channel
SUM_BITS = 52                   # every exact sum stays below 2^52 (rounding shifts need one bit)
QK_MAX = (1 << 22) - 1          # attention queries and keys: |q|, |k| < 64
TABLE_BITS = 12                 # tables hold every 2^-12; between entries, linear interpolation
SOFTMAX_EXP_BITS = 30           # exp table: round(e^(-i 2^-12) 2^30)
SOFTMAX_EXP_RANGE = 40          # e^-40 2^30 < 1/2: the table ends there
PROB_BITS = 20                  # attention probabilities: round(p 2^20)
SILU_RANGE = 24                 # silu by table on |x| <= 24; beyond, x or 0 (|silu(-24)| < 2^-17)
GROUP_SPLIT_BITS = 12           # group-norm deviations split as hi 2^12 + lo (exact partial sums)


def weight_bits_for(terms: int, act_max: int = ACT_MAX) -> int:
    """Weight bits of a layer whose outputs sum ``terms`` products of inputs up to
    ``act_max``: |sum| < terms * 2^bits * (act_max + 1) must stay below 2^SUM_BITS."""
    room = SUM_BITS - (act_max + 1).bit_length() + 1 - math.ceil(math.log2(max(terms, 1)))
    if room < 4:
        raise ValueError(f"a layer with {terms} terms per output leaves {room} weight bits")
    return min(WEIGHT_BITS, room)


def value_max(terms: int, other_bits: int) -> int:
    """Clamp of one operand of a product summed ``terms`` times, the other below
    2^other_bits: keeps the sum below 2^SUM_BITS."""
    return (1 << (SUM_BITS - other_bits - math.ceil(math.log2(max(terms, 1))))) - 1
