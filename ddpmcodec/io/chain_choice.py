"""A chain chosen by the options a user gives (``--steps``, ``--trajectory``, ``--variance``,
``--timesteps FILE``, ``--calibration FILE``): the respaced :class:`Diffusion` to use, and a
JSON-able record of the choice for results folders and files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ddpmcodec.core import chains
from ddpmcodec.errors import DDPMCodecError


@dataclass(frozen=True)
class ChainOptions:
    steps: int | None = None
    trajectory: str = "even"
    variance: str = "model"
    timesteps: str | os.PathLike | list | None = None   # a file of original indices, or a list
    calibration: str | os.PathLike | None = None

    def validate(self) -> "ChainOptions":
        if self.trajectory not in chains.TRAJECTORIES:
            raise DDPMCodecError(f"--trajectory must be one of {', '.join(chains.TRAJECTORIES)}, "
                                 f"got {self.trajectory!r}")
        if self.variance not in chains.VARIANCES:
            raise DDPMCodecError(f"--variance must be one of {', '.join(chains.VARIANCES)}, "
                                 f"got {self.variance!r}")
        if self.timesteps is not None and self.trajectory != "even":
            raise DDPMCodecError("give --timesteps FILE or --trajectory, not both")
        return self

    @property
    def is_default(self) -> bool:
        return (self.trajectory, self.variance, self.timesteps) == ("even", "model", None)

    @property
    def needs_calibration(self) -> bool:
        return self.variance == "analytic" or (self.trajectory == "dp" and self.timesteps is None)


def read_timesteps(path: str | os.PathLike, num_timesteps: int) -> list[int]:
    """Original indices from a file: a JSON list, or integers separated by white space or
    commas; strictly increasing, in 0..T-1."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DDPMCodecError(f"cannot read --timesteps {path}: {exc}") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else \
            [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise DDPMCodecError(f"--timesteps {path}: expected integers (a JSON list, or "
                             f"separated by spaces, commas or lines)") from None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DDPMCodecError(f"--timesteps {path}: expected a non-empty list of integers")
    if any(b <= a for a, b in zip(values[:-1], values[1:])) or values[0] < 0 \
            or values[-1] >= num_timesteps:
        raise DDPMCodecError(f"--timesteps {path}: indices must increase strictly within "
                             f"0..{num_timesteps - 1}")
    return values


def select_chain(model, options: ChainOptions):
    """(Diffusion of the chain, record of the choice) for a loaded model."""
    from ddpmcodec.io.calibration import find_calibration
    opts = options.validate()
    full = model.diffusion
    cal = find_calibration(model, opts.calibration) if opts.needs_calibration else None
    m = cal.m() if cal is not None else None
    if isinstance(opts.timesteps, (list, tuple)):
        ts = [int(t) for t in opts.timesteps]
    elif opts.timesteps is not None:
        ts = read_timesteps(opts.timesteps, full.num_steps)
        if opts.steps is not None and opts.steps != len(ts):
            raise DDPMCodecError(f"--steps {opts.steps} disagrees with the {len(ts)} indices "
                                 f"in --timesteps {opts.timesteps}")
    else:
        ts = chains.chain_timesteps(full, opts.steps, opts.trajectory, opts.variance, m)
    chain = chains.build_chain(full, ts, opts.variance, m,
                               cal.decoder_variance() if cal is not None else None)
    record = {"trajectory": "file" if opts.timesteps is not None else opts.trajectory,
              "variance": opts.variance}
    if cal is not None:
        record["calibration"] = cal.describe()
    return chain, record
