"""Figure 7: samples of x0 that share one latent x_t, at several t."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmcodec.analysis.grids import draw_grid
from ddpmcodec.io.results import load_arrays, read_results


def write_figure7(results_dir, out_png) -> dict:
    res, a = read_results(results_dir), load_arrays(results_dir)
    grid = a["grid"]  # [N, T, 1 + S, H, W, C]: x_t then samples
    n, nt, s = grid.shape[:3]
    originals = np.repeat(a["originals"][:, None], nt, axis=1)[:, :, None]
    cells = np.concatenate([originals, grid], axis=2).reshape(n * nt, s + 1, *grid.shape[3:])
    rows = [f"img {i}, t={t}" for i in range(n) for t in a["t"]]
    cols = ["x0", "x_t"] + [f"sample {j + 1}" for j in range(s - 1)]
    draw_grid(cells, Path(out_png), rows, cols,
              title=f"samples of x0 ~ p(x0 | x_t) sharing x_t (model {res['config']['model']['fingerprint']})")
    return {"figure7_png": str(out_png)}
