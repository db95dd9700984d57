"""The 8 CIFAR-10 test images shipped in the package: the default data of the commands, so
that they run with neither ../shared nor internet."""
from __future__ import annotations

import json

import numpy as np

from ddpmcodec.cli import main
from ddpmcodec.io.data import SAMPLE_IMAGES, load_images


def test_sample_images_are_eight_cifar10_test_images(test_npz):
    imgs = load_images(SAMPLE_IMAGES).images
    assert imgs.shape == (8, 32, 32, 3) and imgs.dtype == np.uint8
    with np.load(test_npz) as f:
        assert np.array_equal(imgs, f["images"][:8])


def test_commands_default_to_the_sample(tiny_ckpt, tmp_path, capsys):
    assert main(["nll", "--ckpt", str(tiny_ckpt), "-n", "1", "--steps", "2", "--device", "cpu",
                 "-o", str(tmp_path / "nll"), "-q", "--json"]) == 0
    capsys.readouterr()
    spec = json.loads((tmp_path / "nll" / "results.json").read_text())["config"]["data"]
    assert spec["path"].endswith(SAMPLE_IMAGES.name) and spec["num_images"] == 1
    assert main(["encode", "--ckpt", str(tiny_ckpt), "-n", "1", "--steps", "2", "--trajectory", "even",
                 "-o", str(tmp_path / "a.ddpm"), "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 1
    assert "shipped in the package" in _help("nll", capsys)


def _help(command: str, capsys) -> str:
    main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_out_naming_a_file_is_one_line_for_every_folder_command(tiny_ckpt, tmp_path, capsys):
    """report, bench and rd-curve write folders: -o naming a file is a user's mistake."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv in (["report", "--quick"], ["bench", "-n", "1", "--steps", "2", "--nfe", "",
                                         "--reference-images", "0"],
                 ["rd-curve", "-n", "1", "--steps", "2"]):
        code = main(argv + ["--ckpt", str(tiny_ckpt), "-o", str(afile), "--device", "cpu", "-q"])
        err = capsys.readouterr().err
        assert code == 1 and "is a file" in err and len(err.strip().splitlines()) == 1, argv
