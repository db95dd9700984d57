"""Channel simulation of diagonal Gaussians (ddpmcodec.codec.progressive.channel).

Oracles: the receiver regenerates the sender's sample bit for bit; candidate blocks equal
candidates regenerated one by one; the score equals log q - log p from scipy; and the
samples follow q(x) = N(mean_q, var_q) in distribution (moments and Kolmogorov-Smirnov over
many draws), exactly when the search stops exactly and up to the stated truncation
otherwise -- with a negative control showing that the test sees a truncation bias.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from channel_helpers import assert_follows_q, draws, roundtrip
from scipy import stats

from ddpmcodec.codec.progressive import channel as ch
from ddpmcodec.codec.progressive.channel import pool as search_pool
from ddpmcodec.errors import DDPMCodecError


# -- shared randomness -------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2, 5, 8, 9, 31])
def test_candidates_regenerate_one_by_one(dims):
    key = ch.derive_key(11, 2, 3)
    block = ch.candidate_normals(key, 5, 40, dims)
    assert block.shape == (40, dims) and block.dtype == np.float64
    for n in (0, 17, 39):
        one = ch.candidate_normals(key, 5 + n, 1, dims)[0]
        assert np.array_equal(one, block[n])
    # a different split of the same range gives the same numbers
    again = np.concatenate([ch.candidate_normals(key, 5, 13, dims), ch.candidate_normals(key, 18, 27, dims)])
    assert np.array_equal(again, block)


def test_candidates_depend_on_every_key_part():
    base = ch.candidate_normals(ch.derive_key(1, 2, 3), 0, 4, 6)
    for other in (ch.derive_key(2, 2, 3), ch.derive_key(1, 3, 3), ch.derive_key(1, 2, 4),
                  ch.derive_key(1, 2, 3, 0)):
        assert not np.array_equal(base, ch.candidate_normals(other, 0, 4, 6))


def test_candidates_are_standard_normal():
    z = ch.candidate_normals(ch.derive_key(7), 0, 20000, 7).ravel()
    assert abs(z.mean()) < 4 / math.sqrt(z.size)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # the two halves (cos and sin parts) are independent of each other
    pairs = ch.candidate_normals(ch.derive_key(8), 0, 20000, 2)
    assert abs(np.corrcoef(pairs.T)[0, 1]) < 4 / math.sqrt(len(pairs))


def test_permutation_and_chunks():
    perm = ch.shared_permutation(ch.derive_key(4, 5), 3072)
    assert np.array_equal(np.sort(perm), np.arange(3072))
    assert np.array_equal(perm, ch.shared_permutation(ch.derive_key(4, 5), 3072))
    sl = ch.chunk_slices(3072, 200)
    sizes = [b - a for a, b in sl]
    assert sl[0][0] == 0 and sl[-1][1] == 3072 and max(sizes) - min(sizes) <= 1
    assert all(sl[j][1] == sl[j + 1][0] for j in range(199))
    params = ch.ChannelParams(chunk_bits=8)
    assert ch.layout(0, params, 10) == 1 and ch.layout(17, params, 10) == 3
    assert ch.layout(10 ** 6, params, 10) == 10  # never more chunks than dimensions


# -- Gaussian algebra --------------------------------------------------------------------------
def test_score_is_log_density_ratio():
    rng = np.random.default_rng(0)
    d = 6
    mq, mp = rng.normal(size=d), rng.normal(size=d)
    vq, vp = rng.uniform(0.2, 2, d), rng.uniform(0.2, 2, d)
    a, b, c = ch.score_coefficients(mq, vq, mp, vp)
    eps = rng.normal(size=(5, d))
    z = mp + np.sqrt(vp) * eps
    ref = (stats.norm.logpdf(z, mq, np.sqrt(vq)) - stats.norm.logpdf(z, mp, np.sqrt(vp))).sum(1)
    np.testing.assert_allclose((eps * eps) @ a + eps @ b + c, ref, rtol=1e-12, atol=1e-12)
    # KL = E_q[log q/p], by Monte Carlo
    eps_q = (mq + np.sqrt(vq) * rng.normal(size=(200000, d)) - mp) / np.sqrt(vp)
    mc = ((eps_q * eps_q) @ a + eps_q @ b + c).mean() / math.log(2)
    assert mc == pytest.approx(ch.kl_bits(mq, vq, mp, vp).sum(), rel=0.02)


def test_weight_bound():
    a, b, c = ch.score_coefficients(np.array([0.5]), np.array([0.5]), np.array([0.0]), np.array([1.0]))
    grid = np.linspace(-10, 10, 200001)
    assert ch.log_weight_bound(a, b, c) == pytest.approx((a * grid ** 2 + b * grid).max() + c, abs=1e-8)
    a2, b2, c2 = ch.score_coefficients(np.array([0.5]), np.array([2.0]), np.array([0.0]), np.array([1.0]))
    assert ch.log_weight_bound(a2, b2, c2) == math.inf


# -- entropy coding of the symbols --------------------------------------------------------------
def test_symbols_round_trip():
    rng = np.random.default_rng(1)
    probs = ch.index_octave_probs(9.5, 20)
    assert probs.shape == (21,) and probs.sum() == pytest.approx(1.0) and probs.min() > 0
    ints = [int(v) for v in rng.integers(0, 2 ** 31, 30)] + [0, 1, 2, 3, 2 ** 32 - 2]
    idx = [int(v) for v in rng.integers(0, 2 ** 20, 30)] + [0, 2 ** 20 - 1]
    w = ch.SymbolWriter()
    for v in ints:
        w.exp_golomb(v, "side")
    for v in idx:
        w.index(v, probs)
    w.uniform_bits(0x2B, 6, "raw")
    r = ch.SymbolReader(w.words())
    assert [r.exp_golomb() for _ in ints] == ints
    assert [r.index(probs) for _ in idx] == idx
    assert r.uniform_bits(6) == 0x2B
    # tallied ideal lengths are what a range coder achieves, within its 32-bit flush
    assert 32 * len(w.words()) - 64 <= sum(w.bits.values()) <= 32 * len(w.words())
    with pytest.raises(DDPMCodecError):
        ch.SymbolWriter().index(2 ** 21, probs)


def test_garbage_words_give_integers_not_crashes():
    probs = ch.index_octave_probs(12.0, 24)
    for seed in range(20):
        words = np.random.default_rng(seed).integers(0, 2 ** 32, 8, dtype=np.uint64).astype(np.uint32)
        r = ch.SymbolReader(words)
        v = r.exp_golomb()
        n = r.index(probs)
        assert 0 <= v < 2 ** 32 and 0 <= n < 2 ** 25


# -- the channel: exact regeneration --------------------------------------------------------------
@pytest.mark.parametrize("shape,hint", [((3, 4, 4), None), ((50,), None), ((50,), 7.0), ((1,), None)])
def test_receiver_regenerates_the_sample(shape, hint):
    rng = np.random.default_rng(2)
    mp = rng.normal(size=shape)
    vp = rng.uniform(0.5, 1.5, size=shape)
    mq = mp + 0.3 * rng.normal(size=shape)
    vq = 0.6 * vp
    params = ch.ChannelParams(chunk_bits=6, margin_bits=3, max_log2=16)
    x, y, st, _ = roundtrip(mq, vq, mp, vp, params, kl_hint=hint)
    assert x.shape == shape and np.array_equal(x, y)
    assert st.kl_bits == pytest.approx(ch.kl_bits(mq, vq, mp, vp).sum())
    assert st.num_chunks == len(st.chunk_kl) == len(st.index_bits)


def test_high_kl_per_dimension_caps_chunks():
    """More KL per dimension than a chunk holds: one chunk per dimension, still exact."""
    mp, vp = np.zeros(3), np.ones(3)
    mq, vq = np.array([3.0, -3.0, 2.5]), np.full(3, 0.05)
    params = ch.ChannelParams(chunk_bits=2, margin_bits=2, max_log2=12)
    x, y, st, _ = roundtrip(mq, vq, mp, vp, params)
    assert np.array_equal(x, y) and st.num_chunks == 3


def test_private_randomness_changes_choice_not_decodability():
    mp, vp = np.zeros(200), np.ones(200)
    mq, vq = np.full(200, 0.5), np.full(200, 0.8)  # 39 bits in 5 chunks, a wide margin
    params = ch.ChannelParams(chunk_bits=8, margin_bits=6, max_log2=16)
    xs = [roundtrip(mq, vq, mp, vp, params, rng_seed=s)[:2] for s in range(3)]
    assert all(np.array_equal(x, y) for x, y in xs)
    assert not np.array_equal(xs[0][0], xs[1][0])


# -- the channel: the law of the samples -----------------------------------------------------------
def test_samples_follow_q_exact_search():
    """var_q < var_p: the weight is bounded and the search stops exactly, so the PFR
    sample is exact."""
    mp, vp = np.zeros(4), np.ones(4)
    mq, vq = np.array([0.9, -0.6, 0.3, 0.0]), np.full(4, 0.5)
    params = ch.ChannelParams(chunk_bits=12, margin_bits=12, max_log2=20)
    samples, bits, exact = draws(mq, vq, mp, vp, params, 1500)
    assert exact == 1.0
    assert_follows_q(samples, mq, vq)
    kl = ch.kl_bits(mq, vq, mp, vp).sum()
    assert kl < bits.mean() < kl + 12  # side information (about 6 bits) + the index


def test_samples_follow_q_truncated_search():
    """var_q = var_p (unbounded weight): the search is truncated at 2^(D + m) candidates
    (one chunk: D is the layout's mean, the KL rounded up). D = 3 bits, m = 11: the exact
    winner lies beyond the 2^14 candidates with probability ~4e-4 (log2 n* ~ N(D - 0.8,
    3.5^2)), below what 1000 draws can see."""
    mp, vp = np.zeros(3), np.ones(3)
    mq, vq = np.array([1.4, -1.2, 0.9]), np.ones(3)
    params = ch.ChannelParams(chunk_bits=12, margin_bits=11, max_log2=20)
    assert ch.kl_bits(mq, vq, mp, vp).sum() == pytest.approx(3.0, abs=0.1)
    samples, _, exact = draws(mq, vq, mp, vp, params, 1000)
    assert exact == 0.0
    assert_follows_q(samples, mq, vq)


def test_truncation_bias_is_visible():
    """Negative control: D = 8 bits with no margin (2^8 candidates) biases the sample
    towards p; the same test must see it."""
    mp, vp = np.zeros(4), np.ones(4)
    mq, vq = np.full(4, 1.665), np.ones(4)
    params = ch.ChannelParams(chunk_bits=12, margin_bits=0, max_log2=20)
    assert ch.kl_bits(mq, vq, mp, vp).sum() == pytest.approx(8.0, abs=0.05)
    samples, _, _ = draws(mq, vq, mp, vp, params, 600)
    z = (samples - mq) / np.sqrt(vq)
    assert z.mean() < -5 / math.sqrt(z.size)  # shrunk towards p's mean 0
    assert stats.kstest(z.ravel(), "norm").pvalue < 1e-6


def test_search_budget_rules():
    params = ch.ChannelParams(chunk_bits=12, margin_bits=2, max_log2=20)
    # "layout": one budget for every chunk of a layout, from its mean chunk KL
    assert {ch.search_budget(d, 11.5, params, 8) for d in (3.0, 11.5, 17.2)} == {round(2 ** 13.5)}
    # "chunk": from the chunk's own KL, rounded up
    assert [ch.search_budget(d, 11.5, params, 8, "chunk") for d in (3.0, 11.5, 17.2)] == \
        [1 << 5, 1 << 14, 1 << 20]
    for rule in ch.BUDGET_RULES:  # capped by the index alphabet and by the normals drawn
        assert ch.search_budget(40.0, 40.0, params, 8, rule) == 1 << 20
        assert ch.search_budget(20.0, 20.0, params, 1 << 20, rule) == 1 << 7
        assert ch.search_budget(0.0, 0.0, params, 8, rule) == 4
    with pytest.raises(DDPMCodecError, match="budget rule"):
        ch.search_budget(1.0, 1.0, params, 8, "chunks")


@pytest.mark.parametrize("rule", ch.BUDGET_RULES)
def test_budget_rule_is_the_senders_alone(rule):
    """The receiver regenerates the sample whatever budget the sender searched; "layout"
    scores at most its one budget per chunk, "chunk" its own per chunk."""
    rng = np.random.default_rng(4)
    mp, vp = rng.normal(size=300), rng.uniform(0.5, 1.5, size=300)
    mq, vq = mp + 0.4 * rng.normal(size=300), 0.7 * vp
    params = ch.ChannelParams(chunk_bits=6, margin_bits=2, max_log2=16, generator=ch.GENERATOR_V2)
    w, st = ch.SymbolWriter(), ch.ChannelStats()
    x = ch.encode_gaussian(w, mq, vq, mp, vp, params, 5, (0, 1), np.random.default_rng(1), st,
                           budget_rule=rule)
    y = ch.decode_gaussian(ch.SymbolReader(w.words()), mp, vp, params, 5, (0, 1))
    assert np.array_equal(x, y) and st.num_chunks > 5
    q_int = math.ceil(st.kl_bits)
    budgets = [ch.search_budget(d, q_int / st.num_chunks, params, 1, rule) for d in st.chunk_kl]
    assert st.searched <= sum(budgets)
    if rule == "layout":
        assert len(set(budgets)) == 1
    else:
        assert len(set(budgets)) > 1


def _encode_with_workers(workers: int) -> tuple[np.ndarray, np.ndarray]:
    """One Gaussian of several chunks sent with ``workers`` search processes: (sample,
    stream words)."""
    rng = np.random.default_rng(6)
    mp, vp = rng.normal(size=300), rng.uniform(0.5, 1.5, size=300)
    mq, vq = mp + 0.4 * rng.normal(size=300), 0.7 * vp
    params = ch.ChannelParams(chunk_bits=6, margin_bits=2, max_log2=16, generator=ch.GENERATOR_V2)
    w, st = ch.SymbolWriter(), ch.ChannelStats()
    x = ch.encode_gaussian(w, mq, vq, mp, vp, params, 5, (0, 2), np.random.default_rng(1), st,
                           search_workers=workers)
    assert st.num_chunks > 4
    return x, w.words()


@pytest.mark.skipif(search_pool._search_pool(2) is None, reason="search processes are forked on Linux only")
def test_search_workers_are_processes_and_a_dead_one_falls_back():
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool
    pool = search_pool._search_pool(2)
    assert pool is search_pool._search_pool(2) and pool.submit(os.getpid).result() != os.getpid()
    # Ctrl-C is the encoder's to handle: a search process ignores it (no traceback of its own)
    assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
    x1, words1 = _encode_with_workers(1)
    with pytest.raises(BrokenProcessPool):  # a worker dies: the pool breaks
        pool.submit(os._exit, 1).result()
    with pytest.warns(RuntimeWarning, match="search process died"):
        x2, words2 = _encode_with_workers(2)  # searched here instead, the same result
    assert np.array_equal(x2, x1) and np.array_equal(words2, words1)
    fresh = search_pool._search_pool(2)  # the broken pool was dropped; a new one serves
    assert fresh is not pool and np.array_equal(_encode_with_workers(2)[1], words1)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(DDPMCodecError, match="search workers"):
            ch.check_search_workers(bad)
    assert ch.check_search_workers(None) == ch.default_search_workers() >= 1


def _encode_in_child(queue) -> None:
    """In a forked child: how many pools it inherited, whether it may make one, and its
    stream with 2 workers."""
    inherited = len(search_pool._POOLS)
    queue.put((inherited, search_pool._search_pool(2) is None, _stream_of_workers(2).tolist()))


def _stream_of_workers(workers: int) -> np.ndarray:
    return _encode_with_workers(workers)[1]


@pytest.mark.skipif(search_pool._search_pool(2) is None, reason="search processes are forked on Linux only")
@pytest.mark.parametrize("daemon", [False, True])
def test_a_multiprocessing_child_searches_in_itself(daemon):
    """A process that multiprocessing forks after the encoder made its pool (a DataLoader
    worker, daemonic, or a user's own) neither uses the parent's pool nor makes one (a
    daemonic process may have no children; another would wait for them at its exit): it
    searches in itself, to the same stream, and exits."""
    import multiprocessing
    assert search_pool._search_pool(2) is not None and len(search_pool._POOLS) >= 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_encode_in_child, args=(queue,), daemon=daemon)
    child.start()
    inherited, no_pool, words = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and inherited == 0 and no_pool
    assert words == _stream_of_workers(1).tolist()
    ch.close_search_pools()
    assert not search_pool._POOLS
    assert np.array_equal(_stream_of_workers(2), _stream_of_workers(1))  # a new pool serves
    assert len(search_pool._POOLS) == 1


def test_params_validate():
    with pytest.raises(DDPMCodecError):
        ch.ChannelParams(chunk_bits=0.5).validate()
    with pytest.raises(DDPMCodecError):
        ch.ChannelParams(max_log2=41).validate()
    with pytest.raises(DDPMCodecError):
        ch.hint_to_int(float("nan"))
