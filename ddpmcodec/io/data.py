"""Image sources: CIFAR-10 (torchvision), .npz files, PNG folders, single image files.

Images travel as uint8 arrays [N, H, W, C] (NHWC, as stored on disk); the model sees
float64 [N, C, H, W] in [-1, 1] through :func:`to_model_space` (x / 127.5 - 1).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import atomic_path, save_npz_atomic
from ddpmcodec.io.results import NPZ_READ_ERRORS, is_npz_damage

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".jpg", ".jpeg")
CIFAR10_ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    spec: dict  # JSON-able: where the images came from and which ones
    names: list = field(default_factory=list)

    def __len__(self):
        return len(self.images)


SAMPLE_IMAGES = Path(__file__).parents[1] / "samples" / "cifar10-test-first8.npz"
SAMPLE_HELP = ("without --data or --dataset: the 8 CIFAR-10 test images shipped in the "
               "package")


def data_or_sample(data, dataset):
    """``data``, or the shipped sample images when neither ``data`` nor ``dataset`` is given
    (so a command runs on a fresh machine with no data set and no internet)."""
    return SAMPLE_IMAGES if data is None and dataset is None else data


def data_root() -> Path:
    """Where torchvision data lives: $DDPMCODEC_DATA or ~/.cache/ddpmcodec."""
    return Path(os.environ.get("DDPMCODEC_DATA", Path.home() / ".cache" / "ddpmcodec"))


def images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def _check_uint8_nhwc(arr, where: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DDPMCodecError(f"{where}: images must be uint8, got {arr.dtype}")
    if arr.ndim == 3:  # one image HWC, or N grayscale images NHW
        arr = arr[None] if arr.shape[-1] in (1, 3, 4) else arr[..., None]
    if arr.ndim != 4:
        raise DDPMCodecError(f"{where}: images must be [N, H, W, C], got shape {arr.shape}")
    return arr


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise DDPMCodecError(f"{path}: no 'images' array (has {', '.join(f.files) or 'nothing'})")
            arr = f["images"]
    except NPZ_READ_ERRORS as exc:
        if is_npz_damage(exc):
            raise DDPMCodecError(f"cannot read {path} as .npz: {exc}") from None
        if isinstance(exc, OSError):  # a user's file the OS refuses: say so, not "format"
            raise DDPMCodecError(f"cannot read {path}: {exc.strerror or exc}") from None
        raise
    return _check_uint8_nhwc(arr, str(path))


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB", "RGBA", "LA"):
                raise DDPMCodecError(f"{path}: unsupported image mode {im.mode} (need 8-bit L or RGB)")
            arr = np.asarray(im)
    except DDPMCodecError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DDPMCodecError(f"cannot read image {path}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _load_folder(path: Path) -> tuple[np.ndarray, list]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DDPMCodecError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    arrays = [_load_image(p) for p in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DDPMCodecError(f"{path}: images of different shapes {sorted(shapes)}")
    return np.stack(arrays), [p.name for p in files]


def _load_cifar10(split: str, root: Path | None) -> np.ndarray:
    from torchvision.datasets import CIFAR10
    root = Path(root) if root else data_root()
    train = {"train": True, "test": False}.get(split)
    if train is None:
        raise DDPMCodecError(f"--split must be train or test, got {split!r}")
    try:
        return CIFAR10(str(root), train=train, download=False).data
    except RuntimeError:
        pass  # torchvision's "Dataset not found or corrupted": (re)download it
    try:
        root.mkdir(parents=True, exist_ok=True)
        return CIFAR10(str(root), train=train, download=True).data
    except (OSError, RuntimeError, tarfile.TarError) as exc:
        # offline: urllib's URLError (an OSError); an HTTP status: HTTPError; a download
        # that fails its checksum: torchvision's RuntimeError; a damaged archive: TarError
        raise DDPMCodecError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Download {CIFAR10_ARCHIVE} and extract it there (so that "
            f"{root / 'cifar-10-batches-py'} exists), or set DDPMCODEC_DATA, "
            f"or pass --data FILE.npz") from None


def load_images(data: str | os.PathLike | list | None = None, dataset: str | None = None,
                split: str = "test", num_images: int | None = None,
                root: str | os.PathLike | None = None) -> ImageSet:
    """Images in a fixed order from ``data`` (an .npz, a folder, one or more image files)
    or from a named ``dataset`` (``cifar10``); the first ``num_images`` of them."""
    if (data is None) == (dataset is None):
        raise DDPMCodecError("give exactly one of --data PATH or --dataset cifar10")
    names: list = []
    if dataset is not None:
        if dataset.lower() != "cifar10":
            raise DDPMCodecError(f"unknown dataset {dataset!r}; only cifar10 is built in (use --data)")
        images = _load_cifar10(split, root)
        spec = {"kind": "cifar10", "split": split}
    else:
        paths = [Path(p) for p in (data if isinstance(data, (list, tuple)) else [data])]
        for p in paths:
            if not p.exists():
                raise DDPMCodecError(f"no such file or folder: {p}")
        if len(paths) == 1 and paths[0].is_dir():
            images, names = _load_folder(paths[0])
            spec = {"kind": "folder", "path": str(paths[0])}
        elif len(paths) == 1 and paths[0].suffix.lower() == ".npz":
            images = _load_npz(paths[0])
            spec = {"kind": "npz", "path": str(paths[0])}
        else:
            if any(p.is_dir() or p.suffix.lower() == ".npz" for p in paths):
                raise DDPMCodecError("give one folder, one .npz, or a list of image files")
            arrays = [_load_image(p) for p in paths]
            if len({a.shape for a in arrays}) > 1:
                raise DDPMCodecError("the image files have different shapes")
            images, names = np.stack(arrays), [p.name for p in paths]
            spec = {"kind": "files", "paths": [str(p) for p in paths]}
    if num_images is not None:
        if num_images < 1:
            raise DDPMCodecError(f"--num-images must be positive, got {num_images}")
        images, names = images[:num_images], names[:num_images]
    if len(images) == 0:
        raise DDPMCodecError("no images selected")
    images = np.ascontiguousarray(images)
    spec.update(num_images=int(len(images)), digest=images_digest(images))
    return ImageSet(images, spec, names or [f"{i:06d}" for i in range(len(images))])


def check_fits(images: np.ndarray, image_shape: tuple[int, int, int]) -> None:
    """A clear error unless uint8 NHWC ``images`` have the model's (C, H, W)."""
    c, h, w = image_shape
    n, ih, iw, ic = images.shape
    if ic != c:
        raise DDPMCodecError(f"the images have {ic} channel(s), the model expects {c}")
    if (ih, iw) != (h, w):
        raise DDPMCodecError(f"the images are {ih}x{iw}, the model expects {h}x{w}")


def to_model_space(images: np.ndarray, device=None) -> torch.Tensor:
    """uint8 [N,H,W,C] -> float64 [N,C,H,W] in [-1, 1]."""
    import torch  # here: reading and writing images needs no torch (a model-free file)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device=device, dtype=torch.float64)
    return x.permute(0, 3, 1, 2) / 127.5 - 1.0


def from_model_space(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] [N,C,H,W] -> uint8 [N,H,W,C], rounded to the nearest level and clipped."""
    import torch
    x = ((x.detach().to(torch.float64) + 1.0) * 127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_images(images: np.ndarray, out: str | os.PathLike, names=None) -> list[Path]:
    """Write uint8 NHWC images: to one .npz when ``out`` ends in .npz, else as PNGs in a folder."""
    from PIL import Image
    out = Path(out)
    if out.suffix.lower() == ".npz":
        save_npz_atomic(out, images=images)
        return [out]
    if out.exists() and not out.is_dir():
        raise DDPMCodecError(f"{out} is a file; give a folder for PNGs, or a path ending in .npz")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        name = Path(names[i]).stem if names else f"{i:06d}"
        p = out / f"{name}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp, format="PNG")
        paths.append(p)
    return paths
