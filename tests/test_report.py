"""`ddpmcodec report --quick` end to end on a tiny model."""
import json

import pandas as pd
from conftest import make_tiny_ckpt
from PIL import Image

from ddpmcodec.cli import main


def test_quick_report_writes_every_table_and_figure(tmp_path, capsys, test_npz, train_npz):
    ckpt = make_tiny_ckpt(tmp_path / "tiny100", num_timesteps=100)
    out = tmp_path / "report"
    argv = ["report", "--ckpt", str(ckpt), "--data", str(test_npz), "--train-data", str(train_npz),
            "--quick", "-o", str(out), "--device", "cpu", "-q", "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    for name in ("figure5.png", "figure6_progressive_generation.png", "figure7_shared_latent.png",
                 "figure8_interpolation.png", "figure_chains.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 150
            # non-trivial: many distinct colours, not a blank canvas
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50
    t1 = pd.read_csv(out / "table1_nll.csv")
    assert len(t1) == 2 and {"test_bpd", "train_bpd"} <= set(t1.columns)
    assert t1["test_bpd"].notna().all() and (t1["test_bpd"] > 0).all()
    assert len(pd.read_csv(out / "table4.csv")) == 10
    chains = pd.read_csv(out / "table_chains.csv")  # K = 5, 10 x {even, dp} x {model, analytic}
    assert len(chains) == 8 and chains["bound_bpd"].notna().all()
    assert set(chains["variance_rule"]) == {"fixedlarge", "explicit"}
    # paired with the full chain of the same images
    assert chains["minus_full_se"].notna().all() and (chains["minus_full_se"] > 0).all()
    assert (out / "results" / "calibration.json").is_file()  # made from the train images
    readme = (out / "README.md").read_text()
    for needle in ("Table 1", "Table 4", "figure5.png", "figure6_progressive_generation.png",
                   "figure7_shared_latent.png", "figure8_interpolation.png", info["fingerprint"],
                   "ddpmcodec report", "figure_chains.png", "Few-step chains"):
        assert needle in readme
    # a second run reuses every results folder
    mtimes = {p: p.stat().st_mtime for p in (out / "results").glob("*/arrays.npz")}
    assert main(argv) == 0
    assert all(p.stat().st_mtime == m for p, m in mtimes.items()) and len(mtimes) == 16
