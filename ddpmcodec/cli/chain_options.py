"""The options that choose a chain, shared by every command that computes a bound or codes
a chain (nll, encode)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# torch-free (numpy only): a chain that no option chooses is ChainOptions' default
from ddpmcodec.io.chain_choice import ChainOptions

DEFAULT_TRAJECTORY = ChainOptions.trajectory
DEFAULT_VARIANCE = ChainOptions.variance

Trajectory = Annotated[str, typer.Option(
    "--trajectory", help="which K timesteps: even (the papers' respacing), quadratic (dense "
                         "near the data), or dp (the K-subset that minimises the expected "
                         "bound, from the model's calibration)")]
Variance = Annotated[str, typer.Option(
    "--variance", help="reverse variance of every step: model (the checkpoint's scheduler), "
                       "fixedlarge (beta, the paper's Table 1 choice), fixedsmall (beta~), or "
                       "analytic (the optimal variance given the x0-prediction, from the "
                       "model's calibration)")]
TimestepsFile = Annotated[Optional[Path], typer.Option(
    "--timesteps", help="a file of original timestep indices (0..T-1, increasing): the chain "
                        "to use, instead of --trajectory")]
CalibrationFile = Annotated[Optional[Path], typer.Option(
    "--calibration", help="calibration file for analytic/dp (default: the one beside the "
                          "checkpoint or in ~/.cache/ddpmcodec; make one with `ddpmcodec "
                          "calibrate`)")]
