"""Fuzzing the lossless decoder: thousands of mutated, truncated and forged files, each of
which must decode to the right images or raise DDPMCodecError -- never another exception,
a wrong image, a hang or an unbounded allocation.

A DDPMCodecError counts only when it was raised where the damage was detected: one that
was converted from another exception (a programming error caught and renamed "corrupt
file") fails the test, see :func:`assert_raised_where_detected`; and a bug inside the
decoder must surface as itself (test_bugs_in_the_decoder_are_not_corrupt_files).

Three kinds of damage: raw mutations (bit flips, byte edits, insertions, deletions,
splices, garbage) that the container's CRCs should catch; every truncation of a file;
and *forged* files whose payload or header was changed behind recomputed CRCs, so that
the ANS decoder, the network and the final checks really run on garbage.
"""
from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.lossless.codec import BitsBackCodec
from ddpmcodec.errors import DDPMCodecError

SEED = 20240611
MAX_SECONDS = 60.0  # a hang guard: one decode takes well under a second unloaded


@pytest.fixture(scope="module")
def files(tiny_model, test_images):
    """(codec, [(data, images)]): small files, 2..5 steps, one or two images."""
    codec = BitsBackCodec(tiny_model)
    rng = np.random.default_rng(SEED)
    noise = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    cases = [(test_images[:1], 2, 1, 0), (np.concatenate([test_images[1:2], noise]), 3, 1, 0),
             (test_images[2:4], 5, 2, 0), (test_images[4:7], 2, 2, 1)]  # the last: a WebP seed
    return codec, [(codec.encode(imgs, steps=k, batch_size=b, seed=i, method="bitsback",
                                 seed_images=m).data, imgs)
                   for i, (imgs, k, b, m) in enumerate(cases)]


# The only exceptions a DDPMCodecError may replace: those raised on bad data by name --
# constriction's RangeDecoder (AssertionError, see ddpmcodec/codec/coder.py), Python's
# ASCII decoding of header strings, and Pillow's WebP decoder on a damaged seed stream
# (OSError, SyntaxError, EOFError: codec/classical.py). Anything else was a converted bug.
DATA_ERRORS = (DDPMCodecError, AssertionError, UnicodeDecodeError, OSError, SyntaxError, EOFError)


def assert_raised_where_detected(exc: DDPMCodecError) -> None:
    """Fail unless ``exc`` was raised directly or from one of DATA_ERRORS (``raise ...
    from None`` hides the context from tracebacks, not from ``__context__``)."""
    ctx = exc.__cause__ or exc.__context__
    assert ctx is None or isinstance(ctx, DATA_ERRORS), (
        f"a {type(ctx).__name__} ({ctx}) was turned into DDPMCodecError({exc})")


def check(codec, data: bytes, images: np.ndarray) -> str:
    """Decode; return "ok" (right images) or "error" (DDPMCodecError raised where the
    damage was detected). Anything else fails."""
    t0 = time.perf_counter()
    try:
        out = codec.decode(bytes(data)).images
    except DDPMCodecError as exc:
        assert_raised_where_detected(exc)
        result = "error"
    else:
        assert np.array_equal(out, images), "a wrong image was returned"
        result = "ok"
    assert time.perf_counter() - t0 < MAX_SECONDS
    return result


def mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 7)
    if kind == 0:  # flip 1..8 bits
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(0, len(b))
            b[i] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # overwrite a run of bytes
        i = rng.integers(0, len(b))
        n = rng.integers(1, 17)
        b[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:  # insert bytes
        i = rng.integers(0, len(b) + 1)
        b[i:i] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
    elif kind == 3:  # delete bytes
        i = rng.integers(0, len(b))
        del b[i:i + rng.integers(1, 9)]
    elif kind == 4:  # duplicate a segment
        i, j = sorted(rng.integers(0, len(b), 2))
        b[j:j] = b[i:i + 64]
    elif kind == 5:  # extreme values in the header region
        i = rng.integers(8, min(len(b), 160))
        b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    else:  # pure garbage of a random length, sometimes with our magic
        n = int(rng.integers(0, 600))
        g = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        b = bytearray(container.MAGIC + g if rng.random() < 0.5 else g)
    return bytes(b)


def forge_payload(rng, data: bytes) -> bytes:
    header, payload = container.unpack(data)
    p = bytearray(payload)
    kind = rng.integers(0, 5)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(0, len(p))
            p[i] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # drop or add whole words at either end
        n = 4 * int(rng.integers(1, 50))
        p = p[n:] if rng.random() < 0.5 else p[:-n] if n < len(p) else p
        if rng.random() < 0.3:
            p += rng.integers(0, 256, 4 * int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
    elif kind == 2:  # swap two words
        i, j = 4 * rng.integers(0, len(p) // 4, 2)
        p[i:i + 4], p[j:j + 4] = p[j:j + 4], p[i:i + 4]
    elif kind == 3:  # random words of a random length
        p = bytearray(rng.integers(0, 256, 4 * int(rng.integers(0, 3000)), dtype=np.uint8).tobytes())
    else:  # random tail
        i = 4 * int(rng.integers(0, len(p) // 4))
        p[i:] = rng.integers(0, 256, len(p) - i, dtype=np.uint8).tobytes()
    return container.pack(header, bytes(p))


def forge_header(rng, data: bytes) -> bytes:
    header, payload = container.unpack(data)
    choices = [
        dict(num_images=int(rng.integers(1, container.MAX_IMAGES + 1))),
        dict(num_images=int(rng.integers(1, 5))),
        dict(batch_size=int(rng.integers(1, header.num_images + 1))),
        dict(seed=int(rng.integers(0, 1 << 62))),
        dict(timesteps=tuple(sorted(rng.choice(1000, int(rng.integers(1, 6)), replace=False).tolist()))),
        dict(num_threads=int(rng.integers(0, 9))),
        dict(pixel_checksum=rng.integers(0, 256, 4, dtype=np.uint8).tobytes()),
        dict(params=_mutate_params(rng, header.params)),
    ]
    change = choices[int(rng.integers(0, len(choices)))]
    if "num_images" in change:
        change["batch_size"] = int(rng.integers(1, min(change["num_images"], container.MAX_BATCH) + 1))
    try:
        return container.pack(dataclasses.replace(header, **change), payload)
    except DDPMCodecError:  # not even writable: the container refuses it
        return data[:10]


def _mutate_params(rng, params: bytes) -> bytes:
    p = bytearray(params)
    i = int(rng.integers(0, len(p)))
    p[i] = int(rng.integers(0, 256))
    return bytes(p)


def test_raw_mutations(files):
    codec, cases = files
    rng = np.random.default_rng(SEED)
    counts = {"ok": 0, "error": 0}
    for n in range(2400):
        data, images = cases[n % len(cases)]
        counts[check(codec, mutate(rng, data), images)] += 1
    assert counts["error"] > 2000  # nearly all damage is detected


def test_every_truncation(files):
    codec, cases = files
    data, images = cases[0]
    for n in range(len(data)):
        assert check(codec, data[:n], images) == "error"
    assert check(codec, data, images) == "ok"


def test_forged_payloads(files):
    """Garbage behind valid CRCs runs the whole decoder; the initial-words check and the
    pixel checksum must catch it."""
    codec, cases = files
    rng = np.random.default_rng(SEED + 1)
    results = [check(codec, forge_payload(rng, cases[n % len(cases)][0]), cases[n % len(cases)][1])
               for n in range(80)]
    assert results.count("error") >= 75


def test_forged_headers_are_bounded(files):
    """Hostile but well-formed headers: huge image counts, other chains, layouts, seeds,
    thread counts, checksums and parameters. Each ends quickly, in bounded memory."""
    codec, cases = files
    rng = np.random.default_rng(SEED + 2)
    tracemalloc.start()
    try:
        for n in range(60):
            data, images = cases[n % len(cases)]
            tracemalloc.reset_peak()
            check(codec, forge_header(rng, data), images)
            assert tracemalloc.get_traced_memory()[1] < 256 << 20
    finally:
        tracemalloc.stop()


# -- a bug is a traceback, not a corrupt file ----------------------------------------------------
@pytest.mark.parametrize("bug", [TypeError, AttributeError, ValueError])
def test_bugs_in_the_decoder_are_not_corrupt_files(files, monkeypatch, bug):
    """A programming error inside the entropy-decoding step of a valid file must propagate
    unchanged (the old decoder renamed TypeError, ValueError, ... "corrupt file")."""
    from ddpmcodec.codec.lossless import stack
    codec, cases = files
    data, images = cases[0]

    def broken_family(self, half):
        raise bug("a bug in the decoder")
    monkeypatch.setattr(stack.ChainStack, "_family", broken_family)
    with pytest.raises(bug, match="a bug in the decoder"):
        codec.decode(data)
    monkeypatch.undo()
    assert check(codec, data, images) == "ok"


def test_converted_errors_are_refused_by_the_fuzz_check():
    """The fuzz check itself: a DDPMCodecError converted from a bug fails it."""
    try:
        try:
            raise TypeError("a bug")
        except TypeError:
            raise DDPMCodecError("corrupt file") from None
    except DDPMCodecError as exc:
        with pytest.raises(AssertionError, match="TypeError"):
            assert_raised_where_detected(exc)
    try:
        raise DDPMCodecError("corrupt file: detected here")
    except DDPMCodecError as exc:
        assert_raised_where_detected(exc)
