"""The candidate generators by name, and the self-check a file's generator must pass."""
from __future__ import annotations

import zlib

import numpy as np

from ddpmcodec.codec.progressive.channel import generator_v2 as cand
from ddpmcodec.codec.progressive.channel.generator_v1 import GENERATOR_ID, candidate_normals
from ddpmcodec.codec.progressive.channel.generator_v2 import GENERATOR_V2
from ddpmcodec.codec.progressive.channel.keys import derive_key
from ddpmcodec.errors import DDPMCodecError

GENERATORS = (GENERATOR_ID, GENERATOR_V2)


def generator_check(generator: str = GENERATOR_ID) -> int:
    """CRC-32 of a fixed set of candidates of ``generator``, for a file to record: a
    decoder whose candidates differ fails it before any work. v1 depends on numpy's Philox
    and on the math library's log, cos and sin, so the check guards against another
    machine or library; v2 is exact IEEE float32 and integer arithmetic, the same on every
    machine and device (no device-kind guard needed), so its check only catches a broken
    implementation."""
    key = derive_key(12345, 6, 7)
    if generator == GENERATOR_ID:
        data = np.ascontiguousarray(candidate_normals(key, 3, 2, 7), dtype="<f8")
    elif generator == GENERATOR_V2:
        data = np.ascontiguousarray(cand.normals_numpy(int(key[0]), 3, 2, 7), dtype="<f4")
    else:
        raise DDPMCodecError(f"unknown candidate generator {generator!r} (known: "
                             f"{', '.join(GENERATORS)})")
    return zlib.crc32(data.tobytes()) & 0xFFFFFFFF
