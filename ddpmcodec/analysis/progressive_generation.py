"""Figure 6: the x0-prediction along the reverse chain (progressive generation)."""
from __future__ import annotations

from pathlib import Path

from ddpmcodec.analysis.grids import draw_grid
from ddpmcodec.io.results import load_arrays, read_results


def write_figure6(results_dir, out_png) -> dict:
    res, a = read_results(results_dir), load_arrays(results_dir)
    draw_grid(a["pred_x0"], Path(out_png), col_labels=[f"t={t}" for t in a["t"]],
              title=f"x0-prediction during ancestral sampling "
                    f"(K={res['config']['chain']['num_steps']}, model {res['config']['model']['fingerprint']})")
    return {"figure6_png": str(out_png)}
