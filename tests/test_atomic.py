"""Atomic writes: a write that fails leaves the old file (or checkpoint folder) as it was;
the training logs are rewritten atomically and tolerate a last line cut short."""
import csv

import pytest
import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.io.atomic import atomic_path, write_text_atomic
from ddpmcodec.io.models import WEIGHTS_NAME, build_unet, load_model, save_model
from ddpmcodec.pipelines import train as train_mod


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "a.json"
    write_text_atomic(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("crash")
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_a_crash_while_replacing_a_checkpoint_leaves_the_old_one(tmp_path, monkeypatch, tiny_ckpt):
    """Old code: save_pretrained wrote into the existing folder, so a crash while writing
    the weights left the new config.json beside the old weights."""
    ck = tmp_path / "ck"
    old = load_model(tiny_ckpt)
    save_model(old.unet, old.diffusion, ck)
    torch.manual_seed(1)
    learned = build_unet("tiny", out_channels=6)  # another config: a mix would not load
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_model(learned, Diffusion.from_schedule(variance_type="learned"), ck)
    monkeypatch.undo()
    assert load_model(ck).fingerprint == old.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folders left
    # and a successful save replaces it whole
    save_model(learned, Diffusion.from_schedule(variance_type="learned"), ck)
    assert load_model(ck).unet.config.out_channels == 6
    assert (ck / WEIGHTS_NAME).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def _log(path, steps):
    for s in steps:
        train_mod._append_csv(path, {"step": s, "loss": 1.0 / (s + 1), "note": ""})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_log_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    """Old code opened log.csv with "w" and then wrote the rows: a crash in between lost
    every row of the run."""
    p = tmp_path / "log.csv"
    _log(p, [2, 4, 6, 8])
    before = p.read_bytes()

    def crash(self, rows):
        raise RuntimeError("crash while writing")
    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(RuntimeError):
        train_mod._truncate_csv(p, 4)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["log.csv"]
    train_mod._truncate_csv(p, 4)
    assert [r["step"] for r in _rows(p)] == ["2", "4"]


@pytest.mark.parametrize("cut", [1, 3, 8])
def test_a_log_line_cut_by_a_crash_is_dropped_on_resume(tmp_path, cut):
    """A crash during an append can leave part of the last line ("1" of "12,..."): old code
    kept it as a row of step 1 with missing fields."""
    p = tmp_path / "log.csv"
    _log(p, [2, 4])
    line = "12,0.0769,\r\n"
    with open(p, "a", newline="") as f:
        f.write(line[:cut])
    train_mod._truncate_csv(p, 20)  # the run resumes from step 20: the cut row is not later
    rows = _rows(p)
    assert [r["step"] for r in rows] == ["2", "4"] and all(None not in r.values() for r in rows)
    _log(p, [6])  # appending after the rewrite gives a well-formed file
    assert [r["step"] for r in _rows(p)] == ["2", "4", "6"]
