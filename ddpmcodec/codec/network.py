"""The model side of coding: the chain a file names, and p_theta of one chain step
evaluated batch by batch in the file's layout."""
from __future__ import annotations

import contextlib

from ddpmcodec.codec.container import EXACT_KINDS, EXACT_NETWORK, Header
from ddpmcodec.codec.container.chains import log2_variance_codes, variances_of_codes


def chain_roots(kind: str) -> str:
    """How the chain of a file of device kind ``kind`` takes its constants' square roots:
    correctly rounded in exact-v2 files (the same bits everywhere), by torch.sqrt in every
    earlier kind (exact-v1 and float32 files were coded so, and decode so)."""
    return "ieee" if kind == EXACT_NETWORK else "torch"


def chain_for(header: Header, model, rule: str = "model", variances=None):
    """The (respaced) Diffusion of the file's chain, with the file's variance rule
    (``model``: the checkpoint's; ``explicit``: the K variances the file holds, as the
    values of their codes; an exact file's by IEEE operations) and the file's roots
    (:func:`chain_roots`)."""
    if header.device_kind in EXACT_KINDS and variances is not None:
        variances = variances_of_codes(log2_variance_codes(variances), exact=True)
    full = model.diffusion.with_roots(chain_roots(header.device_kind))
    if header.timesteps == tuple(range(full.num_steps)):
        chain = full
    else:
        chain = full.respace(header.timesteps)
    if rule == "model":
        return chain
    return chain.with_variance(rule, variances)


def variance_rule_of(chain, model) -> tuple[str, tuple | None]:
    """(rule, explicit variances or None) of a chain on ``model``'s schedule."""
    if chain.variance_type == model.diffusion.variance_type:
        return "model", None
    if chain.variance_type == "explicit":
        return "explicit", tuple(chain.reverse_variance.tolist())
    return chain.variance_type, None


def quantized_chain(chain, model):
    """``chain`` with explicit variances replaced by what a compact file stores (the
    encoder codes with exactly what the decoder will read, roots included)."""
    chain = chain.with_roots("torch")  # as float32 files always had them
    rule, values = variance_rule_of(chain, model)
    if rule != "explicit":
        return chain
    return chain.with_variance("explicit", variances_of_codes(log2_variance_codes(values)))


def network_p(model, diffusion, x, k: int, batches, *, math_on_model_device: bool = False) -> dict:
    """p_theta(x_{k-1} | x_k) of chain step k of ``diffusion`` for latents x (float64
    [N, C, H, W]), the network called once per (start, stop) range of ``batches`` (the
    file's batch layout: results depend on it). The network runs in float32 on the model's
    device; p is formed in float64 (``Diffusion.p_mean_variance``, clipped x0-prediction).

    Returns dict(mean, log_variance, pred_x0, out) of float64 CPU tensors, ``out`` being
    the network output itself (eps, plus the variance channels of a learned variance).

    ``math_on_model_device``: form p on the model's device instead of the CPU. The
    progressive codec (and its theory curve) always did so and the lossless codec never
    did; on a GPU the float64 results may differ in the last bit, so each keeps its own
    choice, or files made before would not decode. On a CPU model both are the same.
    """
    import torch
    den = model.denoiser()
    math_dev = model.device if math_on_model_device else torch.device("cpu")
    parts = []
    for a, b in batches:
        xb = x[a:b]
        kk = torch.full((b - a,), k, dtype=torch.long)
        net = den(xb.to(device=model.device, dtype=torch.float32),
                  diffusion.timesteps[kk].to(model.device))
        o = diffusion.p_mean_variance(xb.to(math_dev), kk.to(math_dev), net.to(math_dev))
        o["out"] = net
        parts.append({n: o[n].to("cpu", torch.float64) for n in _P_KEYS})
    return {n: torch.cat([p[n] for p in parts]) for n in _P_KEYS}

_P_KEYS = ("mean", "log_variance", "pred_x0", "out")


# -- the exact network -------------------------------------------------------------------
def exact_net(model):
    """The model's exact network (:mod:`ddpmcodec.core.exact`) on the model's device,
    built once per model."""
    net = getattr(model, "_exact_net", None)
    if net is None or net.device != model.device:
        from ddpmcodec.core.exact.unet import ExactUNet, plan_of_model
        net = ExactUNet(plan_of_model(model), model.device)
        model._exact_net = net
    return net


@contextlib.contextmanager
def network_batch(model, max_batch: int | None):
    """Evaluate the exact network at most ``max_batch`` images at a time inside the block
    (memory, not results: exact files decode the same at any batch size)."""
    if max_batch is not None and max_batch < 1:
        from ddpmcodec.errors import DDPMCodecError
        raise DDPMCodecError(f"the network batch must be positive, got {max_batch}")
    net = exact_net(model)
    saved, net.max_batch = net.max_batch, max_batch
    try:
        yield
    finally:
        net.max_batch = saved


def clipped_posterior_variance(diffusion):
    """The posterior variances with the first replaced by the second (the official
    code's clipping), float64 numpy [K]: the fixedsmall variances."""
    import numpy as np
    post = diffusion.posterior_variance.numpy()
    return np.concatenate([post[1:2] if len(post) > 1 else diffusion.betas.numpy()[:1], post[1:]])


def p_variance_range(diffusion):
    """Smallest and largest variance of p_theta(x_{k-1}|x_k), k = 0..K-1 (float64 numpy
    [K] each), by IEEE operations only (equal unless the variance is learned)."""
    import numpy as np
    b = diffusion.betas.numpy()
    clipped = clipped_posterior_variance(diffusion)
    if diffusion.variance_type == "fixedlarge":
        v = np.concatenate([clipped[:1], b[1:]])
        return v, v
    if diffusion.variance_type == "fixedsmall":
        return clipped, clipped
    if diffusion.variance_type == "explicit":
        v = diffusion.reverse_variance.numpy()
        return v, v
    return np.minimum(clipped, b), np.maximum(clipped, b)  # learned: between the two


def exact_std(diffusion, k: int, out):
    """Standard deviation of p_theta(x_{k-1} | x_k) by IEEE operations only: the square
    root of the step's variance, or, for a learned variance, e^(log-variance / 2) through
    :func:`~ddpmcodec.core.exact.functions.exp_basic` with the two logs in decimal."""
    import numpy as np
    import torch

    if diffusion.variance_type != "learned":
        return float(np.sqrt(p_variance_range(diffusion)[0][k]))
    from decimal import Decimal

    from ddpmcodec.core.exact.functions import exp_basic
    log_lo = float(Decimal(float(clipped_posterior_variance(diffusion)[k])).ln())
    log_hi = float(Decimal(float(diffusion.betas[k])).ln())  # beta
    c = out.shape[1] // 2
    frac = (out[:, c:].numpy() + 1.0) / 2.0
    logvar = frac * log_hi + (1.0 - frac) * log_lo
    return torch.from_numpy(exp_basic(0.5 * logvar))


def exact_network_p(model, diffusion, x, k: int, batches) -> dict:
    """p_theta(x_{k-1} | x_k) of chain step k with the exact network: the same numbers on
    every machine. The network runs on the model's device (any), p is formed on the CPU
    in float64 by IEEE operations (``Diffusion.p_mean_variance``'s mean: products and sums
    of correctly rounded constants; the std by :func:`exact_std`).

    Returns dict(mean, std, pred_x0, out) of float64 CPU tensors (std a float when it is
    the same for every latent)."""
    import torch
    net = exact_net(model)
    outs = []
    for a, b in batches:
        t = torch.full((b - a,), int(diffusion.timesteps[k]), dtype=torch.long)
        outs.append(net(x[a:b], t).to("cpu"))
    out = torch.cat(outs)
    kk = torch.full((x.shape[0],), k, dtype=torch.long)
    o = diffusion.p_mean_variance(x, kk, out)
    return {"mean": o["mean"], "std": exact_std(diffusion, k, out), "pred_x0": o["pred_x0"],
            "out": out}


def exact_chain(chain, model):
    """``chain`` with explicit variances replaced by what an exact file stores, computed
    without libm (:func:`variances_of_codes` with ``exact``), and its roots correctly
    rounded."""
    chain = chain.with_roots(chain_roots(EXACT_NETWORK))
    rule, values = variance_rule_of(chain, model)
    if rule != "explicit":
        return chain
    return chain.with_variance("explicit",
                               variances_of_codes(log2_variance_codes(values), exact=True))
