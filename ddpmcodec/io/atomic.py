"""The one way the project writes a file: into a temporary file beside the target, flushed
to disk, then ``os.replace`` onto it, so a reader (or a rerun after a crash, even a power
cut) sees the old file or the new one, never half of one. Files are made world-readable
(results are for sharing). Folders written in full under a temporary name and then
renamed (checkpoints) are flushed with :func:`fsync_tree` first."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any
    exception it is removed and ``path`` is left as it was. The parent folder is made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # mkstemp makes files private
        _fsync(tmp)  # the data on disk before the name: a power cut cannot leave it empty
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under ``folder`` to disk (before renaming the folder into place)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)


def to_csv_atomic(frame, path: str | os.PathLike, **kwargs) -> None:
    """A pandas DataFrame as CSV (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def savefig_atomic(fig, path: str | os.PathLike, **kwargs) -> None:
    """A matplotlib figure; the format follows ``path``'s suffix."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


def symlink_atomic(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` (relative), replacing what is there in one
    ``os.replace`` (a folder that is not a link is first moved aside, then deleted)."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = link.with_name(f".tmp-{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        if link.is_dir() and not link.is_symlink():  # a run written before ckpt-<step>/
            aside = link.with_name(f".old-{link.name}")
            shutil.rmtree(aside, ignore_errors=True)
            link.rename(aside)
            os.replace(tmp, link)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
