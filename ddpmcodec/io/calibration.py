"""Calibration files: the per-timestep statistics of one model that few-step chains need
(:mod:`ddpmcodec.core.chains`), measured on calibration images by ``ddpmcodec calibrate``.

A calibration file is a small JSON document (``format`` ddpmcodec-calibration, ``version``
1) keyed by the model fingerprint:

* ``indices`` [P]: the original timestep indices measured (increasing, 0 and T-1 included);
* ``xstart_mse``, ``xstart_mse_se`` [P]: E||x0 - clip(x0_hat(x_i))||^2 / d on [-1, 1] and
  its standard error over the calibration images;
* ``eps_mse`` [P]: E||eps_hat - eps||^2 / d, for reference;
* ``decoder``: the discretized decoder's bits/dim at index 0 for a grid of variances
  (``variance``, ``bpd``), from which the analytic chain takes the best;
* ``model``, ``data``, ``seed``, ``num_images``, ``command``: where it came from.

Where a model's calibration is looked for, in order: an explicit path; ``calibration.json``
in the checkpoint folder (the embedded model ships one); the user cache
``$DDPMCODEC_CACHE`` or ``~/.cache/ddpmcodec``, ``calibration/<fingerprint>.json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpmcodec.core.chains import interpolate_stat
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import write_json_atomic

FORMAT = "ddpmcodec-calibration"
VERSION = 1
FILE_NAME = "calibration.json"


@dataclass
class Calibration:
    fingerprint: str
    num_timesteps: int
    indices: np.ndarray          # long [P]
    xstart_mse: np.ndarray       # float64 [P]
    xstart_mse_se: np.ndarray    # float64 [P]
    eps_mse: np.ndarray          # float64 [P]
    decoder_variance_grid: np.ndarray  # float64 [G]
    decoder_bpd: np.ndarray      # float64 [G]
    meta: dict = field(default_factory=dict)

    def m(self) -> np.ndarray:
        """The x0-prediction MSE at every original index 0..T-1 (float64 [T])."""
        return interpolate_stat(self.indices, self.xstart_mse, self.num_timesteps)

    def decoder_variance(self) -> float:
        """The grid variance with the lowest decoder bits/dim at index 0."""
        return float(self.decoder_variance_grid[int(np.argmin(self.decoder_bpd))])

    def digest(self) -> str:
        """16 hex digits of SHA-256 over the statistics (what a chain depends on)."""
        import hashlib
        h = hashlib.sha256()
        for arr in (self.indices.astype("<i8"), self.xstart_mse.astype("<f8"),
                    self.decoder_variance_grid.astype("<f8"), self.decoder_bpd.astype("<f8")):
            h.update(arr.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """What a results folder records about the calibration it used."""
        return {"fingerprint": self.fingerprint, "digest": self.digest(),
                "num_images": self.meta.get("num_images"), "data": self.meta.get("data"),
                "points": int(len(self.indices))}

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                **{k: v for k, v in self.meta.items() if k != "path"},
                "model": {**self.meta.get("model", {}), "fingerprint": self.fingerprint},
                "num_timesteps": int(self.num_timesteps),
                "indices": [int(i) for i in self.indices],
                "xstart_mse": self.xstart_mse.tolist(),
                "xstart_mse_se": self.xstart_mse_se.tolist(),
                "eps_mse": self.eps_mse.tolist(),
                "decoder": {"index": 0, "variance": self.decoder_variance_grid.tolist(),
                            "bpd": self.decoder_bpd.tolist()}}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.is_dir():
            raise DDPMCodecError(f"{path} is a folder; give the calibration file's path")
        write_json_atomic(path, self.to_json())
        return path


def _array(doc: dict, key: str, n: int | None, where: Path) -> np.ndarray:
    arr = np.asarray(doc.get(key), dtype=np.float64)
    if arr.ndim != 1 or (n is not None and len(arr) != n) or not np.isfinite(arr).all():
        raise DDPMCodecError(f"{where}: '{key}' is not a list of {n or 'some'} finite numbers")
    return arr


def load_calibration(path: str | os.PathLike, fingerprint: str | None = None) -> Calibration:
    """Read a calibration file; with ``fingerprint``, refuse one made for another model."""
    path = Path(path)
    if not path.is_file():
        raise DDPMCodecError(f"no calibration file at {path}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DDPMCodecError(f"unreadable calibration file {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DDPMCodecError(f"{path} is not a ddpmcodec calibration file")
    if doc.get("version") != VERSION:
        raise DDPMCodecError(f"{path}: calibration version {doc.get('version')!r} is not "
                             f"supported (this ddpmcodec reads version {VERSION})")
    fp = str(doc.get("model", {}).get("fingerprint", ""))
    if fingerprint is not None and fp != fingerprint:
        raise DDPMCodecError(f"{path} calibrates model {fp}, not {fingerprint}; run "
                             f"`ddpmcodec calibrate` for this model")
    indices = _array(doc, "indices", None, path)
    P = len(indices)
    T = int(doc.get("num_timesteps", 0))
    if P < 2 or indices[0] != 0 or indices[-1] != T - 1 or np.any(np.diff(indices) <= 0):
        raise DDPMCodecError(f"{path}: indices must increase from 0 to num_timesteps - 1")
    dec = doc.get("decoder") or {}
    grid = _array(dec, "variance", None, path)
    bpd = _array(dec, "bpd", len(grid), path)
    if len(grid) == 0 or np.any(grid <= 0):
        raise DDPMCodecError(f"{path}: the decoder grid needs positive variances")
    meta = {k: v for k, v in doc.items() if k not in (
        "format", "version", "num_timesteps", "indices", "xstart_mse", "xstart_mse_se",
        "eps_mse", "decoder")}
    meta["path"] = str(path)
    return Calibration(fp, T, indices.astype(np.int64), _array(doc, "xstart_mse", P, path),
                       _array(doc, "xstart_mse_se", P, path), _array(doc, "eps_mse", P, path),
                       grid, bpd, meta)


def cache_dir() -> Path:
    return Path(os.environ.get("DDPMCODEC_CACHE", Path.home() / ".cache" / "ddpmcodec"))


def default_calibration_path(fingerprint: str) -> Path:
    """Where ``ddpmcodec calibrate`` writes by default (the user cache)."""
    return cache_dir() / "calibration" / f"{fingerprint}.json"


def _checkpoint_folder(model) -> Path | None:
    """The local folder a model was loaded from (None for a hub id)."""
    from ddpmcodec.io.models import DEFAULT_CHECKPOINT
    if model.source.startswith("embedded:"):
        return DEFAULT_CHECKPOINT
    path = Path(model.source).expanduser()
    return path if path.is_dir() else None


def find_calibration(model, path: str | os.PathLike | None = None) -> Calibration:
    """The calibration of a loaded model (see the module docstring for where it looks), or
    a DDPMCodecError that says how to make one."""
    if path is not None:
        return load_calibration(path, model.fingerprint)
    candidates = []
    folder = _checkpoint_folder(model)
    if folder is not None:
        candidates.append(folder / FILE_NAME)
    candidates.append(default_calibration_path(model.fingerprint))
    for cand in candidates:
        if cand.is_file():
            return load_calibration(cand, model.fingerprint)
    raise DDPMCodecError(
        f"model {model.fingerprint} has no calibration (looked in "
        f"{', '.join(str(c) for c in candidates)}); make one with `ddpmcodec calibrate "
        f"--ckpt {model.source} --data TRAIN_IMAGES` (training images, never the test "
        f"images you measure) or pass --calibration FILE")
