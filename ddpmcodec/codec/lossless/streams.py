"""Several images' streams in one payload: the lengths of all but the last as varints,
then the streams (the webp-lossless and classical-lossless files), and the model-free
codec that writes and reads such a file (:class:`StreamsCodec`)."""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec import container
from ddpmcodec.codec.api import Codec, CodecStats, Decoded, Encoded, Timer
from ddpmcodec.codec.checks import check_images
from ddpmcodec.codec.container import BlobReader, BlobWriter
from ddpmcodec.errors import DDPMCodecError


def pack_streams(streams: list[bytes]) -> bytes:
    """Lengths of all streams but the last (varints), then the streams."""
    w = BlobWriter()
    for s in streams[:-1]:
        w.uvar(len(s))
    for s in streams:
        w.raw(s)
    return w.getvalue()


def unpack_streams(data: bytes, count: int, what: str, least_bytes: int) -> list[bytes]:
    """The ``count`` streams of :func:`pack_streams`; each holds at least ``least_bytes``
    (its codec's header), so a payload too short for ``count`` of them is refused before
    anything is read."""
    least = (least_bytes + 1) * count - 1
    if len(data) < least:
        raise DDPMCodecError(f"corrupt file: {len(data)} bytes cannot hold {count} "
                             f"{what} (at least {least})")
    r = BlobReader(data, what)
    lengths = [r.bounded("stream length", r.uvar("stream length"), least_bytes, len(data))
               for _ in range(count - 1)]
    streams = [r.raw(n, "stream") for n in lengths]
    if r.remaining < least_bytes:
        raise DDPMCodecError(f"corrupt file: {what} are truncated")
    streams.append(r.raw(r.remaining, "stream"))
    return streams


class StreamsCodec(Codec):
    """A model-free mode whose file holds one stored stream per image (:func:`pack_streams`):
    the webp-lossless and classical-lossless modes, which say how an image becomes a stream
    (:meth:`stream`) and back (:meth:`image`). ``model`` may be None."""

    mode: str
    what: str              # the streams, as an error message names them
    least_stream_bytes: int

    def stream(self, image: np.ndarray, **options) -> bytes:
        raise NotImplementedError

    @staticmethod
    def image(stream: bytes, image_shape) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def extra(cls, streams: list[bytes]) -> dict:
        return {"method": cls.mode}

    def encode(self, images: np.ndarray, *, progress: bool = False, **options) -> Encoded:
        images = np.ascontiguousarray(images) if self.model is None else check_images(images,
                                                                                     self.model)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DDPMCodecError(f"{self.mode} takes uint8 [N, H, W, 1 or 3] images, got "
                                 f"{images.dtype} {images.shape}")
        with Timer() as timer:
            streams = [self.stream(im, **options) for im in images]
        return self.file(images, streams, timer.seconds)

    def decode(self, data: bytes, *, progress: bool = False, **options) -> Decoded:
        header, payload = container.unpack(data)
        if header.mode != self.mode:
            raise DDPMCodecError(f"this is a {header.mode} file, not a {self.mode} one")
        with Timer() as timer:
            streams = unpack_streams(payload, header.num_images, self.what,
                                     self.least_stream_bytes)
            c, h, w = header.image_shape
            images = np.empty((header.num_images, h, w, c), dtype=np.uint8)
            for i, s in enumerate(streams):
                images[i] = self.image(s, header.image_shape)
        # every format but webp-lossless's format 2 (a payload CRC-32) checks the pixels
        if header.pixel_checksum and container.pixel_checksum(
                images, len(header.pixel_checksum)) != header.pixel_checksum:
            raise DDPMCodecError("corrupt file: the decoded pixels do not match the file's "
                                 "checksum")
        return Decoded(images, header, self._stats(header, len(data), len(payload),
                                                   timer.seconds, streams))

    @classmethod
    def file(cls, images: np.ndarray, streams: list[bytes], seconds: float) -> Encoded:
        """The file of uint8 [N, H, W, C] ``images`` from their stored streams (the header
        holds the pixels' checksum)."""
        n, h, w, c = images.shape
        header = container.model_free_header(cls.mode, (c, h, w), n,
                                             container.pixel_checksum(images))
        payload = pack_streams(streams)
        data = container.pack(header, payload)
        return Encoded(data, header, cls._stats(header, len(data), len(payload), seconds,
                                                streams))

    @classmethod
    def _stats(cls, header, file_bytes: int, payload_bytes: int, seconds: float,
               streams) -> CodecStats:
        return CodecStats(mode=cls.mode, num_images=header.num_images, dims=header.dims,
                          num_steps=0, payload_bits=8 * payload_bytes,
                          header_bits=8 * (file_bytes - payload_bytes), initial_bits=0.0,
                          bound_bits=float("nan"), seconds=seconds,
                          side_bits=8 * payload_bytes, net_images=0, extra=cls.extra(streams))
