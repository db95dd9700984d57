"""The ddpmcodec file format: a small versioned binary header, then the payload.

Every codec (lossless bits-back, progressive) writes the same container; only the
``params`` blob (mode-specific, opaque here) and the payload differ. All integers are
little-endian. Layout of format version 1::

    offset  size  field
    0       8     MAGIC  b"\\x89DDPMC\\r\\n"  (the PNG trick: catches text-mode mangling)
    8       2     u16 format version (1)
    10      4     u32 header body length L (bounded by MAX_HEADER_BYTES)
    14      L     header body (below)
    14+L    4     u32 CRC-32 of bytes [8, 14+L): version, length and body
    18+L    8     u64 payload length P (must equal the bytes that follow the next field)
    26+L    4     u32 CRC-32 of the payload
    30+L    P     payload (codec-specific; nothing may follow it)

Header body::

    u8    mode              1 = lossless, 2 = progressive
    8     fingerprint       the model fingerprint (16 hex digits) as 8 raw bytes
    u16*3 image shape       C, H, W
    u32   num_images        N
    u32   batch_size        images per network call; the decoder must use the same layout
    u64   seed              seed of everything random the codec draws (< 2^63)
    u32   num_timesteps     T, length of the model's full chain
    u8    chain kind        0 = full chain, 1 = evenly spaced K steps (Diffusion.with_steps),
                            2 = explicit list
    u32   num_steps         K
    u32*K timesteps         only for chain kind 2: strictly increasing indices in 0..T-1
    u8+s  device kind       length-prefixed printable ASCII: where the numbers were made,
                            e.g. "cpu:AVX2" or "cuda:NVIDIA H200;cpu:AVX512"
    u16   num_threads       CPU threads of the encoder (0: not recorded); float results
                            depend on how torch splits work, so the decoder uses the same
    16    pixel checksum    first 16 bytes of SHA-256 over the decoded uint8 NHWC pixels
    u32+s params            length-prefixed mode-specific blob (<= MAX_PARAMS_BYTES)

Parsing validates every field and bounds every size before anything is allocated from
it, and raises :class:`DDPMCodecError` with a one-line reason for anything wrong:
wrong magic, unknown version, truncation, bad checksums, out-of-range fields, trailing
bytes. The two CRCs catch accidental corruption early (before any network runs); the
pixel checksum is the end-to-end guarantee that a decoded image is the encoded one.

:class:`BlobWriter` / :class:`BlobReader` are the bounded little-endian field helpers used
for the header and available to codecs for their ``params`` blob and payload framing.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ddpmcodec.errors import DDPMCodecError

MAGIC = b"\x89DDPMC\r\n"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MODES = {"lossless": 1, "progressive": 2}
_MODE_NAMES = {v: k for k, v in MODES.items()}

# Bounds a header must satisfy. They are generous for real use and small enough that a
# hostile header cannot make a reader allocate without bound.
MAX_HEADER_BYTES = 1 << 20          # the explicit timestep list dominates: 4*T bytes
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
CHECKSUM_BYTES = 16
FINGERPRINT_BYTES = 8

_CHAIN_FULL, _CHAIN_EVEN, _CHAIN_EXPLICIT = 0, 1, 2


def crc32(data) -> int:
    """CRC-32 of bytes (or a buffer) as an unsigned 32-bit int: the one checksum of the
    format's framing (header, payload, progressive packets, generator check)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def pixel_checksum(images: np.ndarray) -> bytes:
    """16-byte SHA-256 prefix over uint8 NHWC pixels (with their shape, so a reshaped
    array of the same bytes does not match)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DDPMCodecError(f"pixel checksums are over uint8 NHWC arrays, got {images.dtype} {images.shape}")
    h = hashlib.sha256(struct.pack("<4Q", *images.shape))
    h.update(images.tobytes())
    return h.digest()[:CHECKSUM_BYTES]


def evenly_spaced(num_timesteps: int, steps: int) -> tuple[int, ...]:
    """Diffusion.with_steps' choice of timesteps, without importing torch."""
    if steps == 1:
        return (num_timesteps - 1,)
    stride = (num_timesteps - 1) / (steps - 1)
    return tuple(int(round(k * stride)) for k in range(steps))


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

    def batches(self) -> list[tuple[int, int]]:
        """(start, stop) image ranges of the batch layout, in encoding order."""
        return [(s, min(s + self.batch_size, self.num_images))
                for s in range(0, self.num_images, self.batch_size)]

    def validate(self) -> "Header":
        """Raise DDPMCodecError unless every field is in range (also used before writing)."""
        r = BlobReader(b"", "header")
        if self.mode not in MODES:
            raise DDPMCodecError(f"unknown codec mode {self.mode!r}; known: {', '.join(MODES)}")
        if len(self.fingerprint) != 2 * FINGERPRINT_BYTES or any(
                ch not in "0123456789abcdef" for ch in self.fingerprint):
            raise DDPMCodecError(f"a model fingerprint is 16 lowercase hex digits, got {self.fingerprint!r}")
        if len(self.image_shape) != 3:
            raise DDPMCodecError(f"image shape must be (C, H, W), got {self.image_shape}")
        c, h, w = (int(v) for v in self.image_shape)
        r.bounded("channels", c, 1, MAX_CHANNELS)
        r.bounded("height", h, 1, MAX_SIDE)
        r.bounded("width", w, 1, MAX_SIDE)
        r.bounded("dims per image", c * h * w, 1, MAX_DIMS)
        r.bounded("number of images", self.num_images, 1, MAX_IMAGES)
        r.bounded("total pixels", self.num_images * c * h * w, 1, MAX_TOTAL_PIXELS)
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
        if len(self.pixel_checksum) != CHECKSUM_BYTES:
            raise DDPMCodecError(f"header: the pixel checksum must be {CHECKSUM_BYTES} bytes")
        if len(self.params) > MAX_PARAMS_BYTES:
            raise DDPMCodecError(f"header: params blob of {len(self.params)} bytes "
                                 f"(at most {MAX_PARAMS_BYTES})")
        if self.version not in SUPPORTED_VERSIONS:
            raise DDPMCodecError(f"format version {self.version} is not supported")
        return self

    def summary(self) -> dict:
        """JSON-able description (for `--json` output and error messages)."""
        return {"format_version": self.version, "mode": self.mode, "fingerprint": self.fingerprint,
                "image_shape": list(self.image_shape), "num_images": self.num_images,
                "batch_size": self.batch_size, "seed": self.seed,
                "num_timesteps": self.num_timesteps, "num_steps": self.num_steps,
                "device_kind": self.device_kind, "num_threads": self.num_threads,
                "pixel_checksum": self.pixel_checksum.hex(),
                "params_bytes": len(self.params)}


def _write_body(h: Header) -> bytes:
    w = BlobWriter()
    w.u8(MODES[h.mode]).raw(bytes.fromhex(h.fingerprint))
    for v in h.image_shape:
        w.u16(int(v))
    w.u32(h.num_images).u32(h.batch_size).u64(h.seed).u32(h.num_timesteps)
    ts = tuple(int(t) for t in h.timesteps)
    if ts == tuple(range(h.num_timesteps)):
        w.u8(_CHAIN_FULL).u32(len(ts))
    elif ts == evenly_spaced(h.num_timesteps, len(ts)):
        w.u8(_CHAIN_EVEN).u32(len(ts))
    else:
        w.u8(_CHAIN_EXPLICIT).u32(len(ts))
        w.raw(np.asarray(ts, dtype="<u4").tobytes())
    dev = h.device_kind.encode("ascii")
    w.u8(len(dev)).raw(dev).u16(h.num_threads).raw(h.pixel_checksum).blob(h.params)
    return w.getvalue()


def _read_body(body: bytes, version: int) -> Header:
    r = BlobReader(body, "header")
    mode_id = r.u8("mode")
    if mode_id not in _MODE_NAMES:
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
    checksum = r.raw(CHECKSUM_BYTES, "pixel checksum")
    params = r.blob("params", MAX_PARAMS_BYTES)
    r.end()
    return Header(_MODE_NAMES[mode_id], fp, shape, n, batch, seed, T, ts, dev, threads,
                  checksum, params, version).validate()


# -- the whole file ------------------------------------------------------------------------
def pack(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload into the container bytes."""
    header.validate()
    if header.version != FORMAT_VERSION:
        raise DDPMCodecError(f"this ddpmcodec writes format version {FORMAT_VERSION} only")
    body = _write_body(header)
    if len(body) > MAX_HEADER_BYTES:
        raise DDPMCodecError(f"header of {len(body)} bytes exceeds {MAX_HEADER_BYTES}")
    head = struct.pack("<HI", header.version, len(body)) + body
    payload = bytes(payload)
    return b"".join([MAGIC, head, struct.pack("<I", crc32(head)),
                     struct.pack("<QI", len(payload), crc32(payload)), payload])


def header_size(header: Header) -> int:
    """Bytes of a packed file that are not payload."""
    return len(MAGIC) + 6 + len(_write_body(header)) + 4 + 12


def _read_head(data: bytes) -> tuple[Header, int, int, BlobReader]:
    """Magic, version, header (CRC-checked and validated), payload length and CRC; the
    reader is left at the payload's first byte."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise DDPMCodecError("not a ddpmcodec file (bad magic bytes)")
    r = BlobReader(data, "file")
    r.raw(len(MAGIC), "magic")
    start = r.pos
    version = r.u16("format version")
    if version not in SUPPORTED_VERSIONS:
        raise DDPMCodecError(f"file format version {version} is not supported by this ddpmcodec "
                             f"(it reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    body_len = r.u32("header length")
    if body_len > MAX_HEADER_BYTES:
        raise DDPMCodecError(f"file: header claims {body_len} bytes (at most {MAX_HEADER_BYTES})")
    body = r.raw(body_len, "header")
    head_crc = r.u32("header checksum")
    if crc32(data[start:start + 6 + body_len]) != head_crc:
        raise DDPMCodecError("corrupt file: the header checksum does not match")
    header = _read_body(body, version)
    payload_len = r.u64("payload length")
    payload_crc = r.u32("payload checksum")
    return header, payload_len, payload_crc, r


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate container bytes -> (header, payload). DDPMCodecError on anything
    wrong; the payload's CRC is checked here, its content is the codec's business."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
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
    bytes, complete). For codecs whose payload decodes from any prefix (progressive):
    the header must be whole and valid (its CRC is checked); the payload's CRC is checked
    only when the file is complete, and then a mismatch is an error as in :func:`unpack`.
    A prefix's content is the codec's to verify."""
    data = bytes(data)
    header, payload_len, payload_crc, r = _read_head(data)
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
        if f.read(len(MAGIC)) != MAGIC:
            raise DDPMCodecError(f"{path} is not a ddpmcodec file (bad magic bytes)")
        if size > MAX_FILE_BYTES:
            raise DDPMCodecError(f"{path} is {size} bytes, more than this reader accepts")
        f.seek(0)
        return f.read()
