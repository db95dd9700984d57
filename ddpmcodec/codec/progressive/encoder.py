"""The progressive encoder: the coded steps of a file, one image at a time through the
channel, into one arithmetic-coded stream (format 3), until the chain ends or a target
stops it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ddpmcodec.codec import container
from ddpmcodec.codec.api import CodecStats, Encoded, Timer
from ddpmcodec.codec.checks import check_chain, new_header, start_encode
from ddpmcodec.codec.entropy import arith
from ddpmcodec.codec.network import exact_chain, quantized_chain, variance_rule_of
from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.framing import (
    latent_check, pixel_check, stopped_size, write_more)
from ddpmcodec.codec.progressive.levels import (
    fitted_level, level_kl_hint, level_octave_probs, level_variance)
from ddpmcodec.codec.progressive.params import (
    DEFAULT_STEPS, LEVELS_PER_NAT_COMPACT, MAX_LATENT_VALUES, MAX_LEVEL_EXPONENT,
    PIXEL_CHECK_BYTES, ProgressiveParams, coded_schedule)
from ddpmcodec.codec.progressive.pixels import decoder_p, write_pixels
from ddpmcodec.codec.progressive.reconstruct import rmse_per_image
from ddpmcodec.codec.progressive.steps import network_p_on_device, private_rng, q_target, step_plan
from ddpmcodec.codec.progressive.targets import budget_of, psnr_of
from ddpmcodec.codec.reproducibility import deterministic
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import from_model_space, to_model_space


@dataclass
class EncodeOptions:
    """The encoder's options beyond the format's: the search (encoder-only) and the
    statistics it keeps."""

    search_device: str | None = None
    search_workers: int | None = None
    budget_rule: str = "layout"
    keep_latents: bool = False


@dataclass
class _Coding:
    """What the encoder carries from step to step."""

    model: object
    diffusion: object
    header: container.Header
    params: ProgressiveParams
    options: EncodeOptions
    x0: torch.Tensor
    exact: bool = True
    stream: arith.ArithEncoder = field(default_factory=arith.ArithEncoder)
    writer: ch.SymbolWriter = None
    index_model: ch.IndexModel = None
    last_level: list = None

    @property
    def tail_bytes(self) -> int:
        """Payload bytes after the coded stream: an exact file's pixel check."""
        return PIXEL_CHECK_BYTES if self.exact else 0

    def __post_init__(self):
        self.writer = ch.SymbolWriter(self.stream)
        self.index_model = ch.IndexModel(self.params.channel, exact=self.exact)
        self.last_level = [None] * self.header.num_images


def coded_chain(model, steps: int | None, chain, exact: bool = False) -> tuple[int, tuple, object]:
    """(K, original timesteps, Diffusion) of the chain a file codes: ``steps`` geometric
    steps (:func:`coded_schedule`) or the given ``chain``, checked (its explicit
    variances as the file stores them, by IEEE operations in an ``exact`` file)."""
    T = model.diffusion.num_steps
    if chain is None:
        K = DEFAULT_STEPS if steps is None else int(steps)
        timesteps = coded_schedule(T, min(K, T))
        chain = model.diffusion.respace(timesteps)
    else:
        check_chain(chain, model)
        if steps is not None and steps != chain.num_steps:
            raise DDPMCodecError(f"--steps {steps} disagrees with the {chain.num_steps}-step chain")
        if chain.num_steps < 2 or int(chain.timesteps[0]) != 0 or int(chain.timesteps[-1]) != T - 1:
            raise DDPMCodecError("a progressive chain runs from t = 0 to T - 1 in at least "
                                 "2 steps")
        K, timesteps = chain.num_steps, tuple(int(t) for t in chain.timesteps)
    stored = exact_chain(chain, model) if exact else quantized_chain(chain, model)
    return K, timesteps, stored


def _code_images(c: _Coding, plan, mean_q, s: int, bar) -> tuple[np.ndarray, list]:
    """Coded step s of every image: its variance level (fit) and its channel symbols.
    Returns the new latents (float64 [N, dims]) and one statistics row per image."""
    header, params, writer, opts = c.header, c.params, c.writer, c.options
    n, dims, per_nat = header.num_images, header.dims, LEVELS_PER_NAT_COMPACT
    x_new = np.empty((n, dims))
    per = []
    for i in range(n):
        stats = ch.ChannelStats()
        var_p, hint, level = plan.var_p[i], plan.kl_hint, None
        var_q = plan.var_q
        before = sum(writer.bits.values())
        if s > 0 and params.variance == "fit":
            level = fitted_level(mean_q[i], var_q, plan.mean_p[i], per_nat, c.exact)
            writer.exp_golomb(level, "side", MAX_LEVEL_EXPONENT,
                              level_octave_probs(c.last_level[i]))
            c.last_level[i] = level
            var_p = np.full(dims, level_variance(var_q, level, per_nat, c.exact))
            hint = level_kl_hint(level, dims, per_nat)
        x_new[i] = ch.encode_gaussian(
            writer, mean_q[i], var_q, plan.mean_p[i], var_p, params.channel,
            header.seed, (i, s), private_rng(header.seed, i, s), stats, hint,
            c.index_model, search_device=opts.search_device,
            search_workers=opts.search_workers, budget_rule=opts.budget_rule)
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
    return x_new, per


def _code_steps(c: _Coding, K: int, timesteps, budget, orig: np.ndarray, bar):
    """Code the steps until the chain ends or the target stops it. Returns (statistics
    rows, the stream's checkpoint after each kept step, kept latents, the plan after the
    last kept step, the target reached or None, the latents after the last kept step)."""
    model, header, stream, writer = c.model, c.header, c.stream, c.writer
    n, dims = header.num_images, header.dims
    batches = header.batches()
    hsize = container.header_size(header, 0)
    checkpoints, step_rows, latents = [], [], []
    x, plan, reached = None, None, None
    for s in range(K):
        with Timer() as st_timer:
            if plan is None:
                plan = step_plan(model, c.diffusion, s, x, batches, n, dims, c.exact)
            mean_q = q_target(c.diffusion, c.x0, x, s)
            before_step = stream.checkpoint()
            if s > 0:
                write_more(stream, True)
            x_new, per = _code_images(c, plan, mean_q, s, bar)
            x_next = torch.from_numpy(x_new).reshape(n, *model.image_shape)
            writer.uniform_bits(latent_check(x_next, c.params.check_bits),
                                c.params.check_bits, "check")
            checkpoint = stream.checkpoint()
            stopped = hsize + stopped_size(stream, s, K) + c.tail_bytes
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
        if c.options.keep_latents:
            latents.append(x.clone())
        if plan.pred_x0 is not None:  # distortion of the previous truncation point
            step_rows[-1]["rmse"] = rmse_per_image(plan.pred_x0, orig)
        step_rows.append({"step": s + 1, "t": int(timesteps[plan.k_out]) + 1,
                          "stopped_bytes": stopped,
                          "side_bits": writer.bits.get("side", 0.0),
                          "check_bits": writer.bits.get("check", 0.0),
                          "seconds": st_timer.seconds, "images": per})
        # the next step's proposal holds this step's reconstruction (x0-prediction)
        plan = (step_plan(model, c.diffusion, s + 1, x, batches, n, dims, c.exact)
                if s + 1 < K else None)
        if budget.psnr is not None and plan is not None and \
                psnr_of(plan.pred_x0, orig) >= budget.psnr:
            reached = "psnr"
        if reached is not None:
            break
    return step_rows, checkpoints, latents, plan, reached, x


def encode(model, images: np.ndarray, *, steps, batch_size: int, seed: int, progress: bool,
           channel: ch.ChannelParams, variance: str, chain, max_bytes, bpp, psnr,
           check_bits: int, generator: str, options: EncodeOptions,
           exact: bool = True, lossless: bool = False) -> Encoded:
    """:meth:`ProgressiveCodec.encode` (which documents the options)."""
    from ddpmcodec.progress import progress_bar
    if lossless and not exact:
        raise DDPMCodecError("a progressive file that ends lossless is coded with the exact "
                             "network; leave out --float32")
    if lossless and any(v is not None for v in (max_bytes, bpp, psnr)):
        raise DDPMCodecError("a progressive file that ends lossless codes every step: give "
                             "no --bpp, --psnr or --max-bytes (decode a prefix instead)")
    images, batch_size = start_encode(images, model, batch_size)
    n = len(images)
    if n * images[0].size > MAX_LATENT_VALUES:
        raise DDPMCodecError(f"{n} images are too many for one progressive file (at most "
                             f"{MAX_LATENT_VALUES // images[0].size}); split them")
    budget = budget_of(n, model.image_shape, max_bytes, bpp, psnr)
    K, timesteps, diffusion = coded_chain(model, steps, chain, exact)
    ch.check_search_device(options.search_device)
    ch.check_budget_rule(options.budget_rule)
    options = dataclasses.replace(options,
                                  search_workers=ch.check_search_workers(options.search_workers))
    params = ProgressiveParams(channel, variance, generator, ch.generator_check(generator),
                               *variance_rule_of(diffusion, model),
                               check_bits=int(check_bits), lossless=bool(lossless)).validate()
    header = container.compact(new_header("progressive", model, n, batch_size, seed,
                                          timesteps, bytes(container.checksum_bytes()),
                                          params.pack_compact(), exact=exact))
    c = _Coding(model, diffusion, header, params, options, to_model_space(images), exact)
    orig = images.astype(np.float64)
    with Timer() as timer, deterministic(model.device, header.num_threads, exact), \
            progress_bar(n * K, "encode", "img-step", enabled=progress) as bar:
        step_rows, checkpoints, latents, plan, reached, x = _code_steps(
            c, K, timesteps, budget, orig, bar)
        coded = len(step_rows)
        if coded < K:
            write_more(c.stream, False)
        layer = None
        if lossless:  # the pixels under p(x0 | x_1), after the last coded step
            mean, std, final = decoder_p(model, diffusion, x, header.batches())
            layer = {"ideal_bits": write_pixels(c.stream, images, mean, std)}
        else:
            final = (plan.pred_x0 if plan is not None and plan.pred_x0 is not None
                     and reached is not None else
                     network_p_on_device(model, diffusion, x, K - coded, header.batches(),
                                         exact)["pred_x0"])
    step_rows[-1]["rmse"] = rmse_per_image(final, orig)
    payload = c.stream.finish()
    if n > 8 * len(payload):  # only a file cut to its first step can be this short
        raise DDPMCodecError(
            f"the target leaves only the first coded step, {len(payload)} byte(s) for {n} "
            f"images: a progressive file holds at least one bit per image (decoders bound "
            f"their work by it); raise the target")
    hsize = container.header_size(header, 0)
    prev = 0
    for row, cp in zip(step_rows, checkpoints):
        end = arith.prefix_bytes(payload, cp)
        row["packet_bytes"], row["prefix_bytes"] = end - prev, hsize + end
        prev = end
    if layer is not None:  # the decoder of the whole file checks the exact pixels
        payload += pixel_check(images)
        layer.update(bytes=len(payload) - prev, file_bytes=hsize + len(payload))
    elif exact:  # what the decoder of the whole file checks its mean reconstruction by
        payload += pixel_check(from_model_space(final.clamp(-1.0, 1.0)))
        step_rows[-1]["packet_bytes"] += PIXEL_CHECK_BYTES  # prefix_bytes: where it decodes
    kl_total = float(sum(im["kl_bits"] for row in step_rows for im in row["images"]))
    stats = CodecStats("progressive", n, header.dims, K, 8 * len(payload), 8 * hsize, 0.0,
                       kl_total, timer.seconds,
                       {"steps": step_rows, "timesteps": list(timesteps),
                        "coded_steps": coded, "target_reached": reached,
                        "params": dataclasses.asdict(params.channel) | {
                            "variance": variance, "budget_rule": options.budget_rule,
                            "search_workers": options.search_workers},
                        "lossless": layer})
    if options.keep_latents:
        stats.extra["latents"] = latents
        stats.extra["reconstruction"] = from_model_space(final)
    return Encoded(container.pack(header, payload), header, stats)
