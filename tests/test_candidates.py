"""Candidate generator v2 and its PFR search (ddpmcodec.codec.progressive.channel:
generator_v2 and search).

Oracles: the words are splitmix64 of the counter (channel._mix64, a Python-int
implementation); numpy and torch give the same bits (words, normals, scores, searches);
the radius and the direction equal their float64 values within 2e-7 over every one of
their 2^24 inputs; the normals follow N(0, 1) (moments, Kolmogorov-Smirnov, the tail
counts of 2e7 draws); the channel with v2 regenerates its samples bit for bit, whatever
the search backend or parallelism, and those samples follow q; v1 still gives the
values it gave before v2 existed (CRCs taken from the code before this change).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from channel_helpers import assert_follows_q, draws, roundtrip
from scipy import stats

from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.channel import chunks, generator_v2, search
from ddpmcodec.core.splitmix import mix64
from ddpmcodec.errors import DDPMCodecError

V2 = ch.GENERATOR_V2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bits(a) -> np.ndarray:
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes()) & 0xFFFFFFFF


def _radius(hi: np.ndarray) -> np.ndarray:
    """The numpy radius of high halves (int32 [n]): float32 [n]."""
    v = generator_v2._Scratch(len(hi)).views(len(hi))
    v["hi"][:] = hi
    return generator_v2._radius_numpy(v).copy()


def _direction(lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy (cos, sin) of low halves (int32 [n]): float32 [n] each."""
    v = generator_v2._Scratch(len(lo)).views(len(lo))
    v["lo"][:] = lo
    return tuple(a.copy() for a in generator_v2._direction_numpy(v))


# -- words and normals: the same bits everywhere ------------------------------------------
def test_words_are_splitmix_of_the_counter():
    key, dims, w = 0xDEADBEEF12345678, 9, 5
    words = generator_v2.candidate_words_numpy(key, 1000, 3, dims)
    assert words.shape == (3, w) and words.dtype == np.uint64
    for n in range(3):
        for i in range(w):
            ref = mix64(key + ((1000 + n) * w + i) * generator_v2.SPLITMIX_GAMMA)
            assert int(words[n, i]) == ref


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_torch_give_the_same_bits(device):
    rng = np.random.default_rng(0)
    cases = [(1, 0, 7), (2, 1, 5), (3, 2 ** 20, 3), (3071, 17, 4), (3072, 2 ** 20 - 1, 2)]
    cases += [(int(rng.integers(1, 3073)), int(rng.integers(0, 2 ** 20)), int(rng.integers(1, 40)))
              for _ in range(25)]
    cases += [(4, 12345, 40000), (31, 7, 5000)]  # several blocks
    for dims, start, count in cases:
        key = int(rng.integers(0, 2 ** 63)) * 2 + int(rng.integers(0, 2))  # all 64 bits
        a = generator_v2.normals_numpy(key, start, count, dims)
        b = generator_v2.normals_torch(key, start, count, dims, device)
        assert a.shape == tuple(b.shape) == (count, dims) and a.dtype == np.float32
        assert np.array_equal(_bits(a), _bits(b)), (dims, start, count)
        wa = generator_v2.candidate_words_numpy(key, start, min(count, 50), dims)
        wb = generator_v2.candidate_words_torch(key, start, min(count, 50), dims, device)
        assert np.array_equal(wa.view(np.int64), _bits(wb))


@pytest.mark.parametrize("device", DEVICES)
def test_radius_and_direction_agree_on_every_input(device):
    """Every one of the 2^24 inputs of the radius (bits 63..40) and of the direction
    (bits 31..8) gives the same float32 bits in numpy and torch."""
    top = np.arange(1 << 24, dtype=np.int64)
    halves = ((top << 8) | 0x5A).astype(np.uint32).view(np.int32)  # low 8 bits are unused
    r = _radius(halves)
    c, s = _direction(halves)
    t = torch.from_numpy(halves).to(device)
    assert np.array_equal(_bits(r), _bits(generator_v2._radius_torch(t)))
    tc, ts = generator_v2._direction_torch(t)
    assert np.array_equal(_bits(c), _bits(tc)) and np.array_equal(_bits(s), _bits(ts))


@pytest.mark.parametrize("dims", [1, 2, 5, 8, 9, 31, 1537])
def test_candidates_regenerate_one_by_one(dims):
    key = int(ch.derive_key(11, 2, 3)[0])
    count = 40 if dims < 1000 else 70  # 1537: blocks of 32 candidates
    block = generator_v2.normals_numpy(key, 5, count, dims)
    for n in (0, 17, count - 1):
        assert np.array_equal(generator_v2.normals_numpy(key, 5 + n, 1, dims)[0], block[n])
    again = np.concatenate([generator_v2.normals_numpy(key, 5, 13, dims), generator_v2.normals_numpy(key, 18, count - 13, dims)])
    assert np.array_equal(again, block)


def test_one_candidate_of_many_chunks_at_once():
    rng = np.random.default_rng(4)
    keys = [int(rng.integers(0, 2 ** 63)) * 2 + 1 for _ in range(60)]
    indices = [int(rng.integers(0, 2 ** 24)) for _ in range(60)]
    dims = [int(d) for d in rng.integers(1, 80, 60)] + [1536]
    keys.append(7)
    indices.append(3)
    eps = generator_v2.chunk_normals_numpy(keys, indices, dims)
    ref = np.concatenate([generator_v2.normals_numpy(k, n, 1, d)[0] for k, n, d in zip(keys, indices, dims)])
    assert eps.dtype == np.float32 and np.array_equal(_bits(eps), _bits(ref))
    assert generator_v2.chunk_normals_numpy([], [], []).shape == (0,)


def test_chunk_keys_are_derive_keys():
    plan = chunks.ChunkPlan.make(100, ch.ChannelParams(generator=V2), 50, 77, (3, 9), None)
    for j in range(len(plan.groups)):
        assert plan.v2_key(j) == int(ch.derive_key(77, 3, 9, j + 1)[0]) == int(plan.key(j)[0])


def test_bad_arguments():
    with pytest.raises(ValueError):
        generator_v2.normals_numpy(1 << 64, 0, 1, 4)
    with pytest.raises(ValueError):
        generator_v2.normals_numpy(1, -1, 1, 4)
    with pytest.raises(ValueError):
        generator_v2.normals_numpy(1, 0, 1, 0)
    assert generator_v2.normals_numpy(1, 0, 0, 4).shape == (0, 4)


# -- accuracy of the float32 arithmetic -----------------------------------------------------
def test_radius_is_sqrt_minus_two_log_u_on_every_input():
    top = np.arange(1 << 24, dtype=np.int64)
    hi = (top << 8).astype(np.uint32).view(np.int32)
    r = _radius(hi).astype(np.float64)
    x = (hi.astype(np.int64) >> 8) + 2 ** 23 + 1           # a' + 1: every value 1..2^24 once
    assert np.array_equal(np.sort(x), top + 1)
    ref = np.sqrt(-2.0 * np.log(x * 2.0 ** -24))
    assert np.all(r[x == 2 ** 24] == 0.0) and ref.max() == pytest.approx(generator_v2.EPS_MAX) and r.max() <= generator_v2.EPS_MAX
    pos = x < 2 ** 24
    assert np.max(np.abs(r[pos] - ref[pos]) / ref[pos]) < 2e-7
    # -2 ln u1 = r^2, relative
    assert np.max(np.abs(r[pos] ** 2 - ref[pos] ** 2) / ref[pos] ** 2) < 4e-7
    assert r[pos].min() > 3e-4  # no value near the denormals


def test_direction_is_cos_and_sin_on_every_input():
    top = np.arange(1 << 24, dtype=np.int64)
    lo = (top << 8).astype(np.uint32).view(np.int32)
    c, s = (v.astype(np.float64) for v in _direction(lo))
    # bits 31, 30: signs of cos, sin; bit 29: upper half of the quadrant; bits 28..8: j
    sign_c, sign_s = np.where(top >> 23 & 1, -1.0, 1.0), np.where(top >> 22 & 1, -1.0, 1.0)
    phi = ((top >> 21 & 1) * 2 ** 21 + (top & (2 ** 21 - 1)) + 0.5) * (math.pi / 2) / 2 ** 22
    for got, ref in ((c, sign_c * np.cos(phi)), (s, sign_s * np.sin(phi))):
        err = np.abs(got - ref)
        assert err.max() < 2e-7 and np.max(err / np.abs(ref)) < 2e-7
    assert np.abs(c).min() > 1e-7 and np.abs(s).min() > 1e-7
    # every float32 angle position occurs once per quadrant: the angle is uniform
    assert np.abs(c * c + s * s - 1).max() < 3e-7


def test_torch_sqrt_route_is_correctly_rounded():
    """_sqrt_torch (float64 root rounded to float32) equals IEEE float32 sqrt (numpy's)
    on random and edge inputs, which torch.sqrt on CPU float32 does not always."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(0, 40, 1 << 20), rng.uniform(0.5, 1, 1 << 18),
                        [0.0, 1.0, 2.0, 4.0, 1e-30, 3.4e38]]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf))])
    assert np.array_equal(generator_v2._sqrt_torch(torch.from_numpy(x)).numpy(), np.sqrt(x))
    assert np.array_equal(np.sqrt(x), np.sqrt(x.astype(np.float64)).astype(np.float32))


# -- the law of the normals ------------------------------------------------------------------
def test_normals_are_standard_normal():
    z = generator_v2.normals_numpy(int(ch.derive_key(7)[0]), 0, 1 << 17, 8).astype(np.float64)
    flat = z.ravel()
    n = flat.size
    assert abs(flat.mean()) < 4.5 / math.sqrt(n)
    assert abs(flat.var() - 1) < 4.5 * math.sqrt(2 / n)
    assert abs(stats.kurtosis(flat)) < 4.5 * math.sqrt(24 / n)
    assert abs(stats.skew(flat)) < 4.5 * math.sqrt(6 / n)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    # the pair of a word: the radius^2 is Exp(1/2) and the angle uniform, independently
    r2 = z[:, 0] ** 2 + z[:, 4] ** 2
    theta = np.arctan2(z[:, 4], z[:, 0])
    assert stats.kstest(r2, "expon", args=(0, 2)).pvalue > 1e-3
    assert stats.kstest(theta, "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3
    assert abs(np.corrcoef(r2, np.abs(theta))[0, 1]) < 4.5 / math.sqrt(len(r2))
    # normals of different words and different candidates are uncorrelated
    corr = np.corrcoef(z.T)
    assert np.abs(corr - np.eye(8)).max() < 4.5 / math.sqrt(len(z))
    assert abs(np.corrcoef(z[:-1, 3], z[1:, 3])[0, 1]) < 4.5 / math.sqrt(len(z))


def test_normals_have_their_tails():
    """2e7 draws: the counts beyond 4 and 5 sigma are Poisson around 2e7 P(|Z| > t), and
    the largest exceeds 5 sigma (the generator's cut is at 5.77)."""
    key = int(ch.derive_key(8)[0])
    counts, largest, n = {4.0: 0, 4.5: 0, 5.0: 0}, 0.0, 0
    for s in range(10):
        z = np.abs(generator_v2.normals_numpy(key, s * 250_000, 250_000, 8))
        n += z.size
        largest = max(largest, float(z.max()))
        for t in counts:
            counts[t] += int((z > t).sum())
    for t, k in counts.items():
        expected = n * 2 * stats.norm.sf(t)
        assert abs(k - expected) < 5 * math.sqrt(expected) + 2, (t, k, expected)
    assert 5.0 < largest <= generator_v2.EPS_MAX


# -- the PFR search ---------------------------------------------------------------------------
def _coefficients(dims, seed, var_ratio=(0.4, 0.9)):
    """Score coefficients of a random target: var_q / var_p uniform in var_ratio (None:
    var_q = var_p, unbounded weights)."""
    rng = np.random.default_rng(seed)
    mp, vp = rng.normal(size=dims), rng.uniform(0.5, 1.5, dims)
    mq = mp + 0.25 * rng.normal(size=dims) * np.sqrt(vp)
    vq = vp * (rng.uniform(*var_ratio, dims) if var_ratio is not None else 1.0)
    return ch.score_coefficients(mq, vq, mp, vp)


@pytest.mark.parametrize("dims,var_ratio", [(1, (0.4, 0.9)), (4, (0.4, 0.9)), (15, (0.8, 0.97)),
                                            (15, None), (200, (0.4, 0.9)), (200, None)])
def test_search_is_the_same_for_every_backend_and_block(dims, var_ratio):
    a, b, c = _coefficients(dims, dims, var_ratio)
    key = int(ch.derive_key(5, dims)[0])
    ref = search.pfr_search(a, b, c, key, 1 << 12, (9, dims))
    assert ref.exact == (var_ratio is not None and dims < 100)  # bounded weights, small KL
    for kw in ({"block_words": 300}, {"block_words": 1 << 16}, {"backend": "torch"},
               *[{"backend": "torch", "device": d, "block_words": 500} for d in DEVICES]):
        assert search.pfr_search(a, b, c, key, 1 << 12, (9, dims), **kw) == ref, kw
    # the winner's float64 log weight, from its float32 normals
    eps = generator_v2.normals_numpy(key, ref.index, 1, dims)[0].astype(np.float64)
    assert ref.log_weight == pytest.approx((eps * eps) @ a + eps @ b + c, abs=1e-12)


def test_search_scores_are_the_float64_scores():
    a, b, _ = _coefficients(37, 1)
    key = int(ch.derive_key(6)[0])
    scorer = search._NumpyScorer(key, a, b)
    lw = scorer.log_weights(100, 500).astype(np.float64)
    eps = generator_v2.normals_numpy(key, 100, 500, 37).astype(np.float64)
    exact = (eps * eps) @ a + eps @ b
    assert np.abs(lw - exact).max() <= search.score_tolerance(a, b)
    assert np.abs(lw - exact).max() < 1e-5


def test_float32_threshold_rounds_down():
    rng = np.random.default_rng(5)
    for x in [0.1, -0.1, 1.0, 1e-30, -3.5, *rng.normal(size=1000) * 50]:
        f = search._float32_below(x)
        assert f.dtype == np.float32 and float(f) <= x < float(np.nextafter(f, np.float32(np.inf)))
    assert search._float32_below(-math.inf) == -np.inf


def test_search_is_pfr_with_exact_stops():
    """The winner maximises log w - log T over the candidates searched, with the arrival
    times drawn from the seed in candidate order; an exact stop leaves no later
    candidate able to win."""
    a, b, c = _coefficients(15, 15, (0.8, 0.97))
    key, budget = int(ch.derive_key(5, 15)[0]), 1 << 13
    sel = search.pfr_search(a, b, c, key, budget, 42, block_words=64)  # blocks of 8 candidates
    arrivals = np.cumsum(np.random.default_rng(42).standard_exponential(budget))
    eps = generator_v2.normals_numpy(key, 0, budget, 15).astype(np.float64)
    score = (eps * eps) @ a + eps @ b + c - np.log(arrivals)
    assert sel.exact and 100 < sel.searched < budget
    assert sel.index == int(np.argmax(score[:sel.searched]))
    bound = ch.log_weight_bound(a, b, c)
    assert bound - math.log(arrivals[sel.searched - 1]) <= score[sel.index] + search.score_tolerance(a, b)
    assert np.all(score[sel.searched:] <= score[sel.index] + 1e-9)


def test_search_argument_errors():
    a, b, c = _coefficients(3, 0)
    with pytest.raises(ValueError):
        search.pfr_search(a, b, c, 1, 16, 0, backend="jax")
    with pytest.raises(DDPMCodecError):
        ch.ChannelParams(generator="philox").validate()
    with pytest.raises(DDPMCodecError):
        ch.generator_check("philox")


# -- the channel with v2 ---------------------------------------------------------------------



def _target(shape, seed=2):
    rng = np.random.default_rng(seed)
    mp = rng.normal(size=shape)
    vp = rng.uniform(0.5, 1.5, size=shape)
    return mp + 0.3 * rng.normal(size=shape), 0.6 * vp, mp, vp


@pytest.mark.parametrize("shape", [(3, 4, 4), (50,), (1,), (3, 32, 32)])
def test_v2_channel_regenerates_the_sample_with_every_search(shape):
    mq, vq, mp, vp = _target(shape)
    params = ch.ChannelParams(chunk_bits=8, margin_bits=3, max_log2=16, generator=V2).validate()
    x, y, st, words = roundtrip(mq, vq, mp, vp, params, search_workers=1)
    assert x.shape == shape and np.array_equal(x, y)
    assert st.num_chunks == len(st.index_bits) and st.searched > 0
    # the stream and the sample do not depend on how or where the chunks are searched
    for kw in ({"search_workers": 2}, {"search_workers": 3}, {"search_workers": None},
               {"search_workers": 3, "search_device": "torch:cpu"},
               *[{"search_device": f"torch:{d}"} for d in DEVICES]):
        x2, y2, st2, words2 = roundtrip(mq, vq, mp, vp, params, **kw)
        assert np.array_equal(words2, words) and np.array_equal(x2, x) and np.array_equal(y2, x)
        assert (st2.searched, st2.exact_chunks) == (st.searched, st.exact_chunks)


def test_v2_private_randomness_changes_choice_not_decodability():
    mp, vp = np.zeros(200), np.ones(200)
    mq, vq = np.full(200, 0.5), np.full(200, 0.8)  # 39 bits in 5 chunks
    params = ch.ChannelParams(chunk_bits=8, margin_bits=6, max_log2=16, generator=V2)
    xs = [roundtrip(mq, vq, mp, vp, params, rng_seed=s)[:2] for s in range(6)]
    assert all(np.array_equal(x, y) for x, y in xs)
    # PFR's winner often ignores the arrival times (about half the pairs of seeds agree
    # on all 5 chunks here, with v1 too): six seeds must not all agree
    assert len({x.tobytes() for x, _ in xs}) > 1


def test_v1_and_v2_differ_and_v1_is_unchanged():
    rng = np.random.default_rng(5)
    mp = rng.normal(size=(3, 4, 4))
    vp = rng.uniform(0.5, 1.5, size=(3, 4, 4))
    mq, vq = mp + 0.3 * rng.normal(size=(3, 4, 4)), 0.6 * vp
    st = ch.ChannelStats()
    w = ch.SymbolWriter()
    params = ch.ChannelParams(chunk_bits=6, margin_bits=3, max_log2=16)
    assert params.generator == ch.GENERATOR_ID  # the default: files that name none are v1
    x = ch.encode_gaussian(w, mq, vq, mp, vp, params, 3, (1, 2), np.random.default_rng(7), st,
                           budget_rule="chunk")
    # CRCs from the channel module before v2 and the "layout" budget rule existed. The
    # index stream is integers and must match everywhere; v1's float64 normals come from
    # numpy's cos/sin/log, whose SIMD kernels differ in the last bits between CPUs (an
    # AVX-512 machine gives other bits than the AVX2 one that pinned them), so the sample
    # itself is pinned only where numpy reproduces the pinned normals.
    assert (_crc(w.words().astype("<u4")), st.searched) == (841500490, 256)
    assert ch.generator_check(ch.GENERATOR_ID) == 8612183  # float32-rounded: CPU-independent
    if _crc(ch.candidate_normals(ch.derive_key(9, 8), 100, 50, 37).astype("<f8")) == 3920154608:
        assert _crc(x.astype("<f8")) == 2816269021
    x2 = roundtrip(mq, vq, mp, vp, ch.ChannelParams(6, 3, 16, V2))[0]
    assert not np.array_equal(x, x2)
    with pytest.raises(DDPMCodecError, match="numpy only"):
        ch.encode_gaussian(ch.SymbolWriter(), mq, vq, mp, vp, params, 3, (1, 2),
                           np.random.default_rng(7), search_device="torch:cpu")


def test_v2_generator_check_is_the_same_everywhere():
    """v2 is exact IEEE arithmetic: its check is a constant of the format, on every
    machine and device."""
    assert ch.generator_check(V2) == 635693329
    key = int(ch.derive_key(12345, 6, 7)[0])
    for device in DEVICES:
        eps = generator_v2.normals_torch(key, 3, 2, 7, device).cpu().numpy()
        assert _crc(eps.astype("<f4")) == 635693329


def test_v2_samples_follow_q_exact_search():
    """var_q < var_p: the search stops exactly, so the PFR sample is exact."""
    mp, vp = np.zeros(4), np.ones(4)
    mq, vq = np.array([0.9, -0.6, 0.3, 0.0]), np.full(4, 0.5)
    params = ch.ChannelParams(chunk_bits=12, margin_bits=12, max_log2=20, generator=V2)
    samples, _, exact = draws(mq, vq, mp, vp, params, 1500, search_workers=1)
    assert exact == 1.0
    assert_follows_q(samples, mq, vq)


def test_v2_samples_follow_q_truncated_search():
    """var_q = var_p, D = 3 bits, m = 11: the truncation is invisible at 1000 draws."""
    mp, vp = np.zeros(3), np.ones(3)
    mq, vq = np.array([1.4, -1.2, 0.9]), np.ones(3)
    params = ch.ChannelParams(chunk_bits=12, margin_bits=11, max_log2=20, generator=V2)
    samples, _, exact = draws(mq, vq, mp, vp, params, 1000, search_workers=1)
    assert exact == 0.0
    assert_follows_q(samples, mq, vq)
