"""The real rate-distortion curve of the progressive codec, at every truncation point, beside
the theoretical curve and JPEG / WebP on the same images.

For N images and a coded schedule of K steps this writes into a folder:

* ``codec_points.csv`` -- one row per truncation point (after coded step s) and
  reconstruction: actual bits per image of the file prefix (payload, and with the
  container header shared by the N images), the coded symbols alone, the summed KL of
  the codec's proposals along its own path (the information the channel had to carry),
  bits/dim of each, RMSE and PSNR on the [0, 255] scale of the decoded uint8 images, LPIPS
  when available. Every image comes from a real decode of the file.
* ``theory.csv`` -- the same schedule with exact samples of q (no channel): the summed KL
  with the codec's proposal (``kl_*``) and with the model's own reverse variance
  (``model_kl_*``, the variational bound's rate terms), and the RMSE of the mean
  reconstruction there.
* ``baselines.csv`` -- JPEG (Pillow, optimize=True) and WebP (method 6) quality sweeps:
  whole-file bits per image (their headers included: about 600 bytes for a 32x32 JPEG).
* ``rd_codec.png`` -- RMSE and PSNR against bits/dim: codec points on the theoretical curve,
  with the baselines (and the full-chain curve of an ``nll`` results folder if given).
* ``results.json`` -- configuration, model fingerprint, summary, what was skipped and why.

Distortion is always that of the uint8 image a user gets (rounded, clipped), so at high
rate it includes the rounding (RMSE^2 grows by about 1/12).
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ddpmcodec.analysis.rd_codec import draw_folder, rate_at_rmse
from ddpmcodec.core.metrics import rmse_psnr
from ddpmcodec.io.data import from_model_space, to_model_space

LN2 = 0.6931471805599453  # ln 2, correctly rounded (a literal: no libm)
JPEG_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


# -- LPIPS ---------------------------------------------------------------------------------------
def lpips_metric(net=None):
    """(callable(a, b) -> mean LPIPS of two uint8 NHWC batches, None) when lpips and its
    AlexNet backbone weights are present, else (None, the reason and what to download).

    ``net``: an ``lpips.LPIPS`` module (or any callable taking two NCHW float batches on
    [-1, 1] and returning one distance per image pair) used instead of the pretrained
    AlexNet LPIPS; nothing is then looked up or downloaded. Tests pass one with a randomly
    initialised backbone (``lpips.LPIPS(net="alex", pnet_rand=True)`` builds offline).
    """
    if net is None:
        try:
            import lpips  # noqa: F401
            import torchvision
        except ImportError as exc:
            return None, f"LPIPS skipped: the lpips package is not installed ({exc.name})"
        url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not path.is_file():
            return None, (f"LPIPS skipped: its AlexNet backbone weights are not at {path}; download "
                          f"{url} to that path (or run torchvision.models.alexnet(weights='IMAGENET1K_V1') "
                          f"once on a machine with internet) and rerun")
        import warnings

        import lpips
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", verbose=False).eval()

    def metric(a: np.ndarray, b: np.ndarray) -> float:
        # uint8 [0, 255] -> [-1, 1], LPIPS's input range
        ta = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1
        tb = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            return float(net(ta, tb).mean())
    return metric, None


# -- the theoretical curve of a coded schedule -------------------------------------------------
def theory_curve(model, images: np.ndarray, timesteps, seed: int = 0, batch_size: int = 8) -> pd.DataFrame:
    """Exact ancestral samples of q along the coded chain (counter-based noise): per coded
    step, the mean over images of the cumulative KL with the codec's fitted proposal and
    with the model's variance (bits per image), and the RMSE/PSNR of the uint8 mean
    reconstruction from the latent reached."""
    from ddpmcodec.codec.progressive import channel as ch
    from ddpmcodec.codec.network import network_p
    from ddpmcodec.codec.progressive.levels import fitted_level, level_variance
    from ddpmcodec.core.rng import counter_normal
    diffusion = model.diffusion.respace(tuple(timesteps))
    K = diffusion.num_steps
    n = len(images)
    x0 = to_model_space(images)
    dims = x0[0].numel()
    batches = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    ids = torch.arange(n)
    k = K - 1
    x = diffusion.q_sample(x0, torch.full((n,), k),
                           counter_normal(seed, ids, int(diffusion.timesteps[k]), x0.shape[1:]))
    prior = diffusion.prior_kl(x0).reshape(n, -1).sum(1).numpy() / LN2
    kl, model_kl = prior.copy(), prior.copy()
    rows = []
    for s in range(K):
        # on the model's device, as the progressive codec forms p
        p = network_p(model, diffusion, x, k, batches, math_on_model_device=True)
        rmse, psnr = rmse_psnr(from_model_space(p["pred_x0"]), images)
        rows.append({"step": s + 1, "t": int(diffusion.timesteps[k]) + 1,
                     "kl_bits_per_image": float(kl.mean()),
                     "model_kl_bits_per_image": float(model_kl.mean()),
                     "kl_bpd": float(kl.mean()) / dims, "model_kl_bpd": float(model_kl.mean()) / dims,
                     "rmse": rmse, "psnr": psnr})
        if k == 0:
            break
        kk = torch.full((n,), k)
        mean_q, logvar_q = diffusion.q_posterior(x0, x, kk)
        var_q = float(torch.exp(logvar_q.flatten()[0]))
        mq = mean_q.reshape(n, -1).numpy()
        mp = p["mean"].reshape(n, -1).numpy()
        vp = torch.exp(p["log_variance"]).reshape(n, -1).numpy()
        for i in range(n):
            lvl = fitted_level(mq[i], var_q, mp[i])
            kl[i] += ch.kl_bits(mq[i], var_q, mp[i], level_variance(var_q, lvl)).sum()
            model_kl[i] += ch.kl_bits(mq[i], var_q, mp[i], vp[i]).sum()
        noise = counter_normal(seed, ids, int(diffusion.timesteps[k - 1]), x0.shape[1:])
        x = mean_q + math.sqrt(var_q) * noise
        k -= 1
    return pd.DataFrame(rows)


# -- JPEG and WebP ---------------------------------------------------------------------------------
def baseline_curves(images: np.ndarray, jpeg=JPEG_QUALITIES, webp=WEBP_QUALITIES, lpips_fn=None) -> pd.DataFrame:
    """Pillow quality sweeps; bits are whole files (headers included), per image."""
    from PIL import Image
    dims = images[0].size
    rows = []
    for fmt, qualities, kwargs in (("JPEG", jpeg, {"optimize": True}), ("WEBP", webp, {"method": 6})):
        for q in qualities:
            total, decoded = 0, []
            for img in images:
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                    buf, format=fmt, quality=int(q), **kwargs)
                total += 8 * buf.tell()
                buf.seek(0)
                with Image.open(buf) as im:
                    arr = np.asarray(im.convert("RGB" if img.shape[-1] == 3 else "L"))
                decoded.append(arr if arr.ndim == 3 else arr[..., None])
            decoded = np.stack(decoded)
            rmse, psnr = rmse_psnr(decoded, images)
            rows.append({"codec": fmt.lower(), "quality": int(q),
                         "bits_per_image": total / len(images), "bpd": total / (len(images) * dims),
                         "rmse": rmse, "psnr": psnr,
                         "lpips": lpips_fn(decoded, images) if lpips_fn else float("nan")})
    return pd.DataFrame(rows)


# -- the codec ---------------------------------------------------------------------------------------
def codec_points(model, images: np.ndarray, steps: int | None = None, chunk_bits: float | None = None,
                 margin_bits: float | None = None, batch_size: int = 8, seed: int = 0,
                 recons=("mean",), recon_steps: int | None = None, lpips_fn=None,
                 progress: bool = False, encoded=None):
    """Encode ``images`` into one progressive file, decode it at every truncation point with
    each reconstruction, and measure. Returns (DataFrame, Encoded)."""
    from ddpmcodec.codec.progressive import codec as prog_codec
    from ddpmcodec.codec.progressive import params as prog_params
    from ddpmcodec.codec.progressive import reconstruct
    codec = prog_codec.ProgressiveCodec(model)
    opts = {k: v for k, v in (("chunk_bits", chunk_bits), ("margin_bits", margin_bits)) if v is not None}
    if encoded is None:
        encoded = codec.encode(images, steps=steps, batch_size=batch_size, seed=seed,
                               progress=progress, **opts)
    table = {r["step"]: r for r in reconstruct.truncation_table(encoded.stats)}
    decoded = codec.decode_every_step(encoded.data, recons, recon_steps or prog_params.DEFAULT_RECON_STEPS,
                                      progress=progress)
    n, dims = len(images), images[0].size
    rows = []
    for d in decoded:
        t = table[d["step"]]
        for r, imgs in d["images"].items():
            rmse, psnr = rmse_psnr(imgs, images)
            rows.append({"step": d["step"], "t": d["t"], "recon": r,
                         "bits_per_image": t["payload_bits_per_image"],
                         "file_bits_per_image": 8 * d["bytes_used"] / n,
                         "code_bits_per_image": t["code_bits_per_image"],
                         "kl_bits_per_image": t["kl_bits_per_image"],
                         "bpd": t["payload_bpd"], "file_bpd": 8 * d["bytes_used"] / (n * dims),
                         "kl_bpd": t["kl_bpd"], "overhead": t["overhead"],
                         "code_overhead": t["code_overhead"], "rmse": rmse, "psnr": psnr,
                         "lpips": lpips_fn(imgs, images) if lpips_fn else float("nan")})
    return pd.DataFrame(rows), encoded


def run_rd_codec(model, images: np.ndarray, out, *, steps: int | None = None,
                 chunk_bits: float | None = None, margin_bits: float | None = None,
                 batch_size: int = 8, seed: int = 0, recons=("mean",), recon_steps: int | None = None,
                 jpeg=JPEG_QUALITIES, webp=WEBP_QUALITIES, use_lpips: bool = True,
                 nll_results=None, data_spec: dict | None = None, progress: bool = False) -> dict:
    """Everything in the module docstring, written into ``out``; returns the summary."""
    from ddpmcodec.io.atomic import to_csv_atomic, write_bytes_atomic, write_json_atomic
    from ddpmcodec.io.data import check_fits
    check_fits(images, model.image_shape)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = {}
    lpips_fn = None
    if use_lpips:
        lpips_fn, reason = lpips_metric()
        if reason:
            skipped["lpips"] = reason
    started = time.time()
    points, encoded = codec_points(model, images, steps, chunk_bits, margin_bits, batch_size,
                                   seed, recons, recon_steps, lpips_fn, progress)
    write_bytes_atomic(out / "encoded.ddpmc", encoded.data)
    theory = theory_curve(model, images, encoded.header.timesteps, seed, batch_size)
    baselines = baseline_curves(images, jpeg, webp, lpips_fn)
    to_csv_atomic(points, out / "codec_points.csv")
    to_csv_atomic(theory, out / "theory.csv")
    to_csv_atomic(baselines, out / "baselines.csv")
    n = len(images)
    st = encoded.stats
    mean = points[points["recon"] == "mean"].reset_index(drop=True)
    last = mean.iloc[-1]
    targets = [16.0, 8.0, 4.0, 2.0]
    equal_rmse = []
    for target in targets:
        actual = rate_at_rmse(mean["bits_per_image"], mean["rmse"], target)
        ideal = rate_at_rmse(theory["kl_bits_per_image"], theory["rmse"], target)
        jpeg_bits = rate_at_rmse(*_sorted_curve(baselines[baselines["codec"] == "jpeg"]), target)
        webp_bits = rate_at_rmse(*_sorted_curve(baselines[baselines["codec"] == "webp"]), target)
        equal_rmse.append({"rmse": target, "codec_bits": actual, "theory_bits": ideal,
                           "jpeg_bits": jpeg_bits, "webp_bits": webp_bits})
    summary = {
        "num_images": n, "steps": encoded.header.num_steps,
        "timesteps": list(encoded.header.timesteps),
        "channel": st.extra["params"], "header_bits": st.header_bits,
        "full_rate": {"bits_per_image": float(last["bits_per_image"]),
                      "kl_bits_per_image": float(last["kl_bits_per_image"]),
                      "overhead": float(last["overhead"]), "code_overhead": float(last["code_overhead"]),
                      "bpd": float(last["bpd"]), "kl_bpd": float(last["kl_bpd"]),
                      "rmse": float(last["rmse"]), "psnr": float(last["psnr"])},
        "equal_rmse": equal_rmse,
        "encode_seconds": st.seconds, "total_seconds": time.time() - started}
    write_json_atomic(out / "results.json", {
        "kind": "rd-codec", "schema": 1,
        "config": {"model": {"fingerprint": model.fingerprint, "source": model.source},
                   "data": data_spec or {"num_images": n}, "seed": seed, "batch_size": batch_size,
                   "recons": list(recons), "recon_steps": recon_steps,
                   "jpeg_qualities": list(jpeg), "webp_qualities": list(webp),
                   "nll_results": str(nll_results) if nll_results else None},
        "summary": summary, "skipped": skipped})
    draw_folder(out)
    return {"out": str(out), "figure": str(out / "rd_codec.png"), "skipped": skipped, **summary}


def _sorted_curve(df: pd.DataFrame):
    df = df.sort_values("bits_per_image")
    return df["bits_per_image"].to_numpy(), df["rmse"].to_numpy()
