"""Shared fixtures: ../shared data and model (skipped with a reason when absent), and a
tiny random diffusers checkpoint made on the fly."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DDPMCODEC_SHARED", ROOT.parent / "shared"))
TEST_NPZ = SHARED / "data" / "cifar10-test-800.npz"
TRAIN_NPZ = SHARED / "data" / "cifar10-train-4k.npz"
SHARED_MODEL = SHARED / "models" / "ddpm-cifar10-4k-ch64"


@pytest.fixture(scope="session")
def test_npz() -> Path:
    if not TEST_NPZ.is_file():
        pytest.skip(f"{TEST_NPZ} is absent (../shared holds the CIFAR-10 test subset)")
    return TEST_NPZ


@pytest.fixture(scope="session")
def train_npz() -> Path:
    if not TRAIN_NPZ.is_file():
        pytest.skip(f"{TRAIN_NPZ} is absent (../shared holds the CIFAR-10 train subset)")
    return TRAIN_NPZ


@pytest.fixture(scope="session")
def test_images(test_npz) -> np.ndarray:
    with np.load(test_npz, allow_pickle=False) as f:
        return f["images"][:16]


def make_tiny_ckpt(path: Path, seed: int = 0, variance_type: str = "fixedlarge",
                   num_timesteps: int = 1000) -> Path:
    """A random tiny UNet2DModel (32x32x3) saved as a diffusers checkpoint."""
    from ddpmcodec.core.diffusion import Diffusion
    from ddpmcodec.io.models import build_unet, save_model
    torch.manual_seed(seed)
    out_ch = 6 if variance_type == "learned" else 3
    unet = build_unet("tiny", out_channels=out_ch)
    save_model(unet, Diffusion.from_schedule("linear", num_timesteps, variance_type=variance_type), path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from ddpmcodec.io.models import load_model
    return load_model(tiny_ckpt)


@pytest.fixture(scope="session")
def embedded_model():
    from ddpmcodec.io.models import load_model
    return load_model()
