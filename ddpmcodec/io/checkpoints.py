"""Checkpoint folders as files: where a checkpoint argument points (the embedded model, a
local folder, a hub id fetched once), its UNet folder and config, and the image shape it
codes. Torch-free, so that a command that needs no network (a model-free lossless file)
starts without importing torch; :mod:`ddpmcodec.io.models` loads the network itself."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ddpmcodec.errors import DDPMCodecError

DEFAULT_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "ddpm-cifar10-4k-ch64"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(ckpt: str | os.PathLike | None) -> Path:
    """A local folder for a checkpoint argument (None: the embedded default)."""
    if ckpt is None:
        return DEFAULT_CHECKPOINT
    path = Path(ckpt).expanduser()
    if path.exists():  # links resolved once: a training run switches OUT/model's target
        return path.resolve()
    text = str(ckpt)
    if _HUB_ID.match(text):
        return download_checkpoint(text)
    raise DDPMCodecError(f"checkpoint not found: {text}")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What snapshot_download raises when a repo cannot be fetched, by name.

    Established with huggingface_hub 2.4 on a machine without internet: offline (and with
    HF_HUB_OFFLINE=1) it raises ``LocalEntryNotFoundError`` (no cached snapshot), caused
    by the transport's ConnectError or by OfflineModeIsEnabled. Online the hub answers
    with ``RepositoryNotFoundError`` / ``GatedRepoError`` / ``RevisionNotFoundError`` /
    ``DisabledRepoError`` (all ``HfHubHTTPError``); a transfer that breaks raises the
    HTTP client's ``HTTPError`` (httpx's, re-exported as huggingface_hub.errors.HTTPError;
    requests' in older versions), or ConnectionError / TimeoutError; a failed Xet
    transfer ``XetDownloadError``; a malformed id ``HFValidationError``.
    """
    from huggingface_hub import errors
    names = ("LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError",
             "GatedRepoError", "RevisionNotFoundError", "HfHubHTTPError", "OfflineModeIsEnabled",
             "XetDownloadError", "HFValidationError", "HTTPError")
    found = [getattr(errors, n) for n in names if isinstance(getattr(errors, n, None), type)]
    try:  # huggingface_hub < 1.0 talks through requests
        from requests.exceptions import RequestException
        found.append(RequestException)
    except ImportError:
        pass
    return (*found, ConnectionError, TimeoutError)


def download_checkpoint(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except _hub_errors() as exc:  # offline, unknown repo, gated: the same advice for a user
        raise DDPMCodecError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}). "
            f"On a machine with internet run `huggingface-cli download {repo_id} --local-dir DIR` "
            f"and pass --ckpt DIR") from None
    except OSError as exc:  # the local hub cache: no space, no permission
        raise DDPMCodecError(f"could not store {repo_id!r} in the Hugging Face cache "
                             f"(HF_HOME): {exc}") from None


def unet_folder(path: Path) -> Path:
    if not path.is_dir():
        raise DDPMCodecError(f"not a checkpoint folder: {path}")
    for folder in (path, path / "unet"):
        if (folder / "config.json").is_file():
            if not (folder / WEIGHTS_NAME).is_file():
                other = "a pickled .bin file (refused: convert it to safetensors)" \
                    if (folder / "diffusion_pytorch_model.bin").is_file() else "no weights"
                raise DDPMCodecError(f"{folder} has {other}; expected {WEIGHTS_NAME}")
            return folder
    raise DDPMCodecError(f"not a checkpoint folder (no config.json): {path}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DDPMCodecError(f"unreadable {path.name} in {path.parent}: {exc}") from None


def image_shape_of(config: dict) -> tuple[int, int, int]:
    """(C, H, W) of the images a UNet2DModel config takes."""
    size = config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(config["in_channels"]), int(h), int(w))


def checkpoint_image_shape(ckpt: str | os.PathLike | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the images the checkpoint's UNet takes, from its config.json alone
    (what :attr:`~ddpmcodec.io.models.LoadedModel.image_shape` gives once it is loaded)."""
    folder = unet_folder(resolve_checkpoint(ckpt))
    try:
        return image_shape_of(read_json(folder / "config.json"))
    except (KeyError, TypeError, ValueError):
        raise DDPMCodecError(f"{folder / 'config.json'} gives no image size "
                             f"(sample_size, in_channels)") from None
