"""The bound against the number of steps K, for each trajectory and reverse variance, from
nll results folders of few-step chains (and the full chain of the same images), beside the
numbers Bao et al. (2022, Table 1) published for the paper's CIFAR-10 network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ddpmcodec.io.atomic import savefig_atomic
from ddpmcodec.io.results import load_arrays, read_results

# Analytic-DPM (Bao, Li, Zhu, Zhang, ICLR 2022), Table 1, CIFAR-10 (linear schedule, L_simple
# network of Ho et al.): negative ELBO in bits/dim at K = 10, 25, 50, 100, 200, 400, 1000.
PUBLISHED_K = (10, 25, 50, 100, 200, 400, 1000)
PUBLISHED = {
    ("even", "fixedlarge"): (6.99, 6.11, 5.44, 4.86, 4.39, 4.07, 3.75),
    ("even", "analytic"): (5.47, 4.79, 4.38, 4.07, 3.84, 3.71, 3.59),
    ("dp", "analytic"): (4.11, 3.68, 3.61, 3.59, 3.59, 3.59, 3.59),
}


def _totals(folder) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(folder)
    return arrays["image_id"], arrays["total"]


def chain_table(folders: dict, full=None) -> pd.DataFrame:
    """One row per chain: K, trajectory, variance (as used), bound mean and s.e. over
    images, and (with ``full``, the full chain's folder on the same images) the paired
    difference to the full-chain bound with its s.e. ``folders`` maps (K, trajectory,
    variance) to an nll results folder."""
    ref = None
    if full is not None:
        ids, tot = _totals(full)
        ref = dict(zip(ids.tolist(), tot.tolist()))
    rows = []
    for (K, trajectory, variance), folder in sorted(folders.items()):
        res = read_results(folder)
        ids, tot = _totals(folder)
        n = len(tot)
        row = {"K": int(K), "trajectory": trajectory, "variance": variance,
               "variance_rule": res["config"]["chain"]["variance_type"],
               "num_images": n, "bound_bpd": float(tot.mean()),
               "bound_se": float(tot.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
               "results": str(Path(folder).name)}
        if ref is not None and all(i in ref for i in ids.tolist()):
            d = tot - np.array([ref[i] for i in ids.tolist()])
            row.update(full_bpd=float(np.mean([ref[i] for i in ids.tolist()])),
                       minus_full_bpd=float(d.mean()),
                       minus_full_se=float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0)
        rule = row["variance_rule"] if variance == "model" else variance
        pub = PUBLISHED.get((trajectory, rule))
        if pub is not None and K in PUBLISHED_K:
            row["published_bpd"] = pub[PUBLISHED_K.index(K)]
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    has_full = "minus_full_bpd" in table
    head = "| K | trajectory | variance | bound (bits/dim) | ± s.e. |"
    rule = "|---:|---|---|---:|---:|"
    if has_full:
        head += " minus full chain | ± s.e. (paired) |"
        rule += "---:|---:|"
    head += " Bao et al. 2022 |"
    rule += "---:|"
    lines = [head, rule]
    for r in table.itertuples():
        line = (f"| {r.K} | {r.trajectory} | {r.variance} | {r.bound_bpd:.4f} | "
                f"{r.bound_se:.4f} |")
        if has_full:
            line += f" {r.minus_full_bpd:+.4f} | {r.minus_full_se:.4f} |"
        pub = getattr(r, "published_bpd", float("nan"))
        line += f" {pub:.2f} |" if pub == pub else " |"
        lines.append(line)
    return "\n".join(lines)


def draw_chain_figure(table: pd.DataFrame, path, title: str = "") -> None:
    """Bound against K (log axis): one line per (trajectory, variance), the full-chain
    bound of the same images, and the published curves (dashed, another network)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for i, ((traj, var), grp) in enumerate(table.groupby(["trajectory", "variance"], sort=True)):
        grp = grp.sort_values("K")
        ax.errorbar(grp["K"], grp["bound_bpd"], yerr=grp["bound_se"], marker="o", ms=4,
                    capsize=2, color=f"C{i}", label=f"this model: {traj}, {var}")
    if "full_bpd" in table and table["full_bpd"].notna().any():
        ax.axhline(float(table["full_bpd"].dropna().iloc[0]), color="k", lw=1,
                   label="this model: full chain (K = 1000)")
    ax.set_title("bound of the embedded model's chains")
    ax2 = axes[1]
    for (traj, var), values in PUBLISHED.items():
        ax2.plot(PUBLISHED_K, values, "--", marker="s", ms=3, label=f"{traj}, {var}")
    ax2.set_title("published: Bao et al. 2022, Table 1 (the paper's network)")
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel("steps K")
        a.set_ylabel("negative ELBO (bits/dim)")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
