"""The error policy: a damaged file or a user's mistake is a DDPMCodecError raised where it
is detected, converted by name from what numpy / zipfile / huggingface_hub / safetensors /
diffusers / torchvision raise on bad input; anything else (a bug) keeps its traceback."""
import json
import shutil

import numpy as np
import pytest

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io import data as data_mod
from ddpmcodec.io import models as models_mod
from ddpmcodec.io.data import load_images
from ddpmcodec.io.models import WEIGHTS_NAME, load_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# -- load_model ------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [AttributeError("a bug"), TypeError("a bug"),
                                 RuntimeError("CUDA error: an illegal memory access")])
def test_a_bug_inside_load_model_keeps_its_traceback(tiny_ckpt, monkeypatch, exc):
    from diffusers import UNet2DModel

    def broken(*args, **kwargs):
        raise exc
    monkeypatch.setattr(UNet2DModel, "from_pretrained", broken)
    with pytest.raises(type(exc)) as info:
        load_model(tiny_ckpt)
    assert not isinstance(info.value, DDPMCodecError)


@pytest.mark.parametrize("cut", [0, 4, 100, -200])
def test_truncated_weights_are_a_user_error_that_says_why(tmp_path, tiny_ckpt, cut):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    data = (ck / WEIGHTS_NAME).read_bytes()
    (ck / WEIGHTS_NAME).write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(DDPMCodecError, match="could not load the network.*(header|metadata)"):
        load_model(ck)


@pytest.mark.parametrize("change,msg", [
    ({"block_out_channels": [64, 64]}, "size mismatch"),
    ({"norm_num_groups": 7}, "divisible"),
    ({"down_block_types": ["NoSuchBlock", "DownBlock2D"]}, "does not exist"),
    ({"layers_per_block": 2}, "not in the weights"),  # diffusers would fill them at random
    ({"down_block_types": ["DownBlock2D", "DownBlock2D"],
      "up_block_types": ["UpBlock2D", "UpBlock2D"]}, "no place"),  # and drop these silently
])
def test_a_config_that_does_not_fit_the_weights_is_a_user_error(tmp_path, tiny_ckpt, change, msg):
    ck = _copy(tiny_ckpt, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(change)
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DDPMCodecError, match=msg):
        load_model(ck)


# -- hub downloads ----------------------------------------------------------------------------
def _http_error(cls, status):
    import httpx2
    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name")
    return cls(f"{status} for the repo", response=httpx2.Response(status, request=request))


def _hub_failures():
    from huggingface_hub import errors
    return [errors.LocalEntryNotFoundError("offline, not cached"),
            lambda: _http_error(errors.RepositoryNotFoundError, 404),
            lambda: _http_error(errors.GatedRepoError, 403),
            lambda: _http_error(errors.HfHubHTTPError, 503),
            ConnectionError("connection reset"), TimeoutError("timed out")]


@pytest.mark.parametrize("index", range(6))
def test_hub_failures_are_the_download_it_advice(monkeypatch, index):
    import huggingface_hub
    failure = _hub_failures()[index]
    exc = failure() if callable(failure) else failure

    def fetch(*args, **kwargs):
        raise exc
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fetch)
    with pytest.raises(DDPMCodecError, match="huggingface-cli download org/name"):
        models_mod._download("org/name")


@pytest.mark.parametrize("exc", [TypeError("unexpected keyword 'allow_patterns'"), AttributeError("a bug"),
                                 KeyError("a bug")])
def test_a_bug_inside_download_keeps_its_traceback(monkeypatch, exc):
    import huggingface_hub

    def fetch(*args, **kwargs):
        raise exc
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fetch)
    with pytest.raises(type(exc)) as info:
        load_model("org/name")
    assert not isinstance(info.value, DDPMCodecError)


def test_offline_hub_really_raises_what_we_convert(monkeypatch):
    """No network here (or HF_HUB_OFFLINE): the installed huggingface_hub's own error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DDPMCodecError, match="LocalEntryNotFoundError"):
        load_model("nobody-xyz/no-such-ddpm")


# -- .npz and CIFAR-10 --------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [TypeError("a bug"), AttributeError("a bug"), RuntimeError("a bug")])
def test_a_bug_inside_load_npz_keeps_its_traceback(tmp_path, monkeypatch, exc):
    np.savez(tmp_path / "x.npz", images=np.zeros((1, 4, 4, 3), np.uint8))

    def broken(*args, **kwargs):
        raise exc
    monkeypatch.setattr(data_mod.np, "load", broken)
    with pytest.raises(type(exc)) as info:
        load_images(tmp_path / "x.npz")
    assert not isinstance(info.value, DDPMCodecError)


@pytest.mark.parametrize("damage", ["empty", "half", "tail", "pickle", "compressed"])
def test_damaged_npz_is_a_user_error(tmp_path, damage):
    p = tmp_path / "x.npz"
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    (np.savez_compressed if damage == "compressed" else np.savez)(p, images=images)
    data = p.read_bytes()
    if damage == "empty":
        p.write_bytes(b"")
    elif damage == "half":
        p.write_bytes(data[:len(data) // 2])
    elif damage == "tail":
        p.write_bytes(data[:-10])
    elif damage == "pickle":
        np.savez(p, images=np.array([None, 1], dtype=object))
    else:  # corrupt the deflated member
        b = bytearray(data)
        for i in range(60, 90):
            b[i] ^= 0x55
        p.write_bytes(bytes(b))
    with pytest.raises(DDPMCodecError, match="cannot read"):
        load_images(p)


def test_a_bug_in_the_cifar10_download_keeps_its_traceback(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    def broken(*args, **kwargs):
        raise AttributeError("a bug")
    monkeypatch.setattr(u, "download_url", broken)
    with pytest.raises(AttributeError):
        load_images(dataset="cifar10", root=tmp_path)


def test_cifar10_without_network_is_a_user_error(tmp_path):
    """Nothing mocked: urllib's URLError (an OSError) offline; skipped with a network."""
    try:
        import socket
        socket.create_connection(("www.cs.toronto.edu", 443), timeout=2).close()
        pytest.skip("this machine can reach the CIFAR-10 server")
    except OSError:
        pass
    with pytest.raises(DDPMCodecError, match="URLError"):
        load_images(dataset="cifar10", root=tmp_path)
