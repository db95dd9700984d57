"""Results folders: the one schema between long computations, the CLI and analysis/.

A results folder holds

* ``results.json``: ``{"kind", "config", "status", "summary", "run"}``; ``config`` holds
  everything the numbers depend on (model fingerprint, data digest, chain, seed, ...);
* ``shards/`` while running: one .npz per finished batch, written atomically, so an
  interrupted run resumes without recomputing them (a shard that cannot be read is never
  deleted: it is reported, naming the file, so that the user decides);
* ``arrays.npz`` when complete: the merged per-image (and per-step) arrays, in image order;
* CSV tables that pandas reads directly.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import _jsonable, save_npz_atomic, write_json_atomic

RESULTS_JSON = "results.json"
ARRAYS = "arrays.npz"
SCHEMA_VERSION = 1

# What np.load (and reading its arrays) raises on a damaged .npz, established by reading
# every truncation and four single-byte corruptions of every byte of small np.savez and
# np.savez_compressed files (numpy 2.4, Python 3.11): zipfile.BadZipFile (no or broken zip
# directory, bad CRC, names that disagree), zlib.error (a damaged compressed member),
# EOFError (an empty file, a member cut short), ValueError (bytes that look like a pickle;
# also numpy's answer to a bad .npy header), NotImplementedError (zipfile: "zip file
# version", compression method) and, only in their narrow forms (see is_npz_damage),
# OSError EINVAL (a seek before the start of a cut file) and zipfile's RuntimeError for an
# "encrypted" flag bit. A corrupted member name also surfaces as a KeyError for the array
# asked for; that is not in the list: a KeyError is what a wrong array name in our code
# raises too, so readers check the names they need themselves and let KeyError propagate.
# Other OSErrors (permissions, I/O errors) say nothing about the bytes: they are reported
# as what they are, never as damage.
NPZ_DAMAGE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError)
# what to catch around a read to sort its errors with is_npz_damage / npz_read_error
NPZ_READ_ERRORS = NPZ_DAMAGE_ERRORS + (OSError, RuntimeError)


def is_npz_damage(exc: BaseException) -> bool:
    """True when ``exc`` (raised while reading an .npz) means the file is damaged."""
    if isinstance(exc, NPZ_DAMAGE_ERRORS):  # NotImplementedError is a RuntimeError: first
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.EINVAL
    # zipfile's "File ... is encrypted, password required for extraction" (or a bad one)
    return isinstance(exc, RuntimeError) and "password" in str(exc)


def npz_read_error(exc: BaseException, what: str, damaged: str) -> DDPMCodecError | None:
    """The one-line error for ``exc`` raised reading ``what``: ``damaged`` (the advice for
    a file that does not parse) for damage, the OS's own error for an OSError that is not
    damage, None for anything else (a bug: re-raise it)."""
    if is_npz_damage(exc):
        return DDPMCodecError(f"damaged {what} ({_describe(exc)}); {damaged}")
    if isinstance(exc, OSError):
        return DDPMCodecError(f"cannot read {what} ({_describe(exc)}); it was left as it is")
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_out_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path, or a one-line error when it (or a folder above it) is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == path else f" (in {path})"
            raise DDPMCodecError(f"{option} {path}: {p} is a file, not a folder{where}; "
                                 f"give a folder path")
    return path


def read_results(folder: str | os.PathLike) -> dict:
    """results.json of a folder, with a clear error when it is not a results folder."""
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        raise DDPMCodecError(f"not a results folder (no {RESULTS_JSON}): {folder}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DDPMCodecError(f"corrupt {path}: {exc}") from None


def load_arrays(folder: str | os.PathLike) -> dict:
    """The merged arrays of a complete results folder."""
    res = read_results(folder)
    if res.get("status") != "complete":
        raise DDPMCodecError(f"{folder} is not complete (status {res.get('status')!r}); rerun to resume it")
    path = Path(folder) / ARRAYS
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DDPMCodecError(f"{folder} says it is complete but has no {ARRAYS}; rerun with "
                             f"--overwrite to recompute it") from None
    except NPZ_READ_ERRORS as exc:
        err = npz_read_error(exc, str(path), "rerun with --overwrite to recompute it")
        if err is None:
            raise
        raise err from None


class ResultsFolder:
    """A results folder being computed batch by batch (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict, overwrite: bool = False):
        self.path = check_out_folder(path)
        self.kind = kind
        self.config = json.loads(json.dumps(config, default=_jsonable))
        self.shards = self.path / "shards"
        existing = self.path / RESULTS_JSON
        if existing.is_file() and not overwrite:
            old = read_results(self.path)
            if old.get("kind") != kind or old.get("config") != self.config:
                diff = sorted(k for k in set(self.config) | set(old.get("config", {}))
                              if self.config.get(k) != old.get("config", {}).get(k))
                raise DDPMCodecError(
                    f"{self.path} holds a different {old.get('kind')} run (differs in: "
                    f"{', '.join(diff) or 'kind'}); use another --out or --overwrite")
        elif overwrite and self.path.exists():
            shutil.rmtree(self.shards, ignore_errors=True)
            for name in (RESULTS_JSON, ARRAYS):
                (self.path / name).unlink(missing_ok=True)
        self.shards.mkdir(parents=True, exist_ok=True)
        if not existing.is_file() or read_results(self.path).get("status") != "complete":
            write_json_atomic(existing, {"schema": SCHEMA_VERSION, "kind": kind,
                                         "config": self.config, "status": "running"})

    @property
    def complete(self) -> bool:
        return read_results(self.path).get("status") == "complete"

    def _read_shard(self, shard: Path, names=None) -> dict:
        """The arrays of one shard (``names``: only these). A damaged shard is kept and
        reported: shards are written atomically, so a crash cannot leave half of one and a
        damaged file says something went wrong that a user should see, not hide.

        Every shard holds ``image_id`` (write_shard puts it there), so a file without it is
        not one of ours; any other name missing is a KeyError: our bug, not the file's."""
        try:
            with np.load(shard, allow_pickle=False) as f:
                if "image_id" not in f.files:
                    raise DDPMCodecError(
                        f"shard {shard} has no image_id (it holds "
                        f"{', '.join(sorted(f.files)) or 'nothing'}), so it is not a shard of this "
                        f"run; it was kept. Delete that file and rerun the same command to "
                        f"recompute its images")
                return {k: f[k] for k in (f.files if names is None else names)}
        except NPZ_READ_ERRORS as exc:
            err = npz_read_error(exc, f"shard {shard}", "it was kept. Delete that file and "
                                 "rerun the same command to recompute its images")
            if err is None:
                raise
            raise err from None

    def done_ids(self) -> set:
        """Image ids already in shards (a damaged shard is an error; nothing is deleted)."""
        done = set()
        for shard in sorted(self.shards.glob("shard-*.npz")):
            done.update(int(i) for i in self._read_shard(shard, ["image_id"])["image_id"])
        return done

    def write_shard(self, image_ids: np.ndarray, **arrays) -> None:
        first = int(image_ids[0])
        save_npz_atomic(self.shards / f"shard-{first:08d}-{len(image_ids):05d}.npz",
                        image_id=np.asarray(image_ids, dtype=np.int64), **arrays)

    def merged(self) -> dict:
        """All shards concatenated and sorted by image id."""
        parts: dict[str, list] = {}
        for shard in sorted(self.shards.glob("shard-*.npz")):
            arrays = self._read_shard(shard)
            if "image_id" not in arrays or (parts and set(arrays) != set(parts)):
                raise DDPMCodecError(
                    f"shard {shard} holds the arrays {', '.join(sorted(arrays)) or 'none'}, "
                    f"not {', '.join(sorted(parts or ['image_id', '...']))}; it was kept. Delete "
                    f"that file and rerun the same command to recompute its images")
            for k, v in arrays.items():
                parts.setdefault(k, []).append(v)
        if not parts:
            raise DDPMCodecError(f"{self.path}: nothing computed")
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(arrays["image_id"], kind="stable")
        return {k: v[order] for k, v in arrays.items()}

    def finish(self, arrays: dict, summary: dict, run: dict) -> dict:
        save_npz_atomic(self.path / ARRAYS, **arrays)
        res = {"schema": SCHEMA_VERSION, "kind": self.kind, "config": self.config,
               "status": "complete", "summary": summary, "run": run}
        write_json_atomic(self.path / RESULTS_JSON, res)
        shutil.rmtree(self.shards, ignore_errors=True)
        return res


def mean_se(x) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); 0 for one value)."""
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se
