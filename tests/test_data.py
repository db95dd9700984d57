import numpy as np
import pytest
from PIL import Image

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.data import (
    check_fits,
    from_model_space,
    load_images,
    save_images,
    to_model_space,
)


def test_npz_order_and_num_images(test_npz):
    s = load_images(test_npz, num_images=5)
    with np.load(test_npz) as f:
        np.testing.assert_array_equal(s.images, f["images"][:5])
    assert s.spec["num_images"] == 5 and s.spec["kind"] == "npz"


def test_model_space_round_trip():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    x = to_model_space(imgs)
    assert x.shape == (3, 3, 4, 5) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(from_model_space(x), imgs)


def test_png_folder_and_files(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    save_images(imgs, tmp_path / "pngs")
    s = load_images(tmp_path / "pngs")
    np.testing.assert_array_equal(s.images, imgs)
    one = load_images(tmp_path / "pngs" / "000001.png")
    np.testing.assert_array_equal(one.images[0], imgs[1])
    two = load_images([tmp_path / "pngs" / "000002.png", tmp_path / "pngs" / "000000.png"])
    np.testing.assert_array_equal(two.images, imgs[[2, 0]])


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DDPMCodecError, match="cannot read image"):
        load_images(tmp_path / "x.png")
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DDPMCodecError, match="cannot read"):
        load_images(tmp_path / "x.npz")
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(DDPMCodecError, match="uint8"):
        load_images(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", pixels=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DDPMCodecError, match="no 'images'"):
        load_images(tmp_path / "k.npz")
    with pytest.raises(DDPMCodecError, match="no such file"):
        load_images(tmp_path / "missing.npz")
    with pytest.raises(DDPMCodecError, match="exactly one"):
        load_images()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DDPMCodecError, match="16x16"):
        check_fits(load_images(tmp_path / "small.png").images, (3, 32, 32))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(DDPMCodecError, match="1 channel"):
        check_fits(load_images(tmp_path / "gray.png").images, (3, 32, 32))


def _flag_encrypted(path):
    """Set the 'encrypted' bit of every central-directory entry (zipfile then raises a
    RuntimeError, not a BadZipFile)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 8] |= 0x01
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def test_an_unreadable_npz_names_its_cause(tmp_path, monkeypatch):
    """A user's .npz that does not parse, or that the OS will not let us read, is one line
    that says which, never a traceback."""
    import ddpmcodec.io.data as data_mod
    bad = tmp_path / "enc.npz"
    np.savez(bad, images=np.zeros((2, 32, 32, 3), np.uint8))
    _flag_encrypted(bad)
    with pytest.raises(DDPMCodecError, match=r"cannot read .*enc\.npz as \.npz.*encrypted"):
        load_images(bad)
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((2, 32, 32, 3), np.uint8))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(good))
    monkeypatch.setattr(data_mod.np, "load", refused)
    with pytest.raises(DDPMCodecError, match=r"cannot read .*good\.npz.*Permission denied") as info:
        load_images(good)
    assert "as .npz" not in str(info.value)  # nothing is wrong with its format

    def bug(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(data_mod.np, "load", bug)
    with pytest.raises(KeyError):
        load_images(good)


def test_cifar10_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(u, "download_url", offline)
    with pytest.raises(DDPMCodecError, match="cifar-10-batches-py"):
        load_images(dataset="cifar10", root=tmp_path)
