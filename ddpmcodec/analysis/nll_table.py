"""The paper's Table 1 columns that apply: NLL bound (bits/dim, mean ± s.e.) on test and
train images, for the full chain and respaced chains."""
from __future__ import annotations

import pandas as pd

from ddpmcodec.io.results import read_results


def nll_table(folders: dict) -> pd.DataFrame:
    """folders: {(split, label): results folder}. One row per chain label."""
    rows = {}
    for (split, label), folder in folders.items():
        res = read_results(folder)
        s = res["summary"]
        row = rows.setdefault(label, {"chain": label, "steps": s["num_steps"]})
        row[f"{split}_bpd"] = s["total_bpd"]
        row[f"{split}_se"] = s["total_se"]
        row[f"{split}_rate_bpd"] = s["rate_bpd"]
        row[f"{split}_decoder_bpd"] = s["decoder_bpd"]
        row[f"{split}_images"] = s["num_images"]
    return pd.DataFrame(list(rows.values()))


def to_markdown(df: pd.DataFrame) -> str:
    lines = ["| chain | steps | " + " | ".join(
        f"{sp} NLL (bits/dim) | {sp} rate | {sp} decoder | {sp} images"
        for sp in ("test", "train") if f"{sp}_bpd" in df) + " |"]
    ncols = 2 + 4 * sum(f"{sp}_bpd" in df for sp in ("test", "train"))
    lines.append("|" + "---|" * ncols)
    for _, r in df.iterrows():
        cells = [str(r["chain"]), str(int(r["steps"]))]
        for sp in ("test", "train"):
            if f"{sp}_bpd" in df:
                if pd.isna(r.get(f"{sp}_bpd")):
                    cells += ["–"] * 4
                else:
                    cells += [f"{r[f'{sp}_bpd']:.4f} ± {r[f'{sp}_se']:.4f}",
                              f"{r[f'{sp}_rate_bpd']:.4f}", f"{r[f'{sp}_decoder_bpd']:.4f}",
                              str(int(r[f"{sp}_images"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
