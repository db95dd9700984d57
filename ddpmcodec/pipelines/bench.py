"""`ddpmcodec bench`: speed and accuracy of the likelihood engines, in one table.

On the same images, chain, noise and device, in one run:

* full bound: images/s of the plain per-timestep loop and of the fast engine in each
  precision, their ratio, and the largest per-image difference in bits/dim against the
  plain loop and against a float64-math reference (the network itself in float64);
* estimator: network evaluations per image against the width of its error bar.

    ddpmcodec bench --data ../shared/data/cifar10-test-800.npz -n 4 --steps 100
    ddpmcodec bench --random-init paper --data test.npz -n 64 --device cuda --compile

The table is printed and written as JSON (``results.json``, kind "bench") and Markdown
(``bench.md``) into a results folder. Throughput excludes warm-up (compilation, CUDA graph
capture), which is reported separately as ``setup_s``.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def _tf32_state() -> dict:
    m = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(m, "fp32_precision") and conv is not None:
        return {"matmul": m.fp32_precision, "cudnn_conv": conv.fp32_precision}
    return {"matmul_allow_tf32": m.allow_tf32, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def random_model(name: str, device):
    """A randomly initialised network of a named config with the default schedule: for
    speed and numerical-precision measurements (its bits/dim mean nothing)."""
    from ddpmcodec.core.diffusion import Diffusion
    from ddpmcodec.io.models import LoadedModel, build_unet, fingerprint
    torch.manual_seed(0)
    unet = build_unet(name).eval()
    diffusion = Diffusion.from_schedule("linear", 1000)
    fp = fingerprint(unet, diffusion)
    return LoadedModel(unet.to(device), diffusion, fp, f"random:{name}", torch.device(device))


def _time(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def run_bench(model, images, steps, batch_size, seed, precisions, fp32_timesteps, compile,
              cuda_graphs, nfes, proposal, reference_images: int = 8,
              progress: bool = True) -> dict:
    """Measure everything; returns {"config", "full_bound": rows, "estimator": rows, "run"}.

    The float64 reference (slow: the network in float64) covers the first
    ``reference_images`` images (0: none); its differences are over those images."""
    from ddpmcodec.core.likelihood import bound_plain_loop
    from ddpmcodec.io.data import to_model_space
    from ddpmcodec.pipelines import estimator as est
    from ddpmcodec.pipelines.engine import Engine, default_batch

    dev = model.device
    chain = model.diffusion.with_steps(steps)
    T, K, N = model.diffusion.num_steps, chain.num_steps, len(images)
    batch = batch_size or default_batch(dev)
    x0 = to_model_space(images.images)
    ids = torch.arange(N)
    log = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    rows = []

    def row(label, precision, res, seconds, setup, batch_used, graphs=False, compiled=False):
        return {"engine": label, "precision": precision, "batch": batch_used,
                "compile": compiled, "cuda_graphs": graphs, "setup_s": setup,
                "seconds": seconds, "images_per_s": N / seconds, "evals_per_s": N * K / seconds,
                "full_chain_images_per_s": N * K / seconds / T, "total": res["total"].numpy()}

    # the plain per-timestep loop, fp32 with the process's default TF32 settings
    log(f"bench: plain loop, {N} images x {K} steps")
    den = model.denoiser()
    _, setup = _time(lambda: den(x0[:1].to(dev, torch.float32), torch.zeros(1, dtype=torch.long, device=dev)), dev)
    plain, secs = _time(lambda: bound_plain_loop(den, chain, x0.to(dev), ids, seed), dev)
    label = "fp32" if dev.type != "cuda" else \
        "fp32 (torch defaults: " + ", ".join(f"{k}={v}" for k, v in _tf32_state().items()) + ")"
    rows.append(row("plain", label, plain, secs, setup, N))

    variants = []
    for p in precisions:
        variants.append((p, 0))
        if fp32_timesteps > 0 and p in ("tf32", "bf16"):
            variants.append((p, fp32_timesteps))
    R = min(N, max(0, reference_images))
    if R:
        variants.append(("fp64", 0))
    engines = {}
    for p, low in variants:
        label = p if not low else f"{p} + fp32 below t={low}"
        log(f"bench: fast engine, {label}")
        use_graphs = cuda_graphs and p != "fp64"
        t0 = time.perf_counter()
        eng = Engine.for_model(model, chain, seed, batch, p, compile and p != "fp64", use_graphs, low)
        # warm-up: compilation and graph capture happen on the first full-size chunk of
        # each network (the fp32 one takes the lowest timesteps)
        for k in (0, K - 1):
            eng.pair_terms(x0[:1], ids[:1], torch.zeros(eng.batch, dtype=torch.long),
                           torch.full((eng.batch,), k))
        _sync(dev)
        setup = time.perf_counter() - t0
        n_img = R if p == "fp64" else N
        res, secs = _time(lambda: eng.bound(x0[:n_img], ids[:n_img]), dev)
        engines[(p, low)] = (eng, res)
        r = row("fast", label, res, secs, setup, eng.batch, use_graphs, compile and p != "fp64")
        if p == "fp64":  # over its R images only
            r.update(images_per_s=R / secs, evals_per_s=R * K / secs,
                     full_chain_images_per_s=R * K / secs / T, images=R)
        rows.append(r)

    ref = engines.get(("fp64", 0), (None, None))[1]
    plain_total = rows[0]["total"]
    for r in rows:
        n_img = len(r["total"])
        r["x_plain"] = (n_img / r["seconds"]) / (N / rows[0]["seconds"])
        r["max_diff_vs_plain"] = float(np.abs(r["total"] - plain_total[:n_img]).max())
        r["max_diff_vs_fp64"] = (float(np.abs(r["total"][:R] - ref["total"].numpy()).max())
                                 if ref is not None else None)
        r["mean_total_bpd"] = float(r["total"].mean())
        del r["total"]

    # the estimator, on the fast fp32 engine, against its full bound on the same noise
    est_rows = []
    if nfes:
        eng, full = engines.get(("fp32", 0)) or next(iter(engines.values()))
        prop = (est.default_proposal(model, chain) if proposal is None
                else est.Proposal.load(proposal).for_chain(chain))
        full_total = full["total"].numpy()
        fast_fp32 = next(r for r in rows if r["engine"] == "fast")
        for M in nfes:
            log(f"bench: estimator, {M} evaluations per image")
            plan = est.Plan.make(prop, M)
            out, secs = _time(lambda: est.estimate(eng, plan, x0, ids, seed), dev)
            s = est.summarize(out)
            diff = float(out["total"].mean() - full_total.mean())
            est_rows.append({
                "nfe": M, "nfe_per_image": s["nfe_per_image"], "exact_steps": len(plan.exact_k),
                "images_per_s": N / secs, "x_full": fast_fp32["seconds"] / secs,
                "estimate_bpd": s["total_bpd"], "total_se": s["total_se"],
                "mc_se": s["total_mc_se"], "mc_sd_per_image": s["mc_sd_per_image"],
                "full_bpd": float(full_total.mean()), "diff_bpd": diff,
                "diff_in_mc_se": diff / s["total_mc_se"] if s["total_mc_se"] > 0 else None,
                "diff_in_total_se": diff / s["total_se"] if s["total_se"] > 0 else None})
        proposal_info = prop.describe()
    else:
        proposal_info = None
    config = {"model": {"fingerprint": model.fingerprint, "source": model.source},
              "data": images.spec, "chain": {"num_steps": K, "of": T}, "seed": seed,
              "batch": batch, "precisions": precisions, "fp32_timesteps": fp32_timesteps,
              "compile": compile, "cuda_graphs": cuda_graphs, "nfe": nfes,
              "reference_images": R, "proposal": proposal_info}
    run = {"device": str(dev), "device_name": _device_name(dev), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "tf32_defaults": _tf32_state() if dev.type == "cuda" else None}
    return {"config": config, "full_bound": rows, "estimator": est_rows, "run": run}


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table_lines(res: dict) -> list[str]:
    cfg, run = res["config"], res["run"]
    n, K, T = cfg["data"]["num_images"], cfg["chain"]["num_steps"], cfg["chain"]["of"]
    chain = "the full chain" if K == T else f"respaced from {T}"
    out = [f"Full bound: {n} images x {K} steps ({chain}), {run['device_name']}, torch {run['torch']}",
           "",
           "| engine | precision | batch | setup s | images/s | evals/s | full-chain images/s "
           "| x plain | max diff vs plain | max diff vs fp64 |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["full_bound"]:
        extra = "+compile" if r["compile"] else ""
        extra += "+cudagraph" if r["cuda_graphs"] else ""
        out.append(f"| {r['engine']}{extra} | {r['precision']} | {r['batch']} | {r['setup_s']:.1f} | "
                   f"{r['images_per_s']:.3f} | {r['evals_per_s']:.1f} | "
                   f"{r['full_chain_images_per_s']:.4f} | {r['x_plain']:.2f} | "
                   f"{_fmt(r['max_diff_vs_plain'], '.2e')} | {_fmt(r['max_diff_vs_fp64'], '.2e')} |")
    out.append("")
    out.append(f"Differences: largest over images of |total bits/dim - other's|; fp64 = the "
               f"network in float64 (the float64-math reference, on the first "
               f"{cfg['reference_images']} images). full-chain images/s = evals/s / {T}.")
    if res["estimator"]:
        e0 = res["estimator"][0]
        out += ["", f"Estimator (fast fp32 engine; full bound of the same images and noise: "
                    f"{e0['full_bpd']:.4f} bits/dim):", "",
                "| NFE/image | exact steps | images/s | x full | estimate | total SE | MC SE "
                "| MC sd/image | (est-full)/MC SE |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["estimator"]:
            out.append(f"| {r['nfe_per_image']:.1f} | {r['exact_steps']} | {r['images_per_s']:.3f} | "
                       f"{r['x_full']:.1f} | {r['estimate_bpd']:.4f} | {r['total_se']:.4f} | "
                       f"{r['mc_se']:.4f} | {r['mc_sd_per_image']:.4f} | "
                       f"{_fmt(r['diff_in_mc_se'], '+.2f')} |")
        out.append("")
        out.append("total SE: image-to-image + Monte-Carlo (the error bar of a data-set mean); "
                   "MC SE: Monte-Carlo only (against the full bound of these images).")
    return out
