"""The model side of coding: the chain a file names, and p_theta of one chain step
evaluated batch by batch in the file's layout."""
from __future__ import annotations

from ddpmcodec.codec.container import Header
from ddpmcodec.codec.container.chains import log2_variance_codes, variances_of_codes


def chain_for(header: Header, model, rule: str = "model", variances=None):
    """The (respaced) Diffusion of the file's chain, with the file's variance rule
    (``model``: the checkpoint's; ``explicit``: the K variances the file holds)."""
    if header.timesteps == tuple(range(model.diffusion.num_steps)):
        chain = model.diffusion
    else:
        chain = model.diffusion.respace(header.timesteps)
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
    encoder codes with exactly what the decoder will read)."""
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
