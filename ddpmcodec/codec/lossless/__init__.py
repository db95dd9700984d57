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

* seeds (HiLLoC, Townsend et al. 2020): the first m images are stored as classical
  streams, each the shorter of its JPEG-XL and WebP-lossless code (:mod:`.classical`),
  and those bytes *are* the initial stack, so the first pops read bits that belong to
  real images. m is the fewest images whose streams cover one image's dip
  (:func:`dip_bits`); a seed costs its classical size instead of its bits-back size, an
  uncovered dip bit costs a whole bit;
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
(nothing to seed with) or a model that codes the images badly, the classical file of the
images is shorter: ``method="auto"`` writes whichever file is shorter (the
``classical-lossless`` mode, recorded in the file's mode byte; ``webp-lossless`` files of
earlier versions, all WebP, still decode).

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
keys (:meth:`ChainStack.whiten`: bit-neutral and its own inverse).

All Gaussians are evaluated in float64 from the float32 network output; one constriction
call per step per batch (two when a step has escapes, plus the whitening). The payload is
the final stack minus the leading seeded words it still shares with the initial stack.

The default chain (:func:`default_chain`): 10 steps chosen by dynamic programming on the
model's calibration, with analytic variances, which both sides code with as the file
stores them (round(256 log2 v)). K = 10 is the longest chain that encodes and decodes at
2 images/s on a 2-core CPU (the network is 80% of the time); see benchmarks/results.

Where each part lives: :mod:`.params` (the defaults and the header's params blob),
:mod:`.grids` (per-latent grids and the discretized decoder's probabilities),
:mod:`.stack` (the ANS stack's push/pop pairs), :mod:`.seeds` (initial words and
seeds), :mod:`.codec` (:class:`BitsBackCodec`: encode and decode), :mod:`.classical` (the
model-free mode and the choice of stream per image), :mod:`.jxl` and :mod:`.webp` (the
JPEG-XL and WebP-lossless streams) and :mod:`.streams` (several streams in one payload).
"""

# The public names, imported when first used: the params module must stay importable
# without torch (the command line builds its help from it).
_PUBLIC = {"BitsBackCodec": "codec", "LosslessParams": "params", "default_chain": "params",
           "ClassicalLosslessCodec": "classical", "WebPLosslessCodec": "webp"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
