"""Channel simulation of diagonal Gaussians under shared randomness.

The sender knows a target q = N(mean_q, var_q) and the receiver knows a proposal
p = N(mean_p, var_p) (both diagonal, float64, shape [d]). The sender transmits a few
integers from which the receiver regenerates a sample whose law is q, up to the
truncation stated below. The method is the Poisson functional representation (PFR, Li &
El Gamal 2018), cut into chunks of bounded KL:

1. Layout. The KL(q||p) of the d dimensions (bits) is rounded up to an integer Q and
   sent (exp-Golomb), or replaced by a ``kl_hint`` the receiver computes itself; the d
   dimensions, shuffled by a permutation both sides draw from the shared seed, are cut
   into J = min(d, max(1, ceil(Q / B))) contiguous groups of equal size (sizes differ by
   at most one). B is the chunk size in bits. The receiver knows Q and B, hence the
   layout; it never needs q. With a random permutation every chunk's KL is Q / J up to
   the chi-square scatter of the per-dimension KL (standard deviation about 2-3 bits at
   B = 12 on CIFAR latents); the search budget follows each chunk's own KL.
2. Candidates. Candidate n of chunk j is ``z_n = mean_p + sqrt(var_p) * eps_n`` with
   eps_n ~ N(0, I) regenerated from (seed, image, step, chunk, n) alone by the generator
   that ChannelParams names: GENERATOR_ID (v1), Philox-4x64 (numpy) keyed by the chunk,
   counter n * words_per_candidate / 4, Box-Muller on the words with the math library's
   log, cos and sin (:func:`candidate_normals`); or GENERATOR_V2, a counter hash and
   Box-Muller in exact IEEE float32 arithmetic, the same bits in numpy and torch on any
   device, and faster (:mod:`.generator_v2`). The sender scores
   candidates in blocks and never stores them; the receiver regenerates only the
   selected one.
3. Selection. With encoder-private arrival times T_n = E_1 + ... + E_n (E ~ Exp(1)), PFR
   picks ``n* = argmin_n T_n / w(z_n)``, w = q/p (v1: :func:`pfr_select`, arrivals from
   one generator across the chunks; v2: :func:`.search.pfr_search`, float32 scores, arrivals
   from a generator per chunk, so that chunks may be searched in any order). Among
   infinitely many candidates this z_{n*} is an exact sample of q. The sender searches at
   most N = 2^(Q/J + m) candidates in every chunk (Q/J: the layout's mean chunk KL in
   bits, m: the margin; capped at 2^max_log2 and at MAX_CANDIDATE_DIMS normals; before,
   N_j = 2^ceil(D_j + m) from the chunk's own KL D_j: :func:`search_budget`), and
   stops early, exactly, once no later candidate can win (possible when var_q < var_p,
   where w is bounded). The truncation is the only approximation: the selected sample's
   law differs from q only on the event that the exact PFR winner lies beyond N_j; its
   effect is measured in tests/test_channel.py and docs/progressive.md.
4. Index code. n* is sent as its octave e = bit_length(n*+1) - 1, then e uniform
   mantissa bits. The octave's model (:class:`IndexModel`) is adaptive along the stream,
   with a prior: a discretised Gaussian on log2(n*+1) centred near the mean chunk KL Q/J
   (the spread of the PFR index comes from the information density, whose variance is
   about 2*KL nats), truncated at the search budget. With a full search this costs the
   chunk's KL plus about 2-3 bits (PFR's overhead); a short search costs less but biases
   the sample towards p.

All symbols go through one entropy coder, first in, first out (the writer's backend: a
constriction range coder per packet in formats 1-2, :mod:`ddpmcodec.codec.entropy.arith`
in format 3), so a
stream holds steps in the order they were coded. All math here is float64 numpy (but
v2's candidates, float32, and its scores). Only the candidate generator and the integer
layout must agree bit for bit between the two sides; scores are encoder-only.

Units: KL in bits unless a name says nats; d = number of dimensions of one target.

Where each part lives: :mod:`.keys` (keys, the shared permutation, chunk slices),
:mod:`.generator_v1` and :mod:`.generator_v2` (the candidate generators),
:mod:`.generators` (their names and self-check), :mod:`.search` (PFR selection and the
float32 search), :mod:`.index` (the index code), :mod:`.params` (parameters, layout,
search budgets), :mod:`.chunks` (one target's chunk plan), :mod:`.pool` (the search
processes) and :mod:`.gaussian` (encode/decode of one Gaussian target).
"""
from ddpmcodec.codec.progressive.channel.gaussian import decode_gaussian, encode_gaussian
from ddpmcodec.codec.progressive.channel.generators import GENERATORS, GENERATOR_ID, GENERATOR_V2, generator_check
from ddpmcodec.codec.progressive.channel.index import IndexModel, SymbolReader, SymbolWriter, index_octave_probs, octave
from ddpmcodec.codec.progressive.channel.keys import chunk_slices, derive_key, shared_permutation
from ddpmcodec.codec.progressive.channel.params import BUDGET_RULES, ChannelParams, ChannelStats, MAX_LOG2_CANDIDATES, check_budget_rule, hint_to_int, layout, search_budget
from ddpmcodec.codec.progressive.channel.pool import check_search_device, check_search_workers, close_search_pools, default_search_workers
from ddpmcodec.codec.progressive.channel.search import LN2, Selection, kl_bits, log_weight_bound, pfr_search, pfr_select, score_coefficients
from ddpmcodec.codec.progressive.channel.generator_v1 import candidate_normals, words_per_candidate

__all__ = ['BUDGET_RULES', 'ChannelParams', 'ChannelStats', 'GENERATORS', 'GENERATOR_ID', 'GENERATOR_V2', 'IndexModel', 'LN2', 'MAX_LOG2_CANDIDATES', 'Selection', 'SymbolReader', 'SymbolWriter', 'candidate_normals', 'check_budget_rule', 'check_search_device', 'check_search_workers', 'chunk_slices', 'close_search_pools', 'decode_gaussian', 'default_search_workers', 'derive_key', 'encode_gaussian', 'generator_check', 'hint_to_int', 'index_octave_probs', 'kl_bits', 'layout', 'log_weight_bound', 'octave', 'pfr_search', 'pfr_select', 'score_coefficients', 'search_budget', 'shared_permutation', 'words_per_candidate']
