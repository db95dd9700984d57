"""Image grids with row and column labels (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmcodec.io.atomic import savefig_atomic


def draw_grid(cells: np.ndarray, path: Path, row_labels=(), col_labels=(), title: str = "",
              cell_inches: float = 0.9) -> None:
    """cells: uint8 [R, C, H, W, 3] drawn as an R x C grid of images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = cells.shape[:2]
    title_inches = 0.45 if title else 0.0  # room for two lines of title above the labels
    height = rows * cell_inches + 0.6 + title_inches
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_inches + 0.8, height), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = cells[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and c < len(col_labels):
                ax.set_title(str(col_labels[c]), fontsize=7)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(str(row_labels[r]), fontsize=7)
    # tight_layout ignores a suptitle: keep the top strip free for it
    fig.tight_layout(pad=0.3, rect=(0.0, 0.0, 1.0, 1.0 - title_inches / height))
    if title:
        fig.suptitle(title, fontsize=8, wrap=True, y=1.0 - 0.05 / height, va="top")
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
