"""Fuzzing the decoders of all three modes: mutated, truncated and forged files, each of
which must decode to the right images or raise DDPMCodecError -- never another exception,
a wrong image, a hang or an unbounded allocation.

A DDPMCodecError counts only when it was raised where the damage was detected: one that
was converted from another exception (a programming error caught and renamed "corrupt
file") fails the test, see :func:`assert_raised_where_detected`; and a bug inside the
decoder must surface as itself (test_bugs_in_the_decoder_are_not_corrupt_files).

Kinds of damage, per codec (lossless bits-back, progressive, webp-lossless): *plain*
mutations (bit flips, byte edits, insertions, deletions, splices, garbage) that the
container's checks should catch; every truncation of a file (a whole file was asked for,
so a cut one is an error, never a shorter prefix); and *forged* files whose header,
parameters or payload were changed behind recomputed CRCs, so that the entropy decoders,
the network and the final checks really run on garbage. Every file is counted
(:class:`Tally`: files tried, plain or forged; how many got past the container's header
checks; errors and right images), and no case may end in a wrong image.
``benchmarks/fuzz_codecs.py`` runs the same fuzz at larger counts and writes the counts
to benchmarks/results/codec_fuzz_counts.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter

import imagecodecs
import numpy as np
import pytest

from ddpmcodec.codec import container
from ddpmcodec.codec.lossless.codec import BitsBackCodec
from ddpmcodec.codec.lossless.params import LosslessParams, max_initial_words
from ddpmcodec.errors import DDPMCodecError

SEED = 20240611
MAX_SECONDS = 60.0  # a hang guard: one decode takes well under a second unloaded
PROGRESSIVE_FAST = dict(chunk_bits=6.0, margin_bits=2.0, max_log2=12)


# -- the files ------------------------------------------------------------------------------------
def lossless_cases(model, images):
    """[(data, images)]: small bits-back files, 2..5 steps, one to three images."""
    codec = BitsBackCodec(model)
    noise = np.random.default_rng(SEED).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    cases = [(images[:1], 2, 1, 0), (np.concatenate([images[1:2], noise]), 3, 1, 0),
             (images[2:4], 5, 2, 0), (images[4:7], 2, 2, 1)]  # the last: a WebP seed
    return [(codec.encode(x, steps=k, batch_size=b, seed=i, method="bitsback",
                          seed_images=m).data, x) for i, (x, k, b, m) in enumerate(cases)]


def progressive_cases(model, images):
    """[(data, images)]: small progressive files (format 3) and their full decodes."""
    from ddpmcodec.codec.progressive.codec import ProgressiveCodec
    codec = ProgressiveCodec(model)
    encs = [codec.encode(images[7:8], steps=3, batch_size=1, seed=0, **PROGRESSIVE_FAST),
            codec.encode(images[8:10], steps=2, batch_size=2, seed=1, variance="model",
                         **PROGRESSIVE_FAST)]
    return [(e.data, codec.decode(e.data).images) for e in encs]


def webp_cases(images):
    """[(data, images)]: webp-lossless files of format 4 (pixel checksum), one of format 2."""
    from ddpmcodec.codec.lossless import webp
    codec = webp.WebPLosslessCodec(None)
    new = [(codec.encode(x).data, x) for x in (images[10:11], images[11:13])]
    header, payload = container.unpack(new[0][0])
    old = container.pack(container.model_free_header(header.mode, header.image_shape, 1), payload)
    return new + [(old, images[10:11])]


def classical_cases(images):
    """[(data, images)]: classical-lossless files (format 5) of one and two images, and one
    of WebP-lossless streams only."""
    from ddpmcodec.codec.lossless import classical
    codec = classical.ClassicalLosslessCodec(None)
    return [(codec.encode(x).data, x) for x in (images[10:11], images[11:13])] + [
        (codec.encode(images[13:14], codecs=("webp",)).data, images[13:14])]


def decoder(name, model):
    """The decode function of a codec."""
    if name == "lossless":
        return BitsBackCodec(model).decode
    if name == "progressive":
        from ddpmcodec.codec.progressive.codec import ProgressiveCodec
        return ProgressiveCodec(model).decode
    if name == "classical-lossless":
        from ddpmcodec.codec.lossless.classical import ClassicalLosslessCodec
        return ClassicalLosslessCodec(None).decode
    from ddpmcodec.codec.lossless.webp import WebPLosslessCodec
    return WebPLosslessCodec(None).decode


@pytest.fixture(scope="module")
def files(tiny_model, test_images):
    """The lossless codec and its cases (the tests below that need no other codec)."""
    return BitsBackCodec(tiny_model), lossless_cases(tiny_model, test_images)


@pytest.fixture(scope="module")
def all_cases(tiny_model, test_images, files):
    return {"lossless": files[1], "progressive": progressive_cases(tiny_model, test_images),
            "webp-lossless": webp_cases(test_images),
            "classical-lossless": classical_cases(test_images)}


# The only exceptions a DDPMCodecError may replace: those raised on bad data by name --
# constriction's RangeDecoder (AssertionError, see ddpmcodec/codec/entropy/coder.py),
# Python's ASCII decoding of header strings, and Pillow's WebP decoder on a damaged stream
# (OSError, SyntaxError, EOFError: ddpmcodec/codec/lossless/webp.py), and libjxl's on a
# damaged JPEG-XL stream (imagecodecs' JpegxlError and RuntimeError, caught around its one
# decode call: ddpmcodec/codec/lossless/jxl.py). Anything else was a converted bug.
DATA_ERRORS = (DDPMCodecError, AssertionError, UnicodeDecodeError, OSError, SyntaxError, EOFError,
               imagecodecs.JpegxlError, RuntimeError)


def assert_raised_where_detected(exc: DDPMCodecError) -> None:
    """Fail unless ``exc`` was raised directly or from one of DATA_ERRORS (``raise ...
    from None`` hides the context from tracebacks, not from ``__context__``)."""
    ctx = exc.__cause__ or exc.__context__
    assert ctx is None or isinstance(ctx, DATA_ERRORS), (
        f"a {type(ctx).__name__} ({ctx}) was turned into DDPMCodecError({exc})")


# -- counting -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    """What the files of one codec did: tried, past the container's header checks, and
    the outcome, per kind of damage ("plain", "forged", "truncated"); the errors by the
    start of their message."""

    tried: Counter = dataclasses.field(default_factory=Counter)
    past_header: Counter = dataclasses.field(default_factory=Counter)
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    errors: Counter = dataclasses.field(default_factory=Counter)

    def add(self, kind: str, past: bool, outcome: str, message: str = "") -> None:
        self.tried[kind] += 1
        self.past_header[kind] += int(past)
        self.outcomes[f"{kind}:{outcome}"] += 1
        if message:
            self.errors[" ".join(message.split(":")[0].split()[:6])] += 1

    def to_dict(self) -> dict:
        return {"tried": dict(self.tried), "past_header": dict(self.past_header),
                "outcomes": dict(self.outcomes), "wrong_images": self.outcomes_of("wrong"),
                "errors": dict(self.errors.most_common())}

    def outcomes_of(self, outcome: str) -> int:
        return sum(v for k, v in self.outcomes.items() if k.endswith(":" + outcome))


def _past_header(data: bytes) -> bool:
    try:
        container.unpack(bytes(data))
    except DDPMCodecError:
        return False
    return True


def check(decode, data: bytes, images: np.ndarray, tally: Tally | None = None,
          kind: str = "plain", strict: bool = True) -> str:
    """Decode; return "right" (the right images) or "error" (DDPMCodecError raised where
    the damage was detected). A wrong image (unless not ``strict``: then "wrong", counted)
    or any other exception fails."""
    t0 = time.perf_counter()
    message = ""
    try:
        out = decode(bytes(data)).images
    except DDPMCodecError as exc:
        assert_raised_where_detected(exc)
        result, message = "error", str(exc)
    else:
        result = "right" if np.array_equal(out, images) else "wrong"
    assert time.perf_counter() - t0 < MAX_SECONDS
    if tally is not None:
        tally.add(kind, _past_header(data), result, message)
    assert result != "wrong" or not strict, f"a wrong image was returned ({kind})"
    return result


# -- damage ---------------------------------------------------------------------------------------
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
        i = rng.integers(3, min(len(b), 160))
        b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    else:  # pure garbage of a random length, sometimes with our magic
        n = int(rng.integers(0, 600))
        g = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        b = bytearray(container.MAGIC + g if rng.random() < 0.5 else g)
    return bytes(b)


def forge_payload(rng, data: bytes, word: int = 4) -> bytes:
    """The payload damaged behind a recomputed CRC (``word``: its unit, 4 for the ANS
    stack's words, 1 for byte streams)."""
    header, payload = container.unpack(data)
    p = bytearray(payload)
    kind = rng.integers(0, 5)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(0, len(p))
            p[i] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # drop or add whole words at either end
        n = word * int(rng.integers(1, 50))
        p = p[n:] if rng.random() < 0.5 else p[:-n] if n < len(p) else p
        if rng.random() < 0.3:
            p += rng.integers(0, 256, word * int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
    elif kind == 2:  # swap two words
        i, j = word * rng.integers(0, len(p) // word, 2)
        p[i:i + word], p[j:j + word] = p[j:j + word], p[i:i + word]
    elif kind == 3:  # random words of a random length
        p = bytearray(rng.integers(0, 256, word * int(rng.integers(0, 3000)), dtype=np.uint8).tobytes())
    else:  # random tail
        i = word * int(rng.integers(0, len(p) // word))
        p[i:] = rng.integers(0, 256, len(p) - i, dtype=np.uint8).tobytes()
    return container.pack(header, bytes(p))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def forge_header(rng, data: bytes) -> bytes:
    """A hostile but well-formed header of a model mode: other image counts, layouts,
    seeds, chains, thread counts, checksums and parameters, behind a recomputed CRC."""
    header, payload = container.unpack(data)
    T = header.num_timesteps
    choices = [
        dict(num_images=int(rng.integers(1, container.MAX_IMAGES + 1))),
        dict(num_images=int(rng.integers(1, 5))),
        dict(batch_size=int(rng.integers(1, header.num_images + 1))),
        dict(seed=int(rng.integers(0, 1 << 62))),
        dict(timesteps=tuple(sorted({0, T - 1} | set(rng.choice(T, int(rng.integers(0, 4)),
                                                                  replace=False).tolist())))),
        dict(timesteps=tuple(sorted(rng.choice(T, int(rng.integers(1, 6)), replace=False).tolist()))),
        dict(num_threads=int(rng.integers(0, _cpus() + 1))),
        dict(num_threads=int(rng.integers(_cpus() + 1, container.MAX_THREADS + 1))),
        dict(params=_mutate_params(rng, header.params)),
    ]
    if header.version != container.FORMAT_COMPACT:
        choices.append(dict(pixel_checksum=rng.integers(0, 256, 4, dtype=np.uint8).tobytes()))
    change = choices[int(rng.integers(0, len(choices)))]
    if "num_images" in change:
        change["batch_size"] = int(rng.integers(1, min(change["num_images"], container.MAX_BATCH) + 1))
    try:
        return container.pack(dataclasses.replace(header, **change), payload)
    except DDPMCodecError:  # not even writable: the container refuses it
        return data[:10]


def _mutate_params(rng, params: bytes) -> bytes:
    p = bytearray(params or b"\x03\x00\x00\x02\x00\x00\x00")
    i = int(rng.integers(0, len(p)))
    p[i] = int(rng.integers(0, 256))
    return bytes(p)


def forge_lossless_params(rng, data: bytes) -> bytes:
    """Valid lossless parameters with other values: initial and regenerated words, seeds,
    layouts, grids (the params blob and every CRC recomputed)."""
    header, payload = container.unpack(data)
    p = LosslessParams.unpack(header.params, header)
    cap = max_initial_words(header.batch_size, header.dims)
    W = int(rng.integers(4, cap + 1))
    choices = [dict(initial_words=W, prefix_words=int(rng.integers(0, W + 1))),
               dict(initial_words=cap, prefix_words=cap),
               dict(prefix_words=int(rng.integers(0, p.initial_words + 1))),
               dict(grid_log2=int(rng.integers(0, 6))), dict(support_sigmas=float(rng.integers(2, 9))),
               dict(seed_lengths=tuple(int(v) for v in rng.integers(1, 4000, int(rng.integers(0, 3))))),
               dict(terminator=not p.terminator)]
    change = choices[int(rng.integers(0, len(choices)))]
    q = dataclasses.replace(p, **change)
    if q.seed_lengths and not q.layout:
        q = dataclasses.replace(q, layout=(1,) * (header.num_images - len(q.seed_lengths)))
    if not q.seed_lengths:
        q = dataclasses.replace(q, layout=())
    try:
        return container.pack(dataclasses.replace(header, params=q.validate(header).pack()), payload)
    except DDPMCodecError:
        return data[:12]


def forge_progressive_payload(rng, data: bytes) -> bytes:
    """Format 3's payload has no CRC of its own: damage it and keep the header intact."""
    header, payload = container.unpack(data)
    p = bytearray(payload)
    kind = rng.integers(0, 4)
    if kind == 0:  # flips anywhere in the stream
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(0, len(p))
            p[i] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # the last step's bytes replaced
        i = int(rng.integers(len(p) // 2, len(p)))
        p[i:] = rng.integers(0, 256, len(p) - i, dtype=np.uint8).tobytes()
    elif kind == 2:  # bytes swapped
        i, j = rng.integers(0, len(p), 2)
        p[i], p[j] = p[j], p[i]
    else:  # the stream of another file (another seed or image)
        p = bytearray(rng.integers(0, 256, int(rng.integers(1, 2 * len(p))), dtype=np.uint8).tobytes())
    return container.pack(header, bytes(p))


def forge_webp(rng, data: bytes, images: np.ndarray) -> bytes:
    """A webp-lossless or classical-lossless file with other streams, counts or checksums
    behind valid checks."""
    from ddpmcodec.codec.lossless import classical, webp
    from ddpmcodec.codec.lossless.streams import unpack_streams
    header, payload = container.unpack(data)
    if header.mode == "webp-lossless":
        streams, make = webp.unpack_streams(payload, header.num_images), webp.webp_stream
    else:
        streams = unpack_streams(payload, header.num_images, "streams",
                                 classical.LEAST_STREAM_BYTES)
        make = classical.classical_stream
    kind = rng.integers(0, 5)
    if kind == 0:  # a flipped bit in a stream
        s = int(rng.integers(0, len(streams)))
        b = bytearray(streams[s])
        b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        streams[s] = bytes(b)
    elif kind == 1:  # another image's stream
        other = np.ascontiguousarray(np.roll(images[0], int(rng.integers(1, 32)), axis=0))
        streams[int(rng.integers(0, len(streams)))] = make(other)
    elif kind == 2:  # the streams in another order
        streams = streams[::-1] if len(streams) > 1 else streams + streams
    elif kind == 3:  # another image count
        header = dataclasses.replace(header, num_images=int(rng.integers(1, 1 << int(rng.integers(1, 21)))))
    else:  # another pixel checksum
        header = dataclasses.replace(header, pixel_checksum=rng.bytes(len(header.pixel_checksum)))
    try:
        return container.pack(header, webp.pack_streams(streams))
    except DDPMCodecError:
        return data[:9]


def forgers(name: str):
    """The forging functions of a codec: f(rng, data, images) -> bytes."""
    if name == "lossless":
        return [lambda r, d, x: forge_payload(r, d), lambda r, d, x: forge_header(r, d),
                lambda r, d, x: forge_lossless_params(r, d)]
    if name == "progressive":
        return [lambda r, d, x: forge_progressive_payload(r, d), lambda r, d, x: forge_header(r, d)]
    return [forge_webp]


def fuzz(name: str, model, cases, plain: int, forged: int, seed: int = SEED,
         tally: Tally | None = None, cuts: int | None = None, strict: bool = True,
         wrap=None) -> Tally:
    """``plain`` mutated and ``forged`` forged files of a codec's cases, and truncations
    of its first file (every one, or ``cuts`` of them: its first bytes and random
    lengths); each is an error or the right images, and a truncation an error (not
    ``strict``: wrong images and right truncations are counted instead). ``wrap``: a
    function of the decode function that returns the one to call (to measure it)."""
    tally = Tally() if tally is None else tally
    decode = decoder(name, model) if wrap is None else wrap(decoder(name, model))
    rng = np.random.default_rng(seed)
    for n in range(plain):
        data, images = cases[n % len(cases)]
        check(decode, mutate(rng, data), images, tally, "plain", strict)
    kinds = forgers(name)
    for n in range(forged):
        data, images = cases[n % len(cases)]
        if name == "webp-lossless" and container.read_header(data).version == 2:
            data, images = cases[0]  # format 2 has no pixel check: forgeries pass its CRC
        check(decode, kinds[n % len(kinds)](rng, data, images), images, tally, "forged", strict)
    data, images = cases[0]
    lengths = range(len(data)) if cuts is None else sorted(
        set(range(min(cuts, 16))) | set(rng.integers(0, len(data), cuts).tolist()))
    for n in lengths:
        assert check(decode, data[:n], images, tally, "truncated", strict) == "error" or not strict
    assert check(decode, data, images) == "right"
    return tally


# -- the tests ------------------------------------------------------------------------------------
# (plain, forged, truncations: None = every one) per codec in the default suite
COUNTS = {"lossless": (240, 45, None), "progressive": (12, 12, 12),
          "webp-lossless": (300, 150, None), "classical-lossless": (300, 150, None)}


@pytest.mark.parametrize("name", list(COUNTS))
def test_fuzz(name, tiny_model, all_cases):
    """Plain, forged and truncated files of each codec: no wrong image, and the forged
    files reach the decoders (past the container's header checks)."""
    plain, forged, cuts = COUNTS[name]
    t = fuzz(name, tiny_model, all_cases[name], plain, forged, cuts=cuts)
    print(name, json.dumps(t.to_dict()))
    assert t.outcomes_of("wrong") == 0
    assert t.outcomes["plain:error"] >= 0.75 * plain  # nearly all raw damage is detected
    assert t.past_header["forged"] >= 0.5 * forged  # the forged files reach the decoder
    assert t.outcomes["forged:error"] >= 0.75 * forged


LARGE_COUNTS = {"lossless": (2400, 600, None), "progressive": (300, 300, 300),
                "webp-lossless": (3000, 1500, None), "classical-lossless": (3000, 1500, None)}


@pytest.mark.slow
def test_fuzz_large(tiny_model, all_cases):
    """benchmarks/fuzz_codecs.py's counts (see its results JSON): no wrong image."""
    for name, (plain, forged, cuts) in LARGE_COUNTS.items():
        t = fuzz(name, tiny_model, all_cases[name], plain, forged, SEED + 7, cuts=cuts)
        assert t.outcomes_of("wrong") == 0, (name, t.to_dict())


def test_forged_headers_are_bounded(tiny_model, all_cases):
    """Hostile but well-formed headers and parameters (huge image counts, other layouts,
    initial words, seeds and streams): each ends quickly, in bounded memory."""
    rng = np.random.default_rng(SEED + 2)
    tracemalloc.start()
    try:
        for name in ("lossless", "progressive", "webp-lossless", "classical-lossless"):
            decode = decoder(name, tiny_model)
            for n in range(12):
                data, images = all_cases[name][n % 2]
                forged = (forge_webp(rng, data, images) if name.endswith("-lossless") else
                          forge_lossless_params(rng, data) if n % 2 and name == "lossless" else
                          forge_header(rng, data))
                tracemalloc.reset_peak()
                check(decode, forged, images)
                assert tracemalloc.get_traced_memory()[1] < 256 << 20
    finally:
        tracemalloc.stop()


_PEAK = """
import json, resource, sys, time
from ddpmcodec.codec.api import decode_bytes
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.io.models import load_model
model = load_model(sys.argv[1])
def run(path):
    data = open(path, "rb").read()
    t0 = time.perf_counter()
    try:
        decode_bytes(model, data)
        error = None
    except DDPMCodecError as exc:
        error = str(exc)
    return error, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name in sys.argv[2:]:
    _, _, warm = run(name + ".genuine")  # first: imports and a real decode's peak
    error, seconds, peak = run(name + ".forged")
    out[name] = {"error": error, "seconds": seconds, "extra_peak_mb": (peak - warm) / 1024}
print(json.dumps(out))
"""


def forged_counts(all_cases) -> dict:
    """Files whose headers claim far more than their payloads can hold, per codec."""
    out = {}
    data, _ = all_cases["progressive"][0]
    header, payload = container.unpack(data)
    # 87381 images of 3072 float64 values: the most the 2^28-value bound let through
    many = dataclasses.replace(header, num_images=87381, batch_size=1)
    out["progressive"] = container.pack(many, payload[:29 - container.header_size(many, 0)])
    data, _ = all_cases["lossless"][0]
    header, payload = container.unpack(data)
    big = dataclasses.replace(header, num_images=1024, batch_size=1024)
    W = max_initial_words(1024, header.dims)  # every initial word "regenerated": none stored
    params = dataclasses.replace(LosslessParams.unpack(header.params, header), initial_words=W,
                                 prefix_words=W, layout=())
    out["lossless"] = container.pack(dataclasses.replace(big, params=params.pack()), payload[-64:])
    data, _ = all_cases["webp-lossless"][0]
    header, payload = container.unpack(data)
    out["webp-lossless"] = container.pack(dataclasses.replace(header, num_images=1 << 20), payload)
    data, _ = all_cases["classical-lossless"][0]
    header, payload = container.unpack(data)
    out["classical-lossless"] = container.pack(dataclasses.replace(header, num_images=1 << 20),
                                               payload)
    return out


def measure_forged_counts(ckpt, all_cases, folder) -> dict:
    """{codec: error, seconds, extra_peak_mb} of decoding its forged file in a fresh
    process, after the genuine one (peak RSS beyond that of the genuine decode)."""
    names = []
    for name, forged in forged_counts(all_cases).items():
        (folder / f"{name}.genuine").write_bytes(all_cases[name][0][0])
        (folder / f"{name}.forged").write_bytes(forged)
        names.append(str(folder / name))
    out = subprocess.run([sys.executable, "-c", _PEAK, str(ckpt), *names],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    return {os.path.basename(k): dict(v, bytes=len(forged_counts(all_cases)[os.path.basename(k)]))
            for k, v in got.items()}


def test_forged_image_counts_fail_fast_in_small_memory(tiny_ckpt, all_cases, tmp_path):
    """29 bytes that claim 87381 images (progressive), a batch of 1024 images on
    regenerated initial words (lossless) and 2^20 streams (webp-lossless): each decoder
    refuses its file from the file's size before it makes any array (peak RSS of a fresh
    process beyond that of decoding the genuine file)."""
    got = measure_forged_counts(tiny_ckpt, all_cases, tmp_path)
    print(json.dumps(got))
    assert got["progressive"]["bytes"] == 29
    for name, r in got.items():
        assert r["error"] is not None and r["seconds"] < 2.0 and r["extra_peak_mb"] < 32, (name, r)


# -- a bug is a traceback, not a corrupt file ----------------------------------------------------
@pytest.mark.parametrize("bug", [TypeError, AttributeError, ValueError])
def test_bugs_in_the_decoder_are_not_corrupt_files(files, monkeypatch, bug):
    """A programming error inside the entropy-decoding step of a valid file must propagate
    unchanged (the old decoder renamed TypeError, ValueError, ... "corrupt file")."""
    from ddpmcodec.codec.lossless import stack
    codec, cases = files
    data, images = cases[0]

    def broken_pop(self, half, mean, std):
        raise bug("a bug in the decoder")
    monkeypatch.setattr(stack.ChainStack, "_pop_gauss", broken_pop)
    with pytest.raises(bug, match="a bug in the decoder"):
        codec.decode(data)
    monkeypatch.undo()
    assert check(codec.decode, data, images) == "right"


def test_converted_errors_are_refused_by_the_fuzz_check():
    """The fuzz check itself: a DDPMCodecError converted from a bug fails it, and so does
    a wrong image."""
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
    wrong = dataclasses.make_dataclass("D", ["images"])(np.ones((1, 2, 2, 3), np.uint8))
    t = Tally()
    with pytest.raises(AssertionError, match="wrong image"):
        check(lambda data: wrong, b"", np.zeros((1, 2, 2, 3), np.uint8), t, "forged")
    assert t.outcomes_of("wrong") == 1 and t.tried["forged"] == 1
