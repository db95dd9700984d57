"""Results folders: the one schema between long computations, the CLI and analysis/.

A results folder holds

* ``results.json``: ``{"kind", "config", "status", "summary", "run"}``; ``config`` holds
  everything the numbers depend on (model fingerprint, data digest, chain, seed, ...);
* ``shards/`` while running: one .npz per finished batch, written atomically, so an
  interrupted run resumes without recomputing them;
* ``arrays.npz`` when complete: the merged per-image (and per-step) arrays, in image order;
* CSV tables that pandas reads directly.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import _jsonable, save_npz_atomic, write_json_atomic

RESULTS_JSON = "results.json"
ARRAYS = "arrays.npz"
SCHEMA_VERSION = 1


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
    with np.load(Path(folder) / ARRAYS, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class ResultsFolder:
    """A results folder being computed batch by batch (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict, overwrite: bool = False):
        self.path = Path(path)
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

    def done_ids(self) -> set:
        """Image ids already in shards."""
        done = set()
        for shard in sorted(self.shards.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as f:
                    done.update(int(i) for i in f["image_id"])
            except Exception:  # a shard cut short by a crash: recompute it
                shard.unlink()
        return done

    def write_shard(self, image_ids: np.ndarray, **arrays) -> None:
        first = int(image_ids[0])
        save_npz_atomic(self.shards / f"shard-{first:08d}-{len(image_ids):05d}.npz",
                        image_id=np.asarray(image_ids, dtype=np.int64), **arrays)

    def merged(self) -> dict:
        """All shards concatenated and sorted by image id."""
        parts: dict[str, list] = {}
        for shard in sorted(self.shards.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as f:
                for k in f.files:
                    parts.setdefault(k, []).append(f[k])
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
