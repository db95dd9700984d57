"""`ddpmcodec calibrate` and calibration files: written, found, refused when foreign or
damaged, and turned into chains."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddpmcodec.cli import main
from ddpmcodec.core import chains
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.calibration import find_calibration, load_calibration


@pytest.fixture(scope="module")
def tiny_calibration(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    rng = np.random.default_rng(0)
    np.savez(tmp / "train.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    out = tmp / "cal.json"
    code = main(["calibrate", "--ckpt", str(tiny_ckpt), "--data", str(tmp / "train.npz"),
                 "--points", "12", "-o", str(out), "--work", str(tmp / "work"),
                 "--device", "cpu", "-q", "--json"])
    assert code == 0
    return out


def test_calibration_file_round_trips(tiny_calibration, tiny_model):
    cal = load_calibration(tiny_calibration, tiny_model.fingerprint)
    assert cal.num_timesteps == 1000 and len(cal.indices) == 12
    assert cal.indices[0] == 0 and cal.indices[-1] == 999
    m = cal.m()
    assert m.shape == (1000,) and np.all(m > 0)
    assert np.allclose(m[cal.indices], cal.xstart_mse)  # interpolation keeps the measurements
    assert cal.decoder_variance() in cal.decoder_variance_grid
    assert find_calibration(tiny_model, tiny_calibration).fingerprint == tiny_model.fingerprint


def _decoder_bpd_by_hand(images: np.ndarray, model, seed: int, variances: np.ndarray) -> np.ndarray:
    """Mean bits/dim of the discretized Gaussian decoder at index 0, for each variance, from
    first principles: x_0 = sqrt(abar_0) x + sqrt(1 - abar_0) eps with the bound's noise,
    x0_hat = clip((x_0 - sqrt(1 - abar_0) eps_hat) / sqrt(abar_0)), bins of width 2/255
    whose edge bins take the tails, probabilities from scipy's normal CDF."""
    import torch
    from scipy.stats import norm

    from ddpmcodec.core.rng import counter_normal
    x = images.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    abar0 = 1.0 - float(model.diffusion.betas[0])
    eps = counter_normal(seed, torch.arange(len(x)), 0, x.shape[1:]).numpy()
    x_t = np.sqrt(abar0) * x + np.sqrt(1.0 - abar0) * eps
    with torch.no_grad():
        out = model.unet(torch.from_numpy(x_t).float(), torch.zeros(len(x), dtype=torch.long)).sample
    eps_hat = out[:, :3].double().numpy()
    x0_hat = np.clip((x_t - np.sqrt(1.0 - abar0) * eps_hat) / np.sqrt(abar0), -1.0, 1.0)
    lo, hi = (x - 1.0 / 255 - x0_hat), (x + 1.0 / 255 - x0_hat)
    bpd = np.empty(len(variances))
    for j, v in enumerate(variances):
        sd = np.sqrt(v)
        with np.errstate(divide="ignore"):
            # a bin above the mean from the upper tail, so that nothing cancels
            p_mid = np.where(lo > 0, norm.sf(lo / sd) - norm.sf(hi / sd),
                             norm.cdf(hi / sd) - norm.cdf(lo / sd))
            logp = np.where(x < -0.999, norm.logcdf(hi / sd),
                            np.where(x > 0.999, norm.logsf(lo / sd), np.log(p_mid)))
        bpd[j] = float(np.mean(-logp.reshape(len(x), -1).mean(1))) / np.log(2.0)
    return bpd


def test_the_chosen_decoder_variance_is_the_optimum(tiny_calibration, tiny_model):
    """The calibration's decoder variance minimises the decoder bits/dim on its images,
    checked against the bound computed by hand (not through the library's likelihood)."""
    cal = load_calibration(tiny_calibration, tiny_model.fingerprint)
    with np.load(tiny_calibration.parent / "train.npz") as f:
        images = f["images"]
    assert cal.meta["num_images"] == len(images)
    grid = cal.decoder_variance_grid
    by_hand = _decoder_bpd_by_hand(images, tiny_model, cal.meta["seed"], grid)
    finite = np.isfinite(by_hand)  # scipy's CDF differences underflow far in the tails
    assert finite.sum() > len(grid) // 2
    np.testing.assert_allclose(cal.decoder_bpd[finite], by_hand[finite], rtol=1e-6)
    chosen = cal.decoder_variance()
    j = int(np.flatnonzero(grid == chosen)[0])
    assert by_hand[j] <= by_hand[finite].min() + 1e-9
    # and the grid's best is within one grid step of the true (continuous) optimum
    fine = np.exp(np.linspace(np.log(grid[max(j - 3, 0)]), np.log(grid[min(j + 3, len(grid) - 1)]), 121))
    best = fine[int(np.argmin(_decoder_bpd_by_hand(images, tiny_model, cal.meta["seed"], fine)))]
    step = np.log(grid[1] / grid[0])
    assert abs(np.log(chosen / best)) <= step, (chosen, best)
    assert 0 < j < len(grid) - 1, "the optimum should lie inside the grid, not at its edge"


def test_analytic_dp_chain_from_a_calibration(tiny_calibration, tiny_model):
    cal = load_calibration(tiny_calibration)
    full = tiny_model.diffusion
    ts = chains.chain_timesteps(full, 6, "dp", "analytic", cal.m())
    chain = chains.build_chain(full, ts, "analytic", cal.m(), cal.decoder_variance())
    assert chain.variance_type == "explicit" and chain.num_steps == 6
    assert float(chain.reverse_variance[0]) == cal.decoder_variance()
    spec = chain.spec()
    assert spec["timesteps"] == ts and len(spec["reverse_variance"]) == 6


def test_foreign_and_damaged_calibrations_are_refused(tiny_calibration, tmp_path, tiny_model):
    with pytest.raises(DDPMCodecError, match="not 0123"):
        load_calibration(tiny_calibration, "0123")
    doc = json.loads(tiny_calibration.read_text())
    doc["xstart_mse"] = doc["xstart_mse"][:-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DDPMCodecError, match="xstart_mse"):
        load_calibration(bad)
    bad.write_text("{not json")
    with pytest.raises(DDPMCodecError, match="unreadable"):
        load_calibration(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DDPMCodecError, match="not a ddpmcodec calibration"):
        load_calibration(bad)


def test_missing_calibration_says_how_to_make_one(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("DDPMCODEC_CACHE", str(tmp_path))
    with pytest.raises(DDPMCodecError, match="ddpmcodec calibrate"):
        find_calibration(tiny_model)


def test_nll_on_an_analytic_dp_chain(tiny_calibration, tiny_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "test.npz", images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "nll"
    argv = ["nll", "--ckpt", str(tiny_ckpt), "--data", str(tmp_path / "test.npz"), "--steps", "4",
            "--trajectory", "dp", "--variance", "analytic", "--calibration", str(tiny_calibration),
            "--device", "cpu", "-o", str(out), "-q", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    res = json.loads((out / "results.json").read_text())
    chain = res["config"]["chain"]
    assert chain["variance_type"] == "explicit" and len(chain["reverse_variance"]) == 4
    assert res["config"]["chain_choice"]["trajectory"] == "dp"
    assert res["config"]["chain_choice"]["calibration"]["fingerprint"] == summary["fingerprint"]
    cal = load_calibration(tiny_calibration)
    m = cal.m()
    import ddpmcodec.io.models as models
    full = models.load_model(tiny_ckpt).diffusion
    assert chain["timesteps"] == chains.chain_timesteps(full, 4, "dp", "analytic", m)
    # a plain even chain records no choice (results folders of earlier versions still match)
    assert main(argv[:5] + ["--steps", "4", "--device", "cpu", "-o", str(tmp_path / "even"),
                            "-q", "--json"]) == 0
    assert "chain_choice" not in json.loads((tmp_path / "even" / "results.json").read_text())["config"]


def test_analytic_without_calibration_is_one_line(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPMCODEC_CACHE", str(tmp_path))
    np.savez(tmp_path / "t.npz", images=np.zeros((1, 32, 32, 3), np.uint8))
    code = main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(tmp_path / "t.npz"), "--steps",
                 "4", "--variance", "analytic", "--device", "cpu", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "ddpmcodec calibrate" in err and len(err.strip().splitlines()) == 1
    code = main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(tmp_path / "t.npz"),
                 "--trajectory", "sideways", "--device", "cpu", "-o", str(tmp_path / "o")])
    assert code == 1 and "--trajectory must be one of" in capsys.readouterr().err


def test_rd_curve_on_a_chosen_chain(tiny_calibration, tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the nll run goes to the default runs/nll/... folder
    np.savez(tmp_path / "t.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    out = tmp_path / "rd"
    assert main(["rd-curve", "--ckpt", str(tiny_ckpt), "--data", str(tmp_path / "t.npz"),
                 "--steps", "5", "--trajectory", "dp", "--variance", "analytic", "--calibration",
                 str(tiny_calibration), "--device", "cpu", "-o", str(out), "-q", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    cfg = json.loads((Path(results) / "results.json").read_text())["config"]
    assert cfg["chain_choice"]["trajectory"] == "dp" and cfg["chain"]["variance_type"] == "explicit"
    assert (out / "table4.csv").is_file()
