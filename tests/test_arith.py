"""The prefix-aware arithmetic coder: exact round trips, the prefix rule, hostile bytes."""
import math

import numpy as np
import pytest

from ddpmcodec.codec.entropy import arith
from ddpmcodec.errors import DDPMCodecError


def _random_program(rng, count):
    """A list of ('cat', symbol, probs) / ('raw', value, nbits) drawn from rng."""
    prog = []
    for _ in range(count):
        if rng.random() < 0.6:
            n = int(rng.integers(2, 42))
            probs = rng.dirichlet(np.full(n, 0.3))
            probs = np.maximum(probs, 1e-9)
            sym = int(rng.choice(n, p=probs / probs.sum()))
            prog.append(("cat", sym, probs))
        else:
            k = int(rng.integers(0, 40))
            prog.append(("raw", int(rng.integers(0, 1 << k)) if k else 0, k))
    return prog


def _encode(prog, every=1):
    enc = arith.ArithEncoder()
    cps = []
    for i, (kind, v, p) in enumerate(prog):
        if kind == "cat":
            enc.categorical(v, p)
        else:
            enc.raw(v, p)
        if (i + 1) % every == 0:
            cps.append((i + 1, enc.checkpoint()))
    return enc.finish(), cps


def _decode(data, prog):
    """Symbols decoded until Exhausted (list), from data."""
    dec = arith.ArithDecoder(data)
    out = []
    try:
        for kind, _, p in prog:
            out.append(dec.categorical(p) if kind == "cat" else dec.raw(p))
    except arith.Exhausted:
        pass
    return out


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_and_cost(seed):
    rng = np.random.default_rng(seed)
    prog = _random_program(rng, 400)
    data, _ = _encode(prog)
    assert _decode(data, prog) == [v for _, v, _ in prog]
    ideal = sum(-math.log2(p[v] / p.sum()) if k == "cat" else p for k, v, p in prog)
    # the stream is the information plus at most a couple of bytes
    assert ideal - 1 <= 8 * len(data) <= ideal + 24


@pytest.mark.parametrize("seed", range(4))
def test_every_prefix_decodes_exactly_what_it_determines(seed):
    rng = np.random.default_rng(100 + seed)
    prog = _random_program(rng, 120)
    data, cps = _encode(prog, every=7)
    symbols = [v for _, v, _ in prog]
    need = {i: arith.prefix_bytes(data, cp) for i, cp in cps}
    for n in range(len(data) + 1):
        got = _decode(data[:n], prog)
        assert got == symbols[:len(got)], "a prefix decoded a wrong symbol"
        for i, nb in need.items():
            # a checkpoint's symbols decode from exactly its prefix_bytes on
            assert (len(got) >= i) == (n >= nb)
    assert need[max(need)] <= len(data)


def test_decoder_bytes_used_matches_encoder():
    rng = np.random.default_rng(7)
    prog = _random_program(rng, 200)
    data, cps = _encode(prog, every=25)
    dec = arith.ArithDecoder(data)
    i = 0
    for end, cp in cps:
        while i < end:
            kind, _, p = prog[i]
            dec.categorical(p) if kind == "cat" else dec.raw(p)
            i += 1
        assert dec.checkpoint() == cp
        assert dec.bytes_used() == arith.prefix_bytes(data, cp)


def test_empty_stream_and_free_symbols():
    enc = arith.ArithEncoder()
    assert enc.finish() == b""
    enc.raw(0, 0)
    enc.categorical(0, [1.0])
    assert enc.finish() == b""
    dec = arith.ArithDecoder(b"")
    assert dec.categorical([1.0]) == 0
    with pytest.raises(arith.Exhausted):
        dec.raw(3)


def test_frequencies_are_positive_and_normalised():
    cum = arith.frequencies([1e-30, 1.0, 0.0, 2.0])
    f = np.diff(cum)
    assert cum[-1] == 1 << arith.PROB_BITS and f.min() >= 1
    with pytest.raises(ValueError):
        arith.frequencies([np.nan, 1.0])
    with pytest.raises(ValueError):
        arith.frequencies([])


def test_garbage_never_raises_anything_but_the_two():
    rng = np.random.default_rng(3)
    prog = _random_program(rng, 60)
    for trial in range(300):
        data = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        dec = arith.ArithDecoder(data)
        try:
            for kind, _, p in prog:
                dec.categorical(p) if kind == "cat" else dec.raw(p)
        except (arith.Exhausted, DDPMCodecError):
            pass


def test_encoder_rejects_bad_symbols():
    enc = arith.ArithEncoder()
    with pytest.raises(ValueError):
        enc.categorical(3, [0.5, 0.5])
    with pytest.raises(ValueError):
        enc.raw(4, 2)
