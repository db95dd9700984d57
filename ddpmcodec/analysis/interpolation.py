"""Figure 8: interpolation in latent space at several diffusion depths t."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmcodec.analysis.grids import draw_grid
from ddpmcodec.io.results import load_arrays, read_results


def write_figure8(results_dir, out_png) -> dict:
    res, a = read_results(results_dir), load_arrays(results_dir)
    grid = a["grid"]  # [P, T, L, H, W, C]
    p, nt, nl = grid.shape[:3]
    src = a["originals"][0::2][:, None, None].repeat(nt, 1)
    dst = a["originals"][1::2][:, None, None].repeat(nt, 1)
    cells = np.concatenate([src, grid, dst], axis=2).reshape(p * nt, nl + 2, *grid.shape[3:])
    rows = [f"pair {i}, t={t}" for i in range(p) for t in a["t"]]
    cols = ["x0"] + [f"λ={lam:.2f}" for lam in a["lambdas"]] + ["x0'"]
    draw_grid(cells, Path(out_png), rows, cols,
              title=f"interpolation of (1-λ) x_t + λ x'_t, decoded by the reverse process "
                    f"(model {res['config']['model']['fingerprint']})")
    return {"figure8_png": str(out_png)}
