"""What every codec checks: the images it is given, the model a file needs, the chain an
encoder is asked to code, and the decoded pixels against the file's checksum."""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec import container
from ddpmcodec.codec.container import Header
from ddpmcodec.codec.reproducibility import check_threads, coding_threads, device_kind
from ddpmcodec.errors import DDPMCodecError


def check_compatible(header: Header, model, mode: str | None = None) -> None:
    """Clear errors, before any work, when ``model`` cannot decode ``header``'s file."""
    if mode is not None and header.mode != mode:
        raise DDPMCodecError(f"this is a {header.mode} file, not a {mode} one")
    if header.model_free:
        return
    if not model.fingerprint.startswith(header.fingerprint):
        raise DDPMCodecError(
            f"this file was encoded with model {header.fingerprint}, but the model given "
            f"({model.source}) is {model.fingerprint}; pass the encoder's --ckpt")
    if tuple(header.image_shape) != tuple(model.image_shape):
        raise DDPMCodecError(f"the file holds {header.image_shape} images, the model makes "
                             f"{tuple(model.image_shape)}")
    if header.num_timesteps != model.diffusion.num_steps:
        raise DDPMCodecError(f"the file's chain has T={header.num_timesteps}, the model's "
                             f"T={model.diffusion.num_steps}")
    if header.device_kind in container.EXACT_KINDS:
        return  # the exact network: the same numbers on every device and thread count
    here = device_kind(model.device)
    if header.device_kind != here:
        raise DDPMCodecError(f"this file was encoded on {header.device_kind}, the model is on "
                             f"{here}; decode on the encoder's kind of device")
    check_threads(header.num_threads)


def check_chain(chain, model):
    """A chain given to an encoder must be the model's schedule (respaced): anything else
    could not be rebuilt by the decoder from the header's timesteps."""
    import torch
    full = model.diffusion
    ts = chain.timesteps
    if int(ts[-1]) >= full.num_steps or not torch.allclose(
            chain.alphas_cumprod, full.alphas_cumprod[ts], rtol=1e-12, atol=0):
        raise DDPMCodecError("the chain is not a respacing of the model's schedule")


def start_encode(images: np.ndarray, model, batch_size: int) -> tuple[np.ndarray, int]:
    """What every encoder does first: check the images (:func:`check_images`) and the batch
    size, which is clamped to the number of images and the format's maximum.
    Returns (images, batch size)."""
    images = check_images(images, model)
    if batch_size < 1:
        raise DDPMCodecError(f"--batch-size must be positive, got {batch_size}")
    return images, min(batch_size, len(images), container.MAX_BATCH)


def new_header(mode: str, model, num_images: int, batch_size: int, seed: int, timesteps,
               pixel_checksum: bytes, params: bytes = b"", exact: bool = False) -> Header:
    """The validated header of a file this machine encodes now with ``model``: its
    fingerprint, image shape and full chain length, and where it decodes: with the exact
    network (``exact``) anywhere (the device-kind field names the network, no threads);
    with the float32 network only on this device kind and with the CPU threads
    (:func:`coding_threads`) under which the encoder must run (``header.num_threads``)."""
    kind, threads = ((container.EXACT_NETWORK, 0) if exact
                     else (device_kind(model.device), coding_threads()))
    return Header(mode, container.model_id(model.fingerprint), tuple(model.image_shape),
                  num_images, batch_size,
                  int(seed), model.diffusion.num_steps, tuple(int(t) for t in timesteps),
                  kind, threads, pixel_checksum, params).validate()


def with_exact_v1_note(message: str, header: Header) -> str:
    """A decoding failure's message, with why an exact-v1 file may fail on this machine."""
    if header.device_kind != container.EXACT_V1:
        return message
    return (f"{message}. This is an exact-v1 file: its chain's constants took torch.sqrt's "
            f"square roots, whose last bit depends on the processor (MKL's vector math), so "
            f"it decodes where those roots are the writer's (its kind of processor); files "
            f"written now (exact-v2) decode on any")


def is_exact(header: Header) -> bool:
    """Whether a file was coded with the exact network (and decodes anywhere)."""
    return header.device_kind in container.EXACT_KINDS


def check_images(images: np.ndarray, model) -> np.ndarray:
    """uint8 NHWC images that fit the model, contiguous."""
    from ddpmcodec.io.data import check_fits
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DDPMCodecError(f"codecs take uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DDPMCodecError("no images to encode")
    check_fits(images, model.image_shape)
    return np.ascontiguousarray(images)


def verify_pixels(images: np.ndarray, header: Header) -> np.ndarray:
    """Return ``images`` if they match the header's checksum, else DDPMCodecError."""
    if container.pixel_checksum(images, len(header.pixel_checksum)) != header.pixel_checksum:
        raise DDPMCodecError(
            "decoding failed: the decoded pixels do not match the file's checksum (corrupt "
            "file, or a different torch/library version or device evaluated the network)")
    return images
