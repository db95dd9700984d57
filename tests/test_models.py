import errno
import json
import os
from pathlib import Path

import pytest
import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.models import build_unet, fingerprint, load_model, save_model


def test_paper_cifar10_network_has_35746307_parameters():
    unet = build_unet("paper")
    assert sum(p.numel() for p in unet.parameters()) == 35_746_307


def test_embedded_default_model(embedded_model):
    m = embedded_model
    assert m.image_shape == (3, 32, 32)
    assert m.diffusion.variance_type == "fixedlarge" and m.diffusion.num_steps == 1000
    assert next(m.unet.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in m.unet.parameters()) == 8_952_067
    assert len(m.fingerprint) == 16


def test_fingerprint_changes_with_weights_and_schedule(tiny_model):
    fp = tiny_model.fingerprint
    other = Diffusion.from_schedule(variance_type="fixedsmall")
    assert fingerprint(tiny_model.unet, other) != fp
    with torch.no_grad():
        p = next(tiny_model.unet.parameters())
        p[0].flatten()[0] += 1e-3
        changed = fingerprint(tiny_model.unet, tiny_model.diffusion)
        p[0].flatten()[0] -= 1e-3
    assert changed != fp
    assert fingerprint(tiny_model.unet, tiny_model.diffusion) == fp


def test_save_load_round_trip_keeps_fingerprint(tmp_path, tiny_model):
    save_model(tiny_model.unet, tiny_model.diffusion, tmp_path / "copy")
    assert load_model(tmp_path / "copy").fingerprint == tiny_model.fingerprint


def test_learned_variance_checkpoint(tmp_path):
    from conftest import make_tiny_ckpt
    m = load_model(make_tiny_ckpt(tmp_path / "learned", variance_type="learned"))
    assert m.diffusion.variance_type == "learned" and m.unet.config.out_channels == 6


def test_load_errors(tmp_path, tiny_ckpt):
    with pytest.raises(DDPMCodecError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(DDPMCodecError, match="no config.json"):
        load_model(tmp_path)
    bad = tmp_path / "bin-only"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    (bad / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DDPMCodecError, match="pickled"):
        load_model(bad)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DDPMCodecError, match="could not load"):
        load_model(corrupt)
    sched = tmp_path / "vpred"
    sched.mkdir()
    for f in ("config.json", "diffusion_pytorch_model.safetensors"):
        (sched / f).write_bytes((tiny_ckpt / f).read_bytes())
    (sched / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    with pytest.raises(DDPMCodecError, match="eps-prediction"):
        load_model(sched)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DDPMCodecError, match="huggingface-cli download"):
        load_model("google/ddpm-cifar10-32")


def test_a_failed_restore_keeps_the_previous_checkpoint_and_says_where(tmp_path, tiny_model, monkeypatch):
    """Replacing a checkpoint moves the old one aside, renames the new one in and, if that
    fails, moves the old one back. Old code deleted the old copy when moving it back failed
    too: both checkpoints were gone."""
    import ddpmcodec.io.models as models_mod
    path = tmp_path / "ckpt"
    save_model(tiny_model.unet, tiny_model.diffusion, path)
    other = Diffusion.from_schedule(variance_type="fixedsmall")
    real_rename = os.rename

    def rename(src, dst):
        src, dst = Path(src), Path(dst)
        if src.name.startswith(".tmp-ckpt.") and dst == path and not path.exists():
            raise OSError(errno.EIO, "Input/output error")  # the new one cannot go in
        if src.parent.name.startswith(".old-ckpt.") and dst == path:
            raise OSError(errno.EIO, "Input/output error")  # nor the old one back
        return real_rename(src, dst)
    monkeypatch.setattr(models_mod.os, "rename", rename)
    with pytest.raises(DDPMCodecError) as info:
        save_model(tiny_model.unet, other, path)
    monkeypatch.undo()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    kept = [p / "ckpt" for p in tmp_path.glob(".old-ckpt.*") if (p / "ckpt").is_dir()]
    assert len(kept) == 1 and str(kept[0]) in msg
    assert load_model(kept[0]).fingerprint == tiny_model.fingerprint  # the last good copy
    assert not path.exists() and not list(tmp_path.glob(".tmp-ckpt.*"))


def test_a_failed_replacement_puts_the_previous_checkpoint_back(tmp_path, tiny_model, monkeypatch):
    import ddpmcodec.io.models as models_mod
    path = tmp_path / "ckpt"
    save_model(tiny_model.unet, tiny_model.diffusion, path)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-ckpt.") and Path(dst) == path and not path.exists():
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)
    monkeypatch.setattr(models_mod.os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        save_model(tiny_model.unet, Diffusion.from_schedule(variance_type="fixedsmall"), path)
    monkeypatch.undo()
    assert load_model(path).fingerprint == tiny_model.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
