"""The constants of the file format: magic bytes, versions, modes, presets and the bounds
every header must satisfy (generous for real use, small enough that a hostile header
cannot make a reader allocate without bound)."""
from __future__ import annotations

MAGIC = b"\x89D"
MAGIC_V1 = b"\x89DDPMC\r\n"   # format 1 (read only); its third byte, "D", is no version byte
FORMAT_VERSION = 2
FORMAT_COMPACT = 3
FORMAT_MODEL_FREE = 4                # model-free files with a pixel checksum (webp-lossless)
FORMAT_CLASSICAL = 5                 # compact model-free files (classical-lossless)
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5)
COMPACT_MODES = ("progressive",)  # modes that write format 3
MODES = {"lossless": 1, "progressive": 2, "webp-lossless": 3, "classical-lossless": 4}
MODEL_FREE_MODES = ("webp-lossless", "classical-lossless")
FORMAT_OF_MODEL_FREE = {"webp-lossless": FORMAT_MODEL_FREE, "classical-lossless": FORMAT_CLASSICAL}
MODE_NAMES = {v: k for k, v in MODES.items()}
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
DEVICE_KINDS = ("cpu:DEFAULT", "cpu:AVX2", "cpu:AVX512", "cpu:ZVECTOR", "cpu:VSX", "cpu:SVE256",
                "exact-v1", "exact-v2")
# The device-kind field of an exact file names its numbers instead of a device: they are the
# same everywhere, so such a file has no device and no thread count (0). exact-v2: the
# exact-v1 network, and the chain's constants (sqrt(abar), the posterior's coefficients)
# correctly rounded. exact-v1 files took those roots from torch.sqrt, MKL's vector math,
# whose last bit depends on the processor (an Intel Xeon's and an AMD EPYC's differ in
# one of a 16-step chain's): they decode where the writer's roots are computed again.
EXACT_NETWORK = "exact-v2"
EXACT_V1 = "exact-v1"
EXACT_KINDS = (EXACT_V1, EXACT_NETWORK)
MAX_FILE_BYTES = 1 << 34  # refuse to read anything larger into memory
