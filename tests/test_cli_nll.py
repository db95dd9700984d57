"""`ddpmcodec nll` and `ddpmcodec rd-curve` end to end through main(argv), and the strict
JSON of every command's --json (bench, calibrate and train on tiny sizes too)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ddpmcodec.pipelines import nll as nll_mod
from ddpmcodec.cli import main
from ddpmcodec.io.results import load_arrays, read_results


def _refuse(name):
    raise ValueError(f"{name} is not JSON")


def run_json(capsys, argv):
    """The command's --json output, parsed strictly: json.loads accepts NaN and Infinity,
    which are not JSON, unless parse_constant refuses them."""
    code = main(argv + ["--json", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out, parse_constant=_refuse)


def test_nll_json_and_results_folder(tmp_path, capsys, tiny_ckpt, test_npz):
    out = tmp_path / "res"
    s = run_json(capsys, ["nll", "--ckpt", str(tiny_ckpt), "--data", str(test_npz), "-n", "3",
                          "--steps", "8", "--device", "cpu", "-o", str(out), "-b", "2"])
    assert s["num_images"] == 3 and s["num_steps"] == 8
    assert s["total_bpd"] == pytest.approx(s["rate_bpd"] + s["decoder_bpd"])
    arrays = load_arrays(out)
    assert arrays["vb"].shape == (3, 8) and arrays["timesteps"][-1] == 999
    np.testing.assert_allclose(arrays["total"], arrays["prior"] + arrays["vb"].sum(1))
    per_image = pd.read_csv(out / "per_image.csv")
    per_step = pd.read_csv(out / "per_step.csv")
    assert len(per_image) == 3 and len(per_step) == 8
    assert per_image["total_bpd"].mean() == pytest.approx(s["total_bpd"])
    res = read_results(out)
    assert res["config"]["model"]["fingerprint"] == s["fingerprint"]
    assert res["config"]["chain"]["num_steps"] == 8
    # rd-curve from the folder
    rd = run_json(capsys, ["rd-curve", "--results", str(out)])
    t4 = pd.read_csv(out / "table4.csv")
    assert len(t4) == 8 and (out / "figure5.png").stat().st_size > 10_000
    curve = pd.read_csv(out / "rd_curve.csv")
    assert np.all(np.diff(curve["rate_bpd"].to_numpy()) <= 1e-12)  # rate grows with reverse steps
    assert rd["final_rate_bpd"] == pytest.approx(s["rate_bpd"])


def test_interrupted_run_resumes_without_recomputing(tmp_path, tiny_model, test_npz, monkeypatch):
    from ddpmcodec.io.data import load_images
    images = load_images(test_npz, num_images=5)
    ref = nll_mod.run_nll(tiny_model, images, tmp_path / "ref", steps=5, batch_size=2, progress=False)

    calls = []
    crash_on_call = [2]
    real = nll_mod.bound_plain_loop

    def flaky(*args, **kwargs):
        calls.append(len(args[3]))
        if len(calls) == crash_on_call[0]:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)
    monkeypatch.setattr(nll_mod, "bound_plain_loop", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        nll_mod.run_nll(tiny_model, images, tmp_path / "run", steps=5, batch_size=2, progress=False)
    assert read_results(tmp_path / "run")["status"] == "running"
    calls.clear()
    crash_on_call[0] = None
    res = nll_mod.run_nll(tiny_model, images, tmp_path / "run", steps=5, batch_size=2, progress=False)
    assert sum(calls) == 3  # the first batch of 2 images was not recomputed
    assert res["summary"]["total_bpd"] == pytest.approx(ref["summary"]["total_bpd"], abs=1e-6)
    # a different configuration in the same folder is refused, --overwrite allowed
    from ddpmcodec.errors import DDPMCodecError
    with pytest.raises(DDPMCodecError, match="different"):
        nll_mod.run_nll(tiny_model, images, tmp_path / "run", steps=6, progress=False)


def test_paper_shaped_random_network_runs(tmp_path, capsys, test_npz):
    from diffusers import UNet2DModel

    from ddpmcodec.io.models import unet_config
    torch.manual_seed(0)
    UNet2DModel(**unet_config("paper")).save_pretrained(tmp_path / "paper")  # no scheduler config
    s = run_json(capsys, ["nll", "--ckpt", str(tmp_path / "paper"), "--data", str(test_npz),
                          "-n", "1", "--steps", "10", "--device", "cpu", "-o", str(tmp_path / "r")])
    assert s["num_steps"] == 10 and np.isfinite(s["total_bpd"]) and s["total_bpd"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["--ckpt", "/nonexistent/ckpt"], "checkpoint not found"),
    (["--ckpt", "{tmp}"], "not a checkpoint"),
    (["--data", "{tmp}/small.png"], "expects 32x32"),
    (["--data", "{tmp}/gray.png"], "expects 3"),
    (["--data", "{tmp}/junk.png"], "cannot read image"),
    (["--data", "{tmp}/ok.png", "--steps", "5000"], "--steps"),
    (["--ckpt", "someorg/somemodel"], "huggingface-cli download"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, monkeypatch, argv, msg):
    from PIL import Image
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--data" not in argv:
        argv += ["--data", str(tmp_path / "small.png")]
    code = main(["nll", "--device", "cpu", "-q", "-o", str(tmp_path / "o")] + argv)
    err = capsys.readouterr().err
    assert code == 1
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_usage_error_exit_code(capsys):
    assert main(["nll", "--no-such-option"]) == 2
    assert main(["--help"]) == 0
    assert "nll" in capsys.readouterr().out


def test_rd_curve_refuses_an_estimate_folder(tmp_path, capsys, tiny_ckpt, test_npz):
    out = tmp_path / "est"
    run_json(capsys, ["nll", "--ckpt", str(tiny_ckpt), "--data", str(test_npz), "-n", "2",
                      "--steps", "20", "--device", "cpu", "-o", str(out),
                      "--estimator", "importance", "--nfe", "4"])
    assert main(["rd-curve", "--results", str(out)]) == 1
    assert "estimator full" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["", "/below"])
def test_nll_out_naming_an_existing_file_is_one_line(tmp_path, capsys, tiny_ckpt, test_npz, sub):
    """Old code: a FileExistsError / NotADirectoryError traceback from mkdir."""
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    code = main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(test_npz), "-n", "1", "--steps", "2",
                 "--device", "cpu", "-q", "-o", str(f) + sub])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == "not a folder"


def test_json_of_one_image_is_strict(tmp_path, capsys, tiny_ckpt, test_npz):
    """The smallest runs, where spreads over images are degenerate, still print JSON."""
    s = run_json(capsys, ["nll", "--ckpt", str(tiny_ckpt), "--data", str(test_npz), "-n", "1",
                          "--steps", "2", "--device", "cpu", "-o", str(tmp_path / "one")])
    assert s["num_images"] == 1 and s["total_bpd"] > 0 and s["total_se"] == 0
    rd = run_json(capsys, ["rd-curve", "--results", str(tmp_path / "one")])
    assert rd["final_rate_bpd"] == pytest.approx(s["rate_bpd"])


@pytest.mark.parametrize("argv", [
    ["bench", "--random-init", "tiny", "-n", "1", "--steps", "2", "--nfe", "",
     "--reference-images", "0", "--precisions", "fp32", "-o", "{tmp}/bench"],
    ["calibrate", "--ckpt", "{ckpt}", "--data", "{npz}", "-n", "1", "-P", "2",
     "-o", "{tmp}/cal.json", "--work", "{tmp}/work"],
    ["train", "--data", "{npz}", "-n", "16", "--config", "tiny", "--steps", "1", "-b", "4",
     "--eval-images", "0", "--out", "{tmp}/train"],
], ids=lambda a: a[0])
def test_other_commands_json_is_strict(tmp_path, capsys, tiny_ckpt, test_npz, argv):
    argv = [a.format(tmp=tmp_path, ckpt=tiny_ckpt, npz=test_npz) for a in argv]
    assert isinstance(run_json(capsys, argv + ["--device", "cpu"]), dict)
