"""The ddpmcodec file format: a compact versioned header, then the payload.

Every codec writes the same container; only the ``params`` blob (mode-specific, opaque
here) and the payload differ. "v" is an unsigned LEB128 varint (7 bits a byte, shortest
form only), integers are little-endian. Format version 2::

    size  field
    2     MAGIC b"\\x89D": identifies the format (format 1 began with the same two bytes)
    1     version (high nibble, 2) | mode (low nibble: 1 lossless, 2 progressive,
          3 webp-lossless)
    ...   header body (below)
    2     CRC-16 (CCITT) of every byte before it
    v     payload length P (must equal the bytes that follow the next field)
    4     CRC-32 of the payload
    P     payload (codec-specific; nothing may follow it)

Header body of the model modes (lossless, progressive)::

    4     model id       the first 4 bytes of the model fingerprint
    v*3   image shape    C, H, W
    v     num_images     N
    v     batch_size     images per network call; the decoder must use the same layout
    v     seed           of everything random the codec draws (< 2^63)
    v     num_timesteps  T, length of the model's full chain
    1     chain kind     0 = full chain, 1 = evenly spaced K steps, 2 = explicit list
    v     num_steps      K
    v*K   timesteps      only for kind 2: the first index, then each gap minus one
    1     device code    where the numbers were made: 1.. = DEVICE_KINDS[code - 1]
                         ("cpu:AVX2", ...); 0 = spelt out as v length + printable ASCII
    v     num_threads    CPU threads of the encoder (0: not recorded); float results
                         depend on how torch splits work, so the decoder uses the same
    4     pixel checksum first 4 bytes of SHA-256 over the decoded uint8 NHWC pixels
    v+s   params         length-prefixed mode-specific blob (<= MAX_PARAMS_BYTES)

The model-free mode (webp-lossless: the classical fallback of the lossless codec, which
decodes without a network) has only ``v*3 image shape, v num_images``.

Why each check has its width. The header CRC-16 catches every error of up to 3 bits and
misses a random corruption with probability 2^-16 (the header is tens of bytes); a miss
is still caught by the pixel checksum. The payload CRC-32 lets a damaged file fail in
milliseconds, before any network runs. The pixel checksum is the end-to-end guarantee
that a decoded image is the encoded one (a wrong decode passes it with probability
2^-32; a bits-back decode that went wrong must also end in the exact initial stack). The
model id only turns "decoded with the wrong model" into a clear early error: a wrong model
that shares the 32-bit id (probability 2^-32) fails the pixel checksum instead.

Format version 3, the compact header of the progressive codec (whose payload frames
and checks itself, so the container adds no length and no checksum to it)::

    2     MAGIC
    1     version (high nibble, 3) | mode (2, progressive)
    2     model id       the first 2 bytes of the model fingerprint
    1     flags          a set bit means the field is written below; unset, its preset
    ...   bit 0: v*3 image shape (preset 3, 32, 32); bit 1: v num_images, v batch_size
          (preset 1, 1); bit 2: v seed (preset 0); bit 3: v num_timesteps (preset 1000);
          bit 4: the chain as in format 2, or kind 3 = v K geometric steps (preset: the
          16 geometric steps of :func:`geometric_timesteps`); bit 5: v+s params (preset:
          empty, the codec's defaults); bit 6: device and threads in one byte
    1     device code    as in format 2 (0: spelt out)       } unless bit 6 is set;
    v     num_threads                                        } then one byte,
                                                               code << 5 | threads
    1     the low byte of the CRC-16 of every byte before it
    ...   payload, to the end of the file

The encoder sets bit 6 whenever it can (a device of DEVICE_KINDS, fewer than 32 threads);
files without it (before bit 6 existed) still read. A single-image file at the defaults
has 8 bytes of header. The model id is 2 bytes
because the codec checks every coded step's latents (a wrong model that shares the id,
probability 2^-16, fails the first step's check); there is no pixel checksum for the same
reason. The 8-bit header check catches all errors of up to 7 bits in a burst and a random
corruption with probability 255/256; a corrupt header that passes it changes the seed,
chain or layout, which the first step's latent check catches.

Format version 1 (a 8-byte magic b"\\x89DDPMC\\r\\n", fixed-width fields, the whole
fingerprint, a 16-byte pixel checksum, two CRC-32s: ~130 bytes before any chain) is
still read, never written.

Parsing validates every field and bounds every size before anything is allocated from
it, and raises :class:`DDPMCodecError` with a one-line reason for anything wrong:
wrong magic, unknown version, truncation, bad checksums, out-of-range fields, trailing
bytes.

:class:`BlobWriter` / :class:`BlobReader` are the bounded little-endian field helpers used
for the header and available to codecs for their ``params`` blob and payload framing.
"""
from __future__ import annotations

import binascii
import dataclasses
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ddpmcodec.errors import DDPMCodecError

MAGIC = b"\x89D"
MAGIC_V1 = b"\x89DDPMC\r\n"   # format 1 (read only); its third byte, "D", is no version byte
FORMAT_VERSION = 2
FORMAT_COMPACT = 3
SUPPORTED_VERSIONS = (1, 2, 3)
COMPACT_MODES = ("progressive",)  # modes that write format 3

MODES = {"lossless": 1, "progressive": 2, "webp-lossless": 3}
MODEL_FREE_MODES = ("webp-lossless",)
_MODE_NAMES = {v: k for k, v in MODES.items()}

# Bounds a header must satisfy. They are generous for real use and small enough that a
# hostile header cannot make a reader allocate without bound.
MAX_HEADER_BYTES = 1 << 20          # format 1: the explicit timestep list dominates: 4*T bytes
MAX_PARAMS_BYTES = 1 << 16
MAX_CHANNELS = 16
MAX_SIDE = 4096
MAX_DIMS = 1 << 24                  # C*H*W of one image
MAX_IMAGES = 1 << 20
MAX_BATCH = 4096
MAX_TIMESTEPS = 1 << 16             # T
MAX_TOTAL_PIXELS = 1 << 32          # N*C*H*W: the decoded output's size in bytes
MAX_DEVICE_CHARS = 64
MAX_THREADS = 256
MAX_SEED = (1 << 63) - 1
CHECKSUM_BYTES = 4
CHECKSUM_BYTES_V1 = 16
MODEL_ID_BYTES = 4
COMPACT_ID_BYTES = 2
# the presets of format 3's flags
COMPACT_SHAPE = (3, 32, 32)
COMPACT_TIMESTEPS = 1000
COMPACT_STEPS = 16
GEOMETRIC_OFFSET = 3.0
FINGERPRINT_BYTES = 8               # format 1 held the whole fingerprint
# device kinds with a one-byte code in format 2 (code = index + 1); others are spelt out
DEVICE_KINDS = ("cpu:DEFAULT", "cpu:AVX2", "cpu:AVX512", "cpu:ZVECTOR", "cpu:VSX", "cpu:SVE256")

_CHAIN_FULL, _CHAIN_EVEN, _CHAIN_EXPLICIT, _CHAIN_GEOMETRIC = 0, 1, 2, 3


def crc32(data) -> int:
    """CRC-32 of bytes (or a buffer) as an unsigned 32-bit int: the checksum of payloads,
    progressive packets and the generator check."""
    return zlib.crc32(data) & 0xFFFFFFFF


def crc16(data) -> int:
    """CRC-16 (CCITT) of bytes: the header's checksum in format 2."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def pixel_checksum(images: np.ndarray, nbytes: int = CHECKSUM_BYTES) -> bytes:
    """``nbytes``-byte SHA-256 prefix over uint8 NHWC pixels (with their shape, so a
    reshaped array of the same bytes does not match)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DDPMCodecError(f"pixel checksums are over uint8 NHWC arrays, got {images.dtype} {images.shape}")
    h = hashlib.sha256(struct.pack("<4Q", *images.shape))
    h.update(images.tobytes())
    return h.digest()[:nbytes]


def evenly_spaced(num_timesteps: int, steps: int) -> tuple[int, ...]:
    """Diffusion.with_steps' choice of timesteps, without importing torch."""
    if steps == 1:
        return (num_timesteps - 1,)
    stride = (num_timesteps - 1) / (steps - 1)
    return tuple(int(round(k * stride)) for k in range(steps))


def geometric_timesteps(num_timesteps: int, steps: int,
                        offset: float = GEOMETRIC_OFFSET) -> tuple[int, ...]:
    """``steps`` strictly increasing original indices from 0 to T-1, geometric in
    t + offset (2 <= steps <= T): the progressive codec's coded steps."""
    lo, hi = math.log(offset), math.log(num_timesteps - 1 + offset)
    ideal = [math.exp(lo + (hi - lo) * k / (steps - 1)) - offset for k in range(steps)]
    ts = [0]
    for k in range(1, steps):
        # at least one above the previous, and room left for the remaining steps
        t = max(int(round(ideal[k])), ts[-1] + 1)
        ts.append(min(t, num_timesteps - steps + k))
    ts[-1] = num_timesteps - 1
    return tuple(ts)


# -- bounded field helpers -----------------------------------------------------------------
class BlobWriter:
    """Appends little-endian fields to a bytearray."""

    def __init__(self):
        self.buf = bytearray()

    def u8(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<B", v)
        return self

    def u16(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<H", v)
        return self

    def u32(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<I", v)
        return self

    def u64(self, v: int) -> "BlobWriter":
        self.buf += struct.pack("<Q", v)
        return self

    def f64(self, v: float) -> "BlobWriter":
        self.buf += struct.pack("<d", v)
        return self

    def raw(self, b: bytes) -> "BlobWriter":
        self.buf += b
        return self

    def blob(self, b: bytes) -> "BlobWriter":
        """u32 length + bytes."""
        return self.u32(len(b)).raw(b)

    def uvar(self, v: int) -> "BlobWriter":
        """An unsigned LEB128 varint: 7 bits a byte, low bits first (0..127 in one byte)."""
        v = int(v)
        if not 0 <= v < 1 << 64:
            raise DDPMCodecError(f"varint out of range: {v}")
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)
        return self

    def svar(self, v: int) -> "BlobWriter":
        """A signed varint (zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...)."""
        v = int(v)
        return self.uvar(2 * v if v >= 0 else -2 * v - 1)

    def varblob(self, b: bytes) -> "BlobWriter":
        """varint length + bytes."""
        return self.uvar(len(b)).raw(b)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class BlobReader:
    """Reads little-endian fields with bounds checks; every failure is a DDPMCodecError
    naming ``what`` is being read."""

    def __init__(self, data: bytes, what: str = "data"):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def raw(self, n: int, name: str = "field") -> bytes:
        if n < 0 or n > self.remaining:
            raise DDPMCodecError(f"{self.what} is truncated (reading {name}: need {n} bytes, "
                                 f"{self.remaining} left)")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def _unpack(self, fmt: str, name: str):
        return struct.unpack(fmt, self.raw(struct.calcsize(fmt), name))[0]

    def u8(self, name="u8") -> int:
        return self._unpack("<B", name)

    def u16(self, name="u16") -> int:
        return self._unpack("<H", name)

    def u32(self, name="u32") -> int:
        return self._unpack("<I", name)

    def u64(self, name="u64") -> int:
        return self._unpack("<Q", name)

    def f64(self, name="f64") -> float:
        return self._unpack("<d", name)

    def uvar(self, name="varint") -> int:
        """An unsigned LEB128 varint of at most 64 bits, in its shortest form (so that
        every value has exactly one encoding)."""
        v = shift = 0
        for i in range(10):
            byte = self.u8(name)
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if (byte == 0 and i > 0) or v >= 1 << 64:
                    raise DDPMCodecError(f"{self.what}: {name} is not a valid varint")
                return v
        raise DDPMCodecError(f"{self.what}: {name} is not a valid varint")

    def svar(self, name="varint") -> int:
        u = self.uvar(name)
        return u >> 1 if not u & 1 else -((u + 1) >> 1)

    def varblob(self, name: str, max_len: int) -> bytes:
        n = self.uvar(f"{name} length")
        if n > max_len:
            raise DDPMCodecError(f"{self.what}: {name} claims {n} bytes (at most {max_len})")
        return self.raw(n, name)

    def bounded(self, name: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise DDPMCodecError(f"{self.what}: {name} = {value} is outside {lo}..{hi}")
        return value

    def blob(self, name: str, max_len: int) -> bytes:
        n = self.u32(f"{name} length")
        if n > max_len:
            raise DDPMCodecError(f"{self.what}: {name} claims {n} bytes (at most {max_len})")
        return self.raw(n, name)

    def end(self) -> None:
        if self.remaining:
            raise DDPMCodecError(f"{self.what} has {self.remaining} unexpected trailing byte(s)")


# -- the header ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the model and the payload.

    ``timesteps`` are the original indices of the coded chain (chain step k -> original
    index timesteps[k]); ``num_timesteps`` is T of the model's full chain.
    ``fingerprint`` is the model id the file holds: 8 hex digits (format 2), 4 (format 3)
    or the whole 16-digit fingerprint (format 1); ``pixel_checksum`` is 4 (format 2), 16
    (format 1) or no bytes (format 3).
    A model-free mode (``webp-lossless``: the classical fallback, decoded without a
    network) uses only ``mode``, ``image_shape`` and ``num_images``; its other fields
    hold the neutral values of :func:`model_free_header`.
    """

    mode: str
    fingerprint: str
    image_shape: tuple  # (C, H, W)
    num_images: int
    batch_size: int
    seed: int
    num_timesteps: int
    timesteps: tuple
    device_kind: str
    num_threads: int
    pixel_checksum: bytes
    params: bytes = b""
    version: int = FORMAT_VERSION

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def num_batches(self) -> int:
        return -(-self.num_images // self.batch_size)

    @property
    def model_free(self) -> bool:
        return self.mode in MODEL_FREE_MODES

    def batches(self) -> list[tuple[int, int]]:
        """(start, stop) image ranges of the batch layout, in encoding order."""
        return [(s, min(s + self.batch_size, self.num_images))
                for s in range(0, self.num_images, self.batch_size)]

    def validate(self) -> "Header":
        """Raise DDPMCodecError unless every field is in range (also used before writing)."""
        r = BlobReader(b"", "header")
        if self.mode not in MODES:
            raise DDPMCodecError(f"unknown codec mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.version not in SUPPORTED_VERSIONS:
            raise DDPMCodecError(f"format version {self.version} is not supported")
        if len(self.image_shape) != 3:
            raise DDPMCodecError(f"image shape must be (C, H, W), got {self.image_shape}")
        c, h, w = (int(v) for v in self.image_shape)
        r.bounded("channels", c, 1, MAX_CHANNELS)
        r.bounded("height", h, 1, MAX_SIDE)
        r.bounded("width", w, 1, MAX_SIDE)
        r.bounded("dims per image", c * h * w, 1, MAX_DIMS)
        r.bounded("number of images", self.num_images, 1, MAX_IMAGES)
        r.bounded("total pixels", self.num_images * c * h * w, 1, MAX_TOTAL_PIXELS)
        if self.model_free:
            if self != model_free_header(self.mode, self.image_shape, self.num_images):
                raise DDPMCodecError(f"header: a {self.mode} file has no model fields")
            return self
        id_bytes = {1: FINGERPRINT_BYTES, FORMAT_COMPACT: COMPACT_ID_BYTES}.get(self.version,
                                                                              MODEL_ID_BYTES)
        if self.version == FORMAT_COMPACT and self.mode not in COMPACT_MODES:
            raise DDPMCodecError(f"format {FORMAT_COMPACT} holds no {self.mode} files")
        if len(self.fingerprint) != 2 * id_bytes or any(
                ch not in "0123456789abcdef" for ch in self.fingerprint):
            raise DDPMCodecError(f"a model id is {2 * id_bytes} lowercase hex digits in format "
                                 f"{self.version}, got {self.fingerprint!r}")
        r.bounded("batch size", self.batch_size, 1, min(MAX_BATCH, self.num_images))
        r.bounded("seed", self.seed, 0, MAX_SEED)
        r.bounded("num_timesteps", self.num_timesteps, 1, MAX_TIMESTEPS)
        r.bounded("num_steps", len(self.timesteps), 1, self.num_timesteps)
        ts = self.timesteps
        if any(not 0 <= t < self.num_timesteps for t in ts) or any(
                b <= a for a, b in zip(ts, ts[1:])):
            raise DDPMCodecError(
                f"header: timesteps must be strictly increasing indices in 0..{self.num_timesteps - 1}")
        if not (0 < len(self.device_kind) <= MAX_DEVICE_CHARS) or not all(
                32 <= ord(ch) < 127 for ch in self.device_kind):
            raise DDPMCodecError(f"header: device kind must be 1..{MAX_DEVICE_CHARS} printable "
                                 f"ASCII characters, got {self.device_kind!r}")
        r.bounded("num_threads", self.num_threads, 0, MAX_THREADS)
        if len(self.pixel_checksum) != checksum_bytes(self.version):
            raise DDPMCodecError(f"header: the pixel checksum must be "
                                 f"{checksum_bytes(self.version)} bytes")
        if len(self.params) > MAX_PARAMS_BYTES:
            raise DDPMCodecError(f"header: params blob of {len(self.params)} bytes "
                                 f"(at most {MAX_PARAMS_BYTES})")
        return self

    def summary(self) -> dict:
        """JSON-able description (for `--json` output and error messages)."""
        if self.model_free:
            return {"format_version": self.version, "mode": self.mode,
                    "image_shape": list(self.image_shape), "num_images": self.num_images}
        return {"format_version": self.version, "mode": self.mode, "model_id": self.fingerprint,
                "image_shape": list(self.image_shape), "num_images": self.num_images,
                "batch_size": self.batch_size, "seed": self.seed,
                "num_timesteps": self.num_timesteps, "num_steps": self.num_steps,
                "device_kind": self.device_kind, "num_threads": self.num_threads,
                "pixel_checksum": self.pixel_checksum.hex(),
                "params_bytes": len(self.params)}


def model_free_header(mode: str, image_shape, num_images: int) -> Header:
    """The header of a model-free file (neutral values in every model field)."""
    return Header(mode, "", tuple(int(v) for v in image_shape), int(num_images), 1, 0, 0, (),
                  "", 0, b"", b"", FORMAT_VERSION)


def checksum_bytes(version: int = FORMAT_VERSION) -> int:
    """Bytes of the pixel checksum in a file of ``version`` (none in format 3)."""
    return {1: CHECKSUM_BYTES_V1, FORMAT_COMPACT: 0}.get(version, CHECKSUM_BYTES)


def model_id(fingerprint: str) -> str:
    """The model id a new file records: the first MODEL_ID_BYTES of the fingerprint
    (:func:`compact` keeps COMPACT_ID_BYTES of it)."""
    return fingerprint[:2 * MODEL_ID_BYTES]


def compact(header: Header) -> Header:
    """``header`` as a format 3 header (compact modes only)."""
    return dataclasses.replace(header, version=FORMAT_COMPACT, pixel_checksum=b"",
                               fingerprint=header.fingerprint[:2 * COMPACT_ID_BYTES]).validate()


# -- format 2 ----------------------------------------------------------------------------
def _write_chain(w: BlobWriter, T: int, ts: tuple, geometric: bool = False) -> None:
    if ts == tuple(range(T)):
        w.u8(_CHAIN_FULL).uvar(len(ts))
    elif ts == evenly_spaced(T, len(ts)):
        w.u8(_CHAIN_EVEN).uvar(len(ts))
    elif geometric and 2 <= len(ts) and ts == geometric_timesteps(T, len(ts)):
        w.u8(_CHAIN_GEOMETRIC).uvar(len(ts))
    else:  # first index, then each gap minus one: a byte per step on short chains
        w.u8(_CHAIN_EXPLICIT).uvar(len(ts)).uvar(ts[0])
        for a, b in zip(ts, ts[1:]):
            w.uvar(b - a - 1)


def _read_chain(r: BlobReader, T: int, geometric: bool = False) -> tuple:
    kind = r.u8("chain kind")
    K = r.bounded("num_steps", r.uvar("num_steps"), 1, T)
    if geometric and kind == _CHAIN_GEOMETRIC:
        if K < 2:
            raise DDPMCodecError("header: a geometric chain has at least 2 steps")
        return geometric_timesteps(T, K)
    if kind == _CHAIN_FULL:
        if K != T:
            raise DDPMCodecError(f"header: a full chain has {T} steps, not {K}")
        return tuple(range(T))
    if kind == _CHAIN_EVEN:
        return evenly_spaced(T, K)
    if kind != _CHAIN_EXPLICIT:
        raise DDPMCodecError(f"header: unknown chain kind {kind}")
    ts = [r.bounded("timestep", r.uvar("timestep"), 0, T - 1)]
    for _ in range(K - 1):
        ts.append(ts[-1] + 1 + r.bounded("timestep gap", r.uvar("timestep gap"), 0, T))
        if ts[-1] >= T:
            raise DDPMCodecError(f"header: timesteps must be indices in 0..{T - 1}")
    return tuple(ts)


def _write_body(h: Header) -> bytes:
    w = BlobWriter()
    if not h.model_free:
        w.raw(bytes.fromhex(h.fingerprint))
    for v in h.image_shape:
        w.uvar(v)
    w.uvar(h.num_images)
    if h.model_free:
        return w.getvalue()
    w.uvar(h.batch_size).uvar(h.seed).uvar(h.num_timesteps)
    _write_chain(w, h.num_timesteps, tuple(int(t) for t in h.timesteps))
    _write_device(w, h.device_kind)
    w.uvar(h.num_threads).raw(h.pixel_checksum).varblob(h.params)
    return w.getvalue()


def _read_body(r: BlobReader, mode: str) -> Header:
    if mode in MODEL_FREE_MODES:
        shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
        n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
        return model_free_header(mode, shape, n).validate()
    fp = r.raw(MODEL_ID_BYTES, "model id").hex()
    shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
    n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
    batch = r.bounded("batch size", r.uvar("batch size"), 1, min(MAX_BATCH, n))
    seed = r.bounded("seed", r.uvar("seed"), 0, MAX_SEED)
    T = r.bounded("num_timesteps", r.uvar("num_timesteps"), 1, MAX_TIMESTEPS)
    ts = _read_chain(r, T)
    dev = _read_device(r)
    threads = r.bounded("num_threads", r.uvar("num_threads"), 0, MAX_THREADS)
    checksum = r.raw(CHECKSUM_BYTES, "pixel checksum")
    params = r.varblob("params", MAX_PARAMS_BYTES)
    return Header(mode, fp, shape, n, batch, seed, T, ts, dev, threads, checksum, params,
                  FORMAT_VERSION).validate()


# -- format 3 (compact) -------------------------------------------------------------------
_F_SHAPE, _F_IMAGES, _F_SEED, _F_T, _F_CHAIN, _F_PARAMS = 1, 2, 4, 8, 16, 32
_F_HOST = 64           # device code and thread count share one byte
_HOST_THREAD_BITS = 5  # that byte: code << 5 | threads


def _device_code(kind: str) -> int:
    """1.. for a kind of DEVICE_KINDS, 0 for one that is spelt out."""
    return DEVICE_KINDS.index(kind) + 1 if kind in DEVICE_KINDS else 0


def _device_kind(code: int) -> str:
    """The kind of a code 1..len(DEVICE_KINDS)."""
    if not 1 <= code <= len(DEVICE_KINDS):
        raise DDPMCodecError(f"header: unknown device kind code {code}")
    return DEVICE_KINDS[code - 1]


def _write_device(w: BlobWriter, kind: str) -> None:
    code = _device_code(kind)
    w.u8(code)
    if code == 0:
        w.varblob(kind.encode("ascii"))


def _read_device(r: BlobReader) -> str:
    code = r.u8("device kind")
    if code == 0:
        raw = r.varblob("device kind", MAX_DEVICE_CHARS)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DDPMCodecError("header: device kind is not ASCII") from None
    return _device_kind(code)


def _compact_chain(T: int) -> tuple:
    return geometric_timesteps(T, COMPACT_STEPS) if COMPACT_STEPS <= T else tuple(range(T))


def _write_compact(h: Header) -> bytes:
    ts = tuple(int(t) for t in h.timesteps)
    fields = BlobWriter()
    flags = 0
    if tuple(h.image_shape) != COMPACT_SHAPE:
        flags |= _F_SHAPE
        for v in h.image_shape:
            fields.uvar(v)
    if (h.num_images, h.batch_size) != (1, 1):
        flags |= _F_IMAGES
        fields.uvar(h.num_images).uvar(h.batch_size)
    if h.seed:
        flags |= _F_SEED
        fields.uvar(h.seed)
    if h.num_timesteps != COMPACT_TIMESTEPS:
        flags |= _F_T
        fields.uvar(h.num_timesteps)
    if ts != _compact_chain(h.num_timesteps):
        flags |= _F_CHAIN
        _write_chain(fields, h.num_timesteps, ts, geometric=True)
    if h.params:
        flags |= _F_PARAMS
        fields.varblob(h.params)
    code = _device_code(h.device_kind)
    host = 0 < code < 1 << (8 - _HOST_THREAD_BITS) and h.num_threads < 1 << _HOST_THREAD_BITS
    w = BlobWriter().raw(bytes.fromhex(h.fingerprint)).u8(flags | (_F_HOST if host else 0))
    w.raw(fields.getvalue())
    if host:
        return w.u8(code << _HOST_THREAD_BITS | h.num_threads).getvalue()
    _write_device(w, h.device_kind)
    return w.uvar(h.num_threads).getvalue()


def _read_compact(r: BlobReader, mode: str) -> Header:
    if mode not in COMPACT_MODES:
        raise DDPMCodecError(f"header: format {FORMAT_COMPACT} holds no {mode} files")
    fp = r.raw(COMPACT_ID_BYTES, "model id").hex()
    flags = r.u8("flags")
    if flags >= 128:
        raise DDPMCodecError(f"header: unknown flags {flags}")
    shape = COMPACT_SHAPE
    if flags & _F_SHAPE:
        shape = tuple(r.bounded(n, r.uvar(n), 1, MAX_SIDE) for n in ("channels", "height", "width"))
    n = batch = 1
    if flags & _F_IMAGES:
        n = r.bounded("number of images", r.uvar("number of images"), 1, MAX_IMAGES)
        batch = r.bounded("batch size", r.uvar("batch size"), 1, min(MAX_BATCH, n))
    seed = r.bounded("seed", r.uvar("seed"), 0, MAX_SEED) if flags & _F_SEED else 0
    T = (r.bounded("num_timesteps", r.uvar("num_timesteps"), 1, MAX_TIMESTEPS)
         if flags & _F_T else COMPACT_TIMESTEPS)
    ts = _read_chain(r, T, geometric=True) if flags & _F_CHAIN else _compact_chain(T)
    params = r.varblob("params", MAX_PARAMS_BYTES) if flags & _F_PARAMS else b""
    if flags & _F_HOST:
        host = r.u8("device kind and threads")
        dev, threads = _device_kind(host >> _HOST_THREAD_BITS), host & ((1 << _HOST_THREAD_BITS) - 1)
    else:
        dev = _read_device(r)
        threads = r.bounded("num_threads", r.uvar("num_threads"), 0, MAX_THREADS)
    return Header(mode, fp, shape, n, batch, seed, T, ts, dev, threads, b"", params,
                  FORMAT_COMPACT).validate()


# -- format 1 (read only) ------------------------------------------------------------------
def _read_body_v1(body: bytes) -> Header:
    r = BlobReader(body, "header")
    mode_id = r.u8("mode")
    if mode_id not in _MODE_NAMES or _MODE_NAMES[mode_id] in MODEL_FREE_MODES:
        raise DDPMCodecError(f"header: unknown codec mode {mode_id}")
    fp = r.raw(FINGERPRINT_BYTES, "fingerprint").hex()
    shape = (r.u16("channels"), r.u16("height"), r.u16("width"))
    n, batch, seed, T = r.u32("num_images"), r.u32("batch_size"), r.u64("seed"), r.u32("num_timesteps")
    r.bounded("num_timesteps", T, 1, MAX_TIMESTEPS)
    kind = r.u8("chain kind")
    K = r.bounded("num_steps", r.u32("num_steps"), 1, T)
    if kind == _CHAIN_FULL:
        if K != T:
            raise DDPMCodecError(f"header: a full chain has {T} steps, not {K}")
        ts = tuple(range(T))
    elif kind == _CHAIN_EVEN:
        ts = evenly_spaced(T, K)
    elif kind == _CHAIN_EXPLICIT:
        ts = tuple(int(t) for t in np.frombuffer(r.raw(4 * K, "timesteps"), dtype="<u4"))
    else:
        raise DDPMCodecError(f"header: unknown chain kind {kind}")
    dev_len = r.bounded("device kind length", r.u8("device kind length"), 1, MAX_DEVICE_CHARS)
    dev_raw = r.raw(dev_len, "device kind")
    try:
        dev = dev_raw.decode("ascii")
    except UnicodeDecodeError:
        raise DDPMCodecError("header: device kind is not ASCII") from None
    threads = r.u16("num_threads")
    checksum = r.raw(CHECKSUM_BYTES_V1, "pixel checksum")
    params = r.blob("params", MAX_PARAMS_BYTES)
    r.end()
    return Header(_MODE_NAMES[mode_id], fp, shape, n, batch, seed, T, ts, dev, threads,
                  checksum, params, 1).validate()


def _read_head_v1(data: bytes) -> tuple[Header, int, int, BlobReader]:
    r = BlobReader(data, "file")
    r.raw(len(MAGIC_V1), "magic")
    start = r.pos
    version = r.u16("format version")
    if version != 1:
        raise DDPMCodecError(f"file format version {version} is not supported by this ddpmcodec "
                             f"(it reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    body_len = r.u32("header length")
    if body_len > MAX_HEADER_BYTES:
        raise DDPMCodecError(f"file: header claims {body_len} bytes (at most {MAX_HEADER_BYTES})")
    body = r.raw(body_len, "header")
    head_crc = r.u32("header checksum")
    if crc32(data[start:start + 6 + body_len]) != head_crc:
        raise DDPMCodecError("corrupt file: the header checksum does not match")
    header = _read_body_v1(body)
    payload_len = r.u64("payload length")
    payload_crc = r.u32("payload checksum")
    return header, payload_len, payload_crc, r


# -- the whole file ------------------------------------------------------------------------
def pack(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload into the container bytes (format 2 or 3, as the
    header says)."""
    header.validate()
    if header.version == FORMAT_COMPACT:
        head = MAGIC + bytes([FORMAT_COMPACT << 4 | MODES[header.mode]]) + _write_compact(header)
        return head + bytes([crc16(head) & 0xFF]) + bytes(payload)
    if header.version != FORMAT_VERSION:
        raise DDPMCodecError(f"this ddpmcodec writes format versions {FORMAT_VERSION} and "
                             f"{FORMAT_COMPACT} only")
    head = MAGIC + bytes([FORMAT_VERSION << 4 | MODES[header.mode]]) + _write_body(header)
    payload = bytes(payload)
    tail = BlobWriter().u16(crc16(head)).uvar(len(payload)).u32(crc32(payload)).getvalue()
    return b"".join([head, tail, payload])


def header_size(header: Header, payload_bytes: int) -> int:
    """Bytes of a packed file that are not payload (the payload's length is among them)."""
    if header.version == FORMAT_COMPACT:
        return len(pack(header, b""))
    return len(pack(header, b"")) - 1 + len(BlobWriter().uvar(payload_bytes).getvalue())


def _read_head(data: bytes) -> tuple[Header, int | None, int | None, BlobReader]:
    """Magic, version, header (CRC-checked and validated), payload length and CRC (None,
    None in format 3: the payload runs to the end and checks itself); the reader is left
    at the payload's first byte."""
    if data[:len(MAGIC_V1)] == MAGIC_V1:
        return _read_head_v1(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise DDPMCodecError("not a ddpmcodec file (bad magic bytes)")
    r = BlobReader(data, "file")
    r.raw(len(MAGIC), "magic")
    vm = r.u8("format version")
    if vm >> 4 not in (FORMAT_VERSION, FORMAT_COMPACT):
        raise DDPMCodecError(f"file format version {vm >> 4} is not supported by this ddpmcodec "
                             f"(it reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    if vm & 0x0F not in _MODE_NAMES:
        raise DDPMCodecError(f"header: unknown codec mode {vm & 0x0F}")
    # parse first (every size bounded), then check the CRC of exactly what was parsed;
    # a parse error in a damaged header reports the damage, not the field
    r.what = "header"
    compact_format = vm >> 4 == FORMAT_COMPACT
    try:
        header = (_read_compact if compact_format else _read_body)(r, _MODE_NAMES[vm & 0x0F])
    except DDPMCodecError as exc:
        if "truncated" in str(exc):
            raise DDPMCodecError(f"file is truncated ({exc})") from None
        raise DDPMCodecError(f"corrupt file: the header is damaged ({exc})") from None
    end = r.pos
    r.what = "file"
    if compact_format:
        if r.u8("header checksum") != crc16(data[:end]) & 0xFF:
            raise DDPMCodecError("corrupt file: the header checksum does not match")
        return header, None, None, r
    if r.u16("header checksum") != crc16(data[:end]):
        raise DDPMCodecError("corrupt file: the header checksum does not match")
    payload_len = r.uvar("payload length")
    payload_crc = r.u32("payload checksum")
    return header, payload_len, payload_crc, r


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate container bytes -> (header, payload). DDPMCodecError on anything
    wrong; the payload's CRC is checked here, its content is the codec's business."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
    if payload_len is None:
        return header, r.raw(r.remaining, "payload")
    if payload_len != r.remaining:
        raise DDPMCodecError(f"file is truncated or padded: the header announces a payload of "
                             f"{payload_len} bytes, {r.remaining} follow")
    payload = r.raw(payload_len, "payload")
    if crc32(payload) != payload_crc:
        raise DDPMCodecError("corrupt file: the payload checksum does not match")
    return header, payload


def read_header(data: bytes) -> Header:
    """Only the validated header (still checks the payload's length and CRC)."""
    return unpack(data)[0]


def unpack_prefix(data: bytes) -> tuple[Header, bytes, bool]:
    """Parse a file that may be cut short after its header -> (header, available payload
    bytes, complete; None in format 3, whose payload has no length). For codecs whose payload decodes from any prefix (progressive):
    the header must be whole and valid (its CRC is checked); the payload's CRC is checked
    only when the file is complete, and then a mismatch is an error as in :func:`unpack`.
    A prefix's content is the codec's to verify."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
    if payload_len is None:  # format 3: whether the payload is whole is the codec's to say
        return header, r.raw(r.remaining, "payload"), None
    if r.remaining > payload_len:
        raise DDPMCodecError(f"file is padded: the header announces a payload of "
                             f"{payload_len} bytes, {r.remaining} follow")
    complete = r.remaining == payload_len
    payload = r.raw(r.remaining, "payload")
    if complete and crc32(payload) != payload_crc:
        raise DDPMCodecError("corrupt file: the payload checksum does not match")
    return header, payload, complete


MAX_FILE_BYTES = 1 << 34  # refuse to read anything larger into memory


def read_file(path) -> bytes:
    """The bytes of a compressed file, with clear errors (missing, not ours, too large)."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise DDPMCodecError(f"no such file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(MAGIC_V1))
        if start != MAGIC_V1 and start[:len(MAGIC)] != MAGIC:
            raise DDPMCodecError(f"{path} is not a ddpmcodec file (bad magic bytes)")
        if size > MAX_FILE_BYTES:
            raise DDPMCodecError(f"{path} is {size} bytes, more than this reader accepts")
        f.seek(0)
        return f.read()
