"""The paper's Table 4 (CSV) and Figure 5 (PNG) from an nll results folder."""
from __future__ import annotations

from pathlib import Path

from ddpmcodec.core.rd import rate_distortion, table4
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import savefig_atomic, to_csv_atomic
from ddpmcodec.io.results import load_arrays, read_results


def write_rd(results_dir: str | Path, out: str | Path) -> dict:
    """Write rd_curve.csv, table4.csv and figure5.png into ``out``; returns their paths and
    the headline numbers."""
    res = read_results(results_dir)
    if res.get("kind") != "nll" or res["config"].get("estimator", "full") != "full":
        raise DDPMCodecError(f"{results_dir}: rd-curve needs every per-step term, i.e. an nll "
                             f"results folder of --estimator full")
    curve = rate_distortion(load_arrays(results_dir))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    to_csv_atomic(curve, out / "rd_curve.csv")
    t4 = table4(curve)
    to_csv_atomic(t4, out / "table4.csv")
    title = (f"model {res['config']['model']['fingerprint']}, "
             f"{res['summary']['num_images']} images, K={len(curve)}")
    draw_figure5(curve, out / "figure5.png", title)
    last = curve.iloc[0]  # chain step 0: everything but the decoder received
    return {"rd_curve_csv": str(out / "rd_curve.csv"), "table4_csv": str(out / "table4.csv"),
            "figure5_png": str(out / "figure5.png"),
            "final_rate_bpd": float(last["rate_bpd"]), "final_rmse": float(last["rmse"]),
            "table4": t4.to_dict(orient="records")}


def draw_figure5(curve, path: Path, title: str = "") -> None:
    """Three panels: distortion vs rate, rate vs reverse step, distortion vs reverse step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(curve["rate_bpd"], curve["rmse"])
    axes[0].set_xlabel("Rate (bits/dim)")
    axes[0].set_ylabel("Distortion (RMSE, [0, 255])")
    axes[1].plot(curve["reverse_step"], curve["rate_bpd"])
    axes[1].set_xlabel("Reverse process steps (T - t + 1)")
    axes[1].set_ylabel("Rate (bits/dim)")
    axes[2].plot(curve["reverse_step"], curve["rmse"])
    axes[2].set_xlabel("Reverse process steps (T - t + 1)")
    axes[2].set_ylabel("Distortion (RMSE, [0, 255])")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
