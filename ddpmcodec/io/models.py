"""Loading, saving and identifying denoisers (diffusers UNet2DModel checkpoints).

A checkpoint is a diffusers folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``
and optionally ``scheduler_config.json`` (schedule and variance type), either at the top
level or in a ``unet/`` (and ``scheduler/``) subfolder as in pipeline repos. Weights are
read only from safetensors; pickled ``.bin`` files are refused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.atomic import fsync_tree, write_json_atomic
from ddpmcodec.io.checkpoints import (  # noqa: F401 - DEFAULT_CHECKPOINT, WEIGHTS_NAME: this module's API too
    DEFAULT_CHECKPOINT,
    WEIGHTS_NAME,
    download_checkpoint as _download,
    image_shape_of,
    read_json as _read_json,
    resolve_checkpoint as _resolve,
    unet_folder as _unet_folder,
)

# Ho et al.'s CIFAR-10 network in diffusers terms: ch=128, ch_mult (1,2,2,2), two res
# blocks per level, attention at 16x16, dropout 0.1.
PAPER_CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    attention_head_dim=None,
)


def unet_config(name: str = "paper", **overrides) -> dict:
    """UNet2DModel kwargs: ``paper`` (35.7M), ``small`` (ch=64, the embedded model's
    shape) or ``tiny`` (a few hundred thousand parameters, for tests)."""
    cfg = dict(PAPER_CIFAR10_CONFIG)
    if name == "small":
        cfg.update(block_out_channels=(64, 128, 128, 128), dropout=0.3)
    elif name == "tiny":
        cfg.update(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), dropout=0.0)
    elif name != "paper":
        raise DDPMCodecError(f"unknown model config {name!r}; choose paper, small or tiny")
    cfg.update(overrides)
    return cfg


def build_unet(name: str = "paper", **overrides):
    """A randomly initialised UNet2DModel of the named config."""
    from diffusers import UNet2DModel
    return UNet2DModel(**unet_config(name, **overrides))


class LoadedModel:
    """A network with its diffusion, identity and provenance.

    The diffusers module (``unet``) may be loaded lazily: a model made by
    :func:`load_model` with ``lazy=True`` holds the checkpoint's config and weights file
    and builds the UNet2DModel (importing diffusers, seconds) only when ``unet`` is first
    read. What the exact network needs (:meth:`unet_config`, :meth:`weights`) comes from
    the files then."""

    def __init__(self, unet, diffusion: Diffusion, fingerprint: str, source: str,
                 device: torch.device, *, config: dict | None = None,
                 weights_file: Path | None = None, loader=None):
        self._unet = unet
        self.diffusion = diffusion  # the full chain the network was trained on
        self.fingerprint = fingerprint
        self.source = source
        self.device = device
        self._config = config
        self._weights_file = weights_file
        self._loader = loader

    @property
    def unet(self) -> torch.nn.Module:
        if self._unet is None:
            self._unet = self._loader()
        return self._unet

    @unet.setter
    def unet(self, module) -> None:
        self._unet = module

    @property
    def loaded(self) -> bool:
        """Whether the diffusers module is in memory."""
        return self._unet is not None

    def unet_config(self) -> dict:
        """The UNet2DModel's config (without diffusers' private keys)."""
        cfg = dict(self._unet.config) if self._unet is not None else self._config
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def weights(self) -> dict:
        """The network's float32 weights, name -> numpy array (CPU)."""
        if self._unet is not None:
            return {k: v.detach().to("cpu", torch.float32).numpy()
                    for k, v in self._unet.state_dict().items()}
        from safetensors.numpy import load_file
        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(self._weights_file).items()}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return image_shape_of(self.unet_config())

    def denoiser(self):
        """(x_t, original timestep indices) -> network output, under no_grad."""
        unet = self.unet

        def call(x, t):
            with torch.no_grad():
                return unet(x, t).sample
        return call


def schedule_from_config(sched: dict | None, out_channels: int, in_channels: int) -> Diffusion:
    """The full-chain Diffusion described by a diffusers DDPMScheduler config."""
    sched = sched or {}
    if sched.get("prediction_type", "epsilon") != "epsilon":
        raise DDPMCodecError(
            f"only eps-prediction models are supported, this one predicts {sched['prediction_type']!r}")
    if sched.get("trained_betas") is not None:
        raise DDPMCodecError("checkpoints with trained_betas are not supported")
    name = {"linear": "linear", "squaredcos_cap_v2": "cosine"}.get(sched.get("beta_schedule", "linear"))
    if name is None:
        raise DDPMCodecError(f"unsupported beta_schedule {sched.get('beta_schedule')!r}")
    learned = out_channels == 2 * in_channels
    default_var = "learned_range" if learned else "fixed_large"
    var = {"fixed_large": "fixedlarge", "fixed_large_log": "fixedlarge",
           "fixed_small": "fixedsmall", "fixed_small_log": "fixedsmall",
           "learned_range": "learned"}.get(sched.get("variance_type") or default_var)
    if var is None:
        raise DDPMCodecError(f"unsupported variance_type {sched.get('variance_type')!r}")
    if learned != (var == "learned"):
        raise DDPMCodecError(f"variance type {var} does not fit a network with {out_channels} output channels")
    return Diffusion.from_schedule(name, int(sched.get("num_train_timesteps", 1000)),
                                   float(sched.get("beta_start", 1e-4)),
                                   float(sched.get("beta_end", 0.02)), var)


def scheduler_config(diffusion: Diffusion) -> dict:
    """The DDPMScheduler config that :func:`schedule_from_config` reads back."""
    s = diffusion.schedule
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": s["num_timesteps"],
            "beta_schedule": {"linear": "linear", "cosine": "squaredcos_cap_v2"}[s["name"]],
            "beta_start": s.get("beta_start", 1e-4), "beta_end": s.get("beta_end", 0.02),
            "variance_type": {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small",
                              "learned": "learned_range"}[diffusion.variance_type],
            "prediction_type": "epsilon", "clip_sample": True}


def fingerprint(unet: torch.nn.Module, diffusion: Diffusion) -> str:
    """16 hex digits of SHA-256 over the network config, float32 weights and schedule."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=list).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(diffusion.betas.numpy().tobytes())
    h.update(diffusion.variance_type.encode())
    return h.hexdigest()[:16]


def _quiet_diffusers() -> None:
    """diffusers logs advice (install accelerate, ...) that is noise for our users."""
    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error()


def _load_failure(exc: BaseException) -> str | None:
    """What is wrong with a checkpoint, if ``exc`` (raised by ``from_pretrained``) is what a
    damaged or mismatched one raises; None for anything else (a bug: keep its traceback).

    Established with diffusers 0.42 / safetensors 0.8 on tiny checkpoints: a truncated,
    empty or garbled weights file raises OSError("Unable to load weights ...") caused by
    safetensors' SafetensorError (whose message says what is wrong); a config whose
    shapes disagree with the weights raises torch's RuntimeError("Error(s) in loading
    state_dict ... size mismatch"); an invalid config (unknown block type, channels not
    divisible by the groups, lists of different lengths) raises ValueError.
    """
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" not in str(exc):
        return None
    cause = exc
    while cause is not None and not isinstance(cause, SafetensorError):
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(cause if cause is not None else exc).split())[:400]


def load_model(ckpt: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               variance_type: str | None = None, lazy: bool = False) -> LoadedModel:
    """Load a diffusers UNet2DModel checkpoint (local folder or hub id) in float32, eval mode.

    ``variance_type`` overrides the scheduler config's choice (fixedlarge/fixedsmall).
    ``lazy``: when the checkpoint's fingerprint is known for its exact file contents (the
    embedded model's is shipped; others are remembered after their first full load, see
    :func:`fingerprint_cache`), return at once a model whose diffusers module loads on
    first use: the codecs' exact network reads the config and safetensors itself, so
    decoding never imports diffusers.
    """
    path = _resolve(ckpt)
    folder = _unet_folder(path)
    config = _read_json(folder / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DDPMCodecError(f"{folder} holds a {config['_class_name']}, not a UNet2DModel")
    sched, sched_file = None, None
    for cand in (folder / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            sched, sched_file = _read_json(cand), cand
            break
    diffusion = schedule_from_config(sched, config.get("out_channels", 3), config.get("in_channels", 3))
    if variance_type is not None:
        diffusion = Diffusion(diffusion.betas, variance_type, schedule=diffusion.schedule)
        schedule_from_config(scheduler_config(diffusion), config.get("out_channels", 3),
                             config.get("in_channels", 3))  # validates the combination
    source = "embedded:ddpm-cifar10-4k-ch64" if ckpt is None else str(ckpt)
    device = torch.device(device)
    key = _content_key(folder, sched_file, diffusion.variance_type) if lazy else None
    known = _known_fingerprints().get(key) if lazy else None
    if known is not None:
        return LoadedModel(None, diffusion, known, source, device, config=config,
                           weights_file=folder / WEIGHTS_NAME,
                           loader=lambda: _load_unet(folder).to(device))
    unet = _load_unet(folder)
    fp = fingerprint(unet, diffusion)
    if lazy and _light_matches(unet, config, folder):
        _remember_fingerprint(key, fp)
    return LoadedModel(unet.to(device), diffusion, fp, source, device)


def _load_unet(folder: Path) -> torch.nn.Module:
    """The UNet2DModel of a checked checkpoint folder, float32, eval mode, on the CPU."""
    from diffusers import UNet2DModel
    _quiet_diffusers()
    try:
        unet, info = UNet2DModel.from_pretrained(
            folder, use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=torch.float32,
            output_loading_info=True)
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        what = _load_failure(exc)
        if what is None:
            raise
        raise DDPMCodecError(f"could not load the network in {folder}: {what}") from None
    # diffusers fills weights missing from the file with random ones and drops extra ones
    # (with a warning we silence): either way config.json does not describe the weights
    for kind in ("missing_keys", "unexpected_keys"):
        keys = sorted(info.get(kind) or [])
        if keys:
            what = ("tensors of the network it describes are not in the weights"
                    if kind == "missing_keys" else "tensors in the weights have no place in it")
            raise DDPMCodecError(
                f"could not load the network in {folder}: config.json does not fit the weights "
                f"({len(keys)} {what}, e.g. {keys[0]})")
    return unet.eval()


# -- fingerprints known without diffusers ------------------------------------------------
_SHIPPED_FINGERPRINT = DEFAULT_CHECKPOINT / "fingerprint.json"


def _content_key(folder: Path, sched_file: Path | None, variance_type: str) -> str:
    """SHA-256 over the bytes of the files a model is made of and the variance rule."""
    h = hashlib.sha256()
    for f in (folder / "config.json", sched_file, folder / WEIGHTS_NAME):
        data = f.read_bytes() if f is not None else b""
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    h.update(variance_type.encode())
    return h.hexdigest()


def fingerprint_cache() -> Path:
    """Where fingerprints of checkpoints loaded before are remembered (content key ->
    fingerprint): $DDPMCODEC_CACHE, else $XDG_CACHE_HOME/ddpmcodec, else
    ~/.cache/ddpmcodec, file fingerprints.json."""
    root = os.environ.get("DDPMCODEC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "ddpmcodec")
    return Path(root) / "fingerprints.json"


def _known_fingerprints() -> dict:
    known = {}
    for f in (_SHIPPED_FINGERPRINT, fingerprint_cache()):
        try:
            entries = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # no cache yet, or a damaged one: the full load makes the fingerprint
        if isinstance(entries, dict):
            known.update({k: v for k, v in entries.items()
                          if isinstance(k, str) and isinstance(v, str)})
    return known


def _remember_fingerprint(key: str, fp: str) -> None:
    """Add to the cache; a cache that cannot be written only costs the next load time."""
    f = fingerprint_cache()
    try:
        entries = json.loads(f.read_text()) if f.is_file() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = fp
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(f, entries)
    except OSError:
        pass


def _light_matches(unet, config: dict, folder: Path) -> bool:
    """Whether config.json and the safetensors alone describe ``unet`` exactly (its full
    config and every weight): only then may a lazy model stand in for it."""
    full = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    raw = {k: v for k, v in config.items() if not k.startswith("_")}
    if json.dumps(full, sort_keys=True, default=list) != json.dumps(raw, sort_keys=True, default=list):
        return False
    from safetensors.numpy import load_file
    try:
        stored = load_file(folder / WEIGHTS_NAME)
    except (OSError, SafetensorError):
        return False
    sd = unet.state_dict()
    return set(stored) == set(sd) and all(
        np.array_equal(np.asarray(stored[k], dtype=np.float32),
                       sd[k].detach().to("cpu", torch.float32).numpy()) for k in sd)


def save_model(unet: torch.nn.Module, diffusion: Diffusion, path: str | os.PathLike,
               dtype: torch.dtype = torch.float32, extra: dict | None = None) -> None:
    """Write a diffusers checkpoint folder (safetensors weights + scheduler_config.json,
    plus ``extra``: file name -> JSON-able content).

    The folder is written in full under a temporary name beside ``path`` and then renamed
    onto it, so ``path`` never holds a partial checkpoint or a mix of two: a new or empty
    ``path`` is replaced atomically; an existing checkpoint is moved aside just before the
    rename and deleted after it (a reader may find no folder for that instant, never half
    of one; the trainer switches a link instead, see pipelines/train.py). If the rename
    fails the previous checkpoint is moved back; if that fails too it is kept where it was
    moved and the error says where.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DDPMCodecError(f"{path} is a file; give a folder for the checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    _quiet_diffusers()
    to_save = unet if dtype == torch.float32 else copy.deepcopy(unet).to(dtype)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}."))
    old = None
    try:
        to_save.save_pretrained(tmp, safe_serialization=True)
        write_json_atomic(tmp / "scheduler_config.json", scheduler_config(diffusion))
        for name, content in (extra or {}).items():
            write_json_atomic(tmp / name, content)
        os.chmod(tmp, 0o755)  # mkdtemp makes folders private
        fsync_tree(tmp)
        try:
            os.rename(tmp, path)  # atomic onto a missing or empty folder
        except OSError:
            if not path.is_dir():
                raise
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".old-{path.name}."))
            os.rename(path, old / "ckpt")
            os.rename(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "ckpt").is_dir():
            # put the previous checkpoint back; where that fails it is the last good copy:
            # it stays where it is (the finally must not delete it) and the error says where
            kept, why = old / "ckpt", None
            if path.exists():  # something else was written there meanwhile: leave it
                why = f"{path} exists again"
            else:
                try:
                    os.rename(kept, path)
                except OSError as restore:
                    why = f"{type(restore).__name__}: {restore}"
            if why is not None:
                old = None
                raise DDPMCodecError(
                    f"could not write the checkpoint {path} ({type(exc).__name__}: {exc}) nor "
                    f"put the previous one back ({why}); the previous checkpoint is kept at "
                    f"{kept}") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
