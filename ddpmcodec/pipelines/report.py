"""`ddpmcodec report`: every analysis of the paper that applies, for one model, as a folder
with a README. Computes what is missing (each part is a resumable results folder under
``OUT/results``), then draws every table and figure from those folders only."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ddpmcodec.analysis.interpolation import write_figure8
from ddpmcodec.analysis.nll_table import nll_table, to_markdown
from ddpmcodec.analysis.progressive_generation import write_figure6
from ddpmcodec.analysis.rd_curve import write_rd
from ddpmcodec.analysis.shared_latent import write_figure7
from ddpmcodec.io.atomic import to_csv_atomic, write_text_atomic
from ddpmcodec.io.data import ImageSet
from ddpmcodec.io.models import LoadedModel
from ddpmcodec.pipelines import experiments
from ddpmcodec.pipelines.nll import run_nll


@dataclass(frozen=True)
class ReportSizes:
    nll_full_images: int = 8      # full-chain bound (1000 network calls per image)
    nll_respaced_images: int = 16
    respaced_steps: int = 100
    sample_steps: int = 100       # chain used by the sampling figures
    gen_samples: int = 8
    snapshots: int = 10
    shared_images: int = 1
    shared_samples: int = 4
    interp_pairs: int = 1
    lambdas: int = 7
    chain_images: int = 8          # few-step chains, on the full-chain images (paired)
    chain_steps: tuple = (10, 25, 50, 100, 200)
    calibration_images: int = 16   # training images, when the model has no calibration
    calibration_points: int = 200


FULL = ReportSizes()
QUICK = ReportSizes(nll_full_images=2, nll_respaced_images=2, respaced_steps=10,
                    sample_steps=10, gen_samples=2, snapshots=4, shared_images=1,
                    shared_samples=2, interp_pairs=1, lambdas=3, chain_images=2,
                    chain_steps=(5, 10), calibration_images=2, calibration_points=12)


def _subset(images: ImageSet, n: int) -> ImageSet:
    from ddpmcodec.io.data import images_digest
    n = min(n, len(images))
    spec = dict(images.spec, num_images=n, digest=images_digest(images.images[:n]))
    return ImageSet(images.images[:n], spec, images.names[:n])


def _data_args(images: ImageSet) -> str:
    s = images.spec
    if s["kind"] == "cifar10":
        return f"--dataset cifar10 --split {s['split']} -n {s['num_images']}"
    if s["kind"] == "files":
        return " ".join(s["paths"])
    return f"--data {s['path']} -n {s['num_images']}"


def build_report(model: LoadedModel, test: ImageSet, train: ImageSet | None, out,
                 quick: bool = False, seed: int = 0, batch_size: int = 64,
                 command: str = "ddpmcodec report", progress: bool = True) -> dict:
    sizes = QUICK if quick else FULL
    out = Path(out)
    res = out / "results"
    res.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ckpt = "" if model.source.startswith("embedded:") else f" --ckpt {model.source}"
    commands: dict[str, str] = {}

    # likelihood: full chain and respaced, test and train
    nll_folders = {}
    for split, images in (("test", test), ("train", train)):
        if images is None:
            continue
        for label, steps, n in (("full", None, sizes.nll_full_images),
                                (f"respaced K={sizes.respaced_steps}", sizes.respaced_steps,
                                 sizes.nll_respaced_images)):
            sub = _subset(images, n)
            name = f"nll-{split}-{'full' if steps is None else f'K{steps}'}"
            run_nll(model, sub, res / name, steps, batch_size, seed, progress=progress,
                    engine="fast")
            nll_folders[(split, label)] = res / name
            commands[name] = (f"ddpmcodec nll{ckpt} {_data_args(sub)}"
                              + (f" --steps {steps}" if steps else "") + f" --seed {seed} -o {res / name}")
    table1 = nll_table(nll_folders)
    to_csv_atomic(table1, out / "table1_nll.csv")

    rd = write_rd(res / "nll-test-full", out)

    chains = _chain_study(model, test, train, res, out, sizes, seed, batch_size, progress,
                          commands, ckpt)

    gen = experiments.progressive_generation(
        model, res / "progressive-generation", sizes.gen_samples, sizes.sample_steps,
        sizes.snapshots, seed, progress=progress)
    write_figure6(res / "progressive-generation", out / "figure6_progressive_generation.png")
    shared = experiments.shared_latent(
        model, _subset(test, sizes.shared_images), res / "shared-latent",
        num_samples=sizes.shared_samples, steps=sizes.sample_steps, seed=seed, progress=progress)
    write_figure7(res / "shared-latent", out / "figure7_shared_latent.png")
    interp = experiments.interpolation(
        model, _subset(test, 2 * sizes.interp_pairs), res / "interpolation",
        num_lambdas=sizes.lambdas, steps=sizes.sample_steps, seed=seed, progress=progress)
    write_figure8(res / "interpolation", out / "figure8_interpolation.png")

    seconds = time.perf_counter() - t_start
    readme = _readme(model, command, commands, table1, rd, gen, shared, interp, sizes, quick,
                     chains)
    write_text_atomic(out / "README.md", readme)
    return {"out": str(out), "fingerprint": model.fingerprint, "seconds": seconds,
            "table1": table1.to_dict(orient="records"), "files": sorted(
                str(p.relative_to(out)) for p in out.iterdir() if p.is_file())}


def _calibration(model, train, res: Path, sizes, seed, progress):
    """(the model's calibration, where it came from), made from the training images into
    ``res`` when the model has none; (None, why) without training images."""
    from ddpmcodec.errors import DDPMCodecError
    from ddpmcodec.io.calibration import find_calibration, load_calibration
    from ddpmcodec.pipelines.calibrate import calibrate
    made = res / "calibration.json"
    if made.is_file():
        return load_calibration(made, model.fingerprint), f"`results/{made.name}`"
    try:
        cal = find_calibration(model)
        return cal, f"`{Path(cal.meta['path']).name}` beside the checkpoint or in the cache"
    except DDPMCodecError as exc:
        if train is None:
            return None, f"skipped: {exc}"
    cal = calibrate(model, _subset(train, sizes.calibration_images), res / "calibration",
                    sizes.calibration_points, seed, None, progress, "ddpmcodec report")
    cal.save(made)
    return cal, f"`results/{made.name}`, made from {cal.meta['num_images']} training images"


def _chain_study(model, test, train, res: Path, out: Path, sizes, seed, batch_size, progress,
                 commands: dict, ckpt: str) -> dict:
    """The bound against K for even/dp trajectories and model/analytic variances, on the
    images of the full-chain bound (so that the difference to it is paired)."""
    from ddpmcodec.analysis.chains import chain_table, draw_chain_figure
    from ddpmcodec.core.chains import build_chain, chain_timesteps, cost_variance
    from ddpmcodec.errors import DDPMCodecError
    cal, source = _calibration(model, train, res, sizes, seed, progress)
    if cal is None:
        return {"skipped": source}
    sub = _subset(test, min(sizes.chain_images, sizes.nll_full_images))
    m, dec = cal.m(), cal.decoder_variance()
    folders, skipped = {}, []
    for K in sizes.chain_steps:
        for traj in ("even", "dp"):
            for var in ("model", "analytic"):
                try:
                    if traj == "dp":
                        cost_variance(model.diffusion, var)
                except DDPMCodecError as exc:
                    skipped.append(f"K={K} {traj}/{var}: {exc}")
                    continue
                ts = chain_timesteps(model.diffusion, K, traj, var, m)
                chain = build_chain(model.diffusion, ts, var, m, dec)
                name = f"chains-K{K}-{traj}-{var}"
                run_nll(model, sub, res / name, None, batch_size, seed, progress=progress,
                        engine="fast", chain=chain,
                        chain_choice={"trajectory": traj, "variance": var,
                                      "calibration": cal.describe()})
                folders[(K, traj, var)] = res / name
                commands[name] = (f"ddpmcodec nll{ckpt} {_data_args(sub)} --steps {K} "
                                  f"--trajectory {traj} --variance {var} --seed {seed} "
                                  f"-o {res / name}")
    table = chain_table(folders, res / "nll-test-full")
    to_csv_atomic(table, out / "table_chains.csv")
    draw_chain_figure(table, out / "figure_chains.png",
                      f"model {model.fingerprint}, {len(sub)} test images")
    return {"table": table, "calibration": source, "skipped": skipped,
            "num_images": len(sub)}


def _readme(model, command, commands, table1, rd, gen, shared, interp, sizes, quick,
            chains) -> str:
    t4 = pd.DataFrame(rd["table4"])
    t4_md = ["| reverse step (T - t + 1) | rate (bits/dim) | ± s.e. | RMSE [0,255] | PSNR (dB) |",
             "|---:|---:|---:|---:|---:|"]
    t4_md += [f"| {int(r.reverse_step)} | {r.rate_bpd:.5f} | {r.rate_se:.5f} | {r.rmse:.4f} | {r.psnr:.2f} |"
              for r in t4.itertuples()]
    sec = lambda r: r.get("run", {}).get("seconds") or r.get("run", {}).get("compute_seconds") or 0.0  # noqa: E731
    lines = [
        f"# Analysis report: model `{model.fingerprint}`",
        "",
        f"Model: `{model.source}` (fingerprint `{model.fingerprint}`, "
        f"{sum(p.numel() for p in model.unet.parameters()):,} parameters, "
        f"{model.diffusion.variance_type} variance, T={model.diffusion.num_steps}).",
        "",
        "Regenerate everything (finished parts are reused; delete `results/` to recompute):",
        "",
        f"    {command}",
        "",
        "Every table and figure below is drawn from a results folder in `results/`, whose",
        "`results.json` holds the configuration (model fingerprint, data digest, chain, seed).",
        ("This is a `--quick` report: tiny sizes, for testing the pipeline only." if quick else
         f"Sizes: {asdict(sizes)}."),
        "",
        "## Table 1: negative log-likelihood bound (bits/dim)",
        "",
        to_markdown(table1),
        "",
        "Rate is the prior plus every KL term; decoder is L_0. Commands:",
        "",
        *[f"    {c}" for k, c in commands.items()],
        "",
        "CSV: [table1_nll.csv](table1_nll.csv).",
        "",
        "## Table 4: rate and distortion along the reverse process",
        "",
        f"From `results/nll-test-full` ({commands.get('nll-test-full', '')}). Rate: prior plus the KL",
        "terms received so far; distortion: RMSE on [0, 255] of the x0-prediction.",
        "",
        *t4_md,
        "",
        "CSV: [table4.csv](table4.csv), every step: [rd_curve.csv](rd_curve.csv).",
        "",
        "## Figure 5: rate–distortion",
        "",
        "![Figure 5](figure5.png)",
        "",
        *_chains_section(chains),
        "## Figure 6: progressive generation",
        "",
        f"The x0-prediction during ancestral sampling from x_T on a {sizes.sample_steps}-step chain "
        f"({gen['config']['num_samples']} samples, columns: paper time t). "
        f"Results: `results/progressive-generation` ({sec(gen):.0f} s).",
        "",
        "![Figure 6](figure6_progressive_generation.png)",
        "",
        "## Figure 7: samples sharing a latent",
        "",
        "For a real test image x0, one x_t ~ q(x_t|x0) at each t, then independent samples of "
        "x0 ~ p(x0|x_t). Columns: the original, x_t, samples. "
        f"Results: `results/shared-latent` ({sec(shared):.0f} s).",
        "",
        "![Figure 7](figure7_shared_latent.png)",
        "",
        "## Figure 8: interpolation",
        "",
        "Two test images diffused to x_t with the same noise, mixed as (1-λ) x_t + λ x'_t and "
        "decoded by the reverse process with the same reverse noise for every λ. "
        f"Results: `results/interpolation` ({sec(interp):.0f} s).",
        "",
        "![Figure 8](figure8_interpolation.png)",
        "",
    ]
    return "\n".join(lines)


def _chains_section(chains: dict) -> list[str]:
    head = ["## Few-step chains: the bound against K", ""]
    if "table" not in chains:
        return head + [f"Not computed ({chains['skipped']}).", ""]
    from ddpmcodec.analysis.chains import to_markdown
    return head + [
        f"The negative ELBO of K-step chains on the {chains['num_images']} test images of the "
        "full-chain bound: even or dp trajectories (dp: the K-subset that minimises the "
        "expected bound, by dynamic programming on the calibration statistics), with the "
        "model's reverse variance or the analytic one (the optimal isotropic variance "
        "given the x0-prediction). Each is a valid bound of its own K-step model. "
        f"Calibration: {chains['calibration']} (training images, never these test images). "
        "'minus full chain' is the paired difference to the 1000-step bound of the same "
        "images; the last column is the published value for the paper's 35.7M network "
        "(Bao et al. 2022, Table 1), another model, for the shape only.",
        "",
        to_markdown(chains["table"]),
        "",
        *[f"Skipped: {s}" for s in chains["skipped"]],
        "CSV: [table_chains.csv](table_chains.csv).",
        "",
        "![bound against K](figure_chains.png)",
        "",
    ]
