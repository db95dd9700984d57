"""Results folders: a damaged shard is kept and reported (never deleted), an OS error is
reported as what it is (not as damage), a bug (a wrong array name included) propagates, and
an --out that is a file is a one-line error."""
import numpy as np
import pytest

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io import results as results_mod
from ddpmcodec.io.results import ResultsFolder, load_arrays, read_results


def _folder(tmp_path, n_shards=2):
    folder = ResultsFolder(tmp_path / "res", "nll", {"seed": 0})
    for s in range(n_shards):
        ids = np.arange(2 * s, 2 * s + 2)
        folder.write_shard(ids, total=ids.astype(np.float64))
    return folder


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])


def _flag_encrypted(path):
    """Set the 'encrypted' bit of every central-directory entry: a one-bit corruption that
    zipfile reports as a RuntimeError, not as a BadZipFile."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 8] |= 0x01
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "encrypted_flag", "no_image_id"])
def test_damaged_shard_is_kept_and_reported(tmp_path, damage):
    folder = _folder(tmp_path)
    shards = sorted(folder.shards.glob("shard-*.npz"))
    bad = shards[1]
    if damage == "truncated":
        _cut(bad, -40)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "garbage":
        bad.write_bytes(b"this is not a zip file at all" * 4)
    elif damage == "encrypted_flag":
        _flag_encrypted(bad)
    else:
        np.savez(bad, total=np.zeros(2))  # readable, but not a shard of this schema
    before = bad.read_bytes()
    for read in (folder.done_ids, folder.merged):
        with pytest.raises(DDPMCodecError) as info:
            read()
        msg = str(info.value)
        assert bad.name in msg and "delete" in msg.lower() and "\n" not in msg
    assert bad.is_file() and bad.read_bytes() == before  # kept, untouched
    assert all(p.is_file() for p in shards)
    bad.unlink()  # what the message tells the user to do
    assert folder.done_ids() == {0, 1}


@pytest.mark.parametrize("exc", [RuntimeError("not a file problem"), TypeError("a bug"),
                                 KeyError("a bug: an array name that was never written")])
def test_an_error_that_proves_no_damage_propagates_and_deletes_nothing(tmp_path, monkeypatch, exc):
    folder = _folder(tmp_path)
    shards = sorted(folder.shards.glob("shard-*.npz"))

    def failing_load(*args, **kwargs):
        raise exc
    monkeypatch.setattr(results_mod.np, "load", failing_load)
    with pytest.raises(type(exc)):
        folder.done_ids()
    monkeypatch.undo()
    assert all(p.is_file() for p in shards)
    assert folder.done_ids() == {0, 1, 2, 3}


def test_asking_a_shard_for_an_array_it_never_had_is_a_bug_not_damage(tmp_path):
    """Old code caught the KeyError as damage and told the user to delete a good shard."""
    folder = _folder(tmp_path)
    shard = min(folder.shards.glob("shard-*.npz"))
    before = shard.read_bytes()
    with pytest.raises(KeyError, match="totl"):
        folder._read_shard(shard, ["image_id", "totl"])
    assert shard.read_bytes() == before
    assert set(folder._read_shard(shard, ["image_id", "total"])) == {"image_id", "total"}


@pytest.mark.parametrize("exc", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")])
def test_an_unreadable_shard_is_reported_as_what_it_is_not_as_damage(tmp_path, monkeypatch, exc):
    """A permission or I/O error says nothing about the bytes: the user hears that error,
    in one line naming the shard, and is not told to delete the file."""
    folder = _folder(tmp_path)
    shards = sorted(folder.shards.glob("shard-*.npz"))

    def failing_load(*args, **kwargs):
        raise exc
    monkeypatch.setattr(results_mod.np, "load", failing_load)
    for read in (folder.done_ids, folder.merged):
        with pytest.raises(DDPMCodecError) as info:
            read()
        msg = str(info.value)
        assert shards[0].name in msg and exc.strerror in msg and "\n" not in msg
        assert "damaged" not in msg and "delete" not in msg.lower()
    monkeypatch.undo()
    assert all(p.is_file() for p in shards)
    folder.finish(folder.merged(), {}, {})
    monkeypatch.setattr(results_mod.np, "load", failing_load)
    with pytest.raises(DDPMCodecError) as info:
        load_arrays(folder.path)
    msg = str(info.value)
    assert "arrays.npz" in msg and exc.strerror in msg and "damaged" not in msg
    monkeypatch.undo()
    assert list(load_arrays(folder.path)["image_id"]) == [0, 1, 2, 3]


def test_damage_classification_follows_the_experiment():
    import zipfile
    import zlib
    for exc in (zipfile.BadZipFile("x"), zlib.error("x"), EOFError(), ValueError("x"),
                NotImplementedError("zip file version"), OSError(22, "Invalid argument"),
                RuntimeError("File 'image_id.npy' is encrypted, password required for extraction")):
        assert results_mod.is_npz_damage(exc), exc
    for exc in (PermissionError(13, "x"), OSError(5, "x"), FileNotFoundError(2, "x"),
                RuntimeError("x"), TypeError("x"), KeyError("image_id is not a file in the archive")):
        assert not results_mod.is_npz_damage(exc), exc


def test_out_naming_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    for out in (f, f / "sub"):
        with pytest.raises(DDPMCodecError, match="is a file"):
            ResultsFolder(out, "nll", {"seed": 0})
    assert f.read_text() == "mine"


def test_damaged_arrays_of_a_complete_folder_are_a_user_error(tmp_path):
    folder = _folder(tmp_path)
    folder.finish(folder.merged(), {"n": 4}, {})
    assert read_results(folder.path)["status"] == "complete"
    assert len(load_arrays(folder.path)["image_id"]) == 4
    _cut(folder.path / "arrays.npz", 30)
    with pytest.raises(DDPMCodecError, match="--overwrite"):
        load_arrays(folder.path)
    (folder.path / "arrays.npz").unlink()
    with pytest.raises(DDPMCodecError, match="no arrays.npz"):
        load_arrays(folder.path)
