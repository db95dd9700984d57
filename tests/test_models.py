import json

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
