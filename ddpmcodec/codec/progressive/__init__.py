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
(:mod:`ddpmcodec.codec.entropy.arith`) to the end of the file. Per coded step: per image, the variance level
(fit, s >= 1) and the channel symbols; then the low ``check_bits`` bits of the CRC of the
latents after the step (float64 [N, C, H, W], little-endian); then, unless the step is
the chain's last, a flag "more steps follow" (:func:`.framing.end_probs`). Any first bytes of a
file decode the coded steps they determine, and each step's check proves that they are
the encoder's latents (a different device, library or model, or a corrupt byte, is an
error with probability 1 - 2^-check_bits per step, never a silently wrong step beyond
that). Those first bytes are a prefix when the decoder is told so (``max_bytes``,
--bytes); otherwise they are the whole file, which must end as the encoder ended it (a
stream that runs out before its last coded step is a cut or damaged file: an error, not
a shorter prefix). Formats 1-2 (one range-coded packet per step: a length, a CRC and the
words; a pixel checksum in the header) are still read.

The network is evaluated in float32 under :func:`ddpmcodec.codec.reproducibility.deterministic`, batch by batch in the
header's layout, and p_theta is formed in float64 (``Diffusion.p_mean_variance``), so encoder
and decoder compute it identically. Candidates come from generator v2
(:mod:`.channel.generator_v2`: exact IEEE arithmetic, the same bits on every device) in format 3
and from v1 (numpy Philox + Box-Muller, :mod:`.channel.generator_v1`) in formats 1-2.

Where each part lives: :mod:`.params` (defaults, the coded schedule, the params blob),
:mod:`.framing` (packets of formats 1-2, format 3's end marks, latent checks),
:mod:`.levels` (fitted variance levels), :mod:`.steps` (one coded step's proposal and
target), :mod:`.targets` (--bpp / --psnr / --max-bytes), :mod:`.encoder` and
:mod:`.decoder` (the two directions), :mod:`.codec` (:class:`ProgressiveCodec`),
:mod:`.reconstruct` (x0 from a latent, truncation tables) and :mod:`.channel` (the
channel simulation of one Gaussian).
"""

# The public names, imported when first used: the params module must stay importable
# without torch (the command line builds its help from it).
_PUBLIC = {"ProgressiveCodec": "codec", "ProgressiveParams": "params",
           "coded_schedule": "params",
           "truncation_table": "reconstruct"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
