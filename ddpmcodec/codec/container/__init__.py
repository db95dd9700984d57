"""The ddpmcodec file format: a compact versioned header, then the payload.

Every codec writes the same container; only the ``params`` blob (mode-specific, opaque
here) and the payload differ. "v" is an unsigned LEB128 varint (7 bits a byte, shortest
form only), integers are little-endian. Format version 2::

    size  field
    2     MAGIC b"\\x89D": identifies the format (format 1 began with the same two bytes)
    1     version (high nibble, 2) | mode (low nibble: 1 lossless, 2 progressive,
          3 webp-lossless, 4 classical-lossless)
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
decodes without a network) has only ``v*3 image shape, v num_images`` in format 2: files
written before format 4, read, no longer written; their payload CRC-32 is their only check.

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
                                                               (code 0: exact-v2)
    1     the low byte of the CRC-16 of every byte before it
    ...   payload, to the end of the file

The encoder sets bit 6 whenever it can (a device of DEVICE_KINDS up to code 7, or
exact-v2, and fewer than 32 threads);
files without it (before bit 6 existed) still read. A single-image file at the defaults
has 8 bytes of header. The model id is 2 bytes
because the codec checks every coded step's latents (a wrong model that shares the id,
probability 2^-16, fails the first step's check); there is no pixel checksum for the same
reason. The 8-bit header check (the low byte of the CRC-16, not a CRC-8 of its own)
catches every single-bit error (tests/test_container.py flips each bit of its headers) and
a random corruption with probability 255/256, but not every short burst: bursts of 3 to 7
bits slip through about once in 450 (84 of 37,559 measured on those headers); a corrupt
header that passes it changes the seed, chain or layout, which the first step's latent
check catches.

Format version 4, the model-free file with a pixel checksum (webp-lossless)::

    2     MAGIC
    1     version (high nibble, 4) | mode (3, webp-lossless)
    v*3   image shape    C, H, W
    v     num_images     N
    4     pixel checksum first 4 bytes of SHA-256 over the decoded uint8 NHWC pixels
    2     CRC-16 (CCITT) of every byte before it
    v     payload length P (must equal the bytes that follow)
    P     payload

The pixel checksum takes the place of format 2's payload CRC-32, so the file is no larger
(15 bytes of container for one CIFAR image) and its decoded pixels are checked as every
mode's are: a payload changed behind its checks (another image's stream) decodes to pixels
that fail it, where a CRC-32 recomputed with the payload passed. A damaged stream still
fails fast, in the WebP decoder, before any pixel is compared.

Format version 5, the compact model-free file (classical-lossless: each image the shorter
of its JPEG-XL and WebP-lossless stream)::

    2     MAGIC
    1     version (high nibble, 5) | mode (4, classical-lossless)
    1     flags          bit 0: v*3 image shape (preset 3, 32, 32); bit 1: v num_images
                         (preset 1; written, at least 2)
    4     pixel checksum first 4 bytes of SHA-256 over the decoded uint8 NHWC pixels
    ...   payload, to the end of the file

A one-image CIFAR-sized file has 8 bytes of container. There is no header CRC: only the
canonical form is read (a field is written exactly when it differs from its preset), a
damaged field makes the streams fail their size checks or decode to pixels that fail
the checksum, and the checksum covers every image the header announces.

Format version 1 (a 8-byte magic b"\\x89DDPMC\\r\\n", fixed-width fields, the whole
fingerprint, a 16-byte pixel checksum, two CRC-32s: ~130 bytes before any chain) is
still read, never written.

Parsing validates every field and bounds every size before anything is allocated from
it, and raises :class:`DDPMCodecError` with a one-line reason for anything wrong:
wrong magic, unknown version, truncation, bad checksums, out-of-range fields, trailing
bytes.

Where each part lives: :mod:`.limits` (magic, versions, modes, bounds), :mod:`.fields`
(BlobWriter/BlobReader, varints, CRCs, the pixel checksum), :mod:`.header` (the Header
dataclass and its validation), :mod:`.chains` (chain and variance-rule fields),
:mod:`.host` (device-kind fields), :mod:`.v1` to :mod:`.v5` (each
format generation's header body) and :mod:`.files` (pack / unpack of whole files).
"""
from ddpmcodec.codec.container.chains import evenly_spaced, geometric_timesteps
from ddpmcodec.codec.container.fields import BlobReader, BlobWriter, crc16, crc32, pixel_checksum
from ddpmcodec.codec.container.files import (
    header_size, pack, read_file, read_header, unpack, unpack_prefix)
from ddpmcodec.codec.container.header import Header, checksum_bytes, compact, model_free_header, model_id
from ddpmcodec.codec.container.limits import *  # noqa: F403 - the format's constants

__all__ = ["BlobReader", "BlobWriter", "Header", "checksum_bytes", "compact", "crc16", "crc32",
           "evenly_spaced", "geometric_timesteps", "header_size", "model_free_header",
           "model_id", "pack", "pixel_checksum", "read_file", "read_header", "unpack",
           "unpack_prefix"]
