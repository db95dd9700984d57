"""A data set into shard files (`ddpmcodec encode DATA -o FOLDER --shard-size N`):
every shard an ordinary file that decodes alone, image i found through the manifest, an
interrupted run resumed with its finished shards kept, another job in the same folder
refused, worker processes giving the same files as one process.

Oracles: the images themselves (every shard decodes to its slice), the shard files'
bytes and modification times across a resume, and the summary recomputed from the
shards' own files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ddpmcodec.cli import main
from ddpmcodec.pipelines import shards

FAST = ["--steps", "2", "--trajectory", "even", "--method", "bitsback", "--batch-size", "2"]


@pytest.fixture
def data(tmp_path, test_images):
    src = tmp_path / "set.npz"
    np.savez(src, images=test_images[:5])
    return src, test_images[:5]


def _encode(capsys, src, out, ckpt, *extra):
    code = main(["encode", str(src), "-o", str(out), "--shard-size", "2", "--ckpt", str(ckpt),
                 "-q", "--json", *FAST, *extra])
    text = capsys.readouterr()
    return code, (json.loads(text.out) if code == 0 else text.err)


def test_shards_decode_alone_and_by_image(capsys, tmp_path, tiny_ckpt, data):
    src, images = data
    out = tmp_path / "shards"
    code, summary = _encode(capsys, src, out, tiny_ckpt)
    assert code == 0 and summary["shards"] == 3 and summary["num_images"] == 5
    files = sorted(out.glob("shard-*.ddpm"))
    assert [f.name for f in files] == ["shard-00000.ddpm", "shard-00001.ddpm", "shard-00002.ddpm"]
    assert summary["file_bytes"] == sum(f.stat().st_size for f in files)
    assert summary["file_bpd"] == pytest.approx(8 * summary["file_bytes"] / images.size)
    assert summary["bound_bpd"] > 0 and "jpegxl_bpd" in summary and "png_bpd" in summary
    assert json.loads((out / "summary.json").read_text()) == summary
    for k, f in enumerate(files):  # ordinary files: each decodes alone
        assert main(["decode", str(f), "-o", str(tmp_path / f"{k}.npz"), "--ckpt",
                     str(tiny_ckpt), "-q"]) == 0
        assert np.array_equal(np.load(tmp_path / f"{k}.npz")["images"], images[2 * k:2 * k + 2])
    assert main(["decode", str(out), "--image", "3", "-o", str(tmp_path / "i3.npz"),
                 "--ckpt", str(tiny_ckpt), "-q"]) == 0
    assert np.array_equal(np.load(tmp_path / "i3.npz")["images"], images[3:4])
    capsys.readouterr()
    assert main(["decode", str(out), "--image", "5", "-o", str(tmp_path / "x.npz")]) == 1
    assert "--image must be in 0..4" in capsys.readouterr().err
    assert main(["decode", str(out), "-o", str(tmp_path / "x.npz")]) == 1
    assert "give --image" in capsys.readouterr().err


def test_an_interrupted_run_resumes_with_its_finished_shards(capsys, tmp_path, tiny_ckpt,
                                                             data, monkeypatch):
    src, images = data
    out = tmp_path / "shards"
    real, calls = shards.code_shard, []

    def interrupted(codec, job, folder, shard, imgs):
        if calls:
            raise KeyboardInterrupt  # the user's Ctrl-C after the first shard
        calls.append(shard["index"])
        return real(codec, job, folder, shard, imgs)
    monkeypatch.setattr(shards, "code_shard", interrupted)
    code, _ = _encode(capsys, src, out, tiny_ckpt)
    assert code == 130  # "interrupted; rerun the same command to resume"
    monkeypatch.undo()
    first = out / "shard-00000.ddpm"
    assert shards.shard_done(out, shards.plan(5, 2)[0]) and not (out / "shard-00001.ddpm").exists()
    stamp, before = first.stat().st_mtime_ns, first.read_bytes()
    (out / "shard-00001.json").write_text("{}")  # a damaged record: that shard is redone
    code, summary = _encode(capsys, src, out, tiny_ckpt)
    assert code == 0 and summary["shards"] == 3
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == before  # kept
    whole = tmp_path / "whole"
    assert _encode(capsys, src, whole, tiny_ckpt)[1]["file_bytes"] == summary["file_bytes"]
    for f in sorted(whole.glob("shard-*.ddpm")):
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_another_job_in_the_folder_is_refused(capsys, tmp_path, tiny_ckpt, data):
    src, _ = data
    out = tmp_path / "shards"
    assert _encode(capsys, src, out, tiny_ckpt)[0] == 0
    code, err = _encode(capsys, src, out, tiny_ckpt, "--seed", "3")
    assert code == 1 and "another job" in err and "options" in err and "--overwrite" in err
    code, summary = _encode(capsys, src, out, tiny_ckpt, "--seed", "3", "--overwrite")
    assert code == 0 and summary["shards"] == 3
    assert main(["encode", str(src), "-o", str(tmp_path / "f.ddpm"), "--overwrite"]) == 1
    assert "--overwrite applies to shard folders" in capsys.readouterr().err


def test_worker_processes_write_the_same_shards(capsys, tmp_path, tiny_ckpt, data):
    src, _ = data
    one, two = tmp_path / "one", tmp_path / "two"
    assert _encode(capsys, src, one, tiny_ckpt)[0] == 0
    code, summary = _encode(capsys, src, two, tiny_ckpt, "--workers", "2")
    assert code == 0 and summary["shards"] == 3
    for f in sorted(one.glob("shard-*.ddpm")):
        assert (two / f.name).read_bytes() == f.read_bytes()
